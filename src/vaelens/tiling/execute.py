"""Exact tiled execution: the real diffusers module runs unchanged; every torch operation it calls is
intercepted (a TorchFunctionMode) and computed tile by tile.

Full-size tensors live in `storage` (host memory when the module is on a GPU); each operation moves one
tile of its inputs to `device`, computes, and writes the tile of its output back. Per operation:

- convolution: an output tile reads its input tile plus the halo its kernel needs (rows outside the
  map are the convolution's own zero padding), so every output pixel is computed once, exactly;
- GroupNorm: pass 1 merges per-tile mean and variance into the whole map's statistics (Chan's
  parallel formula in float64, per sample and group); pass 2 applies them tile by tile;
- nearest upsampling with an integer factor: an input tile maps to an aligned output tile;
- pointwise and channel-local operations (activations, residual adds, dtype casts, RMS norm over
  channels): tile by tile; linear layers and attention queries: in row chunks (query-chunked
  attention is exact: each query row's softmax sees every key);
- views, slices, concatenation, padding (data movement): on the storage tensors directly;
- anything else: the whole operation on `device` (exact; its memory is priced by the plan).

Nothing of diffusers is re-implemented: its modules run their own forward; only tensor operations
are intercepted. With `recorder` set (planning on the meta device) each operation records the largest
tile's device work instead of looping over tiles.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from vaelens.tiling.grid import splits, tile_size
from vaelens.trace.dispatch import tensors_in

Region = tuple[tuple[int, int], ...]

# Data movement and metadata: run as is on the storage tensors (no arithmetic worth a device).
_PASSTHROUGH = frozenset({
    "__get__", "__getitem__", "__setitem__", "__len__", "__iter__", "__format__", "__repr__", "__bool__",
    "__index__", "__hash__", "__reduce_ex__", "__deepcopy__", "view", "view_as", "reshape", "reshape_as",
    "permute", "transpose", "t", "contiguous", "clone", "cat", "concat", "concatenate", "stack", "chunk",
    "split", "unbind", "unsqueeze", "squeeze", "flatten", "unflatten", "pad", "narrow", "select", "expand",
    "expand_as", "repeat", "zeros_like", "ones_like", "empty_like", "full_like", "size", "dim", "ndimension",
    "numel", "stride", "is_contiguous", "element_size", "item", "tolist", "copy_", "detach", "data_ptr",
    "untyped_storage", "is_floating_point", "is_complex", "get_device", "new_zeros", "new_empty", "new_ones",
    "new_full", "new_tensor", "requires_grad_", "storage_offset", "movedim", "split_with_sizes", "zero_",
    "fill_", "cpu", "cuda", "is_inference", "__array__", "numpy", "_version",
})

# Elementwise (with broadcasting) and in-place variants: tile by tile.
_POINTWISE = frozenset({
    "add", "sub", "mul", "div", "true_divide", "neg", "silu", "relu", "gelu", "sigmoid", "tanh", "exp", "log",
    "clamp", "clip", "clamp_min", "clamp_max", "pow", "sqrt", "rsqrt", "abs", "mish", "leaky_relu", "softplus",
    "elu", "hardtanh", "hardswish", "hardsigmoid", "square", "reciprocal", "rsub", "nan_to_num",
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
    "__neg__", "__pow__", "__rpow__", "lerp", "addcmul", "maximum", "minimum", "sin", "cos",
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "add_", "sub_", "mul_", "div_", "clamp_", "relu_",
    "silu_", "tanh_", "sigmoid_", "exp_", "neg_", "copysign", "sign", "floor", "round", "erf",
})

_INPLACE_DUNDER = {"__iadd__": "add", "__isub__": "sub", "__imul__": "mul", "__itruediv__": "div"}
_DTYPE_METHODS = {"float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16, "double": torch.float64}


@dataclass(slots=True)
class StepRecord:
    """One operation's device work for its largest tile (planning): what the memory model prices."""

    kind: str  # "conv2d", "group_norm.stats", "pointwise:silu", "whole:scaled_dot_product_attention", …
    key: tuple  # cache key: kind + input shapes/dtypes + parameters
    fn: Callable[..., Any]
    inputs: list[Any]  # meta tensors moved to the device for that tile
    tiles: int
    io_bytes: int  # bytes moved to and from the device for one tile
    sig: tuple | None = None  # the operation call it belongs to (see Executor.signature)


@dataclass(slots=True)
class Recorder:
    """What a planning run collects: the device steps, halos and the work added by tiling."""

    steps: list[StepRecord] = field(default_factory=list)
    halo: int = 0
    conv_macs: int = 0  # multiply-accumulates of every convolution (the same tiled or not)
    extra_elements: int = 0  # elements read again by tiling (GroupNorm statistics passes)
    alternatives: dict[tuple, StepRecord] = field(default_factory=dict)  # signature -> the op run whole


def _one(axes: list[list[tuple[int, int]]]) -> bool:
    return all(len(rs) == 1 for rs in axes)


_tensors = tensors_in  # one walker over nested args, shared with the tracer


def _map(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_map(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_map(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _nbytes(ts: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _pair(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


class Executor:
    """Runs torch operations tile by tile (see the module docstring).

    `fraction` is the plan's tile side over the full side, (rows, columns): an operation on a map of
    h × w takes tiles of ceil(h·fh) × ceil(w·fw). `weights` holds the ids of the module's parameters
    and buffers (they stay on `device`)."""

    def __init__(self, *, device: torch.device, storage: torch.device, fraction: tuple[float, float],
                 weights: set[int], recorder: Recorder | None = None,
                 whole_ops: frozenset[tuple] = frozenset()) -> None:
        self.device = device
        self.storage = storage
        self.fraction = fraction
        self.weights = weights
        self.recorder = recorder
        self.whole_ops = whole_ops  # signatures of operations the plan runs whole (their whole map fits)
        self.sig: tuple | None = None

    @staticmethod
    def signature(name: str, args: tuple, kwargs: dict) -> tuple:
        """An operation call -> (name, shapes and dtypes of its tensors): calls with one signature cost the
        same, so the plan's per-operation choice (tiles or whole) is keyed by it."""
        return (name, *((tuple(t.shape), str(t.dtype)) for t in _tensors((args, kwargs), [])))

    # ------------------------------------------------------------------ moving tensors
    def dev(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device)

    def host(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.storage or id(t) in self.weights else t.to(self.storage)

    # ------------------------------------------------------------------ the loop all tiled ops share
    def loop(self, kind: str, key: tuple, axes: list[list[tuple[int, int]]],
              load: Callable[[Region], list[torch.Tensor]], fn: Callable[[Region], Callable[..., Any]],
              store: Callable[[Region, Any], None]) -> None:
        """Every tile (the product of the per-axis ranges): load -> fn on the device -> store.
        Planning runs only the largest tile (the longest range on each axis) and records it."""
        if self.recorder is not None:
            big = tuple(max(rs, key=lambda r: r[1] - r[0]) for rs in axes)
            ins = load(big)
            f = fn(big)
            res = f(*ins)
            self.recorder.steps.append(StepRecord(
                kind=kind, key=(kind, *key, *((tuple(t.shape), t.dtype) for t in ins)), fn=f, inputs=ins,
                tiles=math.prod(len(rs) for rs in axes), io_bytes=_nbytes(ins) + _nbytes(_tensors(res, [])),
                sig=self.sig,
            ))
            store(big, res)
            return
        for r in itertools.product(*axes):
            store(r, fn(r)(*load(r)))

    def fractions(self, n_axes: int) -> tuple[float, ...]:
        fh, fw = self.fraction
        return (fh * fw,) if n_axes == 1 else (fh, fw)

    def axis_splits(self, sizes: Sequence[int]) -> list[list[tuple[int, int]]]:
        """Axis sizes (one or two) -> the balanced ranges of each axis under the plan's fraction."""
        return [splits(s, tile_size(s, f)) for s, f in zip(sizes, self.fractions(len(sizes)), strict=True)]

    # ------------------------------------------------------------------ dispatch
    def handle(self, func: Any, args: tuple, kwargs: dict) -> Any:
        name = getattr(func, "__name__", "")
        if name in _PASSTHROUGH or name.startswith("__get"):
            return self.passthrough(func, args, kwargs)
        from vaelens.tiling.ops import HANDLERS  # the operations (ops.py imports this module)

        self.sig = self.signature(name, args, kwargs)
        if self.recorder is not None and self.sig not in self.recorder.alternatives:
            alt = self._whole_record(func, args, kwargs)
            if alt is not None:
                self.recorder.alternatives[self.sig] = alt
        elif self.sig in self.whole_ops:
            return self.whole(func, args, kwargs)
        handler = HANDLERS.get(name)
        if handler is not None:
            return handler(self, func, args, kwargs)
        if name in _DTYPE_METHODS and args and isinstance(args[0], torch.Tensor):
            return self.cast(args[0], _DTYPE_METHODS[name])
        if name in _POINTWISE:
            return self.pointwise(func, args, kwargs)
        return self.whole(func, args, kwargs)

    def passthrough(self, func: Any, args: tuple, kwargs: dict) -> Any:
        ts = _tensors((args, kwargs), [])
        if len({t.device for t in ts}) > 1:
            args, kwargs = _map((args, kwargs), self.host)
        return func(*args, **kwargs)

    def whole(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """The operation as one piece on the device; tensors it returns go back to storage."""
        moved: list[torch.Tensor] = []

        def to_dev(t: torch.Tensor) -> torch.Tensor:
            if id(t) in self.weights:
                return t
            d = self.dev(t)  # planning (storage = device = meta) still prices it as moved
            moved.append(d)
            return d

        dargs, dkwargs = _map((args, kwargs), to_dev)
        if self.recorder is not None and moved:
            self.recorder.steps.append(self._step(func, args, dargs, dkwargs, moved))
        out = func(*dargs, **dkwargs)
        return _map(out, lambda t: t if id(t) in self.weights else self.host(t))

    def _step(self, func: Any, args: tuple, dargs: Any, dkwargs: Any, moved: list[torch.Tensor]) -> StepRecord:
        """The record of an operation run whole on `moved` (its non-weight tensors on the device)."""
        ids = [id(m) for m in moved]

        def f(*ins: torch.Tensor) -> Any:
            sub = dict(zip(ids, ins, strict=True))
            a, k = _map((dargs, dkwargs), lambda t: sub.get(id(t), t))
            return func(*a, **k)

        name = getattr(func, "__name__", str(func))
        scal = tuple(v for v in args[1:] if isinstance(v, (int, float, bool, str)))
        return StepRecord(kind=f"whole:{name}", key=(name, scal, *((tuple(t.shape), t.dtype) for t in moved)), fn=f,
                          inputs=moved, tiles=1, io_bytes=_nbytes(moved), sig=self.sig)

    def _whole_record(self, func: Any, args: tuple, kwargs: dict) -> StepRecord | None:
        """Planning: what running this operation whole would record, without running it."""
        moved = [t for t in _tensors((args, kwargs), []) if id(t) not in self.weights]
        return self._step(func, args, args, kwargs, moved) if moved else None

    # ------------------------------------------------------------------ elementwise
    def pointwise(self, func: Any, args: tuple, kwargs: dict, *, reduce_dims: tuple[int, ...] = ()) -> Any:
        name = getattr(func, "__name__", "")
        inplace = name in _INPLACE_DUNDER or (name.endswith("_") and not name.startswith("__"))
        ts = _tensors((args, kwargs), [])
        if kwargs.get("out") is not None or not ts:
            return self.whole(func, args, kwargs)
        try:
            shape = tuple(torch.broadcast_shapes(*(t.shape for t in ts)))
        except RuntimeError:
            return self.whole(func, args, kwargs)
        nd = len(shape)
        axes = (nd - 2, nd - 1) if nd >= 2 else ()
        if not axes or any(d % nd in axes for d in reduce_dims) or (inplace and tuple(args[0].shape) != shape):
            return self.whole(func, args, kwargs)
        regs = self.axis_splits([shape[a] for a in axes])
        if _one(regs):
            return self.whole(func, args, kwargs)

        def cut(t: torch.Tensor, r: Region) -> torch.Tensor:
            if id(t) in self.weights and t.device == self.device and all(s == 1 for s in t.shape[-2:]):
                return t
            sl = [slice(None)] * t.ndim
            for ax, (a, b) in zip(axes, r, strict=True):
                i = ax - (nd - t.ndim)
                if i >= 0 and t.shape[i] != 1:
                    sl[i] = slice(a, b)
            return self.dev(t[tuple(sl)])

        flat = [a for a in args]
        slots = [i for i, a in enumerate(flat) if isinstance(a, torch.Tensor)]
        kslots = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]

        def load(r: Region) -> list[torch.Tensor]:
            return [cut(flat[i], r) for i in slots] + [cut(kwargs[k], r) for k in kslots]

        def fn(_r: Region) -> Callable[..., torch.Tensor]:
            def f(*ins: torch.Tensor) -> torch.Tensor:
                a = list(flat)
                for i, t in zip(slots, ins, strict=False):
                    a[i] = t
                kw = dict(kwargs)
                for k, t in zip(kslots, ins[len(slots):], strict=True):
                    kw[k] = t
                return func(*a, **kw)
            return f

        holder: list[torch.Tensor] = [args[0]] if inplace else []

        def store(r: Region, res: torch.Tensor) -> None:
            if not holder:
                holder.append(torch.empty(shape, dtype=res.dtype, device=self.storage))
            sl = (Ellipsis, *(slice(a, b) for a, b in r))
            holder[0][sl] = res.to(holder[0].device)

        self.loop(f"pointwise:{name}", (name,), regs, load, fn, store)
        return holder[0]

    def cast(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if x.dtype == dtype:
            return x
        return self.pointwise(_Cast(dtype), (x,), {})


class _Cast:
    """t -> t.to(dtype), as a named pointwise function."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.__name__ = f"to_{str(dtype).removeprefix('torch.')}"

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype)


class TiledMode(TorchFunctionMode):
    """Inside it, every torch operation goes through `executor`."""

    def __init__(self, executor: Executor) -> None:
        super().__init__()
        self.executor = executor

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return self.executor.handle(func, tuple(args), dict(kwargs or {}))


def weight_ids(module: torch.nn.Module) -> set[int]:
    """ids of a module's parameters and buffers (they stay where the module is)."""
    return {id(t) for t in (*module.parameters(), *module.buffers())}


def run_tiled(module: torch.nn.Module, call: Callable[[], Any], *, fraction: tuple[float, float],
              storage: torch.device | None = None, recorder: Recorder | None = None,
              whole_ops: frozenset[tuple] = frozenset()) -> Any:
    """Run call() (a method of `module` on storage-resident inputs) with every operation tiled, except
    those whose signature is in `whole_ops` (the plan found their whole map fits).

    -> what call() returns, its tensors in `storage` (default: host memory for a GPU module)."""
    device = next(iter(module.parameters())).device
    if storage is None:
        storage = device if device.type in ("cpu", "meta") else torch.device("cpu")
    ex = Executor(device=device, storage=storage, fraction=fraction, weights=weight_ids(module), recorder=recorder,
                  whole_ops=whole_ops)
    with TiledMode(ex):
        return call()


def records_by_kind(steps: Sequence[StepRecord]) -> dict[str, int]:
    """Step kinds -> how many operations of that kind ran tiled (for the plan's summary)."""
    out: dict[str, int] = {}
    for s in steps:
        out[s.kind] = out.get(s.kind, 0) + 1
    return out
