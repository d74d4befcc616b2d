"""Does `--budget` bound RAM on a CPU? Peak RSS and time of an untiled decode vs two budgets (issue 16, item 7).

A reduced SD-structured model (diffusers AutoencoderKL with the SD block structure, a quarter of the
channels, random weights) decodes one latent untiled and under two budgets, each run in a fresh
subprocess so no run inherits another's heap. In each child: build the model, make the latent, warm up
on a small latent, plan, then reset the peak-RSS counter (`echo 5 > /proc/self/clear_refs`) and read
VmHWM as the baseline; decode; read VmHWM. "RSS above baseline" = VmHWM - baseline: what the decode
itself added (its output included), with the model and the input already loaded.

The check (issue 16, item 7): RSS above baseline <= budget + host_bytes + 10% (a run whose spilled maps
went to disk: budget + 10%). The budget counts weights and input too, so the bound is loose by their
size; a run that breaks it is reported as such. Where the kernel does not let the counter be reset, the
baseline is VmHWM before the decode and the table says so.

    python benchmarks/tiled_cpu.py [--size 1024x768] [--budgets x0.5,x0.25,x0.25:disk] [--json PATH]

Budgets: bytes (`64MiB`) or `xF`: weights + input + F x the untiled call's working set. A `:disk` suffix
runs that budget as on a machine whose available RAM is only the budget (vaelens.tiling.ram.
available_ram_bytes patched to return it), so its spilled maps go to memory-mapped files in a temporary
folder beside the outputs.
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


def budget_bytes(text: str, plan: Any) -> int:
    """'64MiB' -> bytes; 'x0.5' -> weights + input + 0.5 x the untiled working set (`plan`: the untiled plan)."""
    from vaelens.options import parse_bytes

    text = text.removesuffix(":disk")
    if text.startswith("x"):
        fixed = plan.weights_bytes + plan.input_bytes
        return int(fixed + float(text[1:]) * (plan.untiled_peak_bytes - fixed))
    return parse_bytes(text)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process -> its figures (printed as one JSON line by the caller)."""
    import torch

    from vaelens.build import build_module
    from vaelens.tiling import decode, plan_tiling, ram

    torch.manual_seed(0)
    h, w = args.hw
    module = build_module(REDUCED_SD, device="cpu", dtype="fp32")
    z = torch.randn(1, 4, h // 8, w // 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        module.decode(torch.randn(1, 4, 16, 16))  # warm-up: thread pool, oneDNN, allocator arenas
    plan = None
    if args.budget != "untiled":
        plan = plan_tiling(module, tuple(z.shape), "fp32", budget=args.budget_bytes, op="decode")
    spill = getattr(args, "spill_dir", None)
    if spill:  # this machine as if its available RAM were only the budget: the spilled maps go to disk
        ram.available_ram_bytes = lambda: args.budget_bytes
    files: list[str] = []
    reset = ram.reset_peak_rss()
    baseline = ram.peak_rss_bytes()  # after a reset: the RSS now (VmRSS may lag it by per-thread counter caches)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if plan is None:
            out = module.decode(z).sample
        else:
            out = decode(module, z, plan=plan) if not spill else _decode_spilled(module, z, plan, spill, files)
    seconds = time.perf_counter() - t0
    hwm = ram.peak_rss_bytes()
    torch.save(out, args.out)
    row: dict[str, Any] = {"budget": args.budget, "seconds": seconds, "baseline_rss": baseline, "peak_rss": hwm,
                           "rss_above_baseline": hwm - baseline, "peak_reset": reset,
                           "threads": torch.get_num_threads()}
    if spill:
        row.update(spill_files=len(files), spill_left=len(list(Path(spill).iterdir())))
    if plan is not None:
        row.update(budget_bytes=args.budget_bytes, method=plan.method, tiles=plan.tiles,
                   tile_shape=list(plan.tile_shape) if plan.tile_shape else None,
                   predicted_peak_bytes=plan.predicted_peak_bytes, host_bytes=plan.host_bytes,
                   transfer_bytes=getattr(plan, "transfer_bytes", None),
                   predicted_seconds=getattr(plan, "predicted_seconds", None))
    return row


def _decode_spilled(module: Any, z: Any, plan: Any, spill: str, files: list[str]) -> Any:
    """decode(module, z, plan=plan) with spill_dir=`spill`, noting each spill file the run creates."""
    import tempfile

    from vaelens.tiling import api, residency

    real = tempfile.NamedTemporaryFile

    def spy(*a: Any, **k: Any) -> Any:
        f = real(*a, **k)
        files.append(f.name)
        return f

    residency.tempfile.NamedTemporaryFile = spy  # type: ignore[attr-defined]
    try:
        return api.run_plan(module, plan, module.decode, z, spill_dir=spill).sample
    finally:
        residency.tempfile.NamedTemporaryFile = real  # type: ignore[attr-defined]


def finish(row: dict[str, Any], nbytes: int, out: Any, ref: Any) -> dict[str, Any]:
    """A child's row + its budget (0: untiled) + its output and the untiled one -> the row with the bound
    budget + host_bytes + 10%, whether the RSS rise stays inside it, and the PSNR vs untiled."""
    if nbytes:
        row["bound"] = int((nbytes + (0 if row.get("spill_files") else row["host_bytes"])) * 1.1)
        row["ratio"] = row["rss_above_baseline"] / (nbytes + row["host_bytes"])
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

    head = ("run", "tiles", "seconds", "÷ untiled", "predicted peak", "RSS above baseline", "budget",
            "host_bytes", "RSS ÷ (budget + host)", "bound (+10%)", "holds", "PSNR dB")
    base = rows[0]["seconds"]
    lines = []
    for r in rows:
        bound = r.get("bound")
        lines.append((
            r["budget"], "-" if "tiles" not in r else f"{r['tiles']} ({r['method']})", f"{r['seconds']:.2f}",
            f"{r['seconds'] / base:.2f}", mib(r.get("predicted_peak_bytes")), mib(r["rss_above_baseline"]),
            mib(r.get("budget_bytes")), mib(r.get("host_bytes")) + (" (disk)" if r.get("spill_files") else ""),
            "-" if r.get("ratio") is None else f"{r['ratio']:.2f}", mib(bound),
            "-" if bound is None else ("yes" if r["holds"] else "NO"),
            "-" if r.get("psnr_db") is None else ("inf" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f}"),
        ))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*x) for x in lines)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1024x768", help="pixels WxH (default 1024x768)")
    ap.add_argument("--budgets", default="x0.5,x0.25,x0.25:disk",
                    help="two or more budgets: 64MiB or xF, :disk to spill to files (see above)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here as JSON")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--budget", default="untiled", help=argparse.SUPPRESS)
    ap.add_argument("--budget-bytes", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--spill-dir", default="", help=argparse.SUPPRESS)
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
            if name.endswith(":disk"):
                spill = Path(tmp) / f"spill{i}"
                spill.mkdir()
                cmd += ["--spill-dir", str(spill)]
            r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(finish(row, nbytes, torch.load(out), torch.load(Path(tmp) / "out0.pt")))
    print(f"tiled_cpu: reduced SD AutoencoderKL (channels {REDUCED_SD['block_out_channels']}), decode to "
          f"{w}x{h} fp32, {os.cpu_count()} CPUs, untiled need {probe.untiled_peak_bytes / 2**20:.0f} MiB "
          f"(weights {probe.weights_bytes / 2**20:.1f} MiB), {rows[0]['threads']} threads in every run")
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
