"""Does `--budget` bound RAM on a CPU? Peak RSS and time of an untiled decode vs two budgets (issue 16, item 7).

A reduced SD-structured model (diffusers AutoencoderKL with the SD block structure, a quarter of the
channels, random weights) decodes one latent untiled and under two budgets, each run in a fresh
subprocess so no run inherits another's heap. In each child: build the model, make the latent, warm up
on a small latent, then reset the peak-RSS counter (`echo 5 > /proc/self/clear_refs`) and read VmHWM as
the baseline; decode; read VmHWM. "RSS above baseline" = VmHWM - baseline: what the decode itself added
(its output included), with the model and the input already loaded.

The check (issue 16, item 7): RSS above baseline <= budget + host_bytes + 10%. The budget counts weights
and input too, so the bound is loose by their size; a run that breaks it is reported as such. Where the
kernel does not let the counter be reset, the baseline is VmHWM before the decode and the table says so.

    python benchmarks/tiled_cpu.py [--size 1024x768] [--budgets x0.5,x0.25] [--json PATH]

Budgets: bytes (`64MiB`) or `xF`: weights + input + F x the untiled call's working set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# SD 1.x/2.x/XL block structure (4 down / 4 up blocks, 2 resnets per block, mid-block attention) with a
# quarter of the channels of the released [128, 256, 512, 512].
REDUCED_SD = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 64, 128, 128], "layers_per_block": 2, "norm_num_groups": 32,
    "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.13025,
}


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs value 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def budget_bytes(text: str, plan: Any) -> int:
    """'64MiB' -> bytes; 'x0.5' -> weights + input + 0.5 x the untiled working set (`plan`: the untiled plan)."""
    from vaelens.options import parse_bytes

    if text.startswith("x"):
        fixed = plan.weights_bytes + plan.input_bytes
        return int(fixed + float(text[1:]) * (plan.untiled_peak_bytes - fixed))
    return parse_bytes(text)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process -> its figures (printed as one JSON line by the caller)."""
    import torch

    from vaelens.build import build_module
    from vaelens.tiling import decode, plan_tiling

    torch.manual_seed(0)
    h, w = args.hw
    module = build_module(REDUCED_SD, device="cpu", dtype="fp32")
    z = torch.randn(1, 4, h // 8, w // 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        module.decode(torch.randn(1, 4, 16, 16))  # warm-up: thread pool, oneDNN, allocator arenas
    plan = None
    if args.budget != "untiled":
        plan = plan_tiling(module, tuple(z.shape), "fp32", budget=args.budget_bytes, op="decode")
    reset = _reset_peak()
    baseline = _status("VmHWM")  # after a reset: the RSS now (VmRSS may lag it by per-thread counter caches)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = module.decode(z).sample if plan is None else decode(module, z, plan=plan)
    seconds = time.perf_counter() - t0
    hwm = _status("VmHWM")
    torch.save(out, args.out)
    row: dict[str, Any] = {"budget": args.budget, "seconds": seconds, "baseline_rss": baseline, "peak_rss": hwm,
                           "rss_above_baseline": hwm - baseline, "peak_reset": reset}
    if plan is not None:
        row.update(budget_bytes=args.budget_bytes, method=plan.method, tiles=plan.tiles,
                   tile_shape=list(plan.tile_shape) if plan.tile_shape else None,
                   predicted_peak_bytes=plan.predicted_peak_bytes, host_bytes=plan.host_bytes,
                   transfer_bytes=getattr(plan, "transfer_bytes", None),
                   predicted_seconds=getattr(plan, "predicted_seconds", None))
    return row


def finish(row: dict[str, Any], nbytes: int, out: Any, ref: Any) -> dict[str, Any]:
    """A child's row + its budget (0: untiled) + its output and the untiled one -> the row with the bound
    budget + host_bytes + 10%, whether the RSS rise stays inside it, and the PSNR vs untiled."""
    if nbytes:
        row["bound"] = int((nbytes + row["host_bytes"]) * 1.1)
        row["holds"] = row["rss_above_baseline"] <= row["bound"]
        row["psnr_db"] = psnr(out, ref)
    return row


def psnr(a: Any, ref: Any) -> float:
    mse = float(((a.double() - ref.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def render(rows: list[dict[str, Any]]) -> str:
    """The runs as one plain-text table."""
    from vaelens.render.tables import human_bytes

    def mib(v: Any) -> str:
        return "-" if v is None else human_bytes(v)

    head = ("run", "tiles", "seconds", "÷ untiled", "RSS above baseline", "budget", "host_bytes",
            "bound (+10%)", "holds", "PSNR dB")
    base = rows[0]["seconds"]
    lines = []
    for r in rows:
        bound = r.get("bound")
        lines.append((
            r["budget"], "-" if "tiles" not in r else f"{r['tiles']} ({r['method']})", f"{r['seconds']:.2f}",
            f"{r['seconds'] / base:.2f}", mib(r["rss_above_baseline"]), mib(r.get("budget_bytes")),
            mib(r.get("host_bytes")), mib(bound), "-" if bound is None else ("yes" if r["holds"] else "NO"),
            "-" if r.get("psnr_db") is None else ("inf" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f}"),
        ))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*x) for x in lines)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1024x768", help="pixels WxH (default 1024x768)")
    ap.add_argument("--budgets", default="x0.5,x0.25", help="two or more budgets: 64MiB or xF (see above)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here as JSON")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--budget", default="untiled", help=argparse.SUPPRESS)
    ap.add_argument("--budget-bytes", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from vaelens.options import parse_size

    args.hw = parse_size(args.size)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    import torch

    from vaelens.tiling import plan_tiling

    h, w = args.hw
    probe = plan_tiling(REDUCED_SD, (1, 4, h // 8, w // 8), "fp32", budget=1 << 50, op="decode")
    runs = [("untiled", 0)] + [(b, budget_bytes(b, probe)) for b in args.budgets.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, nbytes) in enumerate(runs):
            out = Path(tmp) / f"out{i}.pt"
            cmd = [sys.executable, __file__, "--child", "--size", args.size, "--budget", name,
                   "--budget-bytes", str(nbytes), "--out", str(out)]
            r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(finish(row, nbytes, torch.load(out), torch.load(Path(tmp) / "out0.pt")))
    print(f"tiled_cpu: reduced SD AutoencoderKL (channels {REDUCED_SD['block_out_channels']}), decode to "
          f"{w}x{h} fp32, {os.cpu_count()} CPUs, untiled need {probe.untiled_peak_bytes / 2**20:.0f} MiB "
          f"(weights {probe.weights_bytes / 2**20:.1f} MiB)")
    if not all(r["peak_reset"] for r in rows):
        print("note: /proc/self/clear_refs could not reset the peak; baseline = VmHWM before the decode")
    print(render(rows))
    for r in rows:
        if r.get("bound") is not None and not r["holds"]:
            print(f"budget {r['budget']} not honoured on this device: RSS rose {r['rss_above_baseline'] / 2**20:.0f} "
                  f"MiB, above budget + host_bytes + 10% = {r['bound'] / 2**20:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(
            [{k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()} for r in rows],
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
