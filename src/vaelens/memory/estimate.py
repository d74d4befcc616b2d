"""Allocator-level memory model: a traced encode/decode -> peak, range, reserved bytes, OOM threshold.

Trace (one event per aten operator) -> MemoryEstimate. Every allocation and free of the trace, and
each operator's kernel temporaries (per-operator rules, vaelens.memory.rules), go through a model of
PyTorch's CUDA caching allocator (vaelens.memory.allocator, replayed by vaelens.memory.simulate):
weights and input first, a warm-up call, empty_cache(), then the measured call.

Figures (the definitions the measurements in ../shared/measurements were taken by, beside the repo):
  peak_bytes          max_memory_allocated() during the call minus memory_allocated() before it
                      (weights and input resident, the output counted): the best estimate
  peak_bytes_low/high the same where an unknowable choice goes one way or the other (cuDNN's
                      engine for batched convolutions, algorithm workspaces); `range_ops` names them
  reserved_peak_bytes max_memory_reserved() over the call after empty_cache(): the allocator's
                      segments at their highest, weights' and input's included
  min_device_bytes    the smallest allocator cap (set_per_process_memory_fraction) under which the
                      call runs twice without an out-of-memory error, the allocator releasing its
                      cache and retrying as PyTorch does; operators at their `high` temporaries.
                      The CUDA context (CUDA_CONTEXT_BYTES) comes on top of it, outside the cap.

API for other packages (stable):
  estimate_memory(model, request, op=..., tiled=, sliced=, cache=) -> MemoryEstimate
  estimate_call(module, inputs, op="forward") -> MemoryEstimate of any module call on meta
  simulate(trace) -> MemoryEstimate;  TraceCache: reuse traces within one search
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.memory.allocator import SMALL_SIZE
from vaelens.memory.rules import RULES
from vaelens.memory.simulate import compile_trace, min_device_bytes, run
from vaelens.options import DType, PixelRequest
from vaelens.trace import Op, Trace, trace_module


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerMemory:
    """One module call of the timeline: activation bytes alive after it and the peak inside it (best
    estimate, and the high end of the range as MemoryEstimate.peak_bytes_high is the call's)."""

    path: str
    type: str
    depth: int
    output_shape: tuple[int, ...] | None
    live_bytes: int
    peak_bytes: int
    peak_bytes_high: int = -1  # -1: not computed (then peak_bytes)

    def __post_init__(self) -> None:
        if self.peak_bytes_high < 0:
            object.__setattr__(self, "peak_bytes_high", self.peak_bytes)


# What the CUDA context holds outside the caching allocator (driver state, kernel images loaded
# lazily, cuDNN / cuBLAS handles), not counted by memory_reserved() nor by a memory-fraction cap.
# It depends on the GPU, driver and libraries: typically 0.3-0.6 GiB with CUDA 12+ lazy module
# loading; nvidia-smi minus torch.cuda.memory_reserved() shows it on a given machine. A documented
# figure, reported beside min_device_bytes, never folded into the estimates.
CUDA_CONTEXT_BYTES = 512 * 2**20

# The range also allows for one block at the peak that the real allocator handed out whole while the
# model split it, or the reverse: a cached block is given whole when what is left would be 1 MiB or
# less (CUDACachingAllocator.cpp should_split, kSmallSize), and memory_allocated() counts the whole
# block. Which cached block serves a request depends on the history of the process.
ALLOCATOR_SLACK = SMALL_SIZE


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryEstimate:
    """op on pixels/latent of a given shape -> predicted CUDA memory (see the module docstring)."""

    op: Op
    dtype: DType
    peak_bytes: int
    peak_at: str  # module path of the innermost layer running at the peak ("" = the top module)
    peak_op: str  # the aten operator running at the peak
    weights_bytes: int
    input_shape: tuple[int, ...]
    input_bytes: int
    output_shape: tuple[int, ...] | None
    output_bytes: int
    peak_bytes_low: int = -1  # -1: not computed (then peak_bytes)
    peak_bytes_high: int = -1
    reserved_peak_bytes: int = 0
    min_device_bytes: int = 0
    base_bytes: int = 0  # predicted memory_allocated() before the call (weights, input, cuBLAS workspace)
    range_ops: tuple[str, ...] = ()  # "path (operator): why" for the operators that make the range wide
    tiled: bool = False
    sliced: bool = False
    timeline: tuple[LayerMemory, ...] = ()

    def __post_init__(self) -> None:
        if self.peak_bytes_low < 0:
            object.__setattr__(self, "peak_bytes_low", self.peak_bytes)
        if self.peak_bytes_high < 0:
            object.__setattr__(self, "peak_bytes_high", self.peak_bytes)

    @property
    def total_bytes(self) -> int:
        """weights + input + peak: what the GPU must hold at the peak (CUDA context not included)."""
        return self.weights_bytes + self.input_bytes + self.peak_bytes

    @property
    def total_bytes_high(self) -> int:
        """weights + input + peak_bytes_high: allocated bytes at the peak, top of the range."""
        return self.weights_bytes + self.input_bytes + self.peak_bytes_high

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak_bytes,
            "peak_bytes_low": self.peak_bytes_low,
            "peak_bytes_high": self.peak_bytes_high,
            "reserved_peak_bytes": self.reserved_peak_bytes,
            "min_device_bytes": self.min_device_bytes,
            "cuda_context_bytes": CUDA_CONTEXT_BYTES,
            "base_bytes": self.base_bytes,
            "peak_at": self.peak_at,
            "peak_op": self.peak_op,
            "range_ops": list(self.range_ops),
            "input_shape": list(self.input_shape),
            "input_bytes": self.input_bytes,
            "output_shape": list(self.output_shape) if self.output_shape else None,
            "output_bytes": self.output_bytes,
            "total_bytes": self.total_bytes,
            "total_bytes_high": self.total_bytes_high,
            "tiled": self.tiled,
            "sliced": self.sliced,
        }


def _innermost(tr: Trace, index: int) -> str:
    inner = [r for r in tr.layers if r.first_op <= index < r.last_op]
    path = max(inner, key=lambda r: (r.depth, r.first_op)).path if inner else ""
    return path or f"({tr.module_type})"  # ran in the top module's own code (e.g. tile blending)


def simulate(
    tr: Trace, *, dtype: DType | None = None, tiled: bool = False, sliced: bool = False, device: bool = True,
) -> MemoryEstimate:
    """Trace -> MemoryEstimate: best, low and high replays, the reserved peak, and (with `device`)
    the smallest cap the call runs under (a bisection of capped replays)."""
    prog = compile_trace(tr)
    best = run(prog, mode="best", per_step=True)
    low = run(prog, mode="low") if any(st.temp.low != st.temp.best for st in prog.steps) else best
    high = run(prog, mode="high", per_step=True)
    peak_at, peak_op = "", ""
    if best.peak_step >= 0:
        peak_op = tr.events[best.peak_step].name
        peak_at = _innermost(tr, best.peak_step)
    wide: dict[str, None] = {}
    if high.peak > low.peak:
        for i, step in enumerate(prog.steps):
            if step.temp.uncertain and (high.during[i] > best.peak or i == best.peak_step):
                wide[f"{_innermost(tr, i)} ({tr.events[i].name.replace('aten.', '')}): {step.temp.uncertain}"] = None
    timeline = tuple(
        LayerMemory(
            path=r.path, type=r.type, depth=r.depth, output_shape=r.output_shape, live_bytes=r.live_bytes,
            peak_bytes=max(best.during[r.first_op:r.last_op], default=r.live_bytes),
            peak_bytes_high=max(best.during[r.first_op:r.last_op] + high.during[r.first_op:r.last_op],
                                default=r.live_bytes) + ALLOCATOR_SLACK,
        )
        for r in tr.layers
    )
    if dtype is None:
        dtype = DType.parse(tr.input_dtype) if tr.input_dtype in ("float32", "float16", "bfloat16") else DType.FP32
    return MemoryEstimate(
        op=tr.op, dtype=dtype, peak_bytes=best.peak, peak_at=peak_at, peak_op=peak_op,
        peak_bytes_low=max(0, min(low.peak, best.peak) - ALLOCATOR_SLACK),
        peak_bytes_high=max(high.peak, best.peak) + ALLOCATOR_SLACK,
        reserved_peak_bytes=best.reserved_peak,
        min_device_bytes=min_device_bytes(prog, mode="high") if device else 0,
        base_bytes=best.base, range_ops=tuple(wide),
        weights_bytes=tr.weights_bytes, input_shape=tr.input_shapes[0] if tr.input_shapes else (),
        input_bytes=tr.input_bytes, output_shape=tr.output_shape, output_bytes=tr.output_bytes,
        tiled=tiled, sliced=sliced, timeline=timeline,
    )


def _module_and_spec(model: Any, dtype: DType):
    """FamilySpec | name | config path | config dict | nn.Module | LoadedVae -> (meta module, spec or None).

    A module with real weights (or a LoadedVae's) is traced as a meta copy at `dtype`; the original is untouched.
    """
    import torch

    from vaelens.build import build_module, meta_copy
    from vaelens.families.spec import FamilySpec

    if isinstance(model, torch.nn.Module):
        return meta_copy(model, dtype.torch), None
    loaded = getattr(model, "module", None), getattr(model, "spec", None)  # a LoadedVae
    if isinstance(loaded[0], torch.nn.Module) and isinstance(loaded[1], FamilySpec):
        return meta_copy(loaded[0], dtype.torch), loaded[1]
    if isinstance(model, Mapping):
        return build_module(model, device="meta", dtype=dtype), None
    if isinstance(model, (str, FamilySpec)):
        from vaelens.contract import resolve_model

        spec = resolve_model(model)
        return build_module(spec, device="meta", dtype=dtype), spec
    raise VaeLensError(
        f"model {type(model).__name__} is not supported; give a family name, a FamilySpec, a config "
        "dict with _class_name, an nn.Module (any device) or a LoadedVae",
        param="model", value=type(model).__name__,
    )


def _pixel_shape(module: Any, request: PixelRequest) -> tuple[int, ...]:
    """pixels [B,3,H,W] for image VAEs, [B,3,F,H,W] for modules with 3-D convolutions."""
    import torch

    video = request.frames is not None or any(isinstance(m, torch.nn.Conv3d) for m in module.modules())
    if video:
        return (request.batch, 3, request.frames or 1, request.height, request.width)
    return (request.batch, 3, request.height, request.width)


def input_shapes(
    model: Any, request: PixelRequest, *, cache: TraceCache | None = None,
) -> tuple[Any, tuple[int, ...], tuple[int, ...]]:
    """model + request -> (meta module, pixel shape, latent shape) after the family's size rules."""
    import torch

    dtype = DType.parse(request.dtype)
    module, spec = _cached_module(model, dtype, cache)
    if spec is not None:
        from vaelens.contract import plan_shapes

        plan = plan_shapes(spec, request)
        return module, tuple(plan.pixel_shape), tuple(plan.latent_shape)
    pixel = _pixel_shape(module, request)
    from vaelens.trace import call_op

    x = torch.empty(pixel, device="meta", dtype=dtype.torch)
    with torch.inference_mode():
        latent = tuple(call_op(module, Op.ENCODE, [x]).shape)
    return module, pixel, latent


def _apply_modes(module: Any, tiled: bool, sliced: bool) -> tuple[bool, bool]:
    """Call diffusers' enable_tiling()/enable_slicing() (their default tile sizes, read from the
    config by each class's __init__) or switch them off; returns the previous flags."""
    from vaelens.build import quiet_diffusers

    prev = (bool(getattr(module, "use_tiling", False)), bool(getattr(module, "use_slicing", False)))
    for flag, name, opt in ((tiled, "tiling", "tiled"), (sliced, "slicing", "sliced")):
        if flag and not hasattr(module, f"enable_{name}"):
            raise VaeLensError(f"{opt}=True: diffusers {type(module).__name__} has no enable_{name}()", param=opt,
                               value=True)
        with quiet_diffusers():
            if flag:
                getattr(module, f"enable_{name}")()
            elif hasattr(module, f"use_{name}"):
                setattr(module, f"use_{name}", False)
    return prev


class TraceCache:
    """Meta modules, traces and estimates reused within one search (a --budget run, a tiling plan).

    Keyed by (model, dtype) for modules and (model, op, input shape, dtype, tiled, sliced) for traces
    and estimates; `model` is keyed by name / config / object identity, so keep the cache no longer
    than the objects it was filled with (one call of check_vae_budget makes and drops its own).
    """

    def __init__(self) -> None:
        self.modules: dict[Any, tuple[Any, Any]] = {}
        self.traces: dict[Any, Trace] = {}
        self.estimates: dict[Any, MemoryEstimate] = {}
        self.hits = 0


def _model_key(model: Any) -> Any:
    if isinstance(model, str):
        return ("name", model)
    if isinstance(model, Mapping):
        import json

        return ("config", json.dumps(model, sort_keys=True, default=str))
    return ("object", id(model))


def _cached_module(model: Any, dtype: DType, cache: TraceCache | None) -> tuple[Any, Any]:
    if cache is None:
        return _module_and_spec(model, dtype)
    key = (_model_key(model), dtype)
    if key not in cache.modules:
        cache.modules[key] = _module_and_spec(model, dtype)
    return cache.modules[key]


def trace_request(
    model: Any, request: PixelRequest, *, op: str | Op = "decode", tiled: bool = False, sliced: bool = False,
    cache: TraceCache | None = None,
) -> Trace:
    """model + PixelRequest -> Trace of encode (pixels in) or decode (latent in) on the meta device."""
    import torch

    op = Op.parse(op)
    if op is Op.FORWARD:
        raise VaeLensError("op 'forward' has no pixel/latent contract; use op='encode' or op='decode'", param="op",
                           value="forward", choices=("encode", "decode"))
    dtype = DType.parse(request.dtype)
    module, pixel, latent = input_shapes(model, request, cache=cache)
    shape = pixel if op is Op.ENCODE else latent
    key = (_model_key(model), op, tuple(shape), dtype, tiled, sliced)
    if cache is not None and key in cache.traces:
        cache.hits += 1
        return cache.traces[key]
    prev = _apply_modes(module, tiled, sliced)
    try:
        tr = trace_module(module, [torch.empty(shape, device="meta", dtype=dtype.torch)], op=op, detail=RULES.keys())
    except RuntimeError as exc:  # a diffusers code path that fails for this config (not a vaelens error)
        mode = " with enable_tiling()" if tiled else " with enable_slicing()" if sliced else ""
        raise VaeLensError(
            f"diffusers {type(module).__name__}.{op.value}{mode} fails on input {list(shape)}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    finally:
        _apply_modes(module, *prev)
    if cache is not None:
        cache.traces[key] = tr
    return tr


def estimate_memory(
    model: Any, request: PixelRequest, *, op: str | Op = "decode", tiled: bool = False, sliced: bool = False,
    cache: TraceCache | None = None,
) -> MemoryEstimate:
    """model + PixelRequest -> MemoryEstimate of encode (pixels -> latent) or decode (latent -> pixels).

    `model` is a family name, a FamilySpec, a diffusers config dict (with _class_name), a LoadedVae, or
    any nn.Module: one with real weights is traced as a meta copy cast to request.dtype (no memory, the
    module itself untouched); one on meta as it is. `tiled` / `sliced` predict diffusers'
    enable_tiling() / enable_slicing(). `cache` (a TraceCache) reuses modules, traces and estimates
    across calls of one search. For "will it fit", read min_device_bytes (or peak_bytes_high).

    >>> from vaelens.options import PixelRequest, DType
    >>> est = estimate_memory("sdxl", PixelRequest(width=512, height=512, dtype=DType.BF16), op="decode")
    >>> est.output_shape, est.peak_bytes_low <= est.peak_bytes <= est.peak_bytes_high < est.min_device_bytes
    ((1, 3, 512, 512), True)
    """
    op = Op.parse(op)
    dtype = DType.parse(request.dtype)
    key = None
    if cache is not None:
        _, pixel, latent = input_shapes(model, request, cache=cache)
        key = (_model_key(model), op, tuple(pixel if op is Op.ENCODE else latent), dtype, tiled, sliced)
        if key in cache.estimates:
            cache.hits += 1
            return cache.estimates[key]
    tr = trace_request(model, request, op=op, tiled=tiled, sliced=sliced, cache=cache)
    est = simulate(tr, dtype=dtype, tiled=tiled, sliced=sliced)
    if cache is not None:
        cache.estimates[key] = est
    return est


def estimate_call(
    module: Any, inputs: Any, *, op: str | Op = "forward", dtype: DType | str | None = None,
    device: bool = True,
) -> MemoryEstimate:
    """nn.Module + input tensors (meta or real; shapes are what count) -> MemoryEstimate of one call.

    The cheap way to ask about any module call (a tile, a sub-block): the module is traced on meta
    (a module with real weights as a meta copy) and replayed through the allocator model. `op` is
    "forward" (module(*inputs)), "encode" or "decode". `device=False` skips min_device_bytes.

    >>> import torch
    >>> m = torch.nn.Conv2d(8, 8, 3, padding=1)
    >>> est = estimate_call(m, torch.empty(1, 8, 64, 64, device="meta"))
    >>> est.output_shape, est.peak_bytes >= est.output_bytes
    ((1, 8, 64, 64), True)
    """
    import torch

    from vaelens.build import meta_copy

    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    dt = DType.parse(dtype) if dtype is not None else (
        DType.parse(str(first.dtype).replace("torch.", "")) if first is not None and first.is_floating_point()
        else DType.FP32)
    if any(p.device.type != "meta" for p in module.parameters()):
        module = meta_copy(module, dt.torch)
    metas = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") if isinstance(t, torch.Tensor)
             else t for t in inputs]
    tr = trace_module(module, metas, op=op, detail=RULES.keys())
    return simulate(tr, dtype=dt, device=device)
