"""A cache's index held as columns: numpy arrays instead of one dict per item.

index.jsonl (one JSON record per sample) -> CompactIndex: keys as 32-byte strings, shard numbers, sizes
as int32 pairs, sources and captions as one UTF-8 buffer with offsets. About 100 bytes per item plus the
text of its source and caption (`nbytes`), where a list of parsed records takes ~2.8 KB per item: a
million items fit in ~0.1-0.3 GB. The file is read line by line, so a large index is never held twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_PAIRS = ("original_size", "resized_size", "crop_top_left", "bucket")


class _Strings:
    """Many short strings (some None) as one UTF-8 buffer, offsets and a presence mask."""

    def __init__(self, values: list[str | None]) -> None:
        enc = [v.encode() if v is not None else b"" for v in values]
        lengths = np.fromiter((len(b) for b in enc), dtype=np.int64, count=len(enc))
        self.offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.buffer = b"".join(enc)
        self.present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))

    def __getitem__(self, i: int) -> str | None:
        if not self.present[i]:
            return None
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].decode()

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + len(self.buffer) + self.present.nbytes


class CompactIndex:
    """The encoded samples of index.jsonl (optionally of one resolution) as columns; `skipped` keeps the
    records of files that have no latent."""

    def __init__(self, records: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> None:
        n = len(records)
        self.skipped = skipped
        self.shards: list[str] = []
        self.shard_bytes: dict[str, int | None] = {}
        shard_no: dict[str, int] = {}
        self.keys = np.empty(n, dtype="S32")
        self.shard = np.empty(n, dtype=np.int32)
        self.pairs = {name: np.empty((n, 2), dtype=np.int32) for name in _PAIRS}
        self.frames = np.full(n, -1, dtype=np.int32)
        self.resolution = np.full(n, -1, dtype=np.int32)
        sources, captions = [], []
        for i, r in enumerate(records):
            self.keys[i] = r["key"].encode()
            s = r["shard"]
            if s not in shard_no:
                shard_no[s] = len(self.shards)
                self.shards.append(s)
                self.shard_bytes[s] = r.get("shard_bytes")
            self.shard[i] = shard_no[s]
            for name in _PAIRS:
                self.pairs[name][i] = r[name]
            if r.get("frames") is not None:
                self.frames[i] = r["frames"]
            if r.get("resolution") is not None:
                self.resolution[i] = r["resolution"]
            sources.append(r["source"])
            captions.append(r.get("caption"))
        self.sources = _Strings(sources)
        self.captions = _Strings(captions)

    @classmethod
    def read(cls, path: str | Path, *, resolution: int | None = None) -> CompactIndex:
        """index.jsonl -> CompactIndex of its encoded samples (of `resolution` only, when given). Parsed
        in chunks, so only one chunk of dicts exists at a time."""
        parts: list[CompactIndex] = []
        chunk: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                r = json.loads(line)
                if "key" not in r:
                    skipped.append(r)
                elif resolution is None or r.get("resolution") == resolution:
                    chunk.append(r)
                    if len(chunk) >= 65536:
                        parts.append(cls(chunk, []))
                        chunk = []
        parts.append(cls(chunk, []))
        return cls.concat(parts, skipped)

    @classmethod
    def concat(cls, parts: list[CompactIndex], skipped: list[dict[str, Any]]) -> CompactIndex:
        if len(parts) == 1:
            parts[0].skipped = skipped
            return parts[0]
        out = cls([], skipped)
        shard_no: dict[str, int] = {}
        remaps = []
        for p in parts:
            for s in p.shards:
                if s not in shard_no:
                    shard_no[s] = len(out.shards)
                    out.shards.append(s)
                    out.shard_bytes[s] = p.shard_bytes[s]
            remaps.append(np.array([shard_no[s] for s in p.shards], dtype=np.int32))
        out.keys = np.concatenate([p.keys for p in parts])
        out.shard = np.concatenate(
            [m[p.shard] if len(p.shard) else p.shard for m, p in zip(remaps, parts, strict=True)])
        out.pairs = {k: np.concatenate([p.pairs[k] for p in parts]) for k in _PAIRS}
        out.frames = np.concatenate([p.frames for p in parts])
        out.resolution = np.concatenate([p.resolution for p in parts])
        out.sources = _join([p.sources for p in parts])
        out.captions = _join([p.captions for p in parts])
        return out

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (what a million-item cache costs in memory)."""
        return (self.keys.nbytes + self.shard.nbytes + sum(a.nbytes for a in self.pairs.values())
                + self.frames.nbytes + self.resolution.nbytes + self.sources.nbytes + self.captions.nbytes)

    def key(self, i: int) -> str:
        return self.keys[i].decode()

    def shard_of(self, i: int) -> str:
        return self.shards[self.shard[i]]

    def pair(self, name: str, i: int) -> tuple[int, int]:
        a = self.pairs[name][i]
        return int(a[0]), int(a[1])

    def groups(self) -> dict[tuple[int, int, int], np.ndarray]:
        """-> {(bucket h, bucket w, frames): item indices}: samples that stack into one batch."""
        b = self.pairs["bucket"]
        table = np.stack([b[:, 0], b[:, 1], self.frames], axis=1)
        uniq, inverse = np.unique(table, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        return {tuple(int(v) for v in u): order[bounds[k] : bounds[k + 1]] for k, u in enumerate(uniq)}


def _join(parts: list[_Strings]) -> _Strings:
    out = _Strings([])
    out.buffer = b"".join(p.buffer for p in parts)
    offs, base = [np.zeros(1, dtype=np.int64)], 0
    for p in parts:
        offs.append(p.offsets[1:] + base)
        base += len(p.buffer)
    out.offsets = np.concatenate(offs)
    out.present = np.concatenate([p.present for p in parts]) if parts else np.zeros(0, dtype=bool)
    return out
