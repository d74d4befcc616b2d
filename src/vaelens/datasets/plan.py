"""A dataset job planned before any encoding: every file scanned (hash, size), placed in its bucket,
keyed, and the work cut into batches that every engine runs identically.

DATA + VAE + settings -> scan (worker processes) -> per bucketing (one per resolution of a multi-resolution
cache) key = sha256(content hash, VAE identity, settings, that bucketing) -> batches: per bucket, the
files in dataset order cut every `batch_size` (finished files then dropped from their batch, so a
resumed or distributed run encodes exactly the batches an uninterrupted local run does — CPU
convolutions give bit-identical results only for identical batches).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaelens.datasets.items import Scan, list_items, rel_path, scan_item
from vaelens.datasets.pixels import Bucketing, Placement, decode_clip, decode_image, stack_pixels
from vaelens.errors import SizeError, VaeLensError

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def vae_identity(vae) -> dict[str, Any]:
    """LoadedVae -> {family, class, sha256 of its weight files, config}: what makes its raw latents."""
    digests = []
    for f in vae.files:
        st = Path(f).stat()
        memo = (str(Path(f).resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _FILE_HASHES:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    h.update(chunk)
            _FILE_HASHES[memo] = h.hexdigest()
        digests.append(_FILE_HASHES[memo])
    return {
        "family": vae.spec.name,
        "class": vae.spec.diffusers_class,
        "weights_sha256": digests,
        "config": {k: v for k, v in vae.spec.config.items() if not str(k).startswith("_")},
        "source": str(vae.source),
    }


def sample_key(content_hash: str, vae_id: dict[str, Any], settings: dict[str, Any]) -> str:
    """content hash + VAE identity (weights, architecture) + settings -> 32-hex cache key."""
    ident = {k: v for k, v in vae_id.items() if k != "source"}  # moving the weights file changes nothing
    text = json.dumps({"content": content_hash, "vae": ident, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One file to encode: where it is, its key, and its placement in a bucket."""

    path: str
    rel: str
    key: str
    content_hash: str
    kind: str
    placement: Placement
    resolution: int | None = None  # the bucketing's resolution (area buckets), else None
    warnings: tuple[str, ...] = ()  # the image reader's and the placement's


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """Files of one bucket encoded in one call."""

    index: int
    bucket: tuple[int, int]
    frames: int | None
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """The planned work: every file's fate (key, or why it is skipped), and the batches to run."""

    root: str
    scans: tuple[Scan, ...]  # every file under DATA, in dataset order (those that are no item carry an error)
    keys: dict[tuple[str, int], str]  # (path, bucketing index) -> key (usable files)
    items: dict[str, Item]  # key -> item (first file with that content)
    skipped: dict[tuple[str, int], str]  # (path, bucketing index) -> reason (unreadable, corrupt, too small, …)
    batches: tuple[Batch, ...]
    settings: dict[str, Any]
    vae_id: dict[str, Any]
    bucketings: int = 1

    @property
    def to_encode(self) -> int:
        return sum(len(b.items) for b in self.batches)


def scan_worker(args: tuple[str, str]) -> Scan:
    """(path, root) -> Scan; top-level so worker processes can run it."""
    return scan_item(Path(args[0]), Path(args[1]))


def decode_batch(batch: Batch) -> tuple[Any, list[int], dict[int, str]]:
    """Batch -> (uint8 pixels [n,bh,bw,3] or clips [n,F,bh,bw,3] of the files that decoded, their
    indices in the batch, {index: reason} for the others). Runs in worker processes."""
    arrays: list[np.ndarray] = []
    ok: list[int] = []
    errors: dict[int, str] = {}
    for i, item in enumerate(batch.items):
        try:
            if item.kind == "video":
                arrays.append(decode_clip(item.path, item.placement, batch.frames or 1))
            else:
                arrays.append(decode_image(item.path, item.placement))
            ok.append(i)
        except Exception as exc:  # noqa: BLE001 — a corrupt file is reported and skipped, never fatal
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            errors[i] = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return (stack_pixels(arrays) if arrays else None), ok, errors


def clip_frames(spec, frames: int | None) -> int | None:
    """Frames per clip for a video family (its frame rule applied: Wan floors to 4k+1; default the
    family's), None for an image VAE."""
    from vaelens.contract import apply_frame_rule

    if not spec.is_video:
        return None
    return apply_frame_rule(spec, frames)[0]


def plan_job(
    data: str | Path,
    vae,
    *,
    bucketing: Bucketing | tuple[Bucketing, ...],
    batch_size: int,
    settings: dict[str, Any],
    frames: int | None,
    done: set[str] | frozenset[str] = frozenset(),
    pool: Any = None,
    progress: Any = None,
    listing: tuple[Path, list[Path], list[tuple[Path, str]]] | None = None,
) -> Job:
    """DATA -> Job. `done` holds keys already in the cache; `pool` (an Executor) scans in parallel;
    `listing` is list_items(DATA) when the caller has it already. Several bucketings: every file is
    placed, keyed and encoded once per bucketing (a multi-resolution cache)."""
    if batch_size < 1:
        raise VaeLensError(f"batch_size {batch_size} must be at least 1", param="batch_size", value=batch_size)
    bucketings = bucketing if isinstance(bucketing, tuple) else (bucketing,)
    root, files, others = listing if listing is not None else list_items(data)
    scans = _scan_all(files, root, pool=pool, progress=progress)
    if others:  # a folder: every file in the order of its relative path
        scans += [Scan(path=str(f), rel=rel_path(f, root), kind="other", error=why) for f, why in others]
        scans.sort(key=lambda s: s.rel)
    vae_id = vae_identity(vae)
    keys, items, skipped, groups = {}, {}, {}, {}
    for r, b in enumerate(bucketings):
        _place_all(scans, vae, vae_id, r, bucketing=b, settings={**settings, "bucketing": b.to_json()},
                   frames=frames, keys=keys, items=items, skipped=skipped, groups=groups)
    return Job(
        root=str(root),
        scans=tuple(scans),
        keys=keys,
        items=items,
        skipped=skipped,
        batches=_cut_batches(groups, scans, batch_size=batch_size, done=done),
        settings=settings,
        vae_id=vae_id,
        bucketings=len(bucketings),
    )


def _scan_all(files, root: Path, *, pool: Any, progress: Any) -> list[Scan]:
    """files -> their Scans in dataset order (in worker processes when `pool` is given)."""
    args = [(str(f), str(root)) for f in files]
    scans: list[Scan] = []
    it = pool.map(scan_worker, args, chunksize=8) if pool is not None else map(scan_worker, args)
    from concurrent.futures.process import BrokenProcessPool

    try:
        for scan in it:
            scans.append(scan)
            if progress is not None:
                progress(len(scans), len(args), "scanning")
    except BrokenProcessPool:
        raise VaeLensError(f"a scan worker process died after {len(scans)} of {len(args)} files (killed by the "
                           "system, most likely for memory)", param="workers") from None
    return scans


def _place_all(
    scans: list[Scan], vae, vae_id: dict[str, Any], r: int, *, bucketing: Bucketing, settings: dict[str, Any],
    frames: int | None, keys: dict[tuple[str, int], str], items: dict[str, Item], skipped: dict[tuple[str, int], str],
    groups: dict[tuple[Any, ...], list[Item]],
) -> None:
    """Scans placed by bucketing number R -> KEYS ((path, r) -> key), ITEMS (key -> Item), SKIPPED
    ((path, r) -> why), GROUPS ((bucket, frames) -> Items in dataset order)."""
    video_vae = vae.spec.is_video
    for scan in scans:
        if scan.error or scan.size is None:
            skipped[(scan.path, r)] = scan.error or "no size"
            continue
        if scan.kind == "video" and not video_vae:
            skipped[(scan.path, r)] = f"a video clip; {vae.spec.name} is an image VAE"
            continue
        if scan.kind == "video" and scan.frames and frames and scan.frames < frames:
            skipped[(scan.path, r)] = f"clip has {scan.frames} frames; frames={frames} were asked for"
            continue
        try:
            placement = bucketing.place(*scan.size)
        except SizeError as exc:
            skipped[(scan.path, r)] = str(exc)
            continue
        key = sample_key(scan.content_hash, vae_id, settings)
        keys[(scan.path, r)] = key
        if key in items:  # the same content twice: encoded once, listed under both names
            continue
        item = Item(
            path=scan.path, rel=scan.rel, key=key, content_hash=scan.content_hash, kind=scan.kind, placement=placement,
            resolution=bucketing.resolution, warnings=scan.warnings + placement.warnings,
        )
        items[key] = item
        n_frames = frames if scan.kind == "video" else None
        groups.setdefault((placement.bucket, n_frames), []).append(item)


def _cut_batches(
    groups: dict[tuple[Any, ...], list[Item]], scans: list[Scan], *, batch_size: int,
    done: set[str] | frozenset[str],
) -> tuple[Batch, ...]:
    """Per bucket, files cut every `batch_size` before finished ones are dropped (so every run cuts the same
    batches) -> Batches in dataset order of each batch's first file."""
    batches = []
    for (bucket, n_frames), members in groups.items():
        for start in range(0, len(members), batch_size):
            todo = tuple(i for i in members[start : start + batch_size] if i.key not in done)
            if todo:
                batches.append((todo, bucket, n_frames))
    order = {s.path: n for n, s in enumerate(scans)}
    batches.sort(key=lambda b: (order[b[0][0].path], b[1]))  # in dataset order of each batch's first file
    return tuple(Batch(index=n, bucket=b, frames=f, items=t) for n, (t, b, f) in enumerate(batches))
