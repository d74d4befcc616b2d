"""Allocator-level memory model: a traced encode/decode -> the CUDA peak above resident memory.

Trace (one event per aten operator) -> MemoryEstimate. Every allocation and free of the trace, and
each operator's kernel temporaries (per-operator rules, vaelens.memory.rules), go through a model of
PyTorch's CUDA caching allocator (vaelens.memory.allocator): weights and input first, a warm-up call, then
the measured call. peak_bytes is DESIGN.md's definition: torch.cuda.max_memory_allocated() during
the call minus memory_allocated() before it, weights and input resident, the output counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.memory.allocator import CachingAllocator
from vaelens.memory.rules import RULES, transient
from vaelens.options import DType, PixelRequest
from vaelens.trace import Op, Trace, trace_module


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerMemory:
    """One module call of the timeline: activation bytes alive after it and the peak inside it."""

    path: str
    type: str
    depth: int
    output_shape: tuple[int, ...] | None
    live_bytes: int
    peak_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryEstimate:
    """op on pixels/latent of a given shape -> predicted CUDA peak above weights + input."""

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
    tiled: bool = False
    sliced: bool = False
    timeline: tuple[LayerMemory, ...] = ()

    @property
    def total_bytes(self) -> int:
        """weights + input + peak: what the GPU must hold at the peak (CUDA context not included)."""
        return self.weights_bytes + self.input_bytes + self.peak_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak_bytes,
            "peak_at": self.peak_at,
            "peak_op": self.peak_op,
            "input_shape": list(self.input_shape),
            "input_bytes": self.input_bytes,
            "output_shape": list(self.output_shape) if self.output_shape else None,
            "output_bytes": self.output_bytes,
            "total_bytes": self.total_bytes,
            "tiled": self.tiled,
            "sliced": self.sliced,
        }


def _replay(tr: Trace, alloc: CachingAllocator, per_event: list[int] | None = None) -> int:
    """One call through the allocator; returns the index of the event at the call's peak."""
    keys: dict[int, object] = {}
    peak, at = alloc.allocated, -1
    for ev in tr.events:
        for sid in ev.frees_before:
            alloc.free(keys.pop(sid, None))
        for sid, nbytes in ev.allocs:
            keys[sid] = key = object()
            alloc.malloc(key, nbytes)
        temp = transient(ev)
        during = alloc.allocated + (alloc.transient(temp) if temp else 0)
        if per_event is not None:
            per_event.append(during)
        if during > peak:
            peak, at = during, ev.index
    for key in keys.values():  # what is left (the output, once the caller drops it) goes back to the cache
        alloc.free(key)
    return at


def simulate(tr: Trace, *, dtype: DType | None = None, tiled: bool = False, sliced: bool = False) -> MemoryEstimate:
    """Trace -> MemoryEstimate, the way the measurements were taken: weights and input allocated,
    one warm-up call (it leaves the allocator's cache warm), then the measured call; peak_bytes is
    the measured call's max memory_allocated() minus memory_allocated() before it."""
    alloc = CachingAllocator()
    for nbytes in tr.resident_sizes:
        alloc.malloc(object(), nbytes)
    _replay(tr, alloc)
    base = alloc.allocated
    alloc.reset_peak()
    absolute: list[int] = []
    peak_event = _replay(tr, alloc, absolute)
    peak = max(0, alloc.peak - base)
    per_event_peak = [v - base for v in absolute]
    layers = tr.layers
    peak_at, peak_op = "", ""
    if peak_event >= 0:
        ev = tr.events[peak_event]
        peak_op = ev.name
        inner = [r for r in layers if r.first_op <= peak_event < r.last_op]
        if inner:
            peak_at = max(inner, key=lambda r: (r.depth, r.first_op)).path
        peak_at = peak_at or f"({tr.module_type})"  # ran in the top module's own code (e.g. tile blending)
    timeline = tuple(
        LayerMemory(
            path=r.path, type=r.type, depth=r.depth, output_shape=r.output_shape, live_bytes=r.live_bytes,
            peak_bytes=max(per_event_peak[r.first_op:r.last_op], default=r.live_bytes),
        )
        for r in layers
    )
    if dtype is None:
        dtype = DType.parse(tr.input_dtype) if tr.input_dtype in ("float32", "float16", "bfloat16") else DType.FP32
    return MemoryEstimate(
        op=tr.op, dtype=dtype, peak_bytes=peak, peak_at=peak_at, peak_op=peak_op,
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
        "dict with _class_name, an nn.Module (any device) or a LoadedVae"
    )


def _pixel_shape(module: Any, request: PixelRequest) -> tuple[int, ...]:
    """pixels [B,3,H,W] for image VAEs, [B,3,F,H,W] for modules with 3-D convolutions."""
    import torch

    video = request.frames is not None or any(isinstance(m, torch.nn.Conv3d) for m in module.modules())
    if video:
        return (request.batch, 3, request.frames or 1, request.height, request.width)
    return (request.batch, 3, request.height, request.width)


def input_shapes(model: Any, request: PixelRequest) -> tuple[Any, tuple[int, ...], tuple[int, ...]]:
    """model + request -> (meta module, pixel shape, latent shape) after the family's size rules."""
    import torch

    dtype = DType.parse(request.dtype)
    module, spec = _module_and_spec(model, dtype)
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
    import warnings

    prev = (bool(getattr(module, "use_tiling", False)), bool(getattr(module, "use_slicing", False)))
    for flag, name, opt in ((tiled, "tiling", "tiled=True"), (sliced, "slicing", "sliced=True")):
        if flag and not hasattr(module, f"enable_{name}"):
            raise VaeLensError(f"{opt}: diffusers {type(module).__name__} has no enable_{name}()")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if flag:
                getattr(module, f"enable_{name}")()
            elif hasattr(module, f"use_{name}"):
                setattr(module, f"use_{name}", False)
    return prev


def trace_request(
    model: Any, request: PixelRequest, *, op: str | Op = "decode", tiled: bool = False, sliced: bool = False,
) -> Trace:
    """model + PixelRequest -> Trace of encode (pixels in) or decode (latent in) on the meta device."""
    import torch

    op = Op.parse(op)
    if op is Op.FORWARD:
        raise VaeLensError("op 'forward' has no pixel/latent contract; use op='encode' or op='decode'")
    dtype = DType.parse(request.dtype)
    module, pixel, latent = input_shapes(model, request)
    shape = pixel if op is Op.ENCODE else latent
    prev = _apply_modes(module, tiled, sliced)
    try:
        return trace_module(module, [torch.empty(shape, device="meta", dtype=dtype.torch)], op=op, detail=RULES.keys())
    except RuntimeError as exc:  # a diffusers code path that fails for this config (not a vaelens error)
        mode = " with enable_tiling()" if tiled else " with enable_slicing()" if sliced else ""
        raise VaeLensError(
            f"diffusers {type(module).__name__}.{op.value}{mode} fails on input {list(shape)}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    finally:
        _apply_modes(module, *prev)


def estimate_memory(
    model: Any, request: PixelRequest, *, op: str | Op = "decode", tiled: bool = False, sliced: bool = False,
) -> MemoryEstimate:
    """model + PixelRequest -> MemoryEstimate of encode (pixels -> latent) or decode (latent -> pixels).

    `model` is a family name, a FamilySpec, a diffusers config dict (with _class_name), a LoadedVae, or
    any nn.Module: one with real weights is traced as a meta copy cast to request.dtype (no memory, the
    module itself untouched); one on meta as it is. `tiled` / `sliced` predict diffusers'
    enable_tiling() / enable_slicing().

    >>> from vaelens.options import PixelRequest, DType
    >>> est = estimate_memory("sdxl", PixelRequest(width=512, height=512, dtype=DType.BF16), op="decode")
    >>> est.output_shape, est.peak_bytes > est.output_bytes
    ((1, 3, 512, 512), True)
    """
    tr = trace_request(model, request, op=op, tiled=tiled, sliced=sliced)
    return simulate(tr, dtype=DType.parse(request.dtype), tiled=tiled, sliced=sliced)


def latent_multiple(est: MemoryEstimate, latent_shape: tuple[int, ...]) -> float:
    """peak ÷ latent bytes: how many latents' worth of memory the call needs at its peak."""
    return est.peak_bytes / max(1, math.prod(latent_shape) * est.dtype.itemsize)
