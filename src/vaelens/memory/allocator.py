"""The CUDA caching allocator: allocated and reserved bytes, and what it does under a memory cap.

malloc(key, bytes) / free(key) -> `allocated` (torch.cuda.memory_allocated()), `reserved`
(memory_reserved(): the cudaMalloc'd segments) and their peaks. The model follows PyTorch's
c10/cuda/CUDACachingAllocator.cpp with its defaults (expandable_segments off, max_split_size
unlimited, garbage_collection_threshold 0):

- requests are rounded up to 512 bytes (kMinBlockSize); requests up to 1 MiB (kSmallSize) come from
  a small pool of 2 MiB segments (kSmallBuffer), larger ones from a large pool whose segments are
  20 MiB (kLargeBuffer) below 10 MiB (kMinLargeAlloc) and otherwise the request rounded up to 2 MiB
  (kRoundLarge) — `get_allocation_size`;
- a request takes the smallest cached free block that fits (best fit by size, then address:
  `get_free_block` on the pool's ordered set); the block is split only if the rest is at least
  512 bytes (small pool) or more than 1 MiB (large pool) — `should_split` — otherwise the whole
  block is handed out and memory_allocated() counts the whole block;
- freed blocks merge with free neighbours of their segment (`free_block` / `try_merge_blocks`);
  segments stay cached (reserved) until `empty_cache()`;
- under a cap (`torch.cuda.set_per_process_memory_fraction`: `allowed_memory_maximum`), a new
  segment that would take `reserved` over the cap fails in `alloc_block`; `malloc` then calls
  `release_cached_blocks` — every cached segment with no block in use (a free block with no
  neighbours) goes back to the driver — and tries `alloc_block` once more; only then is it an
  out-of-memory error (`release_available_cached_blocks` does nothing while max_split_size is
  unlimited, the default).

`OutOfMemory` is raised where PyTorch raises torch.OutOfMemoryError.
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


class OutOfMemory(Exception):  # noqa: N818 — mirrors torch.OutOfMemoryError, internal to the model
    """A request that did not fit under the cap even after the cached segments were released."""

    def __init__(self, nbytes: int, reserved: int, cap: int) -> None:
        super().__init__(f"out of memory: {nbytes} bytes asked, {reserved} reserved, cap {cap}")
        self.nbytes = nbytes


@dataclass(slots=True, eq=False)
class _Block:
    addr: int
    size: int
    small: bool
    free: bool = True
    prev: _Block | None = None
    next: _Block | None = None


class CachingAllocator:
    """Blocks keyed by the caller's ids; `allocated` / `reserved` and their peaks, an optional cap.

    `cap`: the most bytes of segments the process may hold (None: no limit), as
    set_per_process_memory_fraction(cap / device_total) sets it. `retries` counts the requests that
    released the cache and retried; `released` the segment bytes given back that way.
    """

    def __init__(self, cap: int | None = None) -> None:
        self.allocated = 0
        self.peak = 0
        self.reserved = 0
        self.reserved_peak = 0
        self.cap = cap
        self.retries = 0
        self.released = 0
        self._live: dict[object, _Block] = {}
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # sorted (size, addr)
        self._at: dict[int, _Block] = {}  # addr -> free block
        self._next_addr = 0

    # -- pools -------------------------------------------------------------------------------------
    def _insert(self, b: _Block) -> None:
        bisect.insort(self._free[b.small], (b.size, b.addr))
        self._at[b.addr] = b

    def _remove(self, b: _Block) -> None:
        pool = self._free[b.small]
        del pool[bisect.bisect_left(pool, (b.size, b.addr))]
        del self._at[b.addr]

    def _new_segment(self, size: int, small: bool) -> _Block | None:
        """alloc_block: a fresh segment for a rounded request, or None when the cap forbids it."""
        seg = segment_size(size)
        if self.cap is not None and self.reserved + seg > self.cap:
            return None
        block = _Block(self._next_addr, seg, small)
        self._next_addr += seg
        self.reserved += seg
        self.reserved_peak = max(self.reserved_peak, self.reserved)
        return block

    def release_cached(self) -> int:
        """release_cached_blocks / torch.cuda.empty_cache(): give every cached segment that has no
        block in use back to the driver; returns the bytes released."""
        freed = 0
        for small in (False, True):
            keep = []
            for entry in self._free[small]:
                b = self._at[entry[1]]
                if b.prev is None and b.next is None:
                    freed += b.size
                    del self._at[entry[1]]
                else:
                    keep.append(entry)
            self._free[small] = keep
        self.reserved -= freed
        return freed

    empty_cache = release_cached

    # -- malloc / free -----------------------------------------------------------------------------
    def malloc(self, key: object, nbytes: int) -> int:
        """Hand out a block for `nbytes`; returns the bytes memory_allocated() grows by.

        Raises OutOfMemory when a new segment is needed, the cap forbids it, and releasing the
        cached segments does not make room (the block is not handed out then)."""
        size = round_block(max(nbytes, 1))
        small = size <= SMALL_SIZE
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            block = self._at.pop(pool.pop(i)[1])
        else:
            block = self._new_segment(size, small)
            if block is None:  # malloc's retry: free all unused cached segments, try cudaMalloc again
                self.retries += 1
                self.released += self.release_cached()
                block = self._new_segment(size, small)
                if block is None:
                    raise OutOfMemory(size, self.reserved, self.cap or 0)
        rest = block.size - size
        if (rest >= BLOCK) if small else (rest > SMALL_SIZE):
            tail = _Block(block.addr + size, rest, small, True, block, block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next = tail
            block.size = size
            self._insert(tail)
        block.free = False
        self._live[key] = block
        self.allocated += block.size
        if self.allocated > self.peak:
            self.peak = self.allocated
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
        """A kernel's temporary buffer: allocated and freed at once; returns its block's bytes
        (raises OutOfMemory as malloc does)."""
        key = object()
        grown = self.malloc(key, nbytes)
        self.free(key)
        return grown

    def reset_peak(self) -> None:
        """torch.cuda.reset_peak_memory_stats(): both peaks restart from the current values."""
        self.peak = self.allocated
        self.reserved_peak = self.reserved
