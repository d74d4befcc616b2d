"""Exact tiled execution: the real diffusers module runs unchanged; every torch operation it calls is
intercepted (a TorchFunctionMode) and computed tile by tile on the device.

Full-size tensors stay on the device while they fit the budget; the plan's schedule (vaelens.tiling.
schedule) spills the one used farthest in the future to host memory and fetches it back before an
operation needs it whole (vaelens.tiling.residency does the copies and counts them). A tiled operation
reads a spilled input tile by tile from its host copy, and may write its output there tile by tile.
Per operation:

- convolution: an output tile reads its input tile plus the halo its kernel needs (rows outside the
  map are the convolution's own zero padding), so every output pixel is computed once, exactly;
- GroupNorm: pass 1 merges per-tile mean and variance into the whole map's statistics (Chan's
  parallel formula in float64, per sample and group); pass 2 applies them tile by tile;
- nearest upsampling with an integer factor: an input tile maps to an aligned output tile;
- pointwise and channel-local operations (activations, residual adds, dtype casts, RMS norm over
  channels): tile by tile; linear layers and attention queries: in row chunks (query-chunked
  attention is exact: each query row's softmax sees every key);
- views: on the tensors as they are (no data read); copying data movement (cat, pad, contiguous) and
  anything else: the whole operation on the device, its inputs fetched first;
- identity operations (dropout in eval, .to() of the same dtype): the input itself, nothing moved.

Nothing of diffusers is re-implemented: its modules run their own forward; only tensor operations
are intercepted. With `recorder` set (planning on the meta device) each operation records its largest
tile's device work and the residency events, instead of looping over tiles.
"""

from __future__ import annotations

import gc
import itertools
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from vaelens.tiling import chain as chains
from vaelens.tiling.chain import Node
from vaelens.tiling.cost import op_flops
from vaelens.tiling.grid import splits, tile_size
from vaelens.tiling.ops import DENSE, HANDLERS
from vaelens.tiling.residency import Decision, Residency, _contiguous_strides
from vaelens.tiling.util import Region, map_tensors, nbytes, one_tile, output_tensors, tensors

# Metadata and views: run as is (no data read); their tensor results alias what they came from.
_VIEWS = frozenset({
    "__get__", "__len__", "__format__", "__hash__", "__index__", "view", "view_as", "permute", "transpose", "t",
    "unsqueeze", "squeeze", "unflatten", "narrow", "select", "expand", "expand_as", "chunk", "split",
    "split_with_sizes", "unbind", "movedim", "detach", "size", "dim", "ndimension", "numel", "stride",
    "is_contiguous", "element_size", "storage_offset", "get_device", "is_floating_point", "is_complex",
    "requires_grad_", "is_inference", "_version", "data_ptr", "untyped_storage",
})
# Data movement that reads or writes data: whole on the device.
_COPIES = frozenset({
    "__getitem__", "__setitem__", "__iter__", "__repr__", "__bool__", "__reduce_ex__", "__deepcopy__", "reshape",
    "reshape_as", "contiguous", "clone", "cat", "concat", "concatenate", "stack", "flatten", "pad", "repeat",
    "zeros_like", "ones_like", "empty_like", "full_like", "item", "tolist", "copy_", "new_zeros", "new_empty",
    "new_ones", "new_full", "new_tensor", "zero_", "fill_", "cpu", "cuda", "__array__", "numpy",
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

# Queries that read a tensor's metadata only: a deferred map answers them without being computed.
_METADATA = frozenset({
    "__len__", "__hash__", "size", "dim", "ndimension", "numel", "stride", "is_contiguous", "element_size",
    "storage_offset", "get_device", "is_floating_point", "is_complex", "requires_grad_", "is_inference", "_version",
})
_METADATA_GET = frozenset({
    "shape", "dtype", "device", "ndim", "is_cuda", "is_cpu", "is_meta", "requires_grad", "layout", "names",
    "is_sparse", "is_quantized", "is_nested", "is_mkldnn", "grad_fn", "is_leaf",
})
# Handlers that take deferred maps themselves (chain them, or compute them where they must).
_CHAINING = frozenset({"conv2d", "conv3d", "group_norm", "interpolate", "dropout", "to", "type_as", "normalize"})
# Operations that write into their first argument (or a tensor argument).
_MUTATING = frozenset({"__setitem__", "copy_", "zero_", "fill_"})


@dataclass(slots=True)
class StepRecord:
    """One operation's device work for its largest tile (planning): what the memory model prices."""

    kind: str  # "conv2d", "group_norm.stats", "pointwise:silu", "whole:scaled_dot_product_attention", …
    key: tuple  # cache key: kind + input shapes/dtypes + parameters
    fn: Callable[..., Any]
    inputs: list[Any]  # meta tensors on the device for that tile
    tiles: int
    whole: bool = False  # an operation run whole (its inputs are resident buffers, not tile copies)
    working: int = 0  # device bytes it needs beyond resident buffers (priced as soon as it is recorded)


@dataclass(slots=True)
class Recorder:
    """What a planning run collects: the device steps, halos and the work added by tiling."""

    steps: list[StepRecord] = field(default_factory=list)
    halo: int = 0
    conv_macs: int = 0  # multiply-accumulates of every convolution (the same tiled or not)
    extra_elements: int = 0  # elements read again by tiling (GroupNorm statistics passes)
    price: Callable[[StepRecord], int] | None = None  # step -> its working bytes (the memory model)


class Executor:
    """Runs torch operations tile by tile (see the module docstring).

    `fraction` is the plan's tile side over the full side, (rows, columns): an operation on a map of
    h × w takes tiles of ceil(h·fh) × ceil(w·fw). `weights` holds the ids of the module's parameters
    and buffers (they stay on `device`); `residency` keeps the full-size tensors."""

    def __init__(self, *, device: torch.device, fraction: tuple[float, float], weights: set[int],
                 residency: Residency, recorder: Recorder | None = None,
                 recompute: frozenset[int] = frozenset()) -> None:
        self.device = device
        self.fraction = fraction
        self.weights = weights
        self.res = residency
        self.recorder = recorder
        self.lazy: dict[int, Node] = {}  # id(placeholder) -> the deferred operation it stands for
        self.recompute = recompute  # GroupNorm inputs (by call order) recomputed by their readers, not stored
        self.norms = 0  # GroupNorm calls on a deferred map so far

    # ------------------------------------------------------------------ the loop all tiled ops share
    def loop(self, kind: str, key: tuple, axes: list[list[tuple[int, int]]],
             load: Callable[[Region], list[torch.Tensor]], fn: Callable[[Region], Callable[..., Any]],
             store: Callable[[Region, Any], None]) -> None:
        """Every tile (the product of the per-axis ranges): load -> fn on the device -> store.
        Planning reads every tile's inputs (the bytes a spilled input streams) but computes only the
        largest tile, and records it."""
        self.res.begin("tiled", kind)
        try:
            if self.recorder is not None:
                big = tuple(max(rs, key=lambda r: r[1] - r[0]) for rs in axes)
                for r in itertools.product(*axes):
                    if r != big:
                        load(r)
                ins = load(big)
                f = fn(big)
                res = f(*ins)
                self._record(StepRecord(kind=kind, key=(kind, *key, *((tuple(t.shape), t.dtype) for t in ins)),
                                        fn=f, inputs=ins, tiles=math.prod(len(rs) for rs in axes)))
                store(big, res)
                return
            for r in itertools.product(*axes):
                store(r, fn(r)(*load(r)))
        finally:
            self.res.end()

    def _record(self, step: StepRecord) -> None:
        assert self.recorder is not None
        if self.recorder.price is not None:
            step.working = self.recorder.price(step)
        step.fn, step.inputs = None, []  # holding them would keep the run's tensors alive past their death
        self.recorder.steps.append(step)
        ev = self.res.current
        if ev is not None:
            ev.step = len(self.recorder.steps) - 1

    def fractions(self, n_axes: int) -> tuple[float, ...]:
        fh, fw = self.fraction
        return (fh * fw,) if n_axes == 1 else (fh, fw)

    def axis_splits(self, sizes: Sequence[int]) -> list[list[tuple[int, int]]]:
        """Axis sizes (one or two) -> the balanced ranges of each axis under the plan's fraction."""
        return [splits(s, tile_size(s, f)) for s, f in zip(sizes, self.fractions(len(sizes)), strict=True)]

    def tile(self, src: torch.Tensor, index: tuple) -> torch.Tensor:
        """src[index] on the device (from its host copy when src is spilled)."""
        return self.res.tile(src, index)

    def new_output(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The full-size output of the current tiled operation (where the plan puts it)."""
        return self.res.new_output(tuple(int(s) for s in shape), dtype)

    def put(self, holder: torch.Tensor, index: tuple, res: torch.Tensor) -> None:
        self.res.put(holder, index, res)

    # ------------------------------------------------------------------ dispatch
    def handle(self, func: Any, args: tuple, kwargs: dict) -> Any:
        name = getattr(func, "__name__", "")
        if name in _VIEWS or name.startswith("__get"):
            if self.lazy and not (name in _METADATA or (name == "__get__" and _getter(func) in _METADATA_GET)):
                self.realize((args, kwargs))
            return self.view(func, args, kwargs)
        if name == "contiguous" and args and isinstance(args[0], torch.Tensor) and len(args) == 1 and not kwargs:
            x = args[0]
            if self.node_of(x) is not None or x.is_contiguous():  # a chain's map is contiguous when computed
                return x
        if self.lazy:
            if name in _MUTATING or name in _INPLACE_DUNDER or (name.endswith("_") and not name.startswith("__")):
                if self.node_of(args[0] if args else None) is None:
                    self.flush()  # every deferred chain reads the map as it is before the write
            if name not in _CHAINING and name not in _POINTWISE and name not in _DTYPE_METHODS:
                self.realize((args, kwargs))
        if name in _COPIES:
            return self.whole(func, args, kwargs, kind="pass")
        first = len(self.res.events)
        out = self.dispatch(name, func, args, kwargs)
        if self.recorder is not None and len(self.res.events) > first and self.node_of(out) is None:
            self._cost(name, args, kwargs, out, first)
        return out

    # ------------------------------------------------------------------ deferred maps (vaelens.tiling.chain)
    def node_of(self, t: Any) -> Node | None:
        """The deferred operation a placeholder stands for; None for any other value."""
        return self.lazy.get(id(t)) if isinstance(t, torch.Tensor) and self.lazy else None

    def defer(self, node: Node) -> torch.Tensor:
        """A deferred map -> the placeholder tensor diffusers holds for it (its shape and dtype, no data)."""
        shape = tuple(int(s) for s in node.shape)
        if self.device.type == "meta":
            t = torch.empty(shape, dtype=node.dtype, device="meta")
        else:
            n = math.prod(shape) * torch.empty((), dtype=node.dtype).element_size()
            t = torch.empty(0, dtype=node.dtype, device=self.device)
            t.set_(self.res._null(n), 0, torch.Size(shape), _contiguous_strides(shape))
        node.bind(t)
        self.lazy[id(t)] = node
        weakref.finalize(t, self.lazy.pop, id(t), None)
        return t

    def realize(self, obj: Any) -> None:
        """Compute every deferred map among the tensors in `obj` (nested args): they become real tensors."""
        for t in tensors(obj, []):
            node = self.node_of(t)
            if node is not None:
                self.materialize(node)

    def flush(self) -> None:
        """Compute every deferred map diffusers still holds, oldest first."""
        for tid, node in list(self.lazy.items()):
            if self.lazy.get(tid) is node and node.value is None:
                self.materialize(node)

    def materialize(self, node: Node, *, groups: int | None = None, store_map: bool = True) -> _Stats | None:
        """Run the chain ending in `node` tile by tile (one device visit) and store its map; with `groups`,
        its GroupNorm statistics too, merged from every tile as it is computed (no second read). Without
        `store_map` only the statistics are kept: the node stays deferred and each chain that reads it
        computes it again on its own tiles (recomputation instead of a stored map)."""
        nodes = chains.order(node)
        regs = self.axis_splits([node.shape[-2], node.shape[-1]])
        candidates = chains.reusable(nodes)
        tiles: dict[Region, chains.TilePlan] = {}
        stats = _Stats() if groups else None
        work = [0.0, 0.0, 0]
        first = len(self.res.events)

        def load(r: Region) -> list[torch.Tensor]:
            tp = tiles[r] = chains.plan_tile(nodes, (r[0], r[1]))
            if self.recorder is not None:
                f, c, b = chains.cost(nodes, tp)
                work[0] += f
                work[1] += c
                work[2] += b
            return [self.tile(leaf, chains.leaf_index(leaf, box)) for leaf, box in tp.leaves]

        def fn(r: Region) -> Callable[..., Any]:
            def f(*leaf_tiles: torch.Tensor) -> Any:  # called after load(r)
                y = chains.compute(nodes, tiles[r], list(leaf_tiles))
                return (y, *_tile_stats(y, groups)) if groups else y
            return f

        holder: list[torch.Tensor] = []

        def store(r: Region, res: Any) -> None:
            y = res[0] if groups else res
            if stats is not None:
                stats.merge(res[1], res[2], res[3])
            if not store_map:
                return
            if not holder:
                reuse = self._reusable(candidates, tuple(node.shape), y.dtype)
                if reuse is not None:
                    holder.append(reuse)
                    self.res.writes(reuse)
                else:
                    holder.append(self.new_output(tuple(node.shape), y.dtype))
            self.put(holder[0], (Ellipsis, slice(*r[0]), slice(*r[1])), y)

        name = "chain:" + "+".join(n.name for n in nodes)
        self.loop(name, tuple(n.sig for n in nodes) + ((groups,),), regs, load, fn, store)
        if self.recorder is not None and len(self.res.events) > first:
            ev = self.res.events[first]
            ev.flops += work[0]
            ev.conv_flops += work[1]
            ev.device_bytes += int(work[2]) + (math.prod(node.shape) * 4 if groups else 0)
        if store_map:
            self._bind(node, holder[0])
        else:
            node.recompute = True
        return stats

    def normalize_stats(self, node: Node, groups: int) -> _Stats:
        """GroupNorm statistics of the deferred map `node`, computed by the chain that makes it; the map is stored,
        or (where the plan says, and its chain reads only stored maps) left to be recomputed by its readers.
        The event is labelled with the call's number, which the planner uses to choose."""
        k = self.norms
        self.norms += 1
        keep = k not in self.recompute or any(n.recompute for n in chains.order(node))
        first = len(self.res.events)
        stats = self.materialize(node, groups=groups, store_map=keep)
        if len(self.res.events) > first:
            self.res.events[first].norm = k
        assert stats is not None
        return stats

    def _bind(self, node: Node, value: torch.Tensor) -> None:
        """A computed chain: its placeholder (if diffusers still holds it) becomes the map."""
        node.value = value
        node.inputs = []  # the chain no longer reads anything through this node
        p = node.placeholder() if node.placeholder is not None else None
        if p is not None and self.lazy.get(id(p)) is node:
            del self.lazy[id(p)]
            p.set_(value.untyped_storage(), value.storage_offset(), value.size(), value.stride())
            self.res.buf(p)

    def dispatch(self, name: str, func: Any, args: tuple, kwargs: dict) -> Any:
        handler = HANDLERS.get(name)
        if handler is not None:
            return handler(self, func, args, kwargs)
        if name in _DTYPE_METHODS and args and isinstance(args[0], torch.Tensor):
            return self.cast(args[0], _DTYPE_METHODS[name])
        if name in _POINTWISE:
            return self.pointwise(func, args, kwargs)
        return self.whole(func, args, kwargs)

    def _cost(self, name: str, args: tuple, kwargs: dict, out: Any, first: int) -> None:
        """Planning: the operation's arithmetic (dense) or bytes read and written (the rest), untiled,
        on its first event; the time model prices it (vaelens.tiling.cost)."""
        ev = self.res.events[first]
        ins = [t for t in tensors((args, kwargs), []) if isinstance(t, torch.Tensor)]
        outs = output_tensors(out)
        if name in DENSE and outs:
            flops = op_flops(DENSE[name], [tuple(t.shape) for t in ins], tuple(outs[0].shape))
            ev.flops += flops
            ev.conv_flops += flops if name.startswith("conv") else 0.0
        elif not (len(outs) == 1 and any(o is outs[0] for o in ins)):  # not an identity
            ev.device_bytes += nbytes(t for t in ins if id(t) not in self.weights) + nbytes(outs)

    def view(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Metadata and views: no data read; a tensor result aliases its input's buffer."""
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and id(out) not in self.weights:
            self.res.buf(out)
        elif isinstance(out, (tuple, list)):
            for o in out:
                if isinstance(o, torch.Tensor):
                    self.res.buf(o)
        return out

    def whole(self, func: Any, args: tuple, kwargs: dict, *, kind: str = "whole") -> Any:
        """The operation as one piece on the device: its inputs are fetched first, its outputs stay."""
        if self.lazy:
            self.realize((args, kwargs))
        self.res.begin(kind, getattr(func, "__name__", str(func)))
        try:
            moved: list[torch.Tensor] = []

            def to_dev(t: torch.Tensor) -> torch.Tensor:
                if id(t) in self.weights:
                    return t
                d = self.res.need(t)
                moved.append(d)
                return d

            dargs, dkwargs = map_tensors((args, kwargs), to_dev)
            if self.recorder is not None and moved and kind == "whole":
                self._record(self._step(func, args, dargs, dkwargs, moved))
            out = func(*dargs, **dkwargs)
            for t in output_tensors(out):
                if id(t) not in self.weights:
                    self.res.buf(t)
            return out
        finally:
            self.res.end()

    def _step(self, func: Any, args: tuple, dargs: Any, dkwargs: Any, moved: list[torch.Tensor]) -> StepRecord:
        """The record of an operation run whole on `moved` (its non-weight tensors on the device)."""
        ids = [id(m) for m in moved]

        def f(*ins: torch.Tensor) -> Any:
            sub = dict(zip(ids, ins, strict=True))
            a, k = map_tensors((dargs, dkwargs), lambda t: sub.get(id(t), t))
            return func(*a, **k)

        name = getattr(func, "__name__", str(func))
        scal = tuple(v for v in args[1:] if isinstance(v, (int, float, bool, str)))
        return StepRecord(kind=f"whole:{name}", key=(name, scal, *((tuple(t.shape), t.dtype) for t in moved)), fn=f,
                          inputs=moved, tiles=1, whole=True)

    # ------------------------------------------------------------------ elementwise
    def pointwise(self, func: Any, args: tuple, kwargs: dict, *, reduce_dims: tuple[int, ...] = ()) -> Any:
        name = getattr(func, "__name__", "")
        inplace = name in _INPLACE_DUNDER or (name.endswith("_") and not name.startswith("__"))
        ts = tensors((args, kwargs), [])
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
        if nd >= 4 and (not inplace or self.node_of(args[0]) is not None):
            node = self._pointwise_node(func, name, args, kwargs, shape, inplace)
            if node is not None:
                if inplace:  # the placeholder diffusers holds now stands for the new value
                    old = self.node_of(args[0])
                    assert old is not None
                    old.placeholder = None
                    node.bind(args[0])
                    self.lazy[id(args[0])] = node
                    return args[0]
                return self.defer(node)
        if self.lazy:
            self.realize((args, kwargs))
        regs = self.axis_splits([shape[a] for a in axes])
        if one_tile(regs):
            return self.whole(func, args, kwargs)

        def cut(t: torch.Tensor, r: Region) -> torch.Tensor:
            if id(t) in self.weights and t.device == self.device and all(s == 1 for s in t.shape[-2:]):
                return t
            sl = [slice(None)] * t.ndim
            for ax, (a, b) in zip(axes, r, strict=True):
                i = ax - (nd - t.ndim)
                if i >= 0 and t.shape[i] != 1:
                    sl[i] = slice(a, b)
            return self.tile(t, tuple(sl))

        flat = list(args)
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

        holder: list[torch.Tensor] = []

        def store(r: Region, res: torch.Tensor) -> None:
            if not holder:
                reuse = args[0] if inplace else self._reusable([flat[i] for i in slots], shape, res.dtype)
                if reuse is not None:
                    holder.append(reuse)
                    self.res.writes(reuse)
                else:
                    holder.append(self.new_output(shape, res.dtype))
            self.put(holder[0], (Ellipsis, *(slice(a, b) for a, b in r)), res)

        self.loop(f"pointwise:{name}", (name,), regs, load, fn, store)
        return holder[0]

    def _pointwise_node(self, func: Any, name: str, args: tuple, kwargs: dict, shape: tuple[int, ...],
                        inplace: bool) -> Node | None:
        """A pointwise operation over maps -> its deferred Node; None where it cannot join a chain (an input
        that broadcasts along a tiled axis in some other way, a 1-D tensor along the last axis)."""
        if inplace:  # computed out of place on the tile: the tile of the old value may be read elsewhere
            base = _INPLACE_DUNDER.get(name, name.rstrip("_"))
            func = getattr(torch.Tensor, base, None)
            if func is None:
                return None
            name = base
        flat = list(args)
        slots = [i for i, a in enumerate(flat) if isinstance(a, torch.Tensor)]
        kslots = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        vals = [flat[i] for i in slots] + [kwargs[k] for k in kslots]
        inputs: list[Any] = []
        is_map: list[bool] = []
        sig: list[Any] = []
        for t in vals:
            node = self.node_of(t)
            axes = chains.spatial(t, shape)
            if axes is None:
                return None
            small = not any(axes)
            weight = id(t) in self.weights
            if node is None and small and t.ndim < 2 and not weight:
                return None  # a tracked tensor the tile code cannot cut: the operation runs unchained
            mapped = node is not None or not (small and weight)
            inputs.append(node if node is not None else t)
            is_map.append(mapped)
            sig.append((mapped, tuple(t.shape) if small else axes, t.dtype))
        meta = [torch.empty(tuple(t.shape), dtype=t.dtype, device="meta") for t in vals]
        # the call holds no tensor of the run: a placeholder it held would stay alive (and be computed)
        bare = [None if i in slots else a for i, a in enumerate(flat)]
        call = chains.pointwise_call(func, bare, slots, {k: (None if k in kslots else v) for k, v in kwargs.items()},
                                     kslots)
        try:
            out = call(meta)
        except (RuntimeError, TypeError, ValueError):
            return None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
            return None
        scal = tuple(v for v in (*flat, *kwargs.values()) if isinstance(v, (int, float, bool, str)))
        return Node(kind="pointwise", name=name, shape=shape, dtype=out.dtype, inputs=inputs,
                    params={"call": call, "is_map": is_map},
                    sig=("pointwise", name, shape[:-2], out.dtype, tuple(sig), scal))

    def _reusable(self, ins: list[torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """An input whose buffer the plan lets this operation overwrite tile by tile: the operation is its last
        use (planning marks the candidate; the plan's second recording and the run reuse it)."""
        for t in ins:
            if (id(t) in self.weights or tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous()
                    or t.storage_offset() != 0 or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
                continue
            b = self.res.buf(t)
            if b is None:
                continue
            if self.res.current is not None and self.res.current.reuse is None:
                self.res.current.reuse = b.index
            return t if (self.res.k - 1) in self.res.inplace else None
        return None

    def cast(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if x.dtype == dtype:
            return x
        return self.pointwise(_Cast(dtype), (x,), {})


class _Stats:
    """GroupNorm statistics of a whole map merged from its tiles: Chan et al.'s parallel merge of (count,
    mean, M2) in float64, exact up to rounding, unlike averaging per-tile variances."""

    def __init__(self) -> None:
        self.n: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def merge(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        mean_b, var_b = mean.double(), var.double()
        if self.n is None:
            self.n = torch.tensor(float(count), dtype=torch.float64, device=mean_b.device)
            self.mean, self.m2 = mean_b, var_b * count
            return
        assert self.mean is not None and self.m2 is not None
        na = self.n
        tot = na + count
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (count / tot)
        self.m2 = self.m2 + var_b * count + delta * delta * (na * count / tot)
        self.n = tot

    def mean_rstd(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean, 1 / sqrt(variance + eps)), float64 [N, groups]."""
        assert self.n is not None and self.mean is not None and self.m2 is not None
        return self.mean, torch.rsqrt(self.m2 / self.n + eps)


def _tile_stats(t: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A tile [N, C, ...] -> per (sample, group) mean and variance in float32, and the element count."""
    g = t.unflatten(1, (groups, -1)).float()
    var, mean = torch.var_mean(g, dim=tuple(range(2, g.ndim)), correction=0)
    return mean, var, math.prod(g.shape[2:])


def _getter(func: Any) -> str:
    """Tensor.<property>.__get__ -> the property's name."""
    return getattr(getattr(func, "__self__", None), "__name__", "")


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCounts:
    """What a tiled run actually did: bytes copied host -> device and back, the host peak, warnings."""

    h2d_bytes: int
    d2h_bytes: int
    host_peak_bytes: int
    warnings: tuple[str, ...] = ()

    @property
    def transfer_bytes(self) -> int:
        return self.h2d_bytes + self.d2h_bytes


def run_tiled(module: torch.nn.Module, call: Callable[[], Any], *, fraction: tuple[float, float],
              recorder: Recorder | None = None, decisions: Sequence[Decision] | None = None,
              residency: Residency | None = None, spill_dir: Any = None,
              counts: list[RunCounts] | None = None, inputs: Sequence[torch.Tensor] = (),
              inplace: frozenset[int] = frozenset(), recompute: frozenset[int] = frozenset()) -> Any:
    """Run call() (a method of `module` on device-resident inputs) with every operation tiled.

    Planning: `recorder` set, `decisions` None (nothing moves; the events are recorded in `residency`).
    A run: `decisions` from the plan's schedule (None: nothing is spilled — the budget is the caller's
    concern). `recompute`: the GroupNorm calls (numbered in call order) whose input map is recomputed by its
    readers instead of stored (the plan's choice; planning and the run must use the same).
    `inputs`: the caller's tensors, on the device again at the end as they were given.
    -> what call() returns, its tensors on the module's device; `counts` gets the RunCounts."""
    device = next(iter(module.parameters())).device
    weights = weight_ids(module)
    if residency is None:
        if decisions is None and recorder is None:
            decisions = _never_spill()
        residency = Residency(device=device, weights=weights, decisions=decisions, spill_dir=spill_dir,
                              pin=True)
        residency.inplace = inplace
    ex = Executor(device=device, fraction=fraction, weights=weights, residency=residency, recorder=recorder,
                  recompute=recompute)
    collecting = gc.isenabled()
    gc.disable()  # deaths by reference count only: planning and the run see them at the same events
    try:
        with TiledMode(ex):
            out = call()
        ex.flush()  # maps still deferred (the outputs among them) are computed before they are returned
        residency.begin("return", "return")  # outside the mode: its copies are the executor's own
        for t in (*output_tensors(out), *inputs):
            if id(t) not in weights:
                residency.need(t)
        residency.end()
        residency.copier.settle()  # every copy to the host is complete before the run returns
        if counts is not None:
            counts.append(RunCounts(h2d_bytes=residency.h2d_bytes, d2h_bytes=residency.d2h_bytes,
                                    host_peak_bytes=residency.host_peak,
                                    warnings=(*residency.warnings, *residency.copier.warnings)))
        return out
    finally:
        if collecting:
            gc.enable()
        if recorder is None:
            residency.close()


class _never_spill(list):  # noqa: N801
    """Decisions for a run without a plan: every event keeps everything on the device."""

    def __getitem__(self, k: Any) -> Decision:  # type: ignore[override]
        return Decision()

    def __len__(self) -> int:
        return 1 << 60
