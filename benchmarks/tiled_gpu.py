"""The GPU check of issue 16: budgeted exact tiling on a real device, against untiled and diffusers' tiling.

For the SDXL architecture (the `sdxl` family's diffusers config, random weights: time and memory do not
depend on weight values) at 2048² and 4096² in bf16, and budgets 4 / 8 / 24 GiB, one process:

- untiled decode (where it fits): wall time, peak memory, the reference output;
- diffusers' own `enable_tiling()` (approximate): wall time, peak memory, PSNR vs untiled;
- vaelens (`vaelens.tiling.decode` with a plan per budget): `max_memory_allocated` and
  `max_memory_reserved` vs the budget and the plan's predicted peak, wall time vs untiled and vs diffusers,
  measured vs predicted seconds (plan.predicted_seconds; the untiled prediction from the time model,
  vaelens.tiling.cost.untiled_seconds, on the device profile), PSNR vs untiled, and the plan's
  transfer_bytes / host_bytes beside what the run counted (a version without those figures prints "-").

Memory figures are absolute (weights + input + working set, as a budget counts them), after
`torch.cuda.empty_cache()` and `reset_peak_memory_stats()`; outputs kept for PSNR live on the CPU. Every
configuration runs once after one small warm-up of each path; a run that would pass `--max-seconds` in
total is skipped and says so. Prints a table and writes one JSON line per run (`--jsonl`).

    python benchmarks/tiled_gpu.py [--jsonl tiled_gpu.jsonl] [--sizes 2048,4096] [--budgets 4GiB,8GiB,24GiB]
    python benchmarks/tiled_gpu.py --device cpu --quick      # a small KL model on the CPU (tests run this)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

import vaelens.memory.estimate  # noqa: F401  (import order: memory before trace)
from vaelens.build import build_module, quiet_diffusers
from vaelens.errors import VaeLensError
from vaelens.families import get_family
from vaelens.options import DType, parse_bytes
from vaelens.render.tables import human_bytes
from vaelens.tiling import decode, plan_tiling
from vaelens.tiling.cost import untiled_seconds
from vaelens.tiling.profiles import detect_profile, get_profile
from vaelens.trace import trace_module

# The quick model: AutoencoderKL with the SD block structure and few channels (runs in seconds on a CPU).
QUICK_KL = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 64, 64], "layers_per_block": 2, "norm_num_groups": 8,
    "latent_channels": 4, "sample_size": 128, "scaling_factor": 0.13025,
}


def psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB on the [-1, 1] range (peak-to-peak 2), in float64 on the CPU."""
    mse = float(((a.double().cpu() - ref.double().cpu()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


class Device:
    """Timing and peak-memory probes for one device (CUDA: allocator statistics; CPU: none)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self) -> tuple[int | None, int | None]:
        if not self.cuda:
            return None, None
        return torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device)

    def run(self, fn: Any) -> dict[str, Any]:
        """fn() once -> {'out' (on the CPU), 'seconds', 'allocated', 'reserved'}; an out-of-memory error
        -> {'error': 'out of memory'}."""
        self.reset()
        self.sync()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = fn()
            self.sync()
        except torch.cuda.OutOfMemoryError:
            self.reset()
            return {"error": "out of memory"}
        seconds = time.perf_counter() - t0
        allocated, reserved = self.peaks()
        out = out.cpu()
        self.reset()
        return {"out": out, "seconds": seconds, "allocated": allocated, "reserved": reserved}


def diffusers_decode(module: Any, z: torch.Tensor) -> torch.Tensor:
    """The class's own enable_tiling() with its default tile and overlap (what users reach for)."""
    with quiet_diffusers():
        module.enable_tiling()
    try:
        return module.decode(z).sample
    finally:
        module.disable_tiling()


def predicted_untiled(module: Any, z: torch.Tensor, dtype: DType, profile: Any) -> float:
    """Seconds the time model gives the untiled decode on `profile` (from a meta-device trace)."""
    meta = build_module(module.config, device="meta", dtype=dtype)
    trace = trace_module(meta, torch.empty(z.shape, device="meta", dtype=dtype.torch), op="decode")
    return untiled_seconds(trace, profile)


def counted_decode(module: Any, z: torch.Tensor, plan: Any, counts: list) -> torch.Tensor:
    """vaelens' decode under `plan`; `counts` gets the run's RunCounts (bytes it really moved) where this
    version of vaelens reports them (run_plan's `counts=`), else stays empty."""
    import inspect

    from vaelens.tiling.api import run_plan

    if "counts" not in inspect.signature(run_plan).parameters:
        return decode(module, z, plan=plan)
    return run_plan(module, plan, module.decode, z, counts=counts).sample


def plan_figure(plan: Any, name: str) -> Any:
    """A plan field that may not exist in this version of vaelens -> its value or None."""
    return getattr(plan, name, None)


def parse_budget(text: str, probe: Any) -> int:
    """'8GiB' -> bytes; 'x0.5' -> weights + input + that fraction of the untiled call's working set
    (`probe`: the untiled plan)."""
    if text.startswith("x"):
        fixed = probe.weights_bytes + probe.input_bytes
        return int(fixed + float(text[1:]) * (probe.untiled_peak_bytes - fixed))
    return parse_bytes(text)


def one_size(dev: Device, module: Any, dtype: DType, latent_hw: tuple[int, int], budgets: list[str],
             profile: Any, deadline: float, rows: list[dict[str, Any]]) -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, module.config.latent_channels, *latent_hw, generator=gen).to(dev.device, dtype.torch)
    size = f"{latent_hw[1] * 8}x{latent_hw[0] * 8}"
    probe = plan_tiling(module, tuple(z.shape), dtype, budget=1 << 50, op="decode")
    need = probe.untiled_peak_bytes
    base = {"size": size, "dtype": dtype.value, "device": str(dev.device), "profile": profile.name,
            "untiled_need_bytes": need}
    t_model = predicted_untiled(module, z, dtype, profile)

    def record(method: str, res: dict[str, Any], ref: torch.Tensor | None, **extra: Any) -> dict[str, Any]:
        row = {**base, "method": method, **extra,
               "seconds": res.get("seconds"), "max_allocated": res.get("allocated"),
               "max_reserved": res.get("reserved"), "error": res.get("error")}
        if ref is not None and "out" in res:
            row["psnr_db"] = psnr(res["out"], ref)
        rows.append(row)
        return row

    def late(what: str) -> bool:
        if time.perf_counter() > deadline:
            rows.append({**base, "method": what, "error": "skipped: --max-seconds reached"})
            return True
        return False

    ref = None
    if not late("untiled"):
        res = dev.run(lambda: module.decode(z).sample)
        ref = res.get("out")
        record("untiled", res, None, predicted_seconds=t_model)
    if not late("diffusers enable_tiling"):
        res = dev.run(lambda: diffusers_decode(module, z))
        record("diffusers enable_tiling", res, ref)
    for text in budgets:
        budget = parse_budget(text, probe)
        if late(f"vaelens {text}"):
            continue
        t0 = time.perf_counter()
        try:
            plan = plan_tiling(module, tuple(z.shape), dtype, budget=budget, op="decode")
        except VaeLensError as exc:  # a budget nothing fits: say so in the table, go on with the next
            needed = getattr(exc, "needed_bytes", None)
            rows.append({**base, "method": f"vaelens {text}", "budget_bytes": budget, "message": str(exc),
                         "error": f"refused (needs {human_bytes(needed)})" if needed else "refused"})
            continue
        plan_seconds = time.perf_counter() - t0
        counts: list = []
        res = dev.run(lambda plan=plan, counts=counts: counted_decode(module, z, plan, counts))
        measured = counts[0] if counts else None
        record(f"vaelens {text}", res, ref, budget_bytes=budget, plan_method=plan.method, tiles=plan.tiles,
               measured_transfer_bytes=getattr(measured, "transfer_bytes", None),
               measured_host_bytes=getattr(measured, "host_peak_bytes", None),
               run_warnings=list(getattr(measured, "warnings", ())),
               tile_shape=list(plan.tile_shape) if plan.tile_shape else None,
               predicted_peak_bytes=plan.predicted_peak_bytes,
               transfer_bytes=plan_figure(plan, "transfer_bytes"), host_bytes=plan_figure(plan, "host_bytes"),
               predicted_seconds=plan_figure(plan, "predicted_seconds"),
               plan_untiled_seconds=plan_figure(plan, "untiled_seconds"), model_untiled_seconds=t_model,
               plan_seconds=plan_seconds)


def _gib(v: Any) -> str:
    return "-" if v is None else human_bytes(v)


def _s(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _tiles(r: dict[str, Any]) -> str:
    if "tiles" not in r:
        return "-"
    return f"{r['tiles']} ({r['plan_method']})" if r.get("plan_method") != "exact" else str(r["tiles"])


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as one plain-text table (times in seconds)."""
    head = ("size", "method", "tiles", "budget", "pred peak", "max alloc", "max resv", "seconds",
            "÷ untiled", "÷ diffusers", "predicted s", "PSNR dB", "transfer plan / run", "host plan / run")
    lines = []
    untiled = {r["size"]: r.get("seconds") for r in rows if r["method"] == "untiled"}
    diff = {r["size"]: r.get("seconds") for r in rows if r["method"] == "diffusers enable_tiling"}
    for r in rows:
        sec = r.get("seconds")
        u, d = untiled.get(r["size"]), diff.get(r["size"])
        lines.append((
            r["size"], r["method"], _tiles(r), _gib(r.get("budget_bytes")),
            _gib(r.get("predicted_peak_bytes")), _gib(r.get("max_allocated")), _gib(r.get("max_reserved")),
            r["error"] if r.get("error") else _s(sec),
            f"{sec / u:.2f}" if sec and u else "-", f"{sec / d:.2f}" if sec and d else "-",
            _s(r.get("predicted_seconds")),
            "-" if r.get("psnr_db") is None else ("inf" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f}"),
            f"{_gib(r.get('transfer_bytes'))} / {_gib(r.get('measured_transfer_bytes'))}",
            f"{_gib(r.get('host_bytes'))} / {_gib(r.get('measured_host_bytes'))}",
        ))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*x) for x in lines)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true",
                    help="a small KL model at 256x320 and 192x256, fp32, budgets as fractions of the need")
    ap.add_argument("--sizes", default=None, help="pixel sides, comma-separated (square), e.g. 2048,4096")
    ap.add_argument("--budgets", default=None,
                    help="comma-separated: 8GiB, or x0.5: weights + input + half the untiled working set")
    ap.add_argument("--dtype", default=None, help="bf16 (default on CUDA) | fp16 | fp32")
    ap.add_argument("--device-profile", default=None, help="profile for predictions (default: detected)")
    ap.add_argument("--max-seconds", type=float, default=450.0, help="skip runs once this much time has passed")
    ap.add_argument("--jsonl", type=Path, default=None, help="write one JSON line per run here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("tiled_gpu: no CUDA device here; run with --device cpu --quick to check the script", file=sys.stderr)
        return 2
    dtype = DType.parse(args.dtype or ("fp32" if args.quick else "bf16"))
    profile = get_profile(args.device_profile) if args.device_profile else detect_profile(device)
    if args.quick:
        config, shapes = QUICK_KL, [(32, 40), (24, 32)]
        budgets = (args.budgets or "x0.35,x0.6,x2").split(",")
    else:
        config = get_family("sdxl").diffusers_config()
        sides = [int(s) for s in (args.sizes or "2048,4096").split(",")]
        shapes = [(s // 8, s // 8) for s in sides]
        budgets = (args.budgets or "4GiB,8GiB,24GiB").split(",")
    if args.sizes and args.quick:
        shapes = [(int(s) // 8, int(s) // 8) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    module = build_module(config, device=str(device), dtype=dtype)
    dev = Device(device)
    start = time.perf_counter()
    # Warm-up on a small latent: CUDA context, cuDNN/cuBLAS handles, the tiler's first plan.
    warm = torch.randn(1, module.config.latent_channels, 16, 16).to(device, dtype.torch)
    with torch.inference_mode():
        module.decode(warm)
    small = plan_tiling(module, tuple(warm.shape), dtype, budget=1 << 50, op="decode")
    try:
        dev.run(lambda: decode(module, warm, budget=parse_budget("x0.4", small)))
    except VaeLensError:
        pass  # no tiling fits this small warm-up budget: the first real run warms the tiler instead
    rows: list[dict[str, Any]] = []
    for hw in shapes:
        one_size(dev, module, dtype, hw, budgets, profile, start + args.max_seconds, rows)
    print(f"tiled_gpu: {config.get('_class_name')} {dtype.value} on {device} "
          f"({torch.cuda.get_device_name(device) if dev.cuda else 'CPU'}), profile {profile.name}, "
          f"{time.perf_counter() - start:.0f} s in all")
    print(render(rows))
    if args.jsonl:
        with args.jsonl.open("w") as fh:
            for r in rows:
                clean = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}
                fh.write(json.dumps(clean) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
