"""Tile arithmetic: split an axis into balanced tiles, and the input rows a convolution needs.

Pure integer math (no torch): the executor and the planner share it, so the tiles the plan prices
are the tiles the run computes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence


def splits(size: int, tile: int) -> list[tuple[int, int]]:
    """An axis of `size` -> ceil(size / tile) balanced [start, stop) ranges, none longer than `tile`.

    >>> splits(10, 4)
    [(0, 3), (3, 6), (6, 10)]
    >>> splits(5, 8)
    [(0, 5)]
    """
    tile = max(1, tile)
    n = max(1, math.ceil(size / tile))
    edges = [i * size // n for i in range(n + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def tile_size(size: int, fraction: float) -> int:
    """An axis of `size` and the plan's tile fraction (tile side ÷ full side) -> tile length on it."""
    return max(1, math.ceil(size * fraction - 1e-9))


def regions(sizes: Sequence[int], tiles: Sequence[int]) -> Iterator[tuple[tuple[int, int], ...]]:
    """Per-axis sizes and tile lengths -> every tile as one (start, stop) per axis, row-major."""
    axes = [splits(s, t) for s, t in zip(sizes, tiles, strict=True)]

    def rec(i: int, acc: tuple[tuple[int, int], ...]):
        if i == len(axes):
            yield acc
            return
        for r in axes[i]:
            yield from rec(i + 1, (*acc, r))

    yield from rec(0, ())


def count(sizes: Sequence[int], tiles: Sequence[int]) -> int:
    """How many tiles `regions(sizes, tiles)` yields."""
    return math.prod(len(splits(s, t)) for s, t in zip(sizes, tiles, strict=True))


def conv_input(out: tuple[int, int], size: int, kernel: int, stride: int, padding: int,
               dilation: int) -> tuple[int, int, int, int]:
    """Output rows [a, b) of a convolution over an axis of `size` input rows ->
    (first input row, stop row, zero rows before, zero rows after) it reads.

    Output row o reads input rows o·stride − padding … o·stride − padding + dilation·(kernel − 1);
    rows outside [0, size) are the convolution's zero padding.

    >>> conv_input((0, 4), 8, 3, 1, 1, 1)   # 3x3, padding 1: rows -1..4 -> one zero row on top
    (0, 5, 1, 0)
    >>> conv_input((2, 4), 9, 3, 2, 0, 1)   # stride 2, no padding: rows 4..8
    (4, 9, 0, 0)
    """
    a, b = out
    first = a * stride - padding
    stop = (b - 1) * stride - padding + dilation * (kernel - 1) + 1
    lo, hi = max(0, -first), max(0, stop - size)
    return max(0, first), min(size, stop), lo, hi
