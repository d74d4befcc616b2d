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
from vaelens.memory.context import MetaContext
from vaelens.memory.estimate import MemoryEstimate, estimate_memory, trace_request
from vaelens.memory.simulate import Program, compile_trace, extend_repeated, fits_under, min_device_bytes
from vaelens.options import MAX_BATCH, MAX_SIDE, PixelRequest
from vaelens.units import budget_bytes as as_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class OpBudget:
    """One op against the budget: fits now, largest batch and square side that fit, tiling's answer."""

    op: str
    min_device_bytes: int  # at the requested size: the smallest allocator cap the call runs under
    peak_total_high_bytes: int  # weights + input + peak_bytes_high: allocated bytes at the peak
    fits: bool
    max_batch: int  # 0: not even batch 1 fits
    max_square: int  # largest square side (multiple of `step`) at the requested batch; 0: none
    # min_device_bytes with enable_tiling(), computed only where the untiled call does not fit (or the
    # search is tiled); None otherwise and when the class has no tiling
    tiled_min_device_bytes: int | None
    tiled_fits: bool | None
    batch_extrapolated_from: int = 0  # >0: max_batch is a lower bound extrapolated beyond this traced batch
    square_extrapolated_from: int = 0  # >0: max_square is a lower bound extrapolated beyond this traced side


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
                    "min_device_bytes": o.min_device_bytes,
                    "peak_total_high_bytes": o.peak_total_high_bytes, "fits": o.fits, "max_batch": o.max_batch,
                    "max_square": o.max_square, "tiled_min_device_bytes": o.tiled_min_device_bytes,
                    "tiled_fits": o.tiled_fits, "max_batch_extrapolated_from": o.batch_extrapolated_from or None,
                    "max_square_extrapolated_from": o.square_extrapolated_from or None,
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


# A search candidate whose trace would have more operators than this (sliced batches, tiles and
# frames are traced one by one) is not traced: when the largest traced candidate fits, the answer
# is extrapolated in proportion from it (a lower bound: the real largest may be larger), and the
# report says so. Tracing costs
# about 0.2 s per 1000 operators on one core.
MAX_SEARCH_OPERATORS = 2_000


# A step of a Program built by extend_repeated costs ~6 us per capped replay against ~200 us per
# traced operator.
REPLAY_PER_TRACED = 30


class _Probe:
    """One op's candidates: a trace reduced to a Program per (batch, W, H, tiled), each traced once."""

    def __init__(self, ctx: MetaContext, op: str, sliced: bool) -> None:
        self.ctx, self.op, self.sliced = ctx, op, sliced
        self.programs: dict[tuple[int, int, int, bool], Program] = {}
        self.fit: dict[tuple[int, int, int, bool, int], bool | int] = {}

    def _trace(self, req: PixelRequest, tiled: bool) -> Any:
        return trace_request(self.ctx, req, op=self.op, tiled=tiled, sliced=self.sliced)

    def program(self, req: PixelRequest, tiled: bool) -> Program:
        key = (req.batch, req.width, req.height, tiled)
        if key not in self.programs:
            prog = None
            if self.repeats(req, tiled):  # slicing: trace two batches, replay the repeated slice
                prog = extend_repeated(self._trace(replace(req, batch=2), tiled),
                                       self._trace(replace(req, batch=3), tiled), req.batch)
            self.programs[key] = prog or compile_trace(self._trace(req, tiled))
        return self.programs[key]

    def repeats(self, req: PixelRequest, tiled: bool) -> bool:
        """Whether a batch is enable_slicing()'s loop of identical per-sample calls (built, not traced)."""
        return self.sliced and not tiled and req.batch >= 4

    def guide(self, req: PixelRequest, tiled: bool) -> int:
        """memory_allocated() at the call's peak (high end): one replay, for first guesses only."""
        from vaelens.memory.simulate import run

        out = run(self.program(req, tiled), mode="high")
        return out.base + out.peak

    def size(self, req: PixelRequest, tiled: bool) -> int:
        """The work a candidate costs, in traced operators (a replayed step costs ~1/30 of one)."""
        if self.repeats(req, tiled):
            return len(self.program(req, tiled).steps) // REPLAY_PER_TRACED
        return len(self.program(req, tiled).steps)

    def fits(self, req: PixelRequest, tiled: bool, budget: int) -> bool:
        key = (req.batch, req.width, req.height, tiled, budget)
        if key not in self.fit:
            self.fit[key] = fits_under(self.program(req, tiled), budget, mode="high")
        return self.fit[key]

    def need(self, req: PixelRequest, tiled: bool) -> int:
        """min_device_bytes of a candidate (a bisection of capped replays; cached)."""
        key = (req.batch, req.width, req.height, tiled, -1)
        if key not in self.fit:
            self.fit[key] = min_device_bytes(self.program(req, tiled), mode="high")
        return int(self.fit[key])


def _proportional(need_at_limit: int, limit_scale: int, budget: int) -> float:
    """Largest scale x with need_at_limit * x / limit_scale <= budget: the need assumed to grow in
    proportion to the scale (batch, or area) from the largest traced candidate. Conservative for a
    need that is a fixed part plus a proportional one, and for a maximum of such (sliced batches:
    max(working set + outputs so far, all outputs twice at the final torch.cat))."""
    return budget * limit_scale / max(1, need_at_limit)


def _search(fits: Callable[[int], bool], need: Callable[[int], int], size: Callable[[int], int],
            lo: int, hi: int, budget: int, guide: Callable[[int], float]) -> tuple[int, int]:
    """Largest n in [lo, hi] that fits, tracing only candidates whose trace stays under
    MAX_SEARCH_OPERATORS; beyond that, linear extrapolation of `need` (returns (n, traced limit))."""
    # the work grows linearly with n: measured between two candidates built the way large ones are
    m = min(hi, max(lo, 4))
    s1, s2 = size(m), size(m + 1) if m + 1 <= hi else size(m)
    per = max(0, s2 - s1)
    limit = hi if per == 0 else max(m, min(hi, m + (MAX_SEARCH_OPERATORS - s1) // per))
    if limit < hi and fits(limit):  # the answer lies beyond what is traced: extrapolate, conservatively
        return max(limit, min(hi, int(_proportional(need(limit), limit, budget)))), limit
    n1, n2 = lo, min(lo + 1, hi)
    a, b = guide(n1), guide(n2)
    guess = n1 + int((budget - a) // (b - a)) if b > a else None
    return largest_fitting(fits, lo, limit, guess=min(guess, limit) if guess is not None else None), 0


def check_vae_budget(
    model: Any, request: PixelRequest, budget_bytes: int | str, *, ops: tuple[str, ...] = ("encode", "decode"),
    step: int = 8, tiled: bool = False, sliced: bool = False,
    estimate: Callable[..., MemoryEstimate] = estimate_memory,
) -> VaeBudgetReport:
    """model + request + budget -> VaeBudgetReport (each op: fits, max batch, max square side, tiling).

    Every verdict asks whether the call runs under a cap of `budget_bytes` (the caching allocator
    simulated with its retry logic, operators at their high temporaries). With `tiled`, the search
    itself runs with enable_tiling(); otherwise tiling is the alternative reported beside it. `model`
    may be a MetaContext (vaelens.memory.context) shared with the caller's estimates: each candidate
    is traced once in it. A candidate whose trace would exceed MAX_SEARCH_OPERATORS is extrapolated
    and marked so. `estimate` replaces the memory model (tests): then every candidate is an estimate
    and its min_device_bytes is compared with the budget.
    """
    budget_bytes = as_bytes(budget_bytes, param="budget_bytes")  # '8GiB' or bytes; checked once, here
    results = []
    ctx = MetaContext.of(model, request.dtype) if estimate is estimate_memory else None
    for op in ops:
        if ctx is not None:
            fns = _probe_fns(ctx, op, tiled=tiled, sliced=sliced, budget_bytes=budget_bytes)
        else:
            fns = _estimate_fns(model, op, estimate, tiled=tiled, sliced=sliced, budget_bytes=budget_bytes)
        results.append(_check_op(op, request, budget_bytes, step, tiled, fns, scale_guide=estimate is estimate_memory))
    return VaeBudgetReport(budget_bytes=budget_bytes, step=step, ops=tuple(results), tiled=tiled)


_Fns = tuple[Callable[..., bool], Callable[..., int], Callable[..., int], Callable[..., float],
             Callable[..., MemoryEstimate]]


def _probe_fns(ctx: MetaContext, op: str, *, tiled: bool, sliced: bool, budget_bytes: int) -> _Fns:
    """One op's (fits, need, size, guide, full) from traced candidates (the memory model itself)."""
    probe = _Probe(ctx, op, sliced)

    def fits(req: PixelRequest) -> bool:
        return probe.fits(req, tiled, budget_bytes)

    def need(req: PixelRequest) -> int:
        return probe.need(req, tiled)

    def size(req: PixelRequest) -> int:
        return probe.size(req, tiled)

    def guide(req: PixelRequest) -> float:
        return probe.guide(req, tiled)

    def full(req: PixelRequest, with_tiling: bool) -> MemoryEstimate:
        return estimate_memory(ctx, req, op=op, tiled=with_tiling, sliced=sliced)

    return fits, need, size, guide, full


def _estimate_fns(model: Any, op: str, estimate: Callable[..., MemoryEstimate], *, tiled: bool, sliced: bool,
                  budget_bytes: int) -> _Fns:
    """One op's (fits, need, size, guide, full) from a replacement memory model (tests): estimates only."""
    memo: dict[tuple[int, int, int, bool], MemoryEstimate] = {}

    def full(req: PixelRequest, with_tiling: bool) -> MemoryEstimate:
        key = (req.batch, req.width, req.height, with_tiling)
        if key not in memo:
            memo[key] = estimate(model, req, op=op, tiled=with_tiling, sliced=sliced)
        return memo[key]

    def need(req: PixelRequest) -> int:
        return full(req, tiled).min_device_bytes

    def fits(req: PixelRequest) -> bool:
        return need(req) <= budget_bytes

    def size(req: PixelRequest) -> int:
        return 0

    def guide(req: PixelRequest) -> float:
        return need(req)

    return fits, need, size, guide, full


def _check_op(op: str, request: PixelRequest, budget_bytes: int, step: int, tiled: bool, fns: _Fns, *,
              scale_guide: bool) -> OpBudget:
    """One op's verdict: fits at the request, largest batch, largest square side, the tiled alternative."""
    fits, need, size, guide, full = fns
    here = full(request, tiled)
    needed = here.min_device_bytes
    # first guesses scale the cheap allocated-bytes figure to the device figure at the request
    ratio = needed / max(1, here.base_bytes + here.peak_bytes_high) if scale_guide else 1.0
    max_batch, batch_from = _search(
        lambda n: fits(replace(request, batch=n)), lambda n: need(replace(request, batch=n)),
        lambda n: size(replace(request, batch=n)), 1, MAX_BATCH, budget_bytes,
        lambda n: guide(replace(request, batch=n)) * ratio)

    def square(k: int) -> PixelRequest:
        return replace(request, width=k * step, height=k * step)

    k0 = max(1, min(request.width, request.height) // step)
    side_guess = None
    a, b = guide(square(k0)) * ratio, guide(square(2 * k0)) * ratio
    per_area = (b - a) / (3 * k0 * k0) if b > a else 0
    if per_area > 0 and budget_bytes > a - per_area * k0 * k0:
        side_guess = int(((budget_bytes - (a - per_area * k0 * k0)) / per_area) ** 0.5)
    max_k, square_from = _search_square(
        lambda k: fits(square(k)), lambda k: need(square(k)), lambda k: size(square(k)),
        MAX_SIDE // step, budget_bytes, side_guess, k0)
    tiled_need: int | None = None
    if tiled or needed > budget_bytes:  # the alternative is worth its (long, tile by tile) trace
        try:
            tiled_need = full(request, True).min_device_bytes
        except VaeLensError:
            tiled_need = None
    return OpBudget(
        op=op, min_device_bytes=needed, peak_total_high_bytes=here.total_bytes_high, fits=needed <= budget_bytes,
        max_batch=max_batch, max_square=step * max_k,
        tiled_min_device_bytes=tiled_need, tiled_fits=None if tiled_need is None else tiled_need <= budget_bytes,
        batch_extrapolated_from=batch_from, square_extrapolated_from=step * square_from,
    )


def _search_square(fits: Callable[[int], bool], need: Callable[[int], int], size: Callable[[int], int],
                   hi: int, budget: int, guess: int | None, k0: int) -> tuple[int, int]:
    """Largest side k (in size steps) that fits; candidates whose trace would be too long (tiles,
    frames) are extrapolated in area from the largest traced one (returns (k, traced limit))."""
    s1, s2 = size(k0), size(min(hi, 2 * k0))
    per_area = max(0.0, (s2 - s1) / max(1, 3 * k0 * k0))
    limit = hi
    if per_area > 0:
        limit = max(k0, min(hi, int((k0 * k0 + (MAX_SEARCH_OPERATORS - s1) / per_area) ** 0.5)))
    if limit < hi and fits(limit):
        return max(limit, min(hi, int(_proportional(need(limit), limit * limit, budget) ** 0.5))), limit
    return largest_fitting(fits, 1, limit, guess=min(guess, limit) if guess is not None else None), 0
