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
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from vaelens.tiling.grid import conv_input, splits, tile_size

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
    out_spatial: tuple[int, ...] = ()


@dataclass(slots=True)
class Recorder:
    """What a planning run collects: the device steps, halos and the work added by tiling."""

    steps: list[StepRecord] = field(default_factory=list)
    halo: int = 0
    conv_macs: int = 0  # multiply-accumulates of every convolution (the same tiled or not)
    extra_elements: int = 0  # elements read again by tiling (GroupNorm statistics passes)


def _one(axes: list[list[tuple[int, int]]]) -> bool:
    return all(len(rs) == 1 for rs in axes)


def _tensors(obj: Any, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


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
                 weights: set[int], recorder: Recorder | None = None) -> None:
        self.device = device
        self.storage = storage
        self.fraction = fraction
        self.weights = weights
        self.recorder = recorder

    # ------------------------------------------------------------------ moving tensors
    def dev(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device)

    def host(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.storage or id(t) in self.weights else t.to(self.storage)

    # ------------------------------------------------------------------ the loop all tiled ops share
    def _loop(self, kind: str, key: tuple, axes: list[list[tuple[int, int]]],
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
            ))
            store(big, res)
            return
        for r in itertools.product(*axes):
            store(r, fn(r)(*load(r)))

    def _fractions(self, n_axes: int) -> tuple[float, ...]:
        fh, fw = self.fraction
        return (fh * fw,) if n_axes == 1 else (fh, fw)

    def _splits(self, sizes: Sequence[int]) -> list[list[tuple[int, int]]]:
        """Axis sizes (one or two) -> the balanced ranges of each axis under the plan's fraction."""
        return [splits(s, tile_size(s, f)) for s, f in zip(sizes, self._fractions(len(sizes)), strict=True)]

    # ------------------------------------------------------------------ dispatch
    def handle(self, func: Any, args: tuple, kwargs: dict) -> Any:
        name = getattr(func, "__name__", "")
        if name in _PASSTHROUGH or name.startswith("__get"):
            return self.passthrough(func, args, kwargs)
        handler = _HANDLERS.get(name)
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
            ids = [id(m) for m in moved]

            def f(*ins: torch.Tensor, dargs=dargs, dkwargs=dkwargs, ids=ids) -> Any:
                sub = dict(zip(ids, ins, strict=True))
                a, k = _map((dargs, dkwargs), lambda t: sub.get(id(t), t))
                return func(*a, **k)

            name = getattr(func, "__name__", str(func))
            scal = tuple(v for v in args[1:] if isinstance(v, (int, float, bool, str)))
            self.recorder.steps.append(StepRecord(
                kind=f"whole:{name}", key=(name, scal, *((tuple(t.shape), t.dtype) for t in moved)), fn=f,
                inputs=moved, tiles=1, io_bytes=_nbytes(moved)))
        out = func(*dargs, **dkwargs)
        return _map(out, lambda t: t if id(t) in self.weights else self.host(t))

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
        regs = self._splits([shape[a] for a in axes])
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

        self._loop(f"pointwise:{name}", (name,), regs, load, fn, store)
        return holder[0]

    def cast(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if x.dtype == dtype:
            return x
        return self.pointwise(_Cast(dtype), (x,), {})

    # ------------------------------------------------------------------ convolution
    def conv(self, func: Any, args: tuple, kwargs: dict) -> Any:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        p = dict(zip(names, args, strict=False), **kwargs)
        x, w = p["input"], p["weight"]
        nd = w.ndim - 2
        padding = p.get("padding", 0)
        if isinstance(padding, str) or x.ndim != nd + 2 or nd < 2:
            return self.whole(func, args, kwargs)
        stride, dilation = _pair(p.get("stride", 1), nd), _pair(p.get("dilation", 1), nd)
        padding, k = _pair(padding, nd), tuple(w.shape[2:])
        out = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
        axes = (x.ndim - 2, x.ndim - 1)
        regs = self._splits([out[a - 2] for a in axes])
        if self.recorder is not None:
            self.recorder.halo = max(self.recorder.halo, *(dilation[i] * (k[i] - 1) // 2 for i in range(nd)))
            self.recorder.conv_macs += math.prod(out) * x.shape[0] * w.shape[0] * math.prod(w.shape[1:])
        if _one(regs):
            return self.whole(func, args, kwargs)
        bias = p.get("bias")
        groups = p.get("groups", 1)
        inner = tuple(0 if 2 + i in axes else padding[i] for i in range(nd))

        # A stride-1 "same" convolution (the 3x3 / padding 1 of every VAE) takes its clipped input tile with
        # its own padding and drops the rows that padding invented at inner tile edges: no padded copy.
        same = all(stride[a - 2] == 1 and k[a - 2] % 2 == 1 and padding[a - 2] == dilation[a - 2] * (k[a - 2] - 1) // 2
                   for a in axes)
        if same:
            inner = padding

        def geometry(r: Region) -> tuple[list[slice], list[int], list[slice]]:
            sl: list[slice] = [slice(None)] * x.ndim
            pads: list[int] = []
            crop: list[slice] = [slice(None)] * x.ndim
            for ax, rng in zip(axes, r, strict=True):
                i = ax - 2
                a, b, lo, hi = conv_input(rng, x.shape[ax], k[i], stride[i], padding[i], dilation[i])
                sl[ax] = slice(a, b)
                pads[:0] = [lo, hi]  # F.pad lists the last axis first
                if same:  # output row j of the tile conv is global row a + j
                    crop[ax] = slice(rng[0] - a, rng[1] - a)
            return sl, pads, crop

        def load(r: Region) -> list[torch.Tensor]:
            return [self.dev(x[tuple(geometry(r)[0])])]

        def fn(r: Region) -> Callable[..., torch.Tensor]:
            _, pads, crop = geometry(r)

            def f(t: torch.Tensor) -> torch.Tensor:
                if same:
                    return func(t, w, bias, stride, inner, dilation, groups)[tuple(crop)]
                if any(pads):
                    t = F.pad(t, pads)
                return func(t, w, bias, stride, inner, dilation, groups)
            return f

        holder: list[torch.Tensor] = []

        def store(r: Region, res: torch.Tensor) -> None:
            if not holder:
                holder.append(torch.empty((x.shape[0], w.shape[0], *out), dtype=res.dtype, device=self.storage))
            holder[0][(Ellipsis, *(slice(a, b) for a, b in r))] = res.to(holder[0].device)

        self._loop(f"conv{nd}d", (tuple(w.shape), stride, padding, dilation), regs, load, fn, store)
        return holder[0]

    # ------------------------------------------------------------------ GroupNorm: exact statistics
    def group_norm(self, func: Any, args: tuple, kwargs: dict) -> Any:
        names = ("input", "num_groups", "weight", "bias", "eps")
        p = dict(zip(names, args, strict=False), **kwargs)
        x, groups = p["input"], p["num_groups"]
        weight, bias, eps = p.get("weight"), p.get("bias"), p.get("eps", 1e-5)
        if x.ndim < 3:
            return self.whole(func, args, kwargs)
        axes = (x.ndim - 2, x.ndim - 1) if x.ndim >= 4 else (2,)
        regs = self._splits([x.shape[a] for a in axes])
        if _one(regs):
            return self.whole(func, args, kwargs)
        n, c = x.shape[0], x.shape[1]

        def cut(r: Region) -> list[torch.Tensor]:
            sl: list[slice] = [slice(None)] * x.ndim
            for ax, (a, b) in zip(axes, r, strict=True):
                sl[ax] = slice(a, b)
            return [self.dev(x[tuple(sl)])]

        acc: dict[str, torch.Tensor] = {}

        def stats_fn(_r: Region) -> Callable[..., tuple[torch.Tensor, torch.Tensor, int]]:
            def f(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
                g = t.unflatten(1, (groups, -1)).float()  # a view: no copy of the tile at float32
                dims = tuple(range(2, g.ndim))
                var, mean = torch.var_mean(g, dim=dims, correction=0)
                return mean, var, math.prod(g.shape[2:])
            return f

        def merge(_r: Region, res: tuple[torch.Tensor, torch.Tensor, int]) -> None:
            # Chan et al.'s parallel merge of (count, mean, M2) in float64: exact up to rounding,
            # unlike averaging per-tile variances.
            mean_b, var_b, nb = res[0].double(), res[1].double(), res[2]
            if not acc:
                acc.update(n=torch.tensor(float(nb), dtype=torch.float64, device=mean_b.device), mean=mean_b,
                           m2=var_b * nb)
                return
            na = acc["n"]
            tot = na + nb
            delta = mean_b - acc["mean"]
            acc["mean"] = acc["mean"] + delta * (nb / tot)
            acc["m2"] = acc["m2"] + var_b * nb + delta * delta * (na * nb / tot)
            acc["n"] = tot

        self._loop("group_norm.stats", (groups,), regs, cut, stats_fn, merge)
        if self.recorder is not None:
            self.recorder.extra_elements += x.numel()
        rstd = torch.rsqrt(acc["m2"] / acc["n"] + eps)  # [N, G] float64
        scale = rstd.repeat_interleave(c // groups, dim=1)  # [N, C]
        shift = -acc["mean"].repeat_interleave(c // groups, dim=1) * scale
        if weight is not None:
            scale = scale * weight.double()
            shift = shift * weight.double()
        if bias is not None:
            shift = shift + bias.double()
        view = (n, c) + (1,) * (x.ndim - 2)
        a = scale.float().reshape(view)
        b = shift.float().reshape(view)
        return self.pointwise(_affine, (x, a, b), {})

    # ------------------------------------------------------------------ nearest upsampling
    def interpolate(self, func: Any, args: tuple, kwargs: dict) -> Any:
        names = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
        p = dict(zip(names, args, strict=False), **kwargs)
        x = p["input"]
        if p.get("mode", "nearest") not in ("nearest", "nearest-exact") or x.ndim not in (4, 5):
            return self.whole(func, args, kwargs)
        nsp = x.ndim - 2
        if p.get("size") is not None:
            size = _pair(p["size"], nsp)
            scale = [s / i for s, i in zip(size, x.shape[2:], strict=True)]
        elif p.get("scale_factor") is not None:
            scale = list(_pair(p["scale_factor"], nsp))
        else:
            return self.whole(func, args, kwargs)
        if any(float(s) != int(s) or s < 1 for s in scale):
            return self.whole(func, args, kwargs)
        scale = [int(s) for s in scale]
        axes = (x.ndim - 2, x.ndim - 1)
        regs = self._splits([x.shape[a] for a in axes])
        if _one(regs):
            return self.whole(func, args, kwargs)
        mode = p.get("mode", "nearest")

        def load(r: Region) -> list[torch.Tensor]:
            sl: list[slice] = [slice(None)] * x.ndim
            for ax, (a, b) in zip(axes, r, strict=True):
                sl[ax] = slice(a, b)
            return [self.dev(x[tuple(sl)])]

        def fn(_r: Region) -> Callable[..., torch.Tensor]:
            return lambda t: func(t, scale_factor=tuple(float(s) for s in scale), mode=mode)

        holder: list[torch.Tensor] = []
        full = (*x.shape[:2], *(d * s for d, s in zip(x.shape[2:], scale, strict=True)))

        def store(r: Region, res: torch.Tensor) -> None:
            if not holder:
                holder.append(torch.empty(full, dtype=res.dtype, device=self.storage))
            sl = (Ellipsis, *(slice(a * scale[ax - 2], b * scale[ax - 2]) for ax, (a, b) in zip(axes, r, strict=True)))
            holder[0][sl] = res.to(holder[0].device)

        self._loop("interpolate", (tuple(scale), mode), regs, load, fn, store)
        return holder[0]

    # ------------------------------------------------------------------ row-local ops: linear, attention
    def rows(self, func: Any, args: tuple, kwargs: dict, *, first: int = 1) -> Any:
        """func(x, *rest) where each row (dim -2) of x gives the same row of the output, the rest
        whole: linear layers, layer norm over the last axis, attention queries (keys/values whole)."""
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or kwargs.get("out") is not None:
            return self.whole(func, args, kwargs)
        chunks = splits(x.shape[-2], tile_size(x.shape[-2], self._fractions(1)[0]))
        if len(chunks) == 1:
            return self.whole(func, args, kwargs)
        rest = _map((args[1:], kwargs), lambda t: t if id(t) in self.weights else self.dev(t))
        regs = [chunks]

        def load(r: Region) -> list[torch.Tensor]:
            return [self.dev(x[..., r[0][0]:r[0][1], :])]

        def fn(_r: Region) -> Callable[..., torch.Tensor]:
            return lambda t: func(t, *rest[0], **rest[1])

        holder: list[torch.Tensor] = []

        def store(r: Region, res: torch.Tensor) -> None:
            if not holder:
                holder.append(torch.empty((*res.shape[:-2], x.shape[-2], res.shape[-1]), dtype=res.dtype,
                                          device=self.storage))
            holder[0][..., r[0][0]:r[0][1], :] = res.to(holder[0].device)

        name = getattr(func, "__name__", "rows")
        self._loop(f"rows:{name}", (name, *((tuple(t.shape), t.dtype) for t in _tensors(rest, []))), regs,
                   load, fn, store)
        return holder[0]


class _Cast:
    """t -> t.to(dtype), as a named pointwise function."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.__name__ = f"to_{str(dtype).removeprefix('torch.')}"

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype)


def _affine(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GroupNorm's second pass: x -> x·a + b per (sample, channel), computed in float32 as the CUDA
    kernel does (a = rstd·weight, b = bias − mean·a)."""
    y = t.to(torch.float32, copy=True)  # one fresh float32 buffer, then in place
    return y.mul_(a).add_(b).to(t.dtype)


_affine.__name__ = "group_norm.apply"


def _to(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    """Tensor.to: a dtype change is a pointwise cast; device moves are dropped (storage decides)."""
    x = args[0]
    dtype = kwargs.get("dtype")
    for a in args[1:]:
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, torch.Tensor):
            dtype = a.dtype
    return x if dtype is None else ex.cast(x, dtype)


def _type_as(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    return ex.cast(args[0], args[1].dtype)


def _normalize(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    dim = kwargs.get("dim", args[2] if len(args) > 2 else 1)
    dims = tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)
    return ex.pointwise(func, args, kwargs, reduce_dims=dims)


def _layer_norm(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    shape = kwargs.get("normalized_shape", args[1] if len(args) > 1 else None)
    if shape is None or len(_pair(shape, 1)) != 1:
        return ex.whole(func, args, kwargs)
    return ex.rows(func, args, kwargs)


def _dropout(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    """Dropout in eval mode is the identity (no copy); in training, an elementwise op."""
    training = kwargs.get("training", args[2] if len(args) > 2 else True)
    return args[0] if not training else ex.pointwise(func, args, kwargs)


def _sdpa(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    if kwargs.get("attn_mask") is not None or kwargs.get("is_causal") or len(args) > 3:
        return ex.whole(func, args, kwargs)
    return ex.rows(func, args, kwargs)


_HANDLERS: dict[str, Callable[[Executor, Any, tuple, dict], Any]] = {
    "conv2d": Executor.conv,
    "conv3d": Executor.conv,
    "group_norm": Executor.group_norm,
    "interpolate": Executor.interpolate,
    "linear": Executor.rows,
    "layer_norm": _layer_norm,
    "scaled_dot_product_attention": _sdpa,
    "normalize": _normalize,
    "dropout": _dropout,
    "to": _to,
    "type_as": _type_as,
}


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
              storage: torch.device | None = None, recorder: Recorder | None = None) -> Any:
    """Run call() (a method of `module` on storage-resident inputs) with every operation tiled.

    -> what call() returns, its tensors in `storage` (default: host memory for a GPU module)."""
    device = next(iter(module.parameters())).device
    if storage is None:
        storage = device if device.type in ("cpu", "meta") else torch.device("cpu")
    ex = Executor(device=device, storage=storage, fraction=fraction, weights=weight_ids(module), recorder=recorder)
    with TiledMode(ex):
        return call()


def records_by_kind(steps: Sequence[StepRecord]) -> dict[str, int]:
    """Step kinds -> how many operations of that kind ran tiled (for the plan's summary)."""
    out: dict[str, int] = {}
    for s in steps:
        out[s.kind] = out.get(s.kind, 0) + 1
    return out
