"""The CUDA caching allocator's accounting: allocated bytes as torch.cuda.memory_allocated() counts them.

malloc(storage, bytes) / free(storage) / transient(bytes) -> `allocated`, the 512-rounded sum of live
blocks (pytorch c10/cuda/CUDACachingAllocator.cpp: round_size, kMinBlockSize = 512).
"""

from __future__ import annotations

from vaelens.trace import round_block


class CachingAllocator:
    """Live blocks keyed by storage id; `allocated` is what memory_allocated() would report."""

    def __init__(self) -> None:
        self.blocks: dict[int, int] = {}
        self.allocated = 0

    def malloc(self, key: int, nbytes: int) -> None:
        size = round_block(nbytes)
        self.blocks[key] = size
        self.allocated += size

    def free(self, key: int) -> None:
        size = self.blocks.pop(key, 0)
        self.allocated -= size

    def transient(self, nbytes: int) -> int:
        """Bytes a kernel's temporaries add on top of `allocated` while it runs."""
        return round_block(nbytes)
