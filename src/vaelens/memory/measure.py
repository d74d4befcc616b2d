"""Measure the real CUDA peak of encode/decode, the way shared/measurements/README.md did.

config + shape + dtype -> peak bytes: the real diffusers module with random weights (peak memory
does not depend on weight values), cast with .to("cuda", dtype), default attention processors,
torch.inference_mode(); one warm-up call, then torch.cuda.max_memory_allocated() during the second
call minus torch.cuda.memory_allocated() just before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import DType
from vaelens.trace import Op, call_op


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def measure_peak(
    config: Mapping[str, Any], shape: tuple[int, ...], dtype: DType, *, op: str | Op,
    tiled: bool = False, sliced: bool = False,
) -> int:
    """diffusers config + input shape (pixels for encode, latent for decode) -> measured peak bytes."""
    import torch

    from vaelens.build import build_module
    from vaelens.memory.estimate import _apply_modes

    if not cuda_available():
        raise VaeLensError(
            "measure=True needs a CUDA GPU, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}); run without measure=True for the prediction, which needs no GPU"
        )
    op = Op.parse(op)
    torch.manual_seed(0)
    module = build_module(dict(config), device="cpu", dtype=DType.FP32).to("cuda", dtype.torch).eval()
    _apply_modes(module, tiled, sliced)
    x = torch.randn(shape, device="cuda", dtype=dtype.torch)
    try:
        with torch.inference_mode():
            out = call_op(module, op, [x])  # warm-up: cuDNN plans, allocator segments
            del out
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = call_op(module, op, [x])
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            del out
    finally:
        del module, x
        torch.cuda.empty_cache()
    return int(peak)
