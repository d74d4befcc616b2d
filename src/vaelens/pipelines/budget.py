"""Pipeline budgets: does the pipeline fit in N bytes per offload mode, and which one change would make it fit.

PipelineEstimate + budget -> PipelineBudgetReport. Changes are tried one at a time, each a new estimate
(same memory model): another offload mode, VAE tiling, a 2-byte dtype, a smaller size. (The VAE's own
budget search is vaelens.memory.budget.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vaelens.errors import VaeLensError
from vaelens.options import DType
from vaelens.pipelines.estimate import (
    EstimateCache,
    Offload,
    PipelineEstimate,
    PipelineRequest,
    estimate_request,
)
from vaelens.units import budget_bytes as as_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Fix:
    """One change and the peak it gives under `mode`. Exactly one change is set: another offload mode,
    VAE tiling on, another dtype, or a smaller size (height, width)."""

    mode: Offload
    peak_bytes: int
    fits: bool
    offload: Offload | None = None
    vae_tiling: bool = False
    dtype: DType | None = None
    size: tuple[int, int] | None = None  # (height, width)


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineBudgetReport:
    budget_bytes: int
    mode: Offload  # the mode asked for
    fits: tuple[tuple[Offload, bool, int], ...]  # (mode, fits, peak) for every mode
    fixes: tuple[Fix, ...]  # only when the asked mode does not fit
    # why no smaller size helps (the resident weights alone, or even the smallest is over), when none does
    warnings: tuple[str, ...] = ()


def _sizes_below(height: int, width: int, step: int = 64) -> list[tuple[int, int]]:
    """(H, W) -> smaller (H, W) of the same aspect: sides scaled by 7/8 … 1/8, snapped down to multiples of `step`."""
    out = []
    for k in range(7, 0, -1):
        h, w = max(step, height * k // 8 // step * step), max(step, width * k // 8 // step * step)
        if (h, w) not in out and (h, w) != (height, width):
            out.append((h, w))
    return out


def check_pipeline_budget(
    est: PipelineEstimate, budget_bytes: int | str, *, mode: Offload | str = Offload.NONE,
    cache: EstimateCache | None = None, estimate=estimate_request,
) -> PipelineBudgetReport:
    """estimate + budget -> which offload modes fit, and (if `mode` does not) the changes that would.

    Tries, keeping everything else as asked: each other offload mode; VAE tiling; bf16 (from fp32);
    the largest smaller size of the same aspect (multiples of 64) that fits under `mode`.
    """
    mode = Offload.parse(mode)
    budget_bytes = as_bytes(budget_bytes, param="budget_bytes")
    cache = cache if cache is not None else EstimateCache()
    fits = tuple((r.mode, r.peak_bytes <= budget_bytes, r.peak_bytes) for r in est.offload)
    if est.mode(mode).peak_bytes <= budget_bytes:
        return PipelineBudgetReport(budget_bytes=budget_bytes, mode=mode, fits=fits, fixes=())
    req = est.request
    fixes: list[Fix] = []
    for m, ok, peak in fits:
        if m is not mode:
            fixes.append(Fix(offload=m, mode=m, peak_bytes=peak, fits=ok))

    def trial(change: dict, new: PipelineRequest) -> PipelineEstimate | None:
        try:
            e = estimate(new, cache=cache)
        except VaeLensError:
            return None
        peak = e.mode(mode).peak_bytes
        fixes.append(Fix(**change, mode=mode, peak_bytes=peak, fits=peak <= budget_bytes))
        return e

    if not req.vae_tiling:
        trial({"vae_tiling": True}, replace(req, vae_tiling=True))
    if req.dtype is DType.FP32:
        trial({"dtype": DType.BF16}, replace(req, dtype=DType.BF16))
    sizes = _sizes_below(req.height, req.width)
    size_fix = _largest_size_that_fits(req, sizes, budget_bytes, mode=mode, cache=cache, estimate=estimate)
    if size_fix is not None:
        fixes.append(size_fix)
    note = _why_no_size_helps(est, sizes, budget_bytes, mode)
    return PipelineBudgetReport(budget_bytes=budget_bytes, mode=mode, fits=fits, fixes=tuple(fixes),
                                warnings=(note,) if note and size_fix is None else ())


def _largest_size_that_fits(
    req: PipelineRequest, sizes: list[tuple[int, int]], budget_bytes: int, *, mode: Offload,
    cache: EstimateCache, estimate,
) -> Fix | None:
    """Candidate (H, W) sizes (largest first) -> a Fix for the largest one whose peak under `mode` fits, or None.
    The peak grows with the size, so the candidates are bisected."""
    peaks: dict[int, int] = {}

    def peak_at(i: int) -> int:
        if i not in peaks:
            h, w = sizes[i]
            peaks[i] = estimate(replace(req, width=w, height=h), cache=cache).mode(mode).peak_bytes
        return peaks[i]

    if not sizes or peak_at(len(sizes) - 1) > budget_bytes:
        return None
    lo, hi = 0, len(sizes) - 1  # sizes[hi] fits; find the first (largest) that does
    while lo < hi:
        mid = (lo + hi) // 2
        if peak_at(mid) <= budget_bytes:
            hi = mid
        else:
            lo = mid + 1
    h, w = sizes[hi]
    return Fix(size=(h, w), mode=mode, peak_bytes=peak_at(hi), fits=True)


def _why_no_size_helps(est: PipelineEstimate, sizes: list[tuple[int, int]], budget_bytes: int, mode: Offload) -> str:
    """Why no smaller size fits: the resident weights alone, no smaller candidate, or even the smallest is over."""
    from vaelens.units import human_bytes

    req = est.request
    heaviest = max(est.mode(mode).stages, key=lambda s: s.weights_bytes)
    if heaviest.weights_bytes > budget_bytes:
        return f"the weights resident during '{heaviest.stage.label}' alone are {human_bytes(heaviest.weights_bytes)}"
    if not sizes:
        return f"{req.width}x{req.height} is already the smallest size in 64-pixel steps"
    return f"even {sizes[-1][1]}x{sizes[-1][0]} is over"
