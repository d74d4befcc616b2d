"""Measure encode/decode on a CUDA GPU the way shared/measurements/README.md did (real GPU runs only).

config + shape + dtype -> Measured (allocated peak above base, reserved peak, base) and, with
`measure_min_cap`, the smallest allocator cap the call runs under. The real diffusers module with
random weights (memory does not depend on weight values), cast with .to("cuda", dtype), default
attention processors, torch.inference_mode(); one warm-up call, empty_cache() and
reset_peak_memory_stats(), then the measured call: max_memory_allocated() minus memory_allocated()
before it, and max_memory_reserved().

The cap search sets torch.cuda.set_per_process_memory_fraction(cap / total) — what the caching
allocator's `allowed_memory_maximum` check uses — and bisects on whether the call runs twice
without torch.OutOfMemoryError, with empty_cache() between tries. The CUDA context is outside that
cap. cuDNN keeps the engine it fell back to after an out-of-memory workspace for later calls in the
same process (Conv_v8.cpp benchmark_cache), so an earlier try can make a later one pass: the
answer is rechecked once at the end and the search resumed above it if it fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import DType
from vaelens.trace import Op, call_op


@dataclass(frozen=True, slots=True, kw_only=True)
class Measured:
    """One measured call: bytes as torch.cuda reports them."""

    peak_bytes: int  # max_memory_allocated() during the call minus memory_allocated() before it
    reserved_peak_bytes: int  # max_memory_reserved() over the call (after empty_cache())
    base_bytes: int  # memory_allocated() before the call
    min_device_bytes: int | None = None  # smallest cap the call ran under (measure_min_cap)

    def to_json(self) -> dict[str, int | None]:
        return {"peak_bytes": self.peak_bytes, "reserved_peak_bytes": self.reserved_peak_bytes,
                "base_bytes": self.base_bytes, "min_device_bytes": self.min_device_bytes}


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def require_cuda() -> None:
    """Raise VaeLensError (one line) when there is no CUDA GPU to measure on."""
    import torch

    if not cuda_available():
        raise VaeLensError(
            "measure=True needs a CUDA GPU, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}); run without measure=True for the prediction, which needs no GPU"
        )


def bisect_cap(runs: Callable[[int], bool], lo: int, hi: int, *, step: int = 2 << 20) -> int:
    """Smallest cap (a multiple of `step`) in (lo, hi] with runs(cap), given runs(hi) and not runs(lo)
    (both assumed, not called): a monotone bisection.

    >>> bisect_cap(lambda cap: cap >= 10_000_000, 0, 64 << 20)
    10485760
    """
    a, b = lo // step, -(-hi // step)
    while b - a > 1:
        mid = (a + b) // 2
        if runs(mid * step):
            b = mid
        else:
            a = mid
    return b * step


class _Session:
    """The real module and input on the GPU, and one call of it."""

    def __init__(self, config: Mapping[str, Any], shape: tuple[int, ...], dtype: DType, op: Op,
                 tiled: bool, sliced: bool) -> None:
        import torch

        from vaelens.build import build_module
        from vaelens.memory.estimate import _apply_modes

        torch.manual_seed(0)
        self.torch = torch
        self.op = op
        self.module = build_module(dict(config), device="cpu", dtype=DType.FP32).to("cuda", dtype.torch).eval()
        _apply_modes(self.module, tiled, sliced)
        self.x = torch.randn(shape, device="cuda", dtype=dtype.torch)

    def call(self) -> None:
        with self.torch.inference_mode():
            out = call_op(self.module, self.op, [self.x])
            del out
        self.torch.cuda.synchronize()

    def close(self) -> None:
        del self.module, self.x
        self.torch.cuda.set_per_process_memory_fraction(1.0)
        self.torch.cuda.empty_cache()


def measure_call(
    config: Mapping[str, Any], shape: tuple[int, ...], dtype: DType, *, op: str | Op,
    tiled: bool = False, sliced: bool = False, cap_search: bool = False,
) -> Measured:
    """diffusers config + input shape (pixels for encode, latent for decode) -> Measured on this GPU.

    With `cap_search`, also bisect the smallest set_per_process_memory_fraction cap (in bytes) at
    which the call runs twice without an out-of-memory error (min_device_bytes)."""
    require_cuda()
    import torch

    s = _Session(config, shape, DType.parse(dtype), Op.parse(op), tiled, sliced)
    try:
        s.call()  # warm-up: cuDNN plans, the cuBLAS workspace
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        s.call()
        peak = torch.cuda.max_memory_allocated() - base
        reserved = torch.cuda.max_memory_reserved()
        cap = None
        if cap_search:
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory

            def runs(cap_bytes: int) -> bool:
                torch.cuda.empty_cache()
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total))
                try:
                    s.call()
                    s.call()
                except torch.OutOfMemoryError:
                    return False
                finally:
                    torch.cuda.set_per_process_memory_fraction(1.0)
                    torch.cuda.empty_cache()
                return True

            cap = bisect_cap(runs, base, reserved + (2 << 20))
            if not runs(cap):  # a cuDNN fallback cached by an earlier try can make a cap look enough
                cap = bisect_cap(runs, cap, reserved + (2 << 20))
    finally:
        s.close()
    return Measured(peak_bytes=int(peak), reserved_peak_bytes=int(reserved), base_bytes=int(base),
                    min_device_bytes=cap)


def measure_peak(
    config: Mapping[str, Any], shape: tuple[int, ...], dtype: DType, *, op: str | Op,
    tiled: bool = False, sliced: bool = False,
) -> int:
    """diffusers config + input shape -> measured peak bytes above base (measure_call's peak_bytes)."""
    return measure_call(config, shape, dtype, op=op, tiled=tiled, sliced=sliced).peak_bytes
