"""Plan a budgeted encode/decode on the meta device: which tiles fit, and what they cost.

model + input shape + dtype + budget -> TilingPlan. No weights: the module is built on meta, the
tiled executor (vaelens.tiling.execute) runs once per candidate tile size recording each operation's
largest tile, and the memory model (vaelens.memory) prices every distinct device step. "Fits" means,
as for vaelens' other budgets, weights + input + the call's peak <= budget (CUDA context not counted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import DType, parse_bytes

# Classes tested tiled == untiled (tests/test_tiling.py). The executor is generic (any operation it
# does not know runs whole, exactly), so the list is the classes whose equality has been checked.
EXACT_CLASSES = frozenset({
    "AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderTiny", "AutoencoderKLWan", "AutoencoderKLQwenImage",
    "AutoencoderDC", "AutoencoderKLCogVideoX", "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo",
    "AutoencoderKLMochi",
})

UNTILED, EXACT, APPROXIMATE = "untiled", "exact", "approximate"


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
    method: str  # "untiled" | "exact" | "approximate"
    tile_shape: tuple[int, int] | None
    tiles: int
    halo: int  # pixels each convolution reads beyond its tile, at its own resolution
    fraction: tuple[float, float]  # tile side ÷ full side (rows, columns): each op's tiles scale with it
    predicted_peak_bytes: int  # weights + input + the largest device step (or the untiled peak)
    untiled_peak_bytes: int  # weights + input + peak of the untiled call
    weights_bytes: int
    input_bytes: int
    host_bytes: int  # full-size intermediates held in host memory at once (the untiled call's peak)
    transfer_bytes: int  # host <-> device traffic of the tiled run (an upper bound; 0 untiled)
    extra_compute: float  # extra arithmetic vs untiled, as a fraction (GroupNorm statistics passes)
    peak_step: str  # the operation whose tile sets the peak
    approximate_reason: str | None = None
    # signatures (Executor.signature) of the operations that run whole: their whole map fits the budget
    whole_ops: frozenset[tuple] = frozenset()

    @property
    def tiled(self) -> bool:
        return self.method != UNTILED

    @property
    def exact(self) -> bool:
        return self.method != APPROXIMATE

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
            "method": self.method,
            "approximate_reason": self.approximate_reason,
            "untiled_peak_bytes": self.untiled_peak_bytes,
            "transfer_bytes": self.transfer_bytes,
            "extra_compute": round(self.extra_compute, 6),
            "peak_step": self.peak_step,
        }


def _high(est: Any) -> int:
    """The figure a budget must use: the top of the memory model's range."""
    return int(est.peak_bytes_high)


def _device_need(est: Any, weights: int, inputs: int) -> int:
    """weights + input + peak (high end); the memory model's simulated OOM threshold when it ran one
    (min_device_bytes is 0 when the estimate skipped the cap search)."""
    return max(weights + inputs + _high(est), int(est.min_device_bytes))


def meta_module(model: Any, dtype: DType | str | None = None):
    """nn.Module (real or meta) | LoadedVae | family name | FamilySpec | config dict -> the same
    diffusers class built on the meta device at `dtype` (no weights), and that dtype."""
    import torch

    from vaelens.build import build_module

    model = getattr(model, "module", model)  # LoadedVae
    if isinstance(model, torch.nn.Module):
        import copy

        from vaelens.build import meta_copy, quiet_diffusers

        first = next(iter(model.parameters()), None)
        dt = DType.parse(dtype) if dtype is not None else _dtype_of(first)
        meta = meta_copy(model, dt.torch)  # the same class and settings, no weights
        if meta is model:  # already on meta: copy it anyway, the flags below are ours to change
            with quiet_diffusers():
                meta = copy.deepcopy(model).to(dt.torch)
        for name in ("decode", "encode", "_vaelens_budget"):  # an enable_budgeted_vae wrapper: not traced
            meta.__dict__.pop(name, None)
        if hasattr(meta, "use_tiling"):
            meta.use_tiling = False
        return meta.eval(), dt
    dt = DType.parse(dtype) if dtype is not None else DType.FP32
    if isinstance(model, Mapping):
        return build_module(model, device="meta", dtype=dt), dt
    from vaelens.contract import resolve_model
    from vaelens.families.spec import FamilySpec

    if isinstance(model, (str, FamilySpec)):
        return build_module(resolve_model(model), device="meta", dtype=dt), dt
    raise VaeLensError(f"vae {type(model).__name__} is not supported; give a diffusers VAE module, a "
                       "LoadedVae, a family name, a FamilySpec or a config dict with _class_name")


def _dtype_of(t: Any) -> DType:
    import torch

    if t is None:
        return DType.FP32
    return {torch.float16: DType.FP16, torch.bfloat16: DType.BF16}.get(t.dtype, DType.FP32)


class _Step:
    """A device step as a module, so the tracer and the allocator model can price it."""

    @staticmethod
    def module(fn: Any):
        import torch

        class StepModule(torch.nn.Module):
            def forward(self, *xs: Any) -> Any:
                return fn(*xs)

        return StepModule()


class _Pricer:
    """Device bytes of recorded steps, cached by step key within one planning call."""

    def __init__(self) -> None:
        self.cache: dict[tuple, int] = {}

    def price(self, step: Any) -> int:
        if step.key not in self.cache:
            from vaelens.memory.allocator import round_block
            from vaelens.memory.estimate import simulate
            from vaelens.memory.rules import RULES
            from vaelens.trace import trace_module

            tr = trace_module(_Step.module(step.fn), step.inputs, detail=RULES.keys())
            inputs = sum(round_block(t.numel() * t.element_size()) for t in step.inputs)
            self.cache[step.key] = inputs + _high(simulate(tr))
        return self.cache[step.key]


@dataclass(frozen=True, slots=True)
class _Eval:
    need: int  # weights + input + largest step
    step_bytes: int
    peak_step: str
    halo: int
    transfer: int
    extra: float
    whole_ops: frozenset[tuple] = frozenset()
    tiled: bool = True  # some operation runs in more than one tile


def _evaluate(meta: Any, op: str, shape: tuple[int, ...], dt: DType, fraction: tuple[float, float],
              pricer: _Pricer, resident: int, budget: int | None = None) -> _Eval:
    """One candidate tile: the device need of its largest step. With `budget`, an operation whose whole map
    fits runs whole (fewer, larger kernel calls); the others tile."""
    import torch

    from vaelens.tiling.execute import Recorder, run_tiled
    from vaelens.trace import call_op
    from vaelens.trace.records import Op

    rec = Recorder()
    x = torch.empty(shape, device="meta", dtype=dt.torch)
    with torch.inference_mode():
        run_tiled(meta, lambda: call_op(meta, Op.parse(op), [x]), fraction=fraction, recorder=rec)
    whole: set[tuple] = set()
    if budget is not None:
        for sig, alt in rec.alternatives.items():
            if resident + pricer.price(alt) <= budget:
                whole.add(sig)
    best, kind, transfer, done, tiled = 0, "", 0, set(), False
    for s in rec.steps:
        step = s
        if s.sig in whole:  # one whole step for the operation, however many tiled steps it had
            if s.sig in done:
                continue
            done.add(s.sig)
            step = rec.alternatives[s.sig]
        b = pricer.price(step)
        tiled = tiled or step.tiles > 1
        transfer += step.io_bytes * step.tiles
        if b > best:
            best, kind = b, step.kind
    extra = 3 * rec.extra_elements / max(1, 2 * rec.conv_macs)
    return _Eval(need=resident + best, step_bytes=best, peak_step=kind, halo=rec.halo, transfer=transfer,
                 extra=extra, whole_ops=frozenset(whole), tiled=tiled)


def _untiled(meta: Any, op: str, shape: tuple[int, ...], dt: DType, *, tiled: bool = False):
    import torch

    from vaelens.memory.estimate import simulate
    from vaelens.memory.rules import RULES
    from vaelens.trace import trace_module

    x = torch.empty(shape, device="meta", dtype=dt.torch)
    prev = getattr(meta, "use_tiling", None)
    if tiled:
        meta.enable_tiling()
    elif prev is not None:
        meta.use_tiling = False
    try:
        tr = trace_module(meta, [x], op=op, detail=RULES.keys())
    finally:
        if prev is not None:
            meta.use_tiling = prev
    return tr, simulate(tr, dtype=dt, tiled=tiled)


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
                *, op: str = "decode", tile: int | None = None) -> TilingPlan:
    """input [B,C,(F,)h,w] of `op` + dtype + budget -> TilingPlan (meta device, no weights).

    `vae` is a diffusers VAE module (real or meta), a LoadedVae, a family name, a FamilySpec or a
    config dict. The untiled call is chosen when it fits; otherwise the largest square tile (a multiple
    of the spatial factor, at full resolution) whose largest device step fits; `tile` forces a tile
    side. Raises VaeLensError, naming the smallest budget that works, when nothing fits.

    >>> plan = plan_tiling("sdxl", (1, 4, 256, 256), "bf16", "2GiB")
    >>> plan.method, plan.tiles > 1, plan.predicted_peak_bytes <= plan.budget_bytes
    ('exact', True, True)
    """
    budget_bytes = parse_bytes(budget) if isinstance(budget, str) else int(budget)
    if budget_bytes <= 0:
        raise VaeLensError(f"budget {budget!r} must be more than 0 bytes")
    if op not in ("encode", "decode"):
        raise VaeLensError(f"op {op!r} is not supported; choose one of: encode, decode")
    meta, dt = meta_module(vae, dtype)
    shape = tuple(int(s) for s in shape)
    tr, est = _untiled(meta, op, shape, dt)
    weights, inputs = tr.weights_bytes, tr.input_bytes
    untiled = _device_need(est, weights, inputs)
    out_shape = tuple(tr.output_shape or ())
    common = dict(op=op, module_class=type(meta).__name__, dtype=dt, input_shape=shape, output_shape=out_shape,
                  budget_bytes=budget_bytes, weights_bytes=weights, input_bytes=inputs,
                  untiled_peak_bytes=untiled, host_bytes=inputs + est.peak_bytes)
    if tile is None and untiled <= budget_bytes:
        return TilingPlan(**common, method=UNTILED, tile_shape=None, tiles=1, halo=0, fraction=(1.0, 1.0),
                          predicted_peak_bytes=untiled, transfer_bytes=0, extra_compute=0.0, peak_step=est.peak_at)
    if type(meta).__name__ not in EXACT_CLASSES:
        return _approximate(meta, op, shape, dt, common, untiled)
    full = out_shape if op == "decode" else shape
    small = shape if op == "decode" else out_shape
    height, width = full[-2], full[-1]
    factor = max(1, height // max(1, small[-2]))
    pricer = _Pricer()
    resident = weights + inputs

    def ev(k: int) -> _Eval:  # a forced tile tiles every operation (what the tests check)
        side = k * factor
        return _evaluate(meta, op, shape, dt, (min(1.0, side / height), min(1.0, side / width)), pricer, resident,
                         None if tile is not None else budget_bytes)

    k, chosen = _search(ev, max(1, math.ceil(max(height, width) / factor)), budget_bytes, tile, factor, common)
    from vaelens.tiling.grid import count, tile_size

    side = k * factor
    fraction = (min(1.0, side / height), min(1.0, side / width))
    tshape = (tile_size(height, fraction[0]), tile_size(width, fraction[1]))
    if not chosen.tiled:  # every operation fits whole: one tile, op by op, intermediates in host memory
        tshape = (height, width)
    return TilingPlan(**common, method=EXACT, tile_shape=tshape, tiles=count((height, width), tshape),
                      halo=chosen.halo, fraction=fraction, predicted_peak_bytes=chosen.need,
                      transfer_bytes=chosen.transfer, extra_compute=chosen.extra, peak_step=chosen.peak_step,
                      whole_ops=chosen.whole_ops)


def _search(ev: Any, kmax: int, budget_bytes: int, tile: int | None, factor: int, common: dict) -> tuple[int, _Eval]:
    """-> (k, its evaluation): the largest tile side k·factor whose plan fits, or the forced `tile`."""
    if tile is not None:
        k = max(1, min(kmax, tile // factor))
        chosen = ev(k)
        if chosen.need > budget_bytes:
            _refuse(common, chosen.need, f"tiles of {k * factor} px")
        return k, chosen
    # The need is not strictly monotone in the tile (kernel rules and allocator rounding step with
    # the shapes): the smallest budget is the least need of the few smallest tiles.
    small = {j: ev(j) for j in range(1, min(kmax, 4) + 1)}
    k = min(small, key=lambda j: small[j].need)
    if small[k].need > budget_bytes:
        side = k * factor
        _refuse(common, small[k].need, f"{side}x{side}-px tiles (the least need of the smallest tile sizes)")
    k = max(j for j, e in small.items() if e.need <= budget_bytes)
    chosen, hi = small[k], kmax
    while k < hi:  # largest k whose plan fits (need grows with the tile, mostly)
        mid = (k + hi + 1) // 2
        e = ev(mid)
        if e.need <= budget_bytes:
            k, chosen = mid, e
        else:
            hi = mid - 1
    return k, chosen


def _approximate(meta: Any, op: str, shape: tuple[int, ...], dt: DType, common: dict, untiled: int) -> TilingPlan:
    """A class vaelens cannot tile exactly: its own enable_tiling(), labelled approximate."""
    name = type(meta).__name__
    if not hasattr(meta, "enable_tiling"):
        _refuse(common, untiled, f"untiled ({name} has no tiling, exact or approximate)")
    tr, est = _untiled(meta, op, shape, dt, tiled=True)
    need = _device_need(est, tr.weights_bytes, tr.input_bytes)
    if need > common["budget_bytes"]:
        _refuse(common, min(need, untiled), f"{name}.enable_tiling() (approximate)")
    h = getattr(meta, "tile_sample_min_height", None) or getattr(meta, "tile_sample_min_size", None)
    w = getattr(meta, "tile_sample_min_width", None) or h
    full = tr.output_shape if op == "decode" else shape
    tshape = (int(h), int(w)) if h else None
    from vaelens.tiling.grid import count

    tiles = count((full[-2], full[-1]), tshape) if tshape else 0
    return TilingPlan(**common, method=APPROXIMATE, tile_shape=tshape, tiles=tiles, halo=0, fraction=(1.0, 1.0),
                      predicted_peak_bytes=need, transfer_bytes=0, extra_compute=0.0, peak_step=est.peak_at,
                      approximate_reason=f"vaelens has no exact tiling for {name}; diffusers' enable_tiling() "
                      "runs normalisation per tile and blends overlaps (seams possible)")


def _refuse(common: dict, need: int, what: str) -> None:
    from vaelens.render.tables import human_bytes

    raise VaeLensError(
        f"budget {human_bytes(common['budget_bytes'])} is too small to {common['op']} {list(common['input_shape'])} "
        f"with {common['module_class']} at {common['dtype'].value}: {what} needs {human_bytes(need)} "
        f"(weights {human_bytes(common['weights_bytes'])}); the smallest budget that works is "
        f"{smallest_budget_text(need)}"
    )


def plan_ops(model: Any, shapes: Mapping[str, tuple[int, ...]], dtype: DType | str | None,
             budget: int | str) -> dict[str, TilingPlan | str]:
    """{op: input shape} -> {op: TilingPlan, or the one-line reason nothing fits} (for reports that
    show every op, e.g. `memory --budget`)."""
    out: dict[str, TilingPlan | str] = {}
    for op, shape in shapes.items():
        try:
            out[op] = plan_tiling(model, tuple(shape), dtype, budget, op=op)
        except VaeLensError as exc:
            out[op] = str(exc)
    return out
