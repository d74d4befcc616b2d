"""Time to trace and predict SDXL decode at 4096² on one CPU core, the ratio to a real CPU decode, and
the time of a `--budget` search.

    python benchmarks/trace_speed.py [--quick] [--json] [--budget]

Full: trace + predict SDXL decode at 4096x4096 bf16 (target <= 1 s on one core), and a real CPU
decode of the same architecture at 512x512 fp32 with random weights. --quick (CI): 1024x1024 and a
real decode of a 64x64 image, so it runs in seconds. --budget: also time check_vae_budget (what
`vaelens memory sd15 --size 512x512 --budget 8GiB` and the same with `--batch 2 --sliced` run), the
searches the issue asks to answer in <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget", action="store_true", help="also time the --budget searches")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    from vaelens.build import build_module
    from vaelens.families import get_family
    from vaelens.memory.estimate import estimate_memory
    from vaelens.options import DType, PixelRequest

    spec = get_family("sdxl")
    side = 1024 if args.quick else 4096
    req = PixelRequest(width=side, height=side, dtype=DType.BF16)
    estimate_memory(spec, PixelRequest(width=64, height=64), op="decode")  # imports and first-call costs
    times = []
    est = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        est = estimate_memory(spec, req, op="decode")
        times.append(time.perf_counter() - t0)
    predict_s = min(times)

    real_side = 64 if args.quick else 512
    torch.manual_seed(0)
    module = build_module(spec, device="cpu", dtype=DType.FP32)
    z = torch.randn(1, spec.latent_channels, real_side // 8, real_side // 8)
    with torch.inference_mode():
        t0 = time.perf_counter()
        module.decode(z)
        real_s = time.perf_counter() - t0
    result = {
        "trace_predict_size": side, "trace_predict_seconds": predict_s, "peak_bytes": est.peak_bytes,
        "real_cpu_decode_size": real_side, "real_cpu_decode_seconds": real_s, "ratio": predict_s / real_s,
        "threads": torch.get_num_threads(),
    }
    if args.budget:
        from vaelens.memory.budget import check_vae_budget
        from vaelens.options import parse_bytes

        sd15 = get_family("sd15")
        for label, req, sliced in (("budget_seconds", PixelRequest(width=512, height=512), False),
                                   ("budget_sliced_seconds", PixelRequest(width=512, height=512, batch=2), True)):
            t0 = time.perf_counter()
            check_vae_budget(sd15, req, parse_bytes("8GiB"), step=8, sliced=sliced)
            result[label] = time.perf_counter() - t0
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(f"trace + predict SDXL decode {side}x{side} bf16: {predict_s:.3f} s (best of {args.repeat}, "
              f"1 thread), peak {est.peak_bytes / 2**30:.2f} GiB at {est.peak_at}")
        print(f"real CPU decode {real_side}x{real_side} fp32: {real_s:.3f} s -> ratio {predict_s / real_s:.3f}")
        if args.budget:
            print(f"sd15 512x512 --budget 8GiB: {result['budget_seconds']:.1f} s; with --batch 2 --sliced: "
                  f"{result['budget_sliced_seconds']:.1f} s (1 thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
