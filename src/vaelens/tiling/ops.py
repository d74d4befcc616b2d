"""The operations the executor tiles (vaelens.tiling.execute): convolution, GroupNorm, nearest upsampling,
row-local operations (linear, layer norm, attention queries) and the small ones (casts, channel norms, dropout).

Each is `handler(executor, func, args, kwargs)`: func is the torch function diffusers called, computed tile
by tile through the executor's shared loop (or whole, where one tile is the whole map).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from vaelens.tiling.chain import MAX_CONVS, Node, cut_point, halo_depth
from vaelens.tiling.grid import conv_input, splits, tile_size
from vaelens.tiling.util import Region
from vaelens.tiling.util import map_tensors as _map
from vaelens.tiling.util import one_tile as _one
from vaelens.tiling.util import pair as _pair
from vaelens.tiling.util import tensors as _tensors

if TYPE_CHECKING:
    from vaelens.tiling.execute import Executor


# ------------------------------------------------------------------ convolution
def _conv_tile(shape: tuple[int, ...], axes: tuple[int, ...], r: Region, k: tuple[int, ...], stride: tuple[int, ...],
               padding: tuple[int, ...], dilation: tuple[int, ...], same: bool,
               ) -> tuple[list[slice], list[int], list[slice]]:
    """An output tile -> (input slices with the halo, zero padding for F.pad, crop of a "same" tile conv)."""
    sl: list[slice] = [slice(None)] * len(shape)
    pads: list[int] = []
    crop: list[slice] = [slice(None)] * len(shape)
    for ax, rng in zip(axes, r, strict=True):
        i = ax - 2
        a, b, lo, hi = conv_input(rng, shape[ax], k[i], stride[i], padding[i], dilation[i])
        sl[ax] = slice(a, b)
        pads[:0] = [lo, hi]  # F.pad lists the last axis first
        if same:  # output row j of the tile conv is global row a + j
            crop[ax] = slice(rng[0] - a, rng[1] - a)
    return sl, pads, crop


def conv(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    p = dict(zip(names, args, strict=False), **kwargs)
    x, w = p["input"], p["weight"]
    nd = w.ndim - 2
    padding = p.get("padding", 0)
    if isinstance(padding, str) or x.ndim != nd + 2 or nd < 2:
        return ex.whole(func, args, kwargs)
    stride, dilation = _pair(p.get("stride", 1), nd), _pair(p.get("dilation", 1), nd)
    padding, k = _pair(padding, nd), tuple(w.shape[2:])
    out = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    axes = (x.ndim - 2, x.ndim - 1)
    regs = ex.axis_splits([out[a - 2] for a in axes])
    if ex.recorder is not None:
        ex.recorder.halo = max(ex.recorder.halo, *(dilation[i] * (k[i] - 1) // 2 for i in range(nd)))
        ex.recorder.conv_macs += math.prod(out) * x.shape[0] * w.shape[0] * math.prod(w.shape[1:])
    bias = p.get("bias")
    groups = p.get("groups", 1)
    inner = tuple(0 if 2 + i in axes else padding[i] for i in range(nd))

    # A stride-1 "same" convolution (the 3x3 / padding 1 of every VAE) takes its clipped input tile with
    # its own padding and drops the rows that padding invented at inner tile edges: no padded copy.
    same = all(stride[a - 2] == 1 and k[a - 2] % 2 == 1 and padding[a - 2] == dilation[a - 2] * (k[a - 2] - 1) // 2
               for a in axes)
    if x.ndim >= 4 and (bias is None or id(bias) in ex.weights) and id(w) in ex.weights:
        return _conv_node(ex, func, x, w, bias, out, k, stride, padding, dilation, groups, same, inner)
    if ex.lazy:
        ex.realize((args, kwargs))
    if _one(regs):
        return ex.whole(func, args, kwargs)
    if same:
        inner = padding

    def geometry(r: Region) -> tuple[list[slice], list[int], list[slice]]:
        return _conv_tile(tuple(x.shape), axes, r, k, stride, padding, dilation, same)

    def load(r: Region) -> list[torch.Tensor]:
        return [ex.tile(x, tuple(geometry(r)[0]))]

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
            holder.append(ex.new_output((x.shape[0], w.shape[0], *out), res.dtype))
        ex.put(holder[0], (Ellipsis, *(slice(a, b) for a, b in r)), res)

    ex.loop(f"conv{nd}d", (tuple(w.shape), stride, padding, dilation), regs, load, fn, store)
    return holder[0]


def _conv_node(ex: Executor, func: Any, x: torch.Tensor, w: torch.Tensor, bias: Any, out: list[int],
               k: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
               groups: int, same: bool, inner: tuple[int, ...]) -> torch.Tensor:
    """A convolution joins the chain of its input (vaelens.tiling.chain); an input chain that already holds
    a convolution with a halo is computed first (MAX_CONVS)."""
    src = ex.node_of(x)
    halo = any(kk > 1 or s != 1 for kk, s in zip(k[-2:], stride[-2:], strict=True))
    while src is not None and halo and halo_depth(src) >= MAX_CONVS:
        ex.materialize(cut_point(src))
        src = ex.node_of(x)
    t2 = (slice(-2, None),)
    params = {
        "func": func, "weight": w, "bias": bias, "groups": groups, "same": same, "halo": halo,
        "k": k[t2[0]], "stride": stride[t2[0]], "padding": padding[t2[0]], "dilation": dilation[t2[0]],
        "stride_all": stride, "padding_all": padding, "dilation_all": dilation, "inner": inner,
    }
    shape = (x.shape[0], w.shape[0], *out)
    node = Node(kind="conv", name=f"conv{len(k)}d", shape=tuple(int(s) for s in shape), dtype=x.dtype,
                inputs=[src if src is not None else x], params=params,
                sig=("conv", tuple(w.shape), stride, padding, dilation, groups, x.dtype, bias is not None,
                     tuple(shape[:-2])))
    return ex.defer(node)


# ------------------------------------------------------------------ GroupNorm: exact statistics
def group_norm(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    names = ("input", "num_groups", "weight", "bias", "eps")
    p = dict(zip(names, args, strict=False), **kwargs)
    x, groups = p["input"], p["num_groups"]
    weight, bias, eps = p.get("weight"), p.get("bias"), p.get("eps", 1e-5)
    src = ex.node_of(x)
    if x.ndim < 4 and src is not None:
        ex.realize((x,))
        src = None
    if x.ndim < 3:
        return ex.whole(func, args, kwargs)
    axes = (x.ndim - 2, x.ndim - 1) if x.ndim >= 4 else (2,)
    regs = ex.axis_splits([x.shape[a] for a in axes])
    if src is None and _one(regs) and x.ndim < 4:
        return ex.whole(func, args, kwargs)
    n, c = x.shape[0], x.shape[1]
    if src is not None:  # the chain that makes the map computes its statistics as each tile is made
        stats = ex.normalize_stats(src, groups)
    else:
        stats = _stats_pass(ex, x, groups, axes, regs)
    assert stats is not None
    mean, rstd = stats.mean_rstd(eps)
    scale = rstd.repeat_interleave(c // groups, dim=1)  # [N, C]
    shift = -mean.repeat_interleave(c // groups, dim=1) * scale
    if weight is not None:
        scale = scale * weight.double()
        shift = shift * weight.double()
    if bias is not None:
        shift = shift + bias.double()
    view = (n, c) + (1,) * (x.ndim - 2)
    a = scale.float().reshape(view)
    b = shift.float().reshape(view)
    return ex.pointwise(_affine, (x, a, b), {})


def _stats_pass(ex: Executor, x: torch.Tensor, groups: int, axes: tuple[int, ...],
                regs: list[list[tuple[int, int]]]) -> Any:
    """GroupNorm statistics of a map that exists: one pass reading it tile by tile."""
    from vaelens.tiling.execute import _Stats, _tile_stats

    def cut(r: Region) -> list[torch.Tensor]:
        sl: list[slice] = [slice(None)] * x.ndim
        for ax, (a, b) in zip(axes, r, strict=True):
            sl[ax] = slice(a, b)
        return [ex.tile(x, tuple(sl))]

    stats = _Stats()

    def stats_fn(_r: Region) -> Callable[..., tuple[torch.Tensor, torch.Tensor, int]]:
        return lambda t: _tile_stats(t, groups)

    ex.loop("group_norm.stats", (groups,), regs, cut, stats_fn, lambda _r, res: stats.merge(*res))
    if ex.recorder is not None:
        ex.recorder.extra_elements += x.numel()
    return stats


# ------------------------------------------------------------------ nearest upsampling
def interpolate(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    names = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
    p = dict(zip(names, args, strict=False), **kwargs)
    x = p["input"]
    if p.get("mode", "nearest") not in ("nearest", "nearest-exact") or x.ndim not in (4, 5):
        return ex.whole(func, args, kwargs)
    nsp = x.ndim - 2
    if p.get("size") is not None:
        size = _pair(p["size"], nsp)
        scale = [s / i for s, i in zip(size, x.shape[2:], strict=True)]
    elif p.get("scale_factor") is not None:
        scale = list(_pair(p["scale_factor"], nsp))
    else:
        return ex.whole(func, args, kwargs)
    if any(float(s) != int(s) or s < 1 for s in scale):
        return ex.whole(func, args, kwargs)
    scale = [int(s) for s in scale]
    mode = p.get("mode", "nearest")
    full = (*x.shape[:2], *(d * s for d, s in zip(x.shape[2:], scale, strict=True)))
    if mode == "nearest":  # "nearest-exact" maps rows differently: it runs unchained
        src = ex.node_of(x)
        node = Node(kind="upsample", name="interpolate", shape=tuple(int(d) for d in full), dtype=x.dtype,
                    inputs=[src if src is not None else x],
                    params={"func": func, "scale": (scale[-2], scale[-1]), "scale_all": tuple(float(s) for s in scale),
                            "mode": mode},
                    sig=("upsample", tuple(scale), mode, x.dtype, tuple(full[:-2])))
        return ex.defer(node)
    if ex.lazy:
        ex.realize((args, kwargs))
    axes = (x.ndim - 2, x.ndim - 1)
    regs = ex.axis_splits([x.shape[a] for a in axes])
    if _one(regs):
        return ex.whole(func, args, kwargs)

    def load(r: Region) -> list[torch.Tensor]:
        sl: list[slice] = [slice(None)] * x.ndim
        for ax, (a, b) in zip(axes, r, strict=True):
            sl[ax] = slice(a, b)
        return [ex.tile(x, tuple(sl))]

    def fn(_r: Region) -> Callable[..., torch.Tensor]:
        return lambda t: func(t, scale_factor=tuple(float(s) for s in scale), mode=mode)

    holder: list[torch.Tensor] = []

    def store(r: Region, res: torch.Tensor) -> None:
        if not holder:
            holder.append(ex.new_output(full, res.dtype))
        sl = (Ellipsis, *(slice(a * scale[ax - 2], b * scale[ax - 2]) for ax, (a, b) in zip(axes, r, strict=True)))
        ex.put(holder[0], sl, res)

    ex.loop("interpolate", (tuple(scale), mode), regs, load, fn, store)
    return holder[0]


# ------------------------------------------------------------------ row-local ops: linear, attention
def rows(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    """func(x, *rest) where each row (dim -2) of x gives the same row of the output, the rest
    whole: linear layers, layer norm over the last axis, attention queries (keys/values whole)."""
    x = args[0]
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or kwargs.get("out") is not None:
        return ex.whole(func, args, kwargs)
    chunks = splits(x.shape[-2], tile_size(x.shape[-2], ex.fractions(1)[0]))
    if len(chunks) == 1:
        return ex.whole(func, args, kwargs)
    regs = [chunks]
    whole: list[Any] = []  # the other arguments, on the device whole (fetched when the loop begins)

    def load(r: Region) -> list[torch.Tensor]:
        return [ex.tile(x, (Ellipsis, slice(r[0][0], r[0][1]), slice(None)))]

    def fn(_r: Region) -> Callable[..., torch.Tensor]:
        if not whole:
            whole.append(_map((args[1:], kwargs), lambda t: t if id(t) in ex.weights else ex.res.need(t)))
        rest = whole[0]
        return lambda t: func(t, *rest[0], **rest[1])

    holder: list[torch.Tensor] = []

    def store(r: Region, res: torch.Tensor) -> None:
        if not holder:
            holder.append(ex.new_output((*res.shape[:-2], x.shape[-2], res.shape[-1]), res.dtype))
        ex.put(holder[0], (Ellipsis, slice(r[0][0], r[0][1]), slice(None)), res)

    name = getattr(func, "__name__", "rows")
    ex.loop(f"rows:{name}", (name, *((tuple(t.shape), t.dtype) for t in _tensors((args[1:], kwargs), []))), regs,
            load, fn, store)
    return holder[0]


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
    return rows(ex, func, args, kwargs)


def _dropout(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    """Dropout in eval mode is the identity (no copy); in training, an elementwise op."""
    training = kwargs.get("training", args[2] if len(args) > 2 else True)
    return args[0] if not training else ex.pointwise(func, args, kwargs)


def _sdpa(ex: Executor, func: Any, args: tuple, kwargs: dict) -> Any:
    if kwargs.get("attn_mask") is not None or kwargs.get("is_causal") or len(args) > 3:
        return ex.whole(func, args, kwargs)
    return rows(ex, func, args, kwargs)


# Dense operations: the name the time model prices them by (vaelens.tiling.cost.op_flops).
DENSE = {"conv2d": "conv2d", "conv3d": "conv3d", "linear": "linear",
         "scaled_dot_product_attention": "scaled_dot_product_attention"}

HANDLERS: dict[str, Callable[[Executor, Any, tuple, dict], Any]] = {
    "conv2d": conv,
    "conv3d": conv,
    "group_norm": group_norm,
    "interpolate": interpolate,
    "linear": rows,
    "layer_norm": _layer_norm,
    "scaled_dot_product_attention": _sdpa,
    "normalize": _normalize,
    "dropout": _dropout,
    "to": _to,
    "type_as": _type_as,
}
