"""VAE budgets: does encode/decode fit in N bytes of device memory, the largest batch and square size.

model + PixelRequest + budget -> VaeBudgetReport. "Fits" means the call runs under a cap of
`budget` bytes of allocator segments: min_device_bytes <= budget (vaelens.memory.simulate: weights
and input resident, the caching allocator releasing its cache and retrying under the cap, every
operator at its `high` temporaries). The CUDA context is not in the budget (CUDA_CONTEXT_BYTES).
The pipeline-level budget is vaelens.pipelines.budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.memory.estimate import MemoryEstimate, TraceCache, estimate_memory
from vaelens.options import MAX_BATCH, MAX_SIDE, PixelRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class OpBudget:
    """One op against the budget: fits now, largest batch and square side that fit, tiling's answer."""

    op: str
    needed_bytes: int  # min_device_bytes at the requested size (the allocator cap the call runs under)
    peak_total_high_bytes: int  # weights + input + peak_bytes_high: allocated bytes at the peak
    fits: bool
    max_batch: int  # 0: not even batch 1 fits
    max_square: int  # largest square side (multiple of `step`) at the requested batch; 0: none
    tiled_needed_bytes: int | None  # min_device_bytes with enable_tiling(); None when the class has no tiling
    tiled_fits: bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class VaeBudgetReport:
    budget_bytes: int
    step: int  # size granularity searched (the family's size multiple)
    ops: tuple[OpBudget, ...]
    tiled: bool = False  # the search ran with enable_tiling()

    def to_json(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "size_step": self.step,
            "tiled": self.tiled,
            **{
                o.op: {
                    "needed_bytes": o.needed_bytes, "min_device_bytes": o.needed_bytes,
                    "peak_total_high_bytes": o.peak_total_high_bytes, "fits": o.fits, "max_batch": o.max_batch,
                    "max_square": o.max_square, "tiled_needed_bytes": o.tiled_needed_bytes,
                    "tiled_fits": o.tiled_fits,
                }
                for o in self.ops
            },
        }


def largest_fitting(fits: Callable[[int], bool], lo: int, hi: int, guess: int | None = None) -> int:
    """Largest n in [lo, hi] with fits(n), for a monotone fits (True up to a point); lo-1 if none.

    `guess` (e.g. from a linear model of memory) is checked first: when fits(guess) and not
    fits(guess+1) the answer costs two calls; otherwise the search gallops on from it. The answer
    is exact either way.

    >>> largest_fitting(lambda n: n * n <= 50, 1, 100)
    7
    >>> largest_fitting(lambda n: n * n <= 50, 1, 100, guess=6)
    7
    """
    if guess is not None:
        g = min(max(guess, lo), hi)
        if fits(g):
            if g == hi or not fits(g + 1):
                return g
            lo = g + 1
        else:
            hi = g - 1
            if hi < lo:
                return lo - 1
            return _search_down(fits, lo, hi)
    if not fits(lo):
        return lo - 1
    step = 1
    good = lo
    while good + step <= hi and fits(good + step):  # gallop: few calls when the answer is near lo
        good += step
        step *= 2
    return _bisect(fits, good, min(hi + 1, good + step))


def _search_down(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest fitting n <= hi, galloping down from hi (fits(hi + 1) is known False)."""
    step = 1
    bad = hi + 1
    while bad - step >= lo and not fits(bad - step):
        bad -= step
        step *= 2
    good = bad - step
    if good < lo:
        if not fits(lo):
            return lo - 1
        good = lo
    return _bisect(fits, good, bad)


def _bisect(fits: Callable[[int], bool], good: int, bad: int) -> int:
    """fits(good) True, fits(bad) False (or bad = hi + 1) -> the boundary."""
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def check_vae_budget(
    model: Any, request: PixelRequest, budget_bytes: int, *, ops: tuple[str, ...] = ("encode", "decode"),
    step: int = 8, tiled: bool = False, sliced: bool = False,
    estimate: Callable[..., MemoryEstimate] = estimate_memory,
) -> VaeBudgetReport:
    """model + request + budget -> VaeBudgetReport (each op: fits, max batch, max square side, tiling).

    Every verdict compares min_device_bytes with the budget. With `tiled`, the search itself runs
    with enable_tiling(); otherwise tiling is the alternative reported beside it. Traces and
    estimates are reused within the call (one TraceCache), so a size tried twice is traced once.
    """
    cache = TraceCache()
    results = []
    base_tiled = tiled
    for op in ops:
        memo: dict[tuple[int, int, int, bool], MemoryEstimate] = {}

        def est_of(req: PixelRequest, *, tiled: bool = base_tiled, op: str = op, memo: dict = memo) -> MemoryEstimate:
            key = (req.batch, req.width, req.height, tiled)
            if key not in memo:
                kwargs = {"cache": cache} if estimate is estimate_memory else {}
                memo[key] = estimate(model, req, op=op, tiled=tiled, sliced=sliced, **kwargs)
            return memo[key]

        def need(req: PixelRequest, *, tiled: bool = base_tiled) -> int:
            return est_of(req, tiled=tiled).min_device_bytes

        here = est_of(request)
        needed = here.min_device_bytes
        # First guesses from two points: memory is close to linear in batch and in pixel count.
        one, two = need(replace(request, batch=1)), need(replace(request, batch=2))
        batch_guess = 1 + (budget_bytes - one) // (two - one) if two > one else None
        k0 = max(1, min(request.width, request.height) // step)
        a, b = need(replace(request, width=k0 * step, height=k0 * step)), \
            need(replace(request, width=2 * k0 * step, height=2 * k0 * step))
        per_area = (b - a) / (3 * k0 * k0) if b > a else 0
        side_guess = int(((budget_bytes - (a - per_area * k0 * k0)) / per_area) ** 0.5) \
            if per_area > 0 and budget_bytes > a - per_area * k0 * k0 else None
        max_batch = largest_fitting(lambda n: need(replace(request, batch=n)) <= budget_bytes, 1, MAX_BATCH,
                                    guess=batch_guess)
        max_side = step * largest_fitting(
            lambda k: need(replace(request, width=k * step, height=k * step)) <= budget_bytes, 1, MAX_SIDE // step,
            guess=side_guess)
        try:
            tiled_need: int | None = need(request, tiled=True)
        except VaeLensError:
            tiled_need = None
        results.append(OpBudget(
            op=op, needed_bytes=needed, peak_total_high_bytes=here.total_bytes_high, fits=needed <= budget_bytes,
            max_batch=max_batch, max_square=max_side,
            tiled_needed_bytes=tiled_need, tiled_fits=None if tiled_need is None else tiled_need <= budget_bytes,
        ))
    return VaeBudgetReport(budget_bytes=budget_bytes, step=step, ops=tuple(results), tiled=tiled)
