"""Plan a budgeted encode/decode on the meta device: which tiles fit, and what they cost.

model + input shape + dtype + budget -> TilingPlan. No weights: the module is the meta module of a
MetaContext (vaelens.memory.context, built once per model and dtype and shared with the estimates), the
tiled executor (vaelens.tiling.execute) runs once per candidate tile size recording each operation's
largest tile, and the memory model (vaelens.memory) prices every distinct device step. "Fits" means,
as for vaelens' other budgets, weights + input + the call's peak <= budget (CUDA context not counted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vaelens.errors import BudgetError, VaeLensError
from vaelens.memory.context import MetaContext, diffusers_modes
from vaelens.options import Choice, DType, parse_bytes
from vaelens.trace.records import Op

# Classes tested tiled == untiled (tests/test_tiling.py). The executor is generic (any operation it
# does not know runs whole, exactly), so the list is the classes whose equality has been checked.
EXACT_CLASSES = frozenset({
    "AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderTiny", "AutoencoderKLWan", "AutoencoderKLQwenImage",
    "AutoencoderDC", "AutoencoderKLCogVideoX", "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo",
    "AutoencoderKLMochi",
})



class TilingMethod(Choice):
    """How a budgeted call runs: whole, in vaelens' exact tiles, or in the class's own (approximate) tiling."""

    UNTILED = "untiled"
    EXACT = "exact"
    APPROXIMATE = "approximate"

    # printed and formatted as its value, as enum.StrEnum does (tables and JSON show the word)
    __str__ = str.__str__
    __format__ = str.__format__


UNTILED, EXACT, APPROXIMATE = TilingMethod.UNTILED, TilingMethod.EXACT, TilingMethod.APPROXIMATE


@dataclass(frozen=True, slots=True, kw_only=True)
class TilingPlan:
    """How an encode/decode runs inside `budget_bytes`: untiled, exact tiles, or the class's own
    (approximate) tiling. Sizes in bytes; `tile_shape` is (H, W) at full resolution (the decoded
    pixels, or the pixels encoded)."""

    op: str
    module_class: str
    dtype: DType
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    budget_bytes: int
    method: TilingMethod
    tile_shape: tuple[int, int] | None
    tiles: int
    halo: int  # pixels each convolution reads beyond its tile, at its own resolution
    fraction: tuple[float, float]  # tile side ÷ full side (rows, columns): each op's tiles scale with it
    predicted_peak_bytes: int  # weights + input + the largest device step (or the untiled peak)
    untiled_peak_bytes: int  # weights + input + peak of the untiled call
    weights_bytes: int
    input_bytes: int
    host_bytes: int  # peak of spilled-and-live host bytes (0 when everything stays on the device)
    transfer_bytes: int  # every byte the run copies host <-> device, both ways, counted per call (exact)
    extra_compute: float  # extra arithmetic vs untiled, as a fraction (GroupNorm statistics passes)
    peak_step: str  # the operation whose tile sets the peak
    device_profile: str = "h100"  # the profile the times are predicted on (vaelens.tiling.profiles)
    predicted_seconds: float | None = None  # this plan on that profile
    untiled_seconds: float | None = None  # the untiled call on that profile; None when it does not fit the device
    approximate_reason: str | None = None
    # the schedule's decision before each device visit (vaelens.tiling.schedule); the run replays it
    decisions: tuple = ()
    inplace_events: frozenset[int] = frozenset()  # device visits whose pointwise output overwrites its input
    # GroupNorm calls (in call order) whose input map is recomputed by its readers instead of stored
    recompute: frozenset[int] = frozenset()
    whole_ops: frozenset[tuple] = frozenset()  # kept for callers that read it; the schedule decides residency

    @property
    def tiled(self) -> bool:
        return self.method is not TilingMethod.UNTILED

    @property
    def exact(self) -> bool:
        return self.method is not TilingMethod.APPROXIMATE

    def to_json(self) -> dict[str, Any] | None:
        """The `tiling` block of --json output; None when the call runs untiled."""
        if not self.tiled:
            return None
        return {
            "tiles": self.tiles,
            "tile_shape": list(self.tile_shape) if self.tile_shape else None,
            "halo": self.halo,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "budget_bytes": self.budget_bytes,
            "host_bytes": self.host_bytes,
            "exact": self.exact,
            "method": self.method.value,
            "approximate_reason": self.approximate_reason,
            "untiled_peak_bytes": self.untiled_peak_bytes,
            "transfer_bytes": self.transfer_bytes,
            "extra_compute": round(self.extra_compute, 6),
            "peak_step": self.peak_step,
            "device_profile": self.device_profile,
            "predicted_seconds": self.predicted_seconds,
            "untiled_seconds": self.untiled_seconds,
        }


def _high(est: Any) -> int:
    """The figure a budget must use: the top of the memory model's range."""
    return int(est.peak_bytes_high)


def _device_need(est: Any, weights: int, inputs: int) -> int:
    """weights + input + peak (high end); the memory model's simulated OOM threshold when it ran one
    (min_device_bytes is 0 when the estimate skipped the cap search)."""
    return max(weights + inputs + _high(est), int(est.min_device_bytes))


class _Step:
    """A device step as a module, so the tracer and the allocator model can price it. One class for all
    steps: a class made per call would sit in a reference cycle and keep the step's tensors alive until
    the garbage collector runs, and the residency events need deaths where the run has them."""

    @staticmethod
    def module(fn: Any):
        import torch

        global _StepModule
        if _StepModule is None:
            class StepModule(torch.nn.Module):
                def forward(self, *xs: Any) -> Any:
                    return self.fn(*xs)

            _StepModule = StepModule
        m = _StepModule()
        m.fn = fn
        return m


_StepModule: Any = None


class _Pricer:
    """Device bytes of recorded steps, cached by step key within one planning call:
    -> (bytes of the step's inputs, peak of the rest)."""

    def __init__(self) -> None:
        self.cache: dict[tuple, tuple[int, int]] = {}

    def price(self, step: Any) -> tuple[int, int]:
        if step.key not in self.cache:
            from vaelens.memory.allocator import round_block
            from vaelens.memory.estimate import simulate
            from vaelens.memory.rules import RULES
            from vaelens.trace import trace_module

            module = _Step.module(step.fn)
            tr = trace_module(module, step.inputs, detail=RULES.keys())
            module.fn = None
            inputs = sum(round_block(t.numel() * t.element_size()) for t in step.inputs)
            self.cache[step.key] = (inputs, _high(simulate(tr)))
        return self.cache[step.key]

    def working(self, step: Any) -> int:
        """A tiled step holds its tile copies and its internals; a whole step reads resident buffers."""
        inputs, peak = self.price(step)
        return peak if step.whole else inputs + peak


@dataclass(frozen=True, slots=True)
class _Eval:
    need: int  # the smallest budget this tile size runs in (weights + largest step + what it needs whole)
    peak: int  # predicted device peak under the budget
    peak_step: str
    halo: int
    extra: float
    schedule: Any  # vaelens.tiling.schedule.Schedule
    seconds: float
    events: int
    tiled: bool = True  # some operation runs in more than one tile
    inplace: frozenset[int] = frozenset()
    recompute: frozenset[int] = frozenset()

    host_limit: int | None = None  # the caller's host_budget

    @property
    def fits(self) -> bool:
        return self.schedule.feasible and (self.host_limit is None or self.schedule.host_bytes <= self.host_limit)


def record_events(meta: Any, op: str, shape: tuple[int, ...], dt: DType, fraction: tuple[float, float],
                  pricer: _Pricer, recompute: frozenset[int] = frozenset()) -> tuple[Any, Any, frozenset[int]]:
    """A tiled run of `op` on the meta module at `fraction`, recorded -> (Recorder with each device step priced,
    Residency with the run's events and buffers, the events whose output overwrites their input)."""
    import torch

    from vaelens.tiling.execute import Recorder, run_tiled, weight_ids
    from vaelens.tiling.residency import Residency

    def record(inplace: frozenset[int]) -> tuple[Recorder, Residency]:
        rec = Recorder(price=pricer.working)
        res = Residency(device=torch.device("meta"), weights=weight_ids(meta), decisions=None)
        res.inplace = inplace
        x = torch.empty(shape, device="meta", dtype=dt.torch)  # made outside the mode, as a caller's input is
        with torch.inference_mode():
            run_tiled(meta, lambda x=x: getattr(meta, op)(x), fraction=fraction, recorder=rec, residency=res,
                      inputs=[x], recompute=recompute)
        res.close()
        return rec, res

    rec, res = record(frozenset())
    last: dict[int, int] = {}
    for j, ev in enumerate(res.events):
        for b in (*ev.uses, *(() if ev.out is None else (ev.out,))):
            last[b] = j
    # An operation that is the last reader of an input of its shape and dtype, reading it only at its own
    # tile, writes over it (GroupNorm apply, SiLU, residual adds): no second full-size map. Recorded again.
    inplace = frozenset(j for j, ev in enumerate(res.events) if ev.reuse is not None and last.get(ev.reuse) == j)
    if inplace:
        rec, res = record(inplace)
    return rec, res, inplace


def _evaluate(meta: Any, op: str, shape: tuple[int, ...], dt: DType, fraction: tuple[float, float],
              pricer: _Pricer, weights: int, budget: int, profile: Any, host_budget: int | None = None) -> _Eval:
    """One candidate tile: record the run's events on meta, price each step, schedule residency under
    `budget` (vaelens.tiling.schedule) and predict its time on `profile`. Where the schedule sends maps
    that feed a GroupNorm off the device, the same run with those maps recomputed by their readers (not
    stored) is planned too; the faster of the two that fit (`host_budget`: host bytes at most) is kept."""
    plain, events = _schedule_run(meta, op, shape, dt, fraction, pricer, weights, budget, profile, frozenset(),
                                  host_budget)
    if plain.schedule.transfer_bytes == 0:
        return plain
    spilled = {b for d in plain.schedule.decisions for b in d.spill}
    off = frozenset(ev.norm for ev, d in zip(events, plain.schedule.decisions, strict=True)
                    if ev.norm is not None and (d.out_host or ev.out in spilled))
    if not off:
        return plain
    alt, _ = _schedule_run(meta, op, shape, dt, fraction, pricer, weights, budget, profile, off, host_budget)
    if not plain.fits and not alt.fits:  # a refusal names the least budget either way needs
        return alt if alt.need < plain.need else plain
    rank = (lambda e: (not e.fits, round(e.seconds, 4), e.schedule.transfer_bytes))  # noqa: E731
    return alt if rank(alt) < rank(plain) else plain


def _schedule_run(meta: Any, op: str, shape: tuple[int, ...], dt: DType, fraction: tuple[float, float],
                  pricer: _Pricer, weights: int, budget: int, profile: Any,
                  recompute: frozenset[int], host_budget: int | None = None) -> tuple[_Eval, list]:
    """-> (the run recorded with `recompute`, scheduled under every policy, the fastest kept; its events)."""
    from vaelens.tiling.cost import StepCost, predict_seconds
    from vaelens.tiling.schedule import POLICIES, schedule

    rec, res, inplace = record_events(meta, op, shape, dt, fraction, pricer, recompute)
    working, largest, kind, tiled = [], 0, "", False
    for ev in res.events:
        step = rec.steps[ev.step] if ev.step is not None else None
        ws = step.working if step is not None else 0
        working.append(ws)
        if step is not None:
            tiled = tiled or step.tiles > 1
            if ws > largest:
                largest, kind = ws, step.kind
    sizes, deaths = [b.nbytes for b in res.bufs], [b.death for b in res.bufs]
    pinned = profile.kind == "cuda"  # the run's host copies are page-locked on CUDA (vaelens.tiling.copies)
    best: tuple[float, Any] | None = None
    need = None
    for policy in POLICIES:  # Belady leaves ties open: keep the schedule with the least predicted time
        sched = schedule(res.events, sizes, deaths, working, weights, budget, policy)
        need = sched.need if need is None else min(need, sched.need)
        steps = [StepCost(flops=ev.flops, conv_flops=ev.conv_flops, device_bytes=ev.device_bytes, h2d_bytes=h,
                          d2h_bytes=d, pinned=pinned)
                 for ev, h, d in zip(res.events, sched.h2d, sched.d2h, strict=True)]
        seconds = predict_seconds(steps, profile, dt)
        key = (not _fits(sched, host_budget), seconds, sched.transfer_bytes)
        if best is None or key < (not _fits(best[1], host_budget), best[0], best[1].transfer_bytes):
            best = (seconds, sched)
    assert best is not None and need is not None
    seconds, sched = best
    extra = 3 * rec.extra_elements / max(1, 2 * rec.conv_macs)
    return _Eval(need=need, peak=sched.device_peak, peak_step=kind, halo=rec.halo, extra=extra,
                 schedule=sched, seconds=seconds, events=len(res.events), tiled=tiled, inplace=inplace,
                 recompute=recompute, host_limit=host_budget), res.events


def _fits(sched: Any, host_budget: int | None) -> bool:
    return sched.feasible and (host_budget is None or sched.host_bytes <= host_budget)


def smallest_budget_text(need: int) -> str:
    """bytes -> a budget string that parses back to at least `need` ('1.24GiB', '350MiB')."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if need >= scale or unit == "KiB":
            value = math.ceil(need / scale * 100) / 100
            while parse_bytes(f"{value:g}{unit}") < need:
                value = round(value + 0.01, 2)
            return f"{value:g}{unit}"
    raise AssertionError("unreachable")


def plan_tiling(vae: Any, shape: tuple[int, ...], dtype: DType | str | None = None, budget: int | str = "8GiB",
                *, op: str = "decode", tile: int | None = None, device_profile: Any = None,
                context: MetaContext | None = None, host_budget: int | str | None = None) -> TilingPlan:
    """input [B,C,(F,)h,w] of `op` + dtype + budget -> TilingPlan (meta device, no weights).

    `vae` is a diffusers VAE module (real or meta), a LoadedVae, a family name, a FamilySpec or a
    config dict. The untiled call is chosen when it fits; otherwise the tile size (a multiple of the
    spatial factor, at full resolution) with the least predicted time on `device_profile` (a name or a
    DeviceProfile; default: the module's device, detected) whose schedule fits; `tile` forces a tile
    side. Raises BudgetError, with the smallest budget that works, when nothing fits. `context`: the
    MetaContext of `vae` (vaelens.memory.context) to share its meta module and traces with the estimates;
    one is built when not given. `dtype` None: the context's, else the module's own (fp32 for a name).
    `host_budget`: the most host memory the spilled maps may take (default: no limit); the fastest plan
    within both budgets is chosen.

    >>> plan = plan_tiling("sdxl", (1, 4, 256, 256), "bf16", "2GiB", device_profile="h100")
    >>> plan.method, plan.tiles > 1, plan.predicted_peak_bytes <= plan.budget_bytes
    (<TilingMethod.EXACT: 'exact'>, True, True)
    """
    from vaelens.tiling.cost import untiled_seconds
    from vaelens.tiling.profiles import detect_profile, get_profile

    budget_bytes = parse_bytes(budget) if isinstance(budget, str) else int(budget)
    if budget_bytes <= 0:
        raise BudgetError(f"budget {budget!r} must be more than 0 bytes", param="budget", value=budget)
    if op not in ("encode", "decode"):
        raise VaeLensError(f"op {op!r} is not supported; choose one of: encode, decode", param="op", value=op,
                           choices=("encode", "decode"))
    ctx_given = context if context is not None else vae if isinstance(vae, MetaContext) else None
    where = _device_of(ctx_given.source if ctx_given is not None else vae)  # a context's: its source module's
    profile = get_profile(device_profile) if device_profile is not None else detect_profile(where)
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (4, 5) or min(shape) <= 0:
        raise VaeLensError(f"shape {list(shape)} is not [B, C, (F,) h, w] with positive sides", param="shape",
                           value=list(shape))
    ctx = _context(vae, dtype, context)
    meta, dt = ctx.module, ctx.dtype
    # the user's slicing switch stays as set (the untiled call is the module's own); tiling is what we plan
    sliced = bool(getattr(meta, "use_slicing", False))
    tr, est = _untiled(ctx, op, shape, sliced)
    weights, inputs = tr.weights_bytes, tr.input_bytes
    untiled = _device_need(est, weights, inputs)
    out_shape = tuple(tr.output_shape or ())
    plain = None
    if untiled <= profile.memory_bytes:  # every event's metadata: the time model prices them all
        plain = untiled_seconds(ctx.trace(shape, Op(op), sliced=sliced, full=True), profile, dt)
    common = dict(op=op, module_class=type(meta).__name__, dtype=dt, input_shape=shape, output_shape=out_shape,
                  budget_bytes=budget_bytes, weights_bytes=weights, input_bytes=inputs,
                  untiled_peak_bytes=untiled, device_profile=profile.name, untiled_seconds=plain)
    if tile is None and untiled <= budget_bytes:
        return TilingPlan(**common, method=TilingMethod.UNTILED, tile_shape=None, tiles=1, halo=0,
                          fraction=(1.0, 1.0), predicted_peak_bytes=untiled, transfer_bytes=0, host_bytes=0,
                          extra_compute=0.0, peak_step=est.peak_at, predicted_seconds=plain)
    if type(meta).__name__ not in EXACT_CLASSES:
        return _approximate(ctx, op, shape, sliced, common, untiled)
    with diffusers_modes(meta, tiled=False, sliced=sliced):  # the executor runs the class's untiled code
        return _exact(meta, op, shape, dt, common, tile, profile, _host_bytes(host_budget))


def _context(vae: Any, dtype: DType | str | None, context: MetaContext | None) -> MetaContext:
    """-> the MetaContext to plan on: `context` (at `dtype` when one is given), else one built for `vae`."""
    if context is not None:
        return context if dtype is None else MetaContext.of(context, dtype)
    if isinstance(vae, MetaContext):
        return vae if dtype is None else MetaContext.of(vae, dtype)
    return MetaContext.of(vae, dtype if dtype is not None else _dtype_of(vae))


def _dtype_of(vae: Any) -> DType:
    """The dtype of a module's first parameter (fp32 for names, configs and other dtypes)."""
    module = getattr(vae, "module", vae)
    first = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    if first is None:
        return DType.FP32
    try:
        return DType.of(first.dtype)
    except VaeLensError:
        return DType.FP32


def _untiled(ctx: MetaContext, op: str, shape: tuple[int, ...], sliced: bool, *, tiled: bool = False):
    """-> (Trace, MemoryEstimate) of the module's own call (diffusers' tiling when `tiled`), from the context's
    caches; an input the module refuses raises naming the shape."""
    try:
        return (ctx.trace(shape, Op(op), tiled=tiled, sliced=sliced),
                ctx.estimate(shape, Op(op), tiled=tiled, sliced=sliced))
    except VaeLensError as exc:
        cause = exc.__cause__
        if tiled or cause is None:
            raise
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise VaeLensError(f"shape {list(shape)} is not an input {type(ctx.module).__name__}.{op} takes ({first})",
                           param="shape", value=list(shape)) from None


def _host_bytes(host_budget: int | str | None) -> int | None:
    if host_budget is None:
        return None
    n = parse_bytes(host_budget) if isinstance(host_budget, str) else int(host_budget)
    if n < 0:
        raise BudgetError(f"host_budget {host_budget!r} must be 0 bytes or more", param="host_budget",
                          value=host_budget)
    return n


def _exact(meta: Any, op: str, shape: tuple[int, ...], dt: DType, common: dict, tile: int | None,
           profile: Any, host_budget: int | None = None) -> TilingPlan:
    """The exact tiling of a class in EXACT_CLASSES: the fastest tile size whose schedule fits (or `tile`)."""
    weights, budget_bytes, out_shape = common["weights_bytes"], common["budget_bytes"], common["output_shape"]
    full = out_shape if op == "decode" else shape
    small = shape if op == "decode" else out_shape
    height, width = full[-2], full[-1]
    factor = max(1, height // max(1, small[-2]))
    pricer = _Pricer()

    def ev(k: int) -> _Eval:
        side = k * factor
        return _evaluate(meta, op, shape, dt, (min(1.0, side / height), min(1.0, side / width)), pricer, weights,
                         budget_bytes, profile, host_budget)

    k, chosen = _search(ev, max(1, math.ceil(max(height, width) / factor)), budget_bytes, tile, factor, common)
    from vaelens.tiling.grid import count, splits, tile_size

    side = k * factor
    fraction = (min(1.0, side / height), min(1.0, side / width))
    rows, cols = splits(height, tile_size(height, fraction[0])), splits(width, tile_size(width, fraction[1]))
    tshape = (max(b - a for a, b in rows), max(b - a for a, b in cols))  # the largest real tile
    if not chosen.tiled:  # every operation fits whole: one tile, op by op
        tshape = (height, width)
    sched = chosen.schedule
    return TilingPlan(**common, method=TilingMethod.EXACT, tile_shape=tshape, tiles=count((height, width), tshape),
                      halo=chosen.halo, fraction=fraction, predicted_peak_bytes=chosen.peak,
                      transfer_bytes=sched.transfer_bytes, host_bytes=sched.host_bytes, extra_compute=chosen.extra,
                      peak_step=chosen.peak_step, predicted_seconds=chosen.seconds, decisions=sched.decisions,
                      inplace_events=chosen.inplace, recompute=chosen.recompute)


def _device_of(vae: Any) -> Any:
    """The device a real module sits on (None for names, configs and meta modules)."""
    module = getattr(vae, "module", vae)
    first = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return None if first is None or first.device.type == "meta" else first.device


# Tiles per side the search tries (the tile side is the full side over this, rounded up to the factor).
_COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)


def _search(ev: Any, kmax: int, budget_bytes: int, tile: int | None, factor: int, common: dict) -> tuple[int, _Eval]:
    """-> (k, its evaluation): the tile side k·factor with the least predicted time whose schedule fits the
    budget (within 1%, the larger tile: fewer kernel launches, which the time model does not price), or the
    forced `tile`."""
    if tile is not None:
        k = max(1, min(kmax, tile // factor))
        chosen = ev(k)
        if not chosen.fits:
            _refuse(common, chosen.need, f"tiles of {k * factor} px")
        return k, chosen
    ks = sorted({max(1, math.ceil(kmax / n)) for n in _COUNTS if n <= kmax} | {1}, reverse=True)
    seen: dict[int, _Eval] = {}
    best: int | None = None
    worse = 0
    for k in ks:
        e = seen[k] = ev(k)
        if not e.fits:
            continue
        if best is None or e.seconds < seen[best].seconds * 0.99:
            best, worse = k, 0
        else:
            worse += 1
            if worse >= 1:  # smaller tiles stopped paying
                break
    if best is None:
        device_ok = [e for e in seen.values() if e.schedule.feasible]
        if device_ok:  # the device budget is met; the host budget is what nothing met
            least = min(e.schedule.host_bytes for e in device_ok)
            raise BudgetError(f"host_budget {_gib(device_ok[0].host_limit or 0)} is too small to {common['op']} "
                              f"{list(common['input_shape'])} within budget {_gib(budget_bytes)}: the least host "
                              f"memory of the tile sizes tried is {_gib(least)}", param="host_budget",
                              value=device_ok[0].host_limit, needed_bytes=least)
        k = min(seen, key=lambda j: seen[j].need)
        side = k * factor
        _refuse(common, seen[k].need, f"{side}x{side}-px tiles (the least need of the tile sizes tried)")
    return best, seen[best]


def _approximate(ctx: MetaContext, op: str, shape: tuple[int, ...], sliced: bool, common: dict,
                 untiled: int) -> TilingPlan:
    """A class vaelens cannot tile exactly: its own enable_tiling(), labelled approximate."""
    meta = ctx.module
    name = type(meta).__name__
    if not hasattr(meta, "enable_tiling"):
        _refuse(common, untiled, f"untiled ({name} has no tiling, exact or approximate)")
    tr, est = _untiled(ctx, op, shape, sliced, tiled=True)
    need = _device_need(est, tr.weights_bytes, tr.input_bytes)
    if need > common["budget_bytes"]:
        _refuse(common, min(need, untiled), f"{name}.enable_tiling() (approximate)")
    h = getattr(meta, "tile_sample_min_height", None) or getattr(meta, "tile_sample_min_size", None)
    w = getattr(meta, "tile_sample_min_width", None) or h
    full = tr.output_shape if op == "decode" else shape
    tshape = (int(h), int(w)) if h else None
    from vaelens.tiling.grid import count

    tiles = count((full[-2], full[-1]), tshape) if tshape else 0
    return TilingPlan(**common, method=TilingMethod.APPROXIMATE, tile_shape=tshape, tiles=tiles, halo=0,
                      fraction=(1.0, 1.0), predicted_peak_bytes=need, transfer_bytes=0, host_bytes=0,
                      extra_compute=0.0, peak_step=est.peak_at,
                      approximate_reason=f"vaelens has no exact tiling for {name}; diffusers' enable_tiling() "
                      "runs normalisation per tile and blends overlaps (seams possible)")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.2f} KiB"


def _refuse(common: dict, need: int, what: str) -> None:
    raise BudgetError(
        f"budget {_gib(common['budget_bytes'])} is too small to {common['op']} {list(common['input_shape'])} "
        f"with {common['module_class']} at {common['dtype'].value}: {what} needs {_gib(need)} "
        f"(weights {_gib(common['weights_bytes'])}); the smallest budget that works is "
        f"{smallest_budget_text(need)}", param="budget", value=common["budget_bytes"], needed_bytes=need)


@dataclass(frozen=True, slots=True, kw_only=True)
class NoTiling:
    """The refusal of one op in plan_ops: nothing fits the budget; `needed_bytes` is the smallest budget that
    works and `message` the BudgetError's sentence."""

    op: str
    budget_bytes: int
    needed_bytes: int | None
    message: str


def plan_ops(model: Any, shapes: Mapping[str, tuple[int, ...]], dtype: DType | str | None,
             budget: int | str, *, context: MetaContext | None = None,
             device_profile: Any = None) -> dict[str, TilingPlan | NoTiling]:
    """{op: input shape} -> {op: TilingPlan, or NoTiling when nothing fits} (for reports that show every op,
    e.g. `memory --budget`); every op is planned on one MetaContext (`context`, or one built for `model`)
    and timed on `device_profile` (see plan_tiling)."""
    ctx = _context(model, dtype, context)
    budget_bytes = parse_bytes(budget) if isinstance(budget, str) else int(budget)
    out: dict[str, TilingPlan | NoTiling] = {}
    for op, shape in shapes.items():
        try:
            out[op] = plan_tiling(model, tuple(shape), ctx.dtype, budget_bytes, op=op, context=ctx,
                                  device_profile=device_profile)
        except BudgetError as exc:
            out[op] = NoTiling(op=op, budget_bytes=budget_bytes, needed_bytes=exc.needed_bytes, message=str(exc))
    return out
