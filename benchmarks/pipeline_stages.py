"""Predicted vs measured CUDA peak of pipeline stages: text encoder calls and one denoising step.

    python benchmarks/pipeline_stages.py [--pipeline flux1-dev] [--stage transformer] [--size 1024x1024]
                                         [--frames N] [--dtype bf16] [--quick] [--json]

On CUDA: each component is built with random weights on the GPU (fp32 init, cast to the dtype, the
library's fp32-kept modules restored), fed the inputs its pipeline passes (vaelens.pipelines.inputs),
and measured as docs/memory.md defines peak_bytes: torch.cuda.max_memory_allocated() during the second
call minus memory_allocated() just before it, under torch.inference_mode(). The prediction is the
meta trace replayed through the memory model (vaelens.pipelines.estimate.trace_peak) — the number
`vaelens pipeline` uses for that stage. Without CUDA only predictions are printed.

--quick (CI, no GPU needed): sd15 at 256x256, all stages.
Building on the GPU needs the fp32 size of the component free (FLUX transformer: 48 GB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings


def _build_cuda(spec, dtype):
    """ComponentSpec -> module with random weights on CUDA at `dtype` (fp32-kept modules as loaded)."""
    import torch

    from vaelens.pipelines.components import _construct, keep_fp32

    with torch.device("cuda"):
        module = _construct(spec)
    module = module.to(dtype=dtype.torch)
    keep_fp32(module, spec.library, dtype)
    return module.eval()


def _measure(module, plan, dtype) -> int:
    """CUDA peak above weights + inputs of one call (second call after a warm-up), output counted."""
    import torch

    from vaelens.pipelines.inputs import module_call

    call = module_call(module, plan)
    inputs = plan.make_tensors(dtype, device="cuda")
    with torch.inference_mode():
        out = call(*inputs)
        del out
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = call(*inputs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
    return peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="flux1-dev")
    ap.add_argument("--stage", action="append", help="component name (repeatable); default: all")
    ap.add_argument("--size", default=None, help="WxH (default: the pipeline's)")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch

    from vaelens.contract import plan_shapes
    from vaelens.families import get_family
    from vaelens.options import DType, PixelRequest, parse_size
    from vaelens.pipelines import Guidance, get_pipeline
    from vaelens.pipelines.components import build_component
    from vaelens.pipelines.estimate import trace_peak
    from vaelens.pipelines.inputs import denoiser_plan, text_encoder_plan

    if args.quick:
        args.pipeline, args.size = "sd15", "256x256"
    spec = get_pipeline(args.pipeline)
    dtype = DType.parse(args.dtype)
    width, height = parse_size(args.size) if args.size else spec.default_size[::-1]  # spec: (H, W)
    frames = args.frames or spec.default_frames
    req = PixelRequest(width=width, height=height, frames=frames, dtype=dtype)
    latent = tuple(plan_shapes(get_family(spec.vae_family), req).latent_shape)
    cuda = torch.cuda.is_available()
    rows = []
    for comp in spec.components:
        if args.stage and comp.name not in args.stage:
            continue
        if comp is spec.denoiser:
            batch = 2 if spec.guidance is Guidance.BATCH else 1
            plan = denoiser_plan(spec, latent, batch=batch)
        else:
            plan = text_encoder_plan(comp, batch=1)
        t0 = time.perf_counter()
        predicted = trace_peak(build_component(comp, dtype=dtype), plan, dtype).peak_bytes
        seconds = time.perf_counter() - t0
        measured = None
        if cuda:
            module = _build_cuda(comp, dtype)
            measured = _measure(module, plan, dtype)
            del module
            torch.cuda.empty_cache()
        rows.append({"pipeline": spec.name, "stage": comp.name, "size": [width, height], "frames": frames,
                     "dtype": dtype.value, "predicted": predicted, "measured": measured,
                     "rel_error": None if not measured else (predicted - measured) / measured,
                     "predict_seconds": seconds})
    if args.json:
        json.dump({"device": torch.cuda.get_device_name(0) if cuda else None, "rows": rows}, sys.stdout, indent=2)
        print()
        return 0
    mib = 1024**2
    print(f"{'stage':<16} {'predicted MiB':>14} {'measured MiB':>13} {'error':>8} {'predict s':>10}")
    for r in rows:
        meas = f"{r['measured'] / mib:13.1f}" if r["measured"] else f"{'-':>13}"
        err = f"{100 * r['rel_error']:+7.1f}%" if r["rel_error"] is not None else f"{'-':>8}"
        print(f"{r['stage']:<16} {r['predicted'] / mib:14.1f} {meas} {err} {r['predict_seconds']:10.2f}")
    if not cuda:
        print("no CUDA device: predictions only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
