"""Where each full-size tensor of a tiled run lives (device or host), and every byte moved between them.

A *buffer* is one storage the executor has seen (a diffusers tensor and all its views share it). It is on
the device, or spilled: its host copy holds the data and every tensor object aliasing it points at a
placeholder storage of the same size with no memory behind it (so diffusers still sees its shape and
dtype). Spill and fetch re-point those objects with `Tensor.set_`, the device never changes under them.

Planning (meta device) records one Event per device visit (a tiled operation, an operation run whole,
a copying view, the final return); the schedule (vaelens.tiling.schedule) decides from them which
buffers to spill and fetch before each event; the real run replays those decisions here and counts the
bytes it actually copies (`h2d_bytes`, `d2h_bytes`).
"""

from __future__ import annotations

import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaelens.tiling.copies import AsyncCopier, SyncCopier, make_copier


@dataclass(slots=True)
class Buf:
    """One storage: its index in creation order, its size, its host copy when spilled, the live tensor
    objects aliasing it."""

    index: int
    nbytes: int
    key: int
    birth: int
    death: int | None = None
    host: torch.Tensor | None = None  # uint8 [nbytes] on the host while spilled
    dropped: bool = False  # released because nothing reads it again
    file: Any = None  # the spill file behind `host` (a memory-mapped temporary file), when spilled to disk
    dirty: bool = False  # `host` was written in the current event (its file pages to write back)
    aliases: dict[int, weakref.ref] = field(default_factory=dict)


@dataclass(slots=True)
class Event:
    """One device visit as planning saw it: what it reads (and how many bytes it would stream per buffer
    if that buffer stayed on the host), what must be on the device whole, what it creates."""

    kind: str  # "tiled" | "whole" | "pass" | "return"
    name: str
    uses: dict[int, int] = field(default_factory=dict)  # buffer -> bytes streamed from the host if spilled
    required: set[int] = field(default_factory=set)  # buffers that must be on the device
    new: list[int] = field(default_factory=list)  # buffers born here
    out: int | None = None  # the buffer a tiled event writes tile by tile
    out_bytes: int = 0  # bytes it writes there (all its tiles)
    step: int | None = None  # index of the recorded device step (its working set)
    reuse: int | None = None  # a pointwise input buffer its output could overwrite (same shape and dtype)
    flops: float = 0.0
    conv_flops: float = 0.0
    device_bytes: int = 0
    norm: int | None = None  # the GroupNorm call (in call order) whose statistics this chain computes


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What the run does before one event: spill and fetch these buffers; a new tiled output on the host."""

    spill: tuple[int, ...] = ()
    fetch: tuple[int, ...] = ()
    out_host: bool = False
    drop: tuple[int, ...] = ()  # buffers no later event reads: memory freed, nothing copied


# Bytes a copy to or from a spill file moves before its pages are unmapped: RSS holds at most this much of
# a file-backed buffer during a spill or fetch. A multiple of every page size in use (4 KiB-64 KiB).
_CHUNK = 4 << 20


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class Residency:
    """The buffers of one run. Planning: `decisions` is None and every buffer stays on the device while
    events are recorded. Run: `decisions[k]` is applied when event k begins."""

    def __init__(self, *, device: torch.device, weights: set[int], decisions: Sequence[Decision] | None = None,
                 spill_dir: str | Path | None = None, pin: bool = False,
                 copier: SyncCopier | AsyncCopier | None = None) -> None:
        self.device = device
        self.weights = weights
        self.decisions = decisions
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        # how bytes cross (vaelens.tiling.copies): on CUDA a side stream from page-locked memory; else blocking
        self.copier = copier if copier is not None else make_copier(device, pin and spill_dir is None)
        self.host_device = torch.device("cpu")
        self.by_key: dict[int, Buf] = {}
        self.bufs: list[Buf] = []
        self.events: list[Event] = []
        self.current: Event | None = None
        self.k = 0  # events begun
        self.h2d_bytes = 0
        self.d2h_bytes = 0
        self.host_live = 0
        self.host_peak = 0
        self.warnings: list[str] = []
        self.closed = False
        self.pending: list[int] = []  # buffers first seen outside an event (a view of the caller's input)
        self._out_host = False
        self.inplace: frozenset[int] = frozenset()  # events whose pointwise output overwrites its input
        self._files: list[Any] = []
        self.spill_files = 0  # spill files created (memory-mapped, in spill_dir)

    # ------------------------------------------------------------------ buffers
    def buf(self, t: torch.Tensor) -> Buf | None:
        """The tracked buffer of a tensor, tracking it (on the device) at first sight; None for weights."""
        if id(t) in self.weights:
            return None
        key = _key(t)
        b = self.by_key.get(key)
        if b is None:
            b = Buf(index=len(self.bufs), nbytes=t.untyped_storage().nbytes(), key=key, birth=self.k)
            self.bufs.append(b)
            self.by_key[key] = b
            if self.current is not None:
                self.current.new.append(b.index)
            elif self.decisions is None:
                self.pending.append(b.index)
        if id(t) not in b.aliases:
            b.aliases[id(t)] = weakref.ref(t)
            weakref.finalize(t, self._drop, b, id(t))
        return b

    def _drop(self, b: Buf, tid: int) -> None:
        if self.closed:
            return
        b.aliases.pop(tid, None)
        if b.aliases or b.death is not None:
            return
        b.death = self.k
        if b.host is not None:
            self._release_host(b)
        if self.by_key.get(b.key) is b:
            del self.by_key[b.key]

    def _repoint(self, b: Buf, storage: Any) -> None:
        for ref in list(b.aliases.values()):
            t = ref()
            if t is not None:
                t.set_(storage, t.storage_offset(), t.size(), t.stride())
        if self.by_key.get(b.key) is b:
            del self.by_key[b.key]
        b.key = storage._cdata
        self.by_key[b.key] = b

    def _host_empty(self, n: int, b: Buf) -> torch.Tensor:
        if self.spill_dir is not None:  # a memory-mapped file: the host side is bounded by disk, not RAM
            f = tempfile.NamedTemporaryFile(dir=self.spill_dir, prefix="vaelens-spill-", suffix=".bin")
            self._files.append(f)
            self.spill_files += 1
            b.file = f
            return torch.from_file(f.name, shared=True, size=max(1, n), dtype=torch.uint8)[:n]
        return self.copier.host_empty(n)

    def _release_host(self, b: Buf) -> None:
        """A host copy no longer needed: a spill file is deleted now, not at the end of the run (the mapping,
        freed with the copy, keeps the data until then); page-locked memory goes back to the copier's pool
        once no copy touches it."""
        assert b.host is not None
        if b.file is not None:
            if b.file in self._files:
                self._files.remove(b.file)
            b.file.close()
            b.file = None
        else:
            self.copier.settle(b.index)
            self.copier.release(b.host)
        b.host = None
        b.dirty = False
        self.host_live -= b.nbytes

    def _unmap_pages(self, b: Buf, *, written: bool = False) -> None:
        """A file-backed host copy's pages leave this process's RSS (they stay in the file / page cache).
        Dirty MAP_SHARED pages count in RSS until unmapped, so without this a disk spill would hold in RSS
        every page it wrote or read. `written`: also write them back and drop them from the page cache,
        so the spilled side does not sit in RAM as dirty cache either."""
        if b.file is None or b.host is None:
            return
        from vaelens.tiling.ram import drop_pages

        drop_pages(b.host, b.file, sync=written)

    def _null(self, n: int) -> Any:
        """A storage of n bytes with no memory behind it, on the device (only its size is ever read)."""
        return torch._C._construct_storage_from_data_pointer(0, self.device, n)

    def _u8(self, storage: Any) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)

    def _any_alias(self, b: Buf) -> torch.Tensor:
        for ref in b.aliases.values():
            t = ref()
            if t is not None:
                return t
        raise RuntimeError(f"tiling: buffer {b.index} has no live tensor")

    def spill(self, b: Buf) -> None:
        """Device -> host copy; the device memory is freed (its tensors point at a placeholder)."""
        if b.host is not None:
            return
        host = self._host_empty(b.nbytes, b)
        data = self._u8(self._any_alias(b).untyped_storage())
        if b.file is not None:
            self._copy(host, data, b.file, host)
        else:
            self.copier.to_host(host, data, key=b.index)
        self.d2h_bytes += b.nbytes
        b.host = host
        self._host_add(b.nbytes)
        self._repoint(b, self._null(b.nbytes))
        self._unmap_pages(b, written=True)

    def drop(self, b: Buf) -> None:
        """A buffer no later operation reads: its memory is released (device or host), nothing is copied.
        Its tensors point at a placeholder; reading one afterwards is a plan/run mismatch (see need)."""
        if b.host is not None:
            self._release_host(b)
        else:
            self._repoint(b, self._null(b.nbytes))
        b.dropped = True

    def fetch(self, b: Buf) -> None:
        """Host -> device copy; the host copy is released."""
        if b.host is None:
            return
        if b.file is not None:
            real = torch.empty(b.nbytes, dtype=torch.uint8, device=self.device)
            self._copy(real, b.host, b.file, b.host)
            self._release_host(b)
        else:  # the copier takes the host block back once its copy has read it
            real = self.copier.fetch(b.host, self.device, key=b.index)
            b.host = None
            self.host_live -= b.nbytes
        self.h2d_bytes += b.nbytes
        self._repoint(b, real.untyped_storage())

    def _copy(self, dst: torch.Tensor, src: torch.Tensor, file: Any, mapped: torch.Tensor) -> None:
        """dst <- src (uint8, same length). With a spill file behind `mapped` (dst or src), in chunks whose
        file pages leave RSS as soon as each is copied: a whole-buffer copy would hold the buffer twice
        in RSS (its live copy and all its mapped file pages) — measured +105 MiB over the budget at
        1024x768 (benchmarks/tiled_cpu.py, x0.25:disk), the size of the largest map."""
        if file is None:
            dst.copy_(src)
            return
        from vaelens.tiling.ram import drop_pages

        n = dst.numel()
        for a in range(0, n, _CHUNK):
            dst[a:a + _CHUNK].copy_(src[a:a + _CHUNK])
            drop_pages(mapped[a:a + _CHUNK], file)

    def _host_add(self, n: int) -> None:
        self.host_live += n
        self.host_peak = max(self.host_peak, self.host_live)

    def host_view(self, t: torch.Tensor, b: Buf) -> torch.Tensor:
        """A tensor of a spilled buffer -> the same elements in its host copy."""
        assert b.host is not None
        return torch.empty(0, dtype=t.dtype, device=b.host.device).set_(
            b.host.untyped_storage(), t.storage_offset(), t.size(), t.stride())

    # ------------------------------------------------------------------ events
    def begin(self, kind: str, name: str) -> Event | None:
        """Start event k: planning records it; a run applies decision k (spills first, then fetches)."""
        self.current = None
        if self.decisions is None:
            ev = Event(kind=kind, name=name, new=self.pending)
            self.pending = []
            self.events.append(ev)
            self.current = ev
            self.k += 1
            return ev
        if self.k >= len(self.decisions):
            raise RuntimeError(f"tiling: the run made more device visits than its plan ({kind} {name})")
        d = self.decisions[self.k]
        self.k += 1
        live = {b.index: b for b in self.by_key.values()}
        for i in d.drop:
            if i in live:
                self.drop(live[i])
        for i in d.spill:
            if i in live:
                self.spill(live[i])
        for i in d.fetch:
            if i in live:
                self.fetch(live[i])
        self._out_host = d.out_host
        return None

    def end(self) -> None:
        """The current event is over (views made between events belong to none); spill files it wrote
        are written back."""
        self.current = None
        for b in self.by_key.values():
            if b.dirty:
                self._unmap_pages(b, written=True)
                b.dirty = False

    def need(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor the current event reads whole on the device."""
        b = self.buf(t)
        if b is None:
            return t if t.device == self.device else t.to(self.device)
        if self.current is not None:
            self.current.required.add(b.index)
            self.current.uses.setdefault(b.index, 0)
        if b.host is not None or b.dropped:  # the plan fetches what an event needs; a run out of step fails
            raise RuntimeError(f"tiling: buffer {b.index} is not on the device where the plan has it there")
        return t if t.device == self.device else t.to(self.device)

    def tile(self, src: torch.Tensor, index: tuple) -> torch.Tensor:
        """One tile of a full-size tensor, on the device (copied from the host copy when spilled)."""
        b = self.buf(src)
        if b is None:
            t = src[index]
            return t if t.device == self.device else t.to(self.device)
        if self.current is not None:
            piece = src[index]
            self.current.uses[b.index] = self.current.uses.get(b.index, 0) + piece.numel() * piece.element_size()
            return piece
        if b.dropped:
            raise RuntimeError(f"tiling: buffer {b.index} was released by the plan but is read again")
        if b.host is not None:
            piece = self.host_view(src, b)[index]
            moved = self.copier.to_device(piece, self.device, key=b.index)
            self.h2d_bytes += moved.numel() * moved.element_size()
            self._unmap_pages(b)
            return moved
        return src[index]

    def new_output(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The full-size output of a tiled event: on the device, or on the host where the plan says so."""
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        if self.decisions is not None and self._out_host:
            t = torch.empty(0, dtype=dtype, device=self.device)
            t.set_(self._null(n), 0, torch.Size(shape), _contiguous_strides(shape))
            b = self.buf(t)
            assert b is not None
            b.host = self._host_empty(n, b)
            self._host_add(n)
            return t
        t = torch.empty(shape, dtype=dtype, device=self.device)
        self.writes(t)
        return t

    def writes(self, holder: torch.Tensor) -> None:
        """The current (tiled) event writes `holder` tile by tile (a new output, or in place)."""
        b = self.buf(holder)
        if self.current is not None and b is not None:
            self.current.out = b.index
            self.current.out_bytes = holder.numel() * holder.element_size()

    def put(self, holder: torch.Tensor, index: tuple, res: torch.Tensor) -> None:
        """Write one computed tile into a full-size output (into its host copy when it lives there)."""
        b = self.buf(holder)
        if b is not None and b.host is not None and self.decisions is not None:
            self.copier.to_host_tile(self.host_view(holder, b)[index], res, key=b.index)
            self.d2h_bytes += res.numel() * res.element_size()
            if b.file is not None:
                b.dirty = True
                self._unmap_pages(b)
            return
        holder[index] = res

    def close(self) -> None:
        """Stop tracking (finalizers of tensors that outlive the run do nothing)."""
        self.copier.settle()
        self.closed = True
        for f in self._files:
            f.close()


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(1, int(s))
    return tuple(reversed(out))
