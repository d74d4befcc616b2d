"""The on-disk latent cache: safetensors shards, an append-only manifest, an index and a summary.

OUT/
  cache.json        summary of the last run: format, VAE identity, settings, normalisation, counts,
                    failures, NaN/Inf report, statistics (written atomically at the end or on Ctrl-C)
  index.jsonl       the dataset as of the last run: one record per file, in dataset order (atomic)
  manifest.jsonl    append-only log: one record per finished sample (resume reads it)
  shards/*.safetensors   tensors "<key>/mean", "<key>/logvar", "<key>/sample"; the shard's own records in
                    its metadata ("records"), so a shard whose manifest lines were lost is adopted on resume

A shard is written to a temporary name, fsync'ed and renamed (atomic on POSIX), and only then are its
records appended to the manifest (flushed, fsync'ed). A kill at any moment leaves either a whole shard or
none: a torn last manifest line is ignored, and a shard without manifest lines is read back from its
own metadata. A sample counts as finished once its shard exists; nothing finished is encoded again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelens.errors import VaeLensError

FORMAT = "vaelens.cache/1"
SHARD_FORMAT = "vaelens.cache.shard/1"
LATENT_DTYPES = ("fp32", "fp16", "bf16")


def atomic_write_text(path: Path, text: str) -> None:
    """text -> path via a temporary file in the same folder, fsync and rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest(out: Path) -> dict[str, dict[str, Any]]:
    """OUT -> {key: record} from manifest.jsonl (a torn line is skipped) and from the records in each shard's
    header that never reached the manifest (appended now); records whose shard is missing are dropped."""
    records: dict[str, dict[str, Any]] = {}
    manifest = out / "manifest.jsonl"
    if manifest.is_file():
        with open(manifest) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if isinstance(rec, dict) and "key" in rec:
                    records[rec["key"]] = rec
    shards = out / "shards"
    if shards.is_dir():  # every shard's header is read (cheap): its records are the ground truth
        for shard in sorted(shards.glob("*.safetensors")):
            orphan = [r for r in _shard_records(shard) if r["key"] not in records]
            if orphan:
                _append_lines(manifest, orphan)
                records.update({r["key"]: r for r in orphan})
    return {k: r for k, r in records.items() if (out / r["shard"]).is_file()}


def _shard_records(shard: Path) -> list[dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(shard), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 — an unreadable shard holds nothing finished
        return []
    if meta.get("format") != SHARD_FORMAT:
        return []
    return list(json.loads(meta.get("records", "[]")))


def _append_lines(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "a") as f:
        # a previous run killed mid-line leaves a torn line: start on a fresh one
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write("\n")
        for rec in records:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold OUT/.lock (flock) for the block: a second run on the same cache is refused, not interleaved.
    The kernel drops the lock when the process dies, so a killed run never leaves it behind."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise VaeLensError(f"out {str(out)!r} is being written by another vaelens cache run") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clean_temporaries(out: Path) -> int:
    """Remove temporary files a killed run left behind -> how many."""
    n = 0
    for tmp in [*out.glob(".*.tmp"), *(out / "shards").glob(".*.tmp")]:  # only ever called under exclusive()
        tmp.unlink(missing_ok=True)
        n += 1
    return n


@dataclass
class ShardWriter:
    """Collects finished samples and writes them as atomic shards (flush at `shard_size` samples or
    `flush_seconds`, whichever comes first, always between batches)."""

    out: Path
    latent_dtype: str = "fp16"
    shard_size: int = 256
    flush_seconds: float = 60.0
    pending: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    written: int = 0
    shards: int = 0
    _run: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6])
    _last: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.latent_dtype not in LATENT_DTYPES:
            raise VaeLensError(f"latent_dtype {self.latent_dtype!r} is not one of: {', '.join(LATENT_DTYPES)}")
        (self.out / "shards").mkdir(parents=True, exist_ok=True)

    def add(self, record: dict[str, Any], tensors: dict[str, Any]) -> None:
        """One finished sample: its manifest record and its tensors {"mean": t, "logvar": t, ...}."""
        self.pending.append((record, tensors))

    def batch_done(self) -> None:
        """Called between batches: flush when the shard is full or has waited long enough."""
        if len(self.pending) >= self.shard_size or (
            self.pending and time.monotonic() - self._last >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        import torch
        from safetensors.torch import save_file

        self._last = time.monotonic()
        if not self.pending:
            return
        name = f"shard-{self._run}-{self.shards:05d}.safetensors"
        rel = f"shards/{name}"
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.latent_dtype]
        tensors: dict[str, Any] = {}
        records = []
        for record, ts in self.pending:
            names = {}
            for what, t in ts.items():
                tname = f"{record['key']}/{what}"
                # .clone(): a view would save its whole base storage (the disk bloat of saving views)
                tensors[tname] = t.detach().to(torch_dtype).contiguous().clone()
                names[what] = tname
            records.append({**record, "shard": rel, "tensors": names, "dtype": self.latent_dtype})
        tmp = self.out / "shards" / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"format": SHARD_FORMAT, "records": json.dumps(records)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.out / rel)
        _fsync_dir(self.out / "shards")
        _append_lines(self.out / "manifest.jsonl", records)
        self.written += len(records)
        self.shards += 1
        self.pending = []


def write_index(out: Path, items: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The dataset as of this run (index.jsonl) and the run's summary (cache.json), both atomic."""
    atomic_write_text(out / "index.jsonl", "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in items))
    atomic_write_text(out / "cache.json", json.dumps(summary, indent=2) + "\n")


def read_summary(out: str | Path) -> dict[str, Any]:
    """OUT -> cache.json as a dict (one-line error when OUT is not a finished vaelens cache)."""
    p = Path(out)
    path = p / "cache.json"
    if not path.is_file():
        what = "an unfinished cache (no cache.json yet: rerun the same `vaelens cache` to finish it)" if (
            p / "manifest.jsonl"
        ).is_file() else "not a vaelens cache (no cache.json)"
        raise VaeLensError(f"cache {str(out)!r} is {what}")
    summary = json.loads(path.read_text())
    if summary.get("format") != FORMAT:
        raise VaeLensError(f"cache {str(out)!r} has format {summary.get('format')!r}; this vaelens reads {FORMAT}")
    return summary


def read_index(out: str | Path) -> list[dict[str, Any]]:
    with open(Path(out) / "index.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]
