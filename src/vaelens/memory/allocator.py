"""The CUDA caching allocator, as torch.cuda.memory_allocated() sees it.

malloc(key, bytes) / free(key) -> `allocated` and `peak`: the bytes of the blocks handed out. The model
follows pytorch c10/cuda/CUDACachingAllocator.cpp (expandable segments off, the default):
requests are rounded up to 512 bytes (kMinBlockSize); requests up to 1 MiB (kSmallSize) come from a
small pool of 2 MiB segments (kSmallBuffer), larger ones from a large pool whose segments are 20 MiB
(kLargeBuffer) below 10 MiB (kMinLargeAlloc) and otherwise the request rounded up to 2 MiB
(kRoundLarge). A request takes the smallest cached free block that fits (best fit); the block is split
only if the rest is at least 512 bytes (small pool) or more than 1 MiB (large pool) — otherwise the
whole block is handed out, and memory_allocated() counts the whole block. Freed blocks merge with
free neighbours in their segment; segments are never returned to the driver (no empty_cache()).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

# The CUDA caching allocator rounds every request up to a multiple of 512 bytes
# (kMinBlockSize in pytorch c10/cuda/CUDACachingAllocator.cpp); allocated-bytes stats count that.
BLOCK = 512


def round_block(nbytes: int) -> int:
    """bytes -> bytes the CUDA caching allocator accounts (>=512, multiple of 512; 0 stays 0)."""
    if nbytes <= 0:
        return 0
    return (nbytes + BLOCK - 1) // BLOCK * BLOCK


SMALL_SIZE = 1 << 20  # kSmallSize
SMALL_BUFFER = 2 << 20  # kSmallBuffer
LARGE_BUFFER = 20 << 20  # kLargeBuffer
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge


def segment_size(size: int) -> int:
    """Rounded request -> bytes of the cudaMalloc'd segment that would hold it (get_allocation_size)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return (size + ROUND_LARGE - 1) // ROUND_LARGE * ROUND_LARGE


@dataclass(slots=True)
class _Block:
    addr: int
    size: int
    small: bool
    free: bool = True
    prev: _Block | None = None
    next: _Block | None = None


class CachingAllocator:
    """Blocks keyed by the caller's ids; `allocated` is memory_allocated(), `peak` its maximum."""

    def __init__(self) -> None:
        self.allocated = 0
        self.peak = 0
        self.reserved = 0
        self._live: dict[object, _Block] = {}
        self._free: dict[bool, list[tuple[int, int, _Block]]] = {True: [], False: []}  # (size, addr, block)
        self._next_addr = 0

    def _insert(self, b: _Block) -> None:
        bisect.insort(self._free[b.small], (b.size, b.addr, b), key=lambda t: (t[0], t[1]))

    def _remove(self, b: _Block) -> None:
        pool = self._free[b.small]
        i = bisect.bisect_left(pool, (b.size, b.addr), key=lambda t: (t[0], t[1]))
        del pool[i]

    def malloc(self, key: object, nbytes: int) -> int:
        """Hand out a block for `nbytes`; returns the bytes memory_allocated() grows by."""
        size = round_block(max(nbytes, 1))
        small = size <= SMALL_SIZE
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1), key=lambda t: (t[0], t[1]))
        if i < len(pool):
            block = pool.pop(i)[2]
        else:
            seg = segment_size(size)
            block = _Block(self._next_addr, seg, small)
            self._next_addr += seg
            self.reserved += seg
        rest = block.size - size
        if (rest >= 512) if small else (rest > SMALL_SIZE):
            tail = _Block(block.addr + size, rest, small, True, block, block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next = tail
            block.size = size
            self._insert(tail)
        block.free = False
        self._live[key] = block
        self.allocated += block.size
        self.peak = max(self.peak, self.allocated)
        return block.size

    def free(self, key: object) -> None:
        block = self._live.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
        block.free = True
        for other in (block.prev, block.next):  # merge with free neighbours in the same segment
            if other is not None and other.free:
                self._remove(other)
                if other is block.prev:
                    other.size += block.size
                    other.next = block.next
                    if block.next is not None:
                        block.next.prev = other
                    block = other
                else:
                    block.size += other.size
                    block.next = other.next
                    if other.next is not None:
                        other.next.prev = block
        self._insert(block)

    def transient(self, nbytes: int) -> int:
        """A kernel's temporary buffer: allocated and freed at once; returns its block's bytes."""
        key = object()
        grown = self.malloc(key, nbytes)
        self.free(key)
        return grown

    def reset_peak(self) -> None:
        self.peak = self.allocated
