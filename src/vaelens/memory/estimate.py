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
  estimate_memory(model | MetaContext, request, op=..., tiled=, sliced=) -> MemoryEstimate
  estimate_call(module, inputs, op="forward") -> MemoryEstimate of any module call on meta
  simulate(trace) -> MemoryEstimate;  MetaContext (memory/context.py): one meta module, traces made once
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.memory.allocator import SMALL_SIZE
from vaelens.memory.context import MetaContext
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


def trace_request(
    model: Any, request: PixelRequest, *, op: str | Op = "decode", tiled: bool = False, sliced: bool = False,
) -> Trace:
    """model or MetaContext + PixelRequest -> Trace of encode (pixels in) or decode (latent in) on meta."""
    op = Op.parse(op)
    if op is Op.FORWARD:
        raise VaeLensError("op 'forward' has no pixel/latent contract; use op='encode' or op='decode'", param="op",
                           value="forward", choices=("encode", "decode"))
    ctx = MetaContext.of(model, request.dtype)
    return ctx.trace(ctx.input_shape(request, op), op, tiled=tiled, sliced=sliced)


def estimate_memory(
    model: Any, request: PixelRequest, *, op: str | Op = "decode", tiled: bool = False, sliced: bool = False,
) -> MemoryEstimate:
    """model + PixelRequest -> MemoryEstimate of encode (pixels -> latent) or decode (latent -> pixels).

    `model` is a family name, a FamilySpec, a diffusers config dict (with _class_name), a LoadedVae, any
    nn.Module, or a MetaContext (vaelens.memory.context) that several calls share: a module with real weights
    is traced as a meta copy cast to request.dtype (no memory, the module itself untouched); one on meta as
    it is. `tiled` / `sliced` predict diffusers' enable_tiling() / enable_slicing(). For "will it fit", read
    min_device_bytes (or peak_bytes_high).

    >>> from vaelens.options import PixelRequest, DType
    >>> est = estimate_memory("sdxl", PixelRequest(width=512, height=512, dtype=DType.BF16), op="decode")
    >>> est.output_shape, est.peak_bytes_low <= est.peak_bytes <= est.peak_bytes_high < est.min_device_bytes
    ((1, 3, 512, 512), True)
    """
    op = Op.parse(op)
    if op is Op.FORWARD:
        raise VaeLensError("op 'forward' has no pixel/latent contract; use op='encode' or op='decode'", param="op",
                           value="forward", choices=("encode", "decode"))
    ctx = MetaContext.of(model, request.dtype)
    return ctx.estimate(ctx.input_shape(request, op), op, tiled=tiled, sliced=sliced)


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
