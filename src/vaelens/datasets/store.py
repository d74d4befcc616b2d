"""The on-disk latent cache: safetensors shards, an append-only manifest, an index and a summary.

OUT/
  cache.json        summary of the last run: format, VAE identity, settings, normalisation, counts,
                    failures, NaN/Inf report, statistics (written atomically at the end or on Ctrl-C)
  index.jsonl       the dataset as of the last run: one record per file, in dataset order (atomic)
  manifest.jsonl    append-only log: one record per finished sample (resume reads it); each record names
                    its shard with the shard's size and sha256 ("shard_bytes", "shard_sha256")
  .vaelens-cache    marker written when a run claims the folder: a killed first run is still a cache
  shards/*.safetensors   tensors "<key>/mean", "<key>/logvar", "<key>/sample"; the shard's own records in
                    its metadata ("records"), so a shard whose manifest lines were lost is adopted on resume

A shard is written to a temporary name, fsync'ed and renamed (atomic on POSIX), and only then are its
records appended to the manifest (flushed, fsync'ed). A kill at any moment leaves either a whole shard or
none: a torn last manifest line is ignored, and a shard without manifest lines is read back from its
own metadata. A sample counts as finished once its shard exists and passes `check_shard` (its size is
what its safetensors header and the manifest say, its header holds the sample's tensors): a truncated or
deleted shard is dropped (and deleted) on the next run, and its samples are encoded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.outputs import publish

FORMAT = "vaelens.cache/1"
MARKER = ".vaelens-cache"
REPAIR = "rerun `vaelens cache` (cache_dataset) with the same DATA and OUT to repair it"
SHARD_FORMAT = "vaelens.cache.shard/1"
LATENT_DTYPES = ("fp32", "fp16", "bf16")


def atomic_write_text(path: Path, text: str) -> None:
    """text -> path via a temporary file in the same folder, fsync and rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    publish(tmp, path)
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


def read_manifest(out: Path, *, repair: bool = False) -> dict[str, dict[str, Any]]:
    """OUT -> {key: record} from manifest.jsonl (a torn line is skipped) and from the records in each shard's
    header that never reached the manifest (appended now); records whose shard is missing or fails
    `check_shard` are dropped, and with repair=True (only under `exclusive`) such a shard is deleted."""
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
    verdicts: dict[str, str | None] = {}
    if shards.is_dir():  # every shard's header is read (cheap): its records are the ground truth
        for shard in sorted(shards.glob("*.safetensors")):
            rel = f"shards/{shard.name}"
            verdicts[rel] = problem = check_shard(out, rel)
            if problem is not None:
                if repair:
                    shard.unlink(missing_ok=True)
                continue
            orphan = [r for r in _shard_records(shard) if r["key"] not in records]
            if orphan:
                extra = {"shard_bytes": shard.stat().st_size, "shard_sha256": file_sha256(shard)}
                orphan = [{**r, **extra} for r in orphan]
                _append_lines(manifest, orphan)
                records.update({r["key"]: r for r in orphan})
    kept = {}
    for k, r in records.items():
        if r["shard"] not in verdicts:
            verdicts[r["shard"]] = check_shard(out, r["shard"])
        if verdicts[r["shard"]] is None and r.get("shard_bytes", -1) in (-1, _size(out / r["shard"])):
            kept[k] = r
    return kept


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def file_sha256(path: str | Path) -> str:
    """file -> sha256 hex digest of its bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_header(path: Path) -> tuple[dict[str, Any], int]:
    """safetensors file -> (its JSON header, the file size the header implies), reading only the header.
    Raises OSError / ValueError when the file is shorter than its header or the header is not JSON."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"header length {n} is not plausible")
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError("cut inside its header")
    header = json.loads(raw)
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    return header, 8 + n + end


def check_shard(out: Path, rel: str, records: list[dict[str, Any]] | None = None) -> str | None:
    """A shard of OUT -> None when it is whole (exists; its size is what its header implies; the header is
    vaelens' and names every tensor of `records`), else what is wrong with it. Reads the header only."""
    path = out / rel
    if not path.is_file():
        return f"{rel} is missing"
    try:
        header, implied = shard_header(path)
    except (OSError, ValueError) as exc:
        return f"{rel} is unreadable ({exc})"
    actual = path.stat().st_size
    if actual != implied:
        return f"{rel} is {actual} bytes; its header says {implied} (truncated or damaged)"
    if (header.get("__metadata__") or {}).get("format") != SHARD_FORMAT:
        return f"{rel} is not a vaelens cache shard"
    for r in records or ():
        if r.get("shard_bytes") not in (None, actual):
            return f"{rel} is {actual} bytes; the manifest recorded {r['shard_bytes']}"
        missing = [t for t in r["tensors"].values() if t not in header]
        if missing:
            return f"{rel} lacks tensor {missing[0]!r}"
    return None


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
            raise VaeLensError(f"out {str(out)!r} is being written by another vaelens cache run", param="out",
                               value=str(out)) from None
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
            raise VaeLensError(f"latent_dtype {self.latent_dtype!r} is not one of: {', '.join(LATENT_DTYPES)}",
                               param="latent_dtype", value=self.latent_dtype, choices=LATENT_DTYPES)
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
        publish(tmp, self.out / rel)  # the umask's mode, not save_file's 0600 (issue 20 item 11)
        _fsync_dir(self.out / "shards")
        extra = {"shard_bytes": (self.out / rel).stat().st_size, "shard_sha256": file_sha256(self.out / rel)}
        _append_lines(self.out / "manifest.jsonl", [{**r, **extra} for r in records])
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
        raise VaeLensError(f"cache {str(out)!r} is {what}", param="out", value=str(out))
    summary = json.loads(path.read_text())
    if summary.get("format") != FORMAT:
        raise VaeLensError(f"cache {str(out)!r} has format {summary.get('format')!r}; this vaelens reads {FORMAT}",
                           param="out", value=str(out))
    return summary


def read_index(out: str | Path) -> list[dict[str, Any]]:
    with open(Path(out) / "index.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def is_cache_folder(out: Path) -> bool:
    """A folder vaelens made: its marker, a cache.json of this format, or a manifest (a killed first run)."""
    if (out / MARKER).is_file() or (out / "manifest.jsonl").is_file():
        return True
    try:
        return json.loads((out / "cache.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: Path, *, data_root: Path | None = None, force: bool = False) -> None:
    """OUT before anything is written: not a file, not inside the dataset, and either missing, empty, a
    vaelens cache, or force=True. Raises OutputError (OutputExistsError for a folder force=True may use)."""
    from vaelens.errors import OutputError, OutputExistsError

    if out.exists() and not out.is_dir():
        raise OutputError(f"out {str(out)!r} is a file; the cache is a folder", param="out", value=str(out))
    if data_root is not None and data_root.is_dir():
        o, d = out.resolve(), data_root.resolve()
        if o == d or d in o.parents:
            raise OutputError(
                f"out {str(out)!r} is inside data {str(data_root)!r}; a cache there would be read as part of the "
                "dataset: put it elsewhere", param="out", value=str(out))
    if out.is_dir() and not is_cache_folder(out) and any(p.name != ".lock" for p in out.iterdir()) and not force:
        raise OutputExistsError(str(out), what="out", reason="is a non-empty folder that is not a vaelens cache "
                                "(give an empty or new folder)", effect="write into it anyway")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedCache:
    """A cache folder this process holds (`claim_cache`): checked, created, marked and locked."""

    out: Path
    root: Path  # the dataset's root
    files: tuple[Path, ...]  # the dataset's files, listed when claimed
    skipped: tuple[tuple[Path, str], ...]  # paths under DATA that are no dataset item, and why


@contextlib.contextmanager
def claim_cache(data: str | Path, out: str | Path, *, force: bool = False) -> Iterator[ClaimedCache]:
    """DATA + OUT -> a ClaimedCache for the block, before any model is loaded: DATA listed (missing or
    empty: one error), OUT checked (`check_out`), created, marked and locked (`exclusive`). When the
    block fails and OUT was created here and holds nothing finished, OUT is removed again."""
    import shutil

    from vaelens.datasets.items import list_items

    out = Path(out).expanduser()
    root, files, skipped = list_items(data)
    check_out(out, data_root=root, force=force)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    ok = False
    try:
        with exclusive(out):
            if not (out / MARKER).is_file():
                atomic_write_text(out / MARKER, json.dumps({"format": FORMAT}) + "\n")
            yield ClaimedCache(out=out, root=root, files=tuple(files), skipped=tuple(skipped))
            ok = True
    finally:
        if not ok and created and not any((out / "shards").glob("*.safetensors")) and not (
            out / "cache.json"
        ).exists():
            shutil.rmtree(out, ignore_errors=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """Every shard of a cache checked against the manifest: size, header and sha256 of its bytes."""

    out: str
    shards: int
    samples: int
    bad: tuple[dict[str, Any], ...]  # {"shard", "problem", "samples"}
    removed: bool  # the bad shards were deleted (repair=True), so the next run encodes their samples

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_json(self) -> dict[str, Any]:
        return {"out": self.out, "ok": self.ok, "shards": self.shards, "samples": self.samples,
                "bad": list(self.bad), "removed": self.removed}


def verify_cache(out: str | Path, *, repair: bool = False) -> VerifyReport:
    """cache folder -> VerifyReport: each shard the manifest names is checked (`check_shard`) and hashed
    (sha256 of its bytes against the manifest's). repair=True (only under `exclusive`) deletes the shards
    that fail, so the next `cache_dataset` run encodes their samples again."""
    out = Path(out)
    if not out.is_dir() or not is_cache_folder(out):
        raise VaeLensError(f"cache {str(out)!r} is not a vaelens cache", param="out", value=str(out))
    latest: dict[str, dict[str, Any]] = {}  # a re-encoded sample's last record is the one that counts
    manifest = out / "manifest.jsonl"
    if manifest.is_file():
        with open(manifest) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "key" in rec:
                    latest[rec["key"]] = rec
    by_shard: dict[str, dict[str, dict[str, Any]]] = {}
    for key, rec in latest.items():
        by_shard.setdefault(rec["shard"], {})[key] = rec
    bad = []
    for rel, recs in sorted(by_shard.items()):
        problem = check_shard(out, rel, list(recs.values()))
        if problem is None:
            want = {r.get("shard_sha256") for r in recs.values()} - {None}
            if want and file_sha256(out / rel) not in want:
                problem = f"{rel}: its sha256 differs from the one recorded when it was written"
        if problem is not None:
            bad.append({"shard": rel, "problem": problem, "samples": len(recs)})
            if repair:
                (out / rel).unlink(missing_ok=True)
    return VerifyReport(out=str(out), shards=len(by_shard), samples=sum(len(r) for r in by_shard.values()),
                        bad=tuple(bad), removed=repair and bool(bad))
