"""Depth-first tile chains: tileable operations recorded lazily, then computed tile by tile in one visit.

A tileable operation on a map (a convolution, a pointwise or channel-local operation, a dtype cast,
GroupNorm's apply, nearest upsampling by an integer factor) does not run when diffusers calls it: the
executor (vaelens.tiling.execute) hands back a placeholder tensor of the right shape and dtype and
records a Node. When something needs the map itself — a sync point: GroupNorm statistics, attention, a
view, an operation the executor does not tile, the return — the chain of nodes behind it runs tile by
tile. Each output tile asks its inputs for the box it reads (a convolution's halo, an upsampling's source
rows), down to maps that exist (the leaves), and the whole chain is computed on the device for that tile
alone. The map the chain ends in is the only full-size map it writes.

Exact by construction: every element of every node is computed from exactly the elements the untiled
call reads. A stride-1 "same" convolution runs on its clipped input box with its own padding and keeps
only the rows whose neighbourhood lies inside the box or beyond the map's true border; any other
convolution gets zero rows only where the map ends. Overlapping halos of neighbouring tiles are computed
once per tile that reads them (the extra work the planner prices).

Pure bookkeeping and tile arithmetic; the executor owns the placeholders, the residency and the loop.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vaelens.tiling.grid import conv_input

Span = tuple[int, int]
Box = tuple[Span, Span]  # rows, columns: the last two axes of a map

# Convolutions with a halo (or a stride) a chain may hold on its longest path. One keeps the halo a tile
# re-reads to a single kernel's: a ResNet block's GroupNorm statistics end a chain after each of its
# convolutions anyway; a chain of plain convolutions (TAESD) is stored after each one instead of
# recomputing a receptive field that grows with every layer.
MAX_CONVS = 1


@dataclass(eq=False)
class Node:
    """One deferred operation on a map: its kind, output shape and dtype, inputs and parameters.

    `inputs` holds, per argument, a Node (deferred), a tensor (a map that exists, or a small tensor such
    as a weight or a per-channel scale) or any other value. `sig` is hashable: two chains with equal
    signatures and equal tile shapes do the same device work (the planner prices it once)."""

    kind: str  # "pointwise" | "conv" | "upsample"
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    inputs: list[Any]
    params: dict[str, Any] = field(default_factory=dict)
    sig: tuple = ()
    value: torch.Tensor | None = None  # the map, once a chain has computed it
    placeholder: Any = None  # weakref to the tensor diffusers holds for this node
    recompute: bool = False  # its statistics are taken; each chain that reads it computes it again

    def bind(self, t: torch.Tensor) -> None:
        self.placeholder = weakref.ref(t)


def spatial(t: Any, shape: tuple[int, ...]) -> tuple[bool, bool] | None:
    """Whether a pointwise input of `shape`'s operation spans each of its last two axes (True) or
    broadcasts along it (False); None when it broadcasts some other way (not chainable)."""
    s = t.shape
    if len(s) < 2:
        return (False, False) if all(d == 1 for d in s) else None
    out = []
    for d, full in ((s[-2], shape[-2]), (s[-1], shape[-1])):
        if d == full:
            out.append(True)
        elif d == 1:
            out.append(False)
        else:
            return None
    return out[0], out[1]


def needs(node: Node, box: Box) -> list[Box | None]:
    """-> per input of `node`, the box of it that computing `box` of the node reads (None: not a map)."""
    if node.kind == "conv":
        x = node.inputs[0]
        p = node.params
        spans = []
        for i, span in enumerate(box):
            ax = len(x.shape) - 2 + i
            a, b, _, _ = conv_input(span, x.shape[ax], p["k"][i], p["stride"][i], p["padding"][i], p["dilation"][i])
            spans.append((a, b))
        return [(spans[0], spans[1])] + [None] * (len(node.inputs) - 1)
    if node.kind == "upsample":
        s = node.params["scale"]
        return [tuple((a // f, -(-b // f)) for (a, b), f in zip(box, s, strict=True))]  # type: ignore[list-item]
    out: list[Box | None] = []
    for t, is_map in zip(node.inputs, node.params["is_map"], strict=True):
        if is_map:
            axes = spatial(t, node.shape)
            assert axes is not None
            out.append(tuple(span if full else (0, 1) for span, full in zip(box, axes, strict=True)))  # type: ignore[arg-type]
        else:
            out.append(None)
    return out


def _union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return ((min(a[0][0], b[0][0]), max(a[0][1], b[0][1])), (min(a[1][0], b[1][0]), max(a[1][1], b[1][1])))


def _cut(t: torch.Tensor, have: Box, need: Box) -> torch.Tensor:
    """A tile covering `have` (on its last two axes) -> the part covering `need` (a view)."""
    if have == need:
        return t
    (h0, _), (w0, _) = have
    (a, b), (c, d) = need
    return t[..., a - h0:b - h0, c - w0:d - w0]


def order(root: Node) -> list[Node]:
    """The deferred nodes `root` depends on, inputs before the nodes that read them (root last)."""
    out: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        n, done = stack.pop()
        if done:
            out.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        for t in reversed(n.inputs):
            if isinstance(t, Node) and t.value is None and id(t) not in seen:
                stack.append((t, False))
    return out


def halo_depth(root: Node) -> int:
    """Convolutions with a halo or a stride on the longest deferred path from `root` back to a leaf."""
    depth: dict[int, int] = {}
    for n in order(root):
        below = max((depth[id(t)] for t in n.inputs if isinstance(t, Node) and t.value is None), default=0)
        # a recomputed map's own convolutions are the price of not storing it: they do not end a chain
        depth[id(n)] = 0 if n.recompute else below + int(n.kind == "conv" and n.params["halo"])
    return depth[id(root)]


def cut_point(src: Node) -> Node:
    """Where to end the chain below a convolution that cannot join it: on the straight path from `src` down
    to its haloed convolution (through upsampling and pointwise nodes with one deferred input), the node
    whose map is smallest — e.g. a ResNet block's output rather than its 4x larger upsampled copy."""
    best, node = src, src
    while True:
        if nbytes(node) < nbytes(best):
            best = node
        if node.kind == "conv" and node.params["halo"]:
            return best
        deferred = [t for t in node.inputs if isinstance(t, Node) and t.value is None]
        if len(deferred) != 1:
            return best
        node = deferred[0]


def nbytes(n: Node) -> int:
    """The bytes of a node's map."""
    return math.prod(n.shape) * torch.empty((), dtype=n.dtype).element_size()


def leaf_of(t: Any) -> torch.Tensor | None:
    """An input -> the existing map it reads (a computed Node's value, or the tensor itself)."""
    if isinstance(t, Node):
        return t.value
    return t if isinstance(t, torch.Tensor) else None


@dataclass(slots=True)
class TilePlan:
    """What one tile of a chain reads and computes: the box of every node, the leaves with their boxes."""

    boxes: dict[int, Box]  # id(node) -> its box
    leaves: list[tuple[torch.Tensor, Box]]  # existing maps read, in a fixed order, with the box read
    leaf_index: dict[int, int]  # id(leaf tensor) -> position in `leaves`


def plan_tile(nodes: list[Node], box: Box) -> TilePlan:
    """The chain `nodes` (order(root)) and the root's output box -> every node's box and the leaves' boxes."""
    boxes: dict[int, Box] = {id(nodes[-1]): box}
    leaf_boxes: dict[int, Box] = {}
    leaf_objs: dict[int, torch.Tensor] = {}
    for n in reversed(nodes):
        for t, need in zip(n.inputs, needs(n, boxes[id(n)]), strict=True):
            if need is None:
                continue
            if isinstance(t, Node) and t.value is None:
                boxes[id(t)] = _union(boxes.get(id(t)), need)
            else:
                leaf = leaf_of(t)
                assert leaf is not None
                leaf_boxes[id(leaf)] = _union(leaf_boxes.get(id(leaf)), need)
                leaf_objs[id(leaf)] = leaf
    keys = list(leaf_objs)  # first read first: the same order on every tile, in planning and in the run
    return TilePlan(boxes=boxes, leaves=[(leaf_objs[k], leaf_boxes[k]) for k in keys],
                    leaf_index={k: i for i, k in enumerate(keys)})


def leaf_index(leaf: torch.Tensor, box: Box) -> tuple:
    """The index of `box` in a leaf map (its last two axes; a broadcast axis of size 1 is read whole)."""
    return (Ellipsis, slice(*box[0]), slice(*box[1]))


def compute(nodes: list[Node], tp: TilePlan, leaf_tiles: list[torch.Tensor]) -> torch.Tensor:
    """The chain on one tile: leaf tiles (as loaded, in tp.leaves order) -> the root's tile."""
    vals: dict[int, tuple[torch.Tensor, Box]] = {}

    def get(t: Any, need: Box) -> torch.Tensor:
        if isinstance(t, Node) and t.value is None:
            v, have = vals[id(t)]
        else:
            leaf = leaf_of(t)
            assert leaf is not None
            i = tp.leaf_index[id(leaf)]
            v, have = leaf_tiles[i], tp.leaves[i][1]
        return _cut(v, have, need)

    for n in nodes:
        box = tp.boxes[id(n)]
        ins = [get(t, need) if need is not None else t for t, need in zip(n.inputs, needs(n, box), strict=True)]
        vals[id(n)] = (_run(n, box, ins), box)
    return vals[id(nodes[-1])][0]


def _run(n: Node, box: Box, ins: list[Any]) -> torch.Tensor:
    p = n.params
    if n.kind == "pointwise":
        return p["call"](ins)
    if n.kind == "conv":
        x = ins[0]
        if p["same"]:  # output row j of the box conv is global row a + j: keep the box's rows
            y = p["func"](x, p["weight"], p["bias"], p["stride_all"], p["padding_all"], p["dilation_all"],
                          p["groups"])
            a = needs(n, box)[0]
            assert a is not None
            return _cut(y, a, box)
        pads: list[int] = []
        x_shape = n.inputs[0].shape
        for i, span in enumerate(box):
            ax = len(x_shape) - 2 + i
            _, _, lo, hi = conv_input(span, x_shape[ax], p["k"][i], p["stride"][i], p["padding"][i], p["dilation"][i])
            pads[:0] = [lo, hi]
        if any(pads):
            x = F.pad(x, pads)
        return p["func"](x, p["weight"], p["bias"], p["stride_all"], p["inner"], p["dilation_all"], p["groups"])
    if n.kind == "upsample":
        src = needs(n, box)[0]
        assert src is not None
        y = p["func"](ins[0], scale_factor=p["scale_all"], mode=p["mode"])
        s = p["scale"]
        have = ((src[0][0] * s[0], src[0][1] * s[0]), (src[1][0] * s[1], src[1][1] * s[1]))
        return _cut(y, have, box)
    raise AssertionError(n.kind)


def cost(nodes: list[Node], tp: TilePlan) -> tuple[float, float, int]:
    """One tile's device work: (flops, convolution flops, bytes read and written by bytes-bound nodes)."""
    flops = conv = 0.0
    moved = 0
    for n in nodes:
        (a, b), (c, d) = tp.boxes[id(n)]
        out = math.prod(n.shape[:-2]) * (b - a) * (d - c)
        size = torch.empty((), dtype=n.dtype).element_size()
        if n.kind == "conv":
            w = n.params["weight"]
            f = 2.0 * out * math.prod(w.shape[1:])
            flops += f
            conv += f
        else:
            moved += out * size * 2  # reads about as much as it writes (inputs of the same box)
    return flops, conv, moved


def reusable(nodes: list[Node]) -> list[torch.Tensor]:
    """Leaves every tile reads exactly at the root's box (through pointwise nodes only): the chain may write
    its output over them, tile by tile, where the plan says this chain is their last use."""
    through: dict[int, bool] = {id(nodes[-1]): True}  # node -> its box is the root's box on every tile
    out: list[torch.Tensor] = []
    bad: set[int] = set()
    for n in reversed(nodes):
        aligned = through.get(id(n), False) and (n.kind == "pointwise" or _pointlike(n))
        maps = n.params["is_map"] if n.kind == "pointwise" else [True] * len(n.inputs)
        for t, is_map in zip(n.inputs, maps, strict=True):
            if not is_map:
                continue
            if isinstance(t, Node) and t.value is None:
                through[id(t)] = through.get(id(t), True) and aligned
                continue
            leaf = leaf_of(t)
            assert leaf is not None
            if aligned and tuple(leaf.shape) == tuple(nodes[-1].shape):
                if all(leaf is not o for o in out):
                    out.append(leaf)
            else:
                bad.add(id(leaf))
    return [t for t in out if id(t) not in bad]


def _pointlike(n: Node) -> bool:
    """A convolution that reads exactly its output box (1x1, stride 1, no padding on the tiled axes)."""
    p = n.params
    return n.kind == "conv" and not p["halo"] and all(x == 0 for x in p["padding"])


def pointwise_call(func: Callable[..., Any], args: list[Any], slots: list[int], kwargs: dict[str, Any],
                   kslots: list[str]) -> Callable[[list[Any]], torch.Tensor]:
    """func + its arguments with tensor slots -> ins (one value per slot, args then kwargs) -> func(...)."""
    def call(ins: list[Any]) -> torch.Tensor:
        a = list(args)
        for i, v in zip(slots, ins[:len(slots)], strict=True):
            a[i] = v
        kw = dict(kwargs)
        for k, v in zip(kslots, ins[len(slots):], strict=True):
            kw[k] = v
        return func(*a, **kw)
    return call
