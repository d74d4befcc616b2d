"""Host <-> device copies of a tiled run: synchronous, or asynchronous on a side CUDA stream from pinned memory.

vaelens.tiling.residency decides *what* moves; a Copier decides *how*:

- SyncCopier: plain blocking copies (a CPU "device", or a GPU where page-locked memory is unavailable).
- AsyncCopier: every copy is issued on a side stream, so it overlaps the kernels of the compute stream
  (the next tile's input crosses the link while this tile computes); the compute stream waits on an
  event only where it reads the copied data, and the host thread waits only where it reads host memory
  a copy is still writing. Host copies of whole maps come from a pool of page-locked blocks (reused, so
  pinning — slow — happens once per size). A tile is a strided box of a map: it goes through a ring of
  pinned staging buffers (a host memcpy packs or unpacks the box, the DMA moves the packed bytes); an
  output tile bound for the host is unpacked from its staging buffer later, before anything reads that
  map's host copy.

The stream operations are behind a small interface (CudaStreams) so that the ordering is testable on a CPU
with a stand-in that defers every copy until something waits for it (tests/test_tiling_copies.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = ["AsyncCopier", "CudaStreams", "SyncCopier", "make_copier"]


class Streams(Protocol):
    """The stream operations an AsyncCopier needs."""

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> Any:
        """Issue dst.copy_(src) on the side stream after the compute stream's work so far -> its event."""

    def wait(self, event: Any) -> None:
        """The compute stream waits for `event` (the host does not)."""

    def sync(self, event: Any) -> None:
        """The host waits for `event`."""

    def done(self, event: Any) -> bool:
        """Whether `event` has completed (never blocks)."""

    def pinned(self, n: int) -> torch.Tensor:
        """n bytes of page-locked host memory (uint8); raises RuntimeError where pinning fails."""


class CudaStreams:
    """Streams on one CUDA device: a side stream for copies, events, page-locked host memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.side = torch.cuda.Stream(device=device)

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> Any:
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)  # src was written by kernels already queued on the compute stream
        with torch.cuda.stream(self.side):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.side)
        for t in (dst, src):  # the caching allocator must not hand this memory out before the copy ends
            if t.is_cuda:
                t.record_stream(self.side)
        return event

    def wait(self, event: Any) -> None:
        torch.cuda.current_stream(self.device).wait_event(event)

    def sync(self, event: Any) -> None:
        event.synchronize()

    def done(self, event: Any) -> bool:
        return bool(event.query())

    def pinned(self, n: int) -> torch.Tensor:
        return torch.empty(max(1, n), dtype=torch.uint8, pin_memory=True)[:n]


class SyncCopier:
    """Blocking copies through ordinary host memory (or memory-mapped files in `spill_dir`)."""

    asynchronous = False

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def host_empty(self, n: int) -> torch.Tensor:
        return torch.empty(n, dtype=torch.uint8)

    def to_host(self, dst: torch.Tensor, src: torch.Tensor, key: Any = None) -> None:
        dst.copy_(src)

    def to_device(self, src: torch.Tensor, device: torch.device, key: Any = None) -> torch.Tensor:
        return src.to(device, copy=True)

    def fetch(self, src: torch.Tensor, device: torch.device, key: Any = None) -> torch.Tensor:
        out = torch.empty(src.shape, dtype=src.dtype, device=device)
        out.copy_(src)
        return out

    def to_host_tile(self, dst: torch.Tensor, src: torch.Tensor, key: Any = None) -> None:
        dst.copy_(src)

    def release(self, host: torch.Tensor, event: Any = None) -> None:
        pass

    def settle(self, key: Any = None) -> None:
        pass


@dataclass(slots=True)
class _Stage:
    buf: torch.Tensor | None = None  # pinned uint8
    event: Any = None  # the copy that last used it
    writeback: tuple[torch.Tensor, Any] | None = None  # (host destination, key) still to unpack into


class AsyncCopier:
    """Copies on a side stream from pinned memory (see the module docstring). `key` names the host map a tile
    copy reads or writes, so reads wait only for that map's pending writes."""

    asynchronous = True

    def __init__(self, streams: Streams, *, ring: int = 4) -> None:
        self.s = streams
        self.warnings: list[str] = []
        self.pool: list[torch.Tensor] = []  # released page-locked blocks
        self.busy: deque[tuple[Any, torch.Tensor]] = deque()  # (event, block) blocks a copy still reads
        self.ready: dict[Any, Any] = {}  # key -> event of the last whole-map copy into its host block
        self.stages = [_Stage() for _ in range(ring)]
        self.next = 0
        self.pinning = True

    # ------------------------------------------------------------------ page-locked blocks
    def host_empty(self, n: int) -> torch.Tensor:
        self._reap()
        fits = [i for i, blk in enumerate(self.pool) if blk.numel() >= n]
        if fits:
            i = min(fits, key=lambda i: self.pool[i].numel())
            return self.pool.pop(i)[:n]
        return self._pinned_or_not(n)

    def release(self, host: torch.Tensor, event: Any = None) -> None:
        """A host block is free again (once `event`, a copy reading it, has completed)."""
        base = host if host._base is None else host._base
        if event is None:
            self.pool.append(base)
        else:
            self.busy.append((event, base))

    def _reap(self) -> None:
        while self.busy and self.s.done(self.busy[0][0]):
            self.pool.append(self.busy.popleft()[1])

    # ------------------------------------------------------------------ whole maps
    def to_host(self, dst: torch.Tensor, src: torch.Tensor, key: Any = None) -> None:
        """A whole map (contiguous bytes) device -> its host block."""
        self.ready[key] = self.s.copy(dst, src)

    def fetch(self, src: torch.Tensor, device: torch.device, key: Any = None) -> torch.Tensor:
        """A whole host block -> a new device tensor the compute stream may use; the block goes back to the pool
        when the copy has read it."""
        self.settle(key)
        out = torch.empty(src.shape, dtype=src.dtype, device=device)
        event = self.s.copy(out, src)
        self.s.wait(event)
        self.release(src, event)
        return out

    # ------------------------------------------------------------------ tiles (strided boxes of a host map)
    def _stage(self, n: int) -> _Stage:
        st = self.stages[self.next]
        self.next = (self.next + 1) % len(self.stages)
        if st.event is not None:
            self.s.sync(st.event)  # the copy that used it last must be over before it is overwritten
            st.event = None
        if st.writeback is not None:
            _unpack(st)
        if st.buf is None or st.buf.numel() < n:
            st.buf = self._pinned_or_not(n)
        return st

    def _pinned_or_not(self, n: int) -> torch.Tensor:
        if self.pinning:
            try:
                return self.s.pinned(n)
            except RuntimeError as exc:
                self.pinning = False
                self.warnings.append(f"page-locked host memory unavailable ({exc}); copies from pageable memory "
                                     "do not overlap computation")
        return torch.empty(n, dtype=torch.uint8)

    def to_device(self, src: torch.Tensor, device: torch.device, key: Any = None) -> torch.Tensor:
        """A box of a host map -> a new device tensor (packed through a staging buffer)."""
        self.settle(key)
        n = src.numel() * src.element_size()
        st = self._stage(n)
        assert st.buf is not None
        packed = st.buf[:n].view(src.dtype).view(src.shape)
        packed.copy_(src)  # host memcpy of the strided box
        out = torch.empty(src.shape, dtype=src.dtype, device=device)
        st.event = self.s.copy(out, packed)
        self.s.wait(st.event)
        return out

    def to_host_tile(self, dst: torch.Tensor, src: torch.Tensor, key: Any = None) -> None:
        """A computed tile on the device -> its box `dst` in a host map (unpacked before the map is read)."""
        n = src.numel() * src.element_size()
        st = self._stage(n)
        assert st.buf is not None
        packed = st.buf[:n].view(src.dtype).view(src.shape)
        st.event = self.s.copy(packed, src)
        st.writeback = (dst, key)

    def settle(self, key: Any = None) -> None:
        """Before the host copy of map `key` is read (every map when None): its pending copies are complete."""
        event = self.ready.pop(key, None) if key is not None else None
        if key is None:
            for e in self.ready.values():
                self.s.sync(e)
            self.ready.clear()
        elif event is not None:
            self.s.sync(event)
        for st in self.stages:
            if st.writeback is not None and (key is None or st.writeback[1] == key):
                self.s.sync(st.event)
                st.event = None
                _unpack(st)
        if key is None:
            self._reap()


def _unpack(st: _Stage) -> None:
    """A staged output tile (its copy complete) -> its box in the host map."""
    assert st.writeback is not None and st.buf is not None
    dst, _ = st.writeback
    st.writeback = None
    dst.copy_(st.buf[:dst.numel() * dst.element_size()].view(dst.dtype).view(dst.shape))


def make_copier(device: torch.device, pin: bool) -> SyncCopier | AsyncCopier:
    """The copier a run on `device` uses: asynchronous with pinned memory on CUDA (when `pin`), else blocking."""
    if pin and device.type == "cuda":
        return AsyncCopier(CudaStreams(device))
    return SyncCopier()
