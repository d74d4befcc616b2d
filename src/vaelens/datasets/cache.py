"""`cache_dataset`: every image (and clip) of a dataset encoded once into a resumable latent cache.

DATA + LoadedVae -> plan (scan, bucket, key, batches) -> engine (local processes | Ray Data) ->
ShardWriter (atomic shards + manifest) -> index.jsonl + cache.json (+ statistics) -> CacheReport.

Resume: keys already in the manifest (or in a shard whose manifest lines were lost) are not encoded again;
a kill loses at most the samples not yet in a shard (one shard's worth; flushes happen every `shard_size`
samples or `flush_seconds`). Ctrl-C flushes what is finished before stopping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vaelens.datasets.encoder import BatchEncoder, EncodeSettings
from vaelens.datasets.pixels import Bucketing
from vaelens.datasets.plan import Job, plan_job
from vaelens.datasets.store import FORMAT, ShardWriter, clean_temporaries, exclusive, read_manifest, write_index
from vaelens.errors import VaeLensError

ENGINES = ("local", "ray")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    """What is stored and how the work is cut (the encode itself: EncodeSettings)."""

    bucketing: Bucketing
    latent_dtype: str = "fp16"
    logvar: bool = False
    frames: int | None = None  # video clips: frames per clip
    batch_size: int = 8
    workers: int | None = None  # decode processes (None: CPUs, at most 8; 0: decode in this process)
    shard_size: int = 256
    flush_seconds: float = 60.0
    stats: bool = False  # statistics of the cached latents at the end
    engine: str = "local"
    address: str | None = None  # Ray cluster address (engine "ray")

    def key_fields(self) -> dict[str, Any]:
        return {
            "bucketing": self.bucketing.to_json(),
            "frames": self.frames,
            "latent_dtype": self.latent_dtype,
            "logvar": self.logvar,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheReport:
    """What one run did: counts, failures, NaN/Inf handling, speed, and (optionally) statistics."""

    out: str
    engine: str
    files: int
    encoded: int  # samples encoded in this run
    reused: int  # samples found finished in the cache
    skipped: tuple[dict[str, str], ...]  # {"source", "reason"}: unreadable, corrupt, too small
    nonfinite: tuple[dict[str, Any], ...]  # {"source", "key", "action"}
    shards_written: int
    seconds: float
    encode_seconds: float
    dtype: str
    dtype_reason: str | None
    buckets: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] | None = None
    complete: bool = True

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "engine": self.engine,
            "files": self.files,
            "encoded": self.encoded,
            "reused": self.reused,
            "skipped": list(self.skipped),
            "nonfinite": list(self.nonfinite),
            "shards_written": self.shards_written,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "dtype": self.dtype,
            "dtype_reason": self.dtype_reason,
            "buckets": self.buckets,
            "complete": self.complete,
            "stats": self.stats,
        }


def run_engine(job: Job, vae, encode: EncodeSettings, options: CacheOptions, pool: Any):
    """-> the engine's iterator of (batch, decoded indices, Encoded, decode errors), and the encoder's
    (dtype, reason)."""
    if options.engine == "ray":
        from vaelens.datasets.ray_engine import run_ray

        return run_ray(job, vae, encode, address=options.address, workers=options.workers)
    encoder = BatchEncoder(vae, encode)
    from vaelens.datasets.local import run_local

    return run_local(job, encoder, pool=pool), (encoder.dtype.value, encoder.dtype_reason)


def cache_dataset(
    data: str | Path,
    vae,
    out: str | Path,
    *,
    options: CacheOptions,
    encode: EncodeSettings | None = None,
    progress: Any = None,
) -> CacheReport:
    """DATA + LoadedVae -> latent cache in OUT (resumed when OUT holds one) -> CacheReport.

    `progress(done, total, what)` is called after scanning steps and after each batch.
    """
    from vaelens.datasets.plan import clip_frames

    encode = encode or EncodeSettings()
    if options.engine not in ENGINES:
        raise VaeLensError(f"engine {options.engine!r} is not one of: {', '.join(ENGINES)}")
    t0 = time.perf_counter()
    options = replace(options, frames=clip_frames(vae.spec, options.frames))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VaeLensError(f"out {str(out)!r} is a file; the cache is a folder")
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out):
        return _cache_locked(data, vae, out, options=options, encode=encode, progress=progress, t0=t0)


@dataclass(slots=True)
class _Tally:
    """What the encode loop has done so far; filled batch by batch, so not frozen."""

    dtype_reason: str | None
    nonfinite: list[dict[str, Any]] = field(default_factory=list)
    decode_failed: dict[str, str] = field(default_factory=dict)  # path -> why it did not decode
    encoded: int = 0
    processed: int = 0
    encode_seconds: float = 0.0
    complete: bool = False


def _cache_locked(data, vae, out: Path, *, options: CacheOptions, encode: EncodeSettings, progress, t0: float):
    """cache_dataset's work, holding OUT's lock: plan -> encode into shards -> index + summary."""
    from vaelens.datasets.encoder import resolve_dtype
    from vaelens.datasets.local import split_cpus, worker_pool

    clean_temporaries(out)
    done = read_manifest(out)
    dtype, dtype_reason = resolve_dtype(encode.dtype, device=vae.device, config=dict(vae.spec.config))
    settings = {**options.key_fields(), **encode.key_fields(dtype.value)}
    workers, threads = split_cpus(options.workers, encode.threads, vae.device)
    encode = replace(encode, threads=threads)
    writer = ShardWriter(
        out, latent_dtype=options.latent_dtype, shard_size=options.shard_size, flush_seconds=options.flush_seconds
    )
    tally = _Tally(dtype_reason=dtype_reason)
    with worker_pool(workers if options.engine == "local" else 0) as pool:
        job = plan_job(
            data,
            vae,
            bucketing=options.bucketing,
            batch_size=options.batch_size,
            settings=settings,
            frames=options.frames,
            done=set(done),
            pool=pool,
            progress=progress,
        )
        _encode_job(job, vae, encode, options, pool, writer=writer, tally=tally, progress=progress)
    return _finish(out, job, vae, options=options, encode=encode, writer=writer, tally=tally, done=done,
                   dtype=dtype.value, t0=t0)


def _encode_job(job: Job, vae, encode: EncodeSettings, options: CacheOptions, pool: Any, *,
                writer: ShardWriter, tally: _Tally, progress) -> None:
    """Job -> every batch run by the engine and written to shards; counts and failures into TALLY.
    Ctrl-C or an error still flushes what is finished."""
    total = job.to_encode
    if progress is not None:
        progress(0, total, "encoding")
    try:
        batches, (dtype_used, reason) = run_engine(job, vae, encode, options, pool)
        tally.dtype_reason = reason
        t_enc = time.perf_counter()
        for batch, ok, enc, errors in batches:
            _write_batch(batch, ok, enc, errors, dtype_used=dtype_used, options=options, encode=encode,
                         writer=writer, tally=tally)
            writer.batch_done()
            tally.processed += len(batch.items)
            if progress is not None:
                progress(tally.processed, total, "encoding")
        tally.encode_seconds = time.perf_counter() - t_enc
        writer.flush()
        tally.complete = True
    finally:
        if not tally.complete:  # Ctrl-C, an error: keep what is finished
            writer.flush()


def _write_batch(batch, ok, enc, errors, *, dtype_used: str, options: CacheOptions, encode: EncodeSettings,
                 writer: ShardWriter, tally: _Tally) -> None:
    """One engine result -> its finite latents added to WRITER; decode errors and NaN/Inf handling into TALLY."""
    for i, why in errors.items():
        tally.decode_failed[batch.items[i].path] = why
    if enc is None:
        return
    for j, i in enumerate(ok):
        item = batch.items[i]
        if j in enc.retried or j in enc.failed:
            action = enc.failed.get(j) or f"NaN/Inf at {dtype_used}; redone in fp32, finite"
            tally.nonfinite.append(
                {"source": item.rel, "key": item.key, "action": action, "written": j not in enc.failed}
            )
        if j in enc.failed:
            continue
        tensors = {"mean": enc.mean[j]}
        if options.logvar and enc.logvar[j] is not None:
            tensors["logvar"] = enc.logvar[j]
        if encode.posterior == "sample":
            tensors["sample"] = enc.sample[j]
        writer.add(_record(item, batch, enc.mean[j], dtype_used, j in enc.retried), tensors)
        tally.encoded += 1


def _finish(out: Path, job: Job, vae, *, options: CacheOptions, encode: EncodeSettings, writer: ShardWriter,
            tally: _Tally, done, dtype: str, t0: float) -> CacheReport:
    """Manifest after the run -> index.jsonl + cache.json (+ statistics) written -> CacheReport."""
    records = read_manifest(out)
    index, skipped = _index(job, records, tally.decode_failed, tally.nonfinite)
    stats = None
    if options.stats and tally.complete:
        from vaelens.datasets.stats import stats_of_records

        stats = stats_of_records(out, [r for r in index if "key" in r], vae=vae).to_json()
    report = CacheReport(
        out=str(out),
        engine=options.engine,
        files=len(job.scans),
        encoded=tally.encoded,
        reused=sum(1 for k in {r["key"] for r in index if "key" in r} if k in done),
        skipped=tuple(skipped),
        nonfinite=tuple(tally.nonfinite),
        shards_written=writer.shards,
        seconds=time.perf_counter() - t0,
        encode_seconds=tally.encode_seconds,
        dtype=dtype,
        dtype_reason=tally.dtype_reason,
        buckets=_bucket_counts(index),
        stats=stats,
        complete=tally.complete,
    )
    write_index(out, index, _summary(report, job, vae, options, encode))
    return report


def _record(item, batch, mean, dtype: str, retried: bool) -> dict[str, Any]:
    p = item.placement
    return {
        "key": item.key,
        "source": item.rel,
        "content_hash": item.content_hash,
        "kind": item.kind,
        "shape": list(mean.shape),
        # (H, W), as vaelens writes sizes and SDXL's original_size / target_size take them
        "original_size": list(p.original_size),
        "resized_size": list(p.resized_size),
        "crop_top_left": list(p.crop_top_left),
        "bucket": list(p.bucket),
        "frames": batch.frames,
        "encode_dtype": "fp32" if retried else dtype,
    }


def _index(job: Job, records, decode_failed, nonfinite) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every file of the dataset in order: its record (under its own name), or why it has none."""
    index, skipped = [], []
    failed_keys = {n["key"]: n["action"] for n in nonfinite if not n["written"]}
    for scan in job.scans:
        key = job.keys.get(scan.path)
        rec = records.get(key) if key else None
        if rec is not None:
            index.append({**rec, "source": scan.rel})
            continue
        reason = job.skipped.get(scan.path) or decode_failed.get(job.items[key].path if key else "")
        reason = reason or (failed_keys.get(key) if key else None) or "not encoded (run interrupted)"
        index.append({"source": scan.rel, "error": reason})
        skipped.append({"source": scan.rel, "reason": reason})
    return index, skipped


def _bucket_counts(index) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in index:
        if "bucket" in r:
            name = f"{r['bucket'][1]}x{r['bucket'][0]}"  # WxH, as --size is written
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _summary(report: CacheReport, job: Job, vae, options: CacheOptions, encode: EncodeSettings) -> dict[str, Any]:
    from vaelens import __version__
    from vaelens.datasets.reader import normalization_record

    return {
        "format": FORMAT,
        "vaelens_version": __version__,
        "complete": report.complete,
        "data": job.root,
        "vae": job.vae_id,
        "settings": {**options.key_fields(), **replace(encode, threads=None).key_fields(report.dtype),
                     "compute_dtype": report.dtype},
        "normalization": normalization_record(vae),
        "tensors": ["mean"] + (["logvar"] if options.logvar else []) + (
            ["sample"] if encode.posterior == "sample" else []),
        "report": {k: v for k, v in report.to_json().items() if k != "stats"},
        "stats": report.stats,
    }
