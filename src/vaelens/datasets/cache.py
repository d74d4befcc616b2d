"""`cache_dataset`: every image (and clip) of a dataset encoded once into a resumable latent cache.

DATA + OUT -> claim_cache (DATA listed, OUT checked, created and locked: before any model is loaded) ->
plan (scan, bucket, key, batches; captions read) -> engine (local processes | Ray Data) -> ShardWriter
(atomic shards + manifest) -> index.jsonl + cache.json (+ statistics) -> CacheReport.

Resume: keys already in the manifest (or in a shard whose manifest lines were lost) whose shard is whole
(store.check_shard) are not encoded again; a kill loses at most the samples not yet in a shard (one shard's
worth; flushes happen every `shard_size` samples or `flush_seconds`). Ctrl-C flushes what is finished and
writes index.jsonl and cache.json (complete: false) before stopping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vaelens.datasets.encoder import EncodeSettings
from vaelens.datasets.engine import Engine, run_engine
from vaelens.datasets.pixels import Bucketing
from vaelens.datasets.plan import Job, plan_job
from vaelens.datasets.store import (
    FORMAT,
    ClaimedCache,
    ShardWriter,
    claim_cache,
    clean_temporaries,
    read_manifest,
    verify_cache,
    write_index,
)
from vaelens.errors import VaeLensError
from vaelens.options import DType, Posterior


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    """What is stored and how the work is cut (the encode itself: EncodeSettings)."""

    bucketing: Bucketing | tuple[Bucketing, ...]  # several: one latent per file per bucketing (resolution)
    latent_dtype: DType = DType.FP16  # stored dtype
    logvar: bool = False
    flip: bool = False  # also store the latent of the horizontally flipped image ("flip_mean", …)
    frames: int | None = None  # video clips: frames per clip
    batch_size: int = 8
    workers: int | None = None  # decode processes (None: chosen per device, see local.split_cpus; 0: none)
    shard_size: int = 256
    flush_seconds: float = 60.0
    stats: bool = False  # statistics of the cached latents at the end
    engine: Engine = Engine.LOCAL
    address: str | None = None  # Ray cluster address (engine "ray")
    captions: str | None = None  # a metadata JSONL/CSV file (default: sidecars, or DATA/metadata.jsonl|csv)
    caption_column: str | None = None  # its caption column (default: text or caption)
    quiet: bool = False  # keep the engine's own log lines (Ray's INFO/WARNING) off the terminal

    def __post_init__(self) -> None:
        object.__setattr__(self, "latent_dtype", DType.parse(self.latent_dtype))
        object.__setattr__(self, "engine", Engine.parse(self.engine))
        for name in ("batch_size", "shard_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise VaeLensError(f"{name} {v!r} must be a whole number of at least 1", param=name, value=v)
        if self.workers is not None and self.workers < 0:
            raise VaeLensError(f"workers {self.workers} must be 0 (decode in this process) or more",
                               param="workers", value=self.workers)

    @property
    def bucketings(self) -> tuple[Bucketing, ...]:
        return self.bucketing if isinstance(self.bucketing, tuple) else (self.bucketing,)

    def key_fields(self) -> dict[str, Any]:
        """The fields that change what is stored per sample (plan_job puts each bucketing in its own keys)."""
        return {
            "bucketing": [b.to_json() for b in self.bucketings],
            "frames": self.frames,
            "latent_dtype": self.latent_dtype.value,
            "logvar": self.logvar,
            "flip": self.flip,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheReport:
    """What one run did: counts, failures, NaN/Inf handling, speed, and (optionally) statistics."""

    out: str
    engine: str
    files: int
    encoded: int  # samples encoded in this run
    reused: int  # samples found finished in the cache
    skipped: tuple[dict[str, Any], ...]  # {"source", "reason"(, "resolution")}: every file not encoded
    nonfinite: tuple[dict[str, Any], ...]  # {"source", "key", "action"}
    shards_written: int
    seconds: float
    encode_seconds: float
    dtype: str
    dtype_reason: str | None
    buckets: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] | None = None
    complete: bool = True
    warnings: tuple[dict[str, str], ...] = ()  # {"source", "warning"}: extreme resizes, the reader's notes
    captions: int = 0  # samples with a caption
    first_batch_seconds: float = 0.0  # engine start to the first result (Ray: cluster and actors start)
    first_batch_samples: int = 0

    @property
    def images_per_second(self) -> float:
        """Samples encoded per second from the engine's start (start-up included)."""
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0

    @property
    def images_per_second_steady(self) -> float:
        """Samples per second after the first batch arrived (start-up, e.g. a Ray cluster's, excluded)."""
        t = self.encode_seconds - self.first_batch_seconds
        n = self.encoded - self.first_batch_samples
        return n / t if t > 0 and n > 0 else self.images_per_second

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
            "images_per_second_steady": round(self.images_per_second_steady, 3),
            "first_batch_seconds": round(self.first_batch_seconds, 3),
            "warnings": list(self.warnings),
            "captions": self.captions,
            "dtype": self.dtype,
            "dtype_reason": self.dtype_reason,
            "buckets": self.buckets,
            "complete": self.complete,
            "stats": self.stats,
        }


def cache_dataset(
    data: str | Path,
    vae,
    out: str | Path | ClaimedCache,
    *,
    options: CacheOptions,
    encode: EncodeSettings | None = None,
    progress: Any = None,
    force: bool = False,
    verify: bool = False,
) -> CacheReport:
    """DATA + LoadedVae -> latent cache in OUT (resumed when OUT holds one) -> CacheReport.

    OUT may be a ClaimedCache (store.claim_cache, taken before loading the model). force=True writes into a
    non-empty folder that is not a vaelens cache; verify=True first checks every shard's sha256 and deletes
    those that fail, so this run encodes their samples again. `progress(done, total, what)` is called
    after scanning steps and after each batch.
    """
    from vaelens.datasets.plan import clip_frames

    encode = encode or EncodeSettings()
    t0 = time.perf_counter()
    options = replace(options, frames=clip_frames(vae.spec, options.frames))
    if isinstance(out, ClaimedCache):
        return _cache_locked(out, vae, options=options, encode=encode, progress=progress, t0=t0, verify=verify)
    with claim_cache(data, out, force=force) as claimed:
        return _cache_locked(claimed, vae, options=options, encode=encode, progress=progress, t0=t0, verify=verify)


@dataclass(slots=True)
class _Tally:
    """What the encode loop has done so far; filled batch by batch, so not frozen."""

    dtype_reason: str | None
    nonfinite: list[dict[str, Any]] = field(default_factory=list)
    decode_failed: dict[str, str] = field(default_factory=dict)  # path -> why it did not decode
    encoded: int = 0
    processed: int = 0
    encode_seconds: float = 0.0
    first_batch_seconds: float = 0.0
    first_batch_samples: int = 0
    complete: bool = False


def _cache_locked(claimed: ClaimedCache, vae, *, options: CacheOptions, encode: EncodeSettings, progress,
                  t0: float, verify: bool) -> CacheReport:
    """cache_dataset's work, holding OUT's lock: plan -> encode into shards -> index + summary (also when
    interrupted)."""
    from vaelens.datasets.captions import read_captions
    from vaelens.datasets.local import split_cpus, worker_pool
    from vaelens.run.steps import resolve_dtype

    out = claimed.out
    clean_temporaries(out)
    if verify:
        verify_cache(out, repair=True)
    done = read_manifest(out, repair=True)
    dtype, dtype_reason = resolve_dtype(encode.dtype, device=vae.device, config=dict(vae.spec.config))
    settings = {**options.key_fields(), **encode.key_fields(dtype.value)}
    workers, threads = split_cpus(options.workers, encode.threads, vae.device)
    encode = replace(encode, threads=threads)
    writer = ShardWriter(
        out, latent_dtype=options.latent_dtype.value, shard_size=options.shard_size,
        flush_seconds=options.flush_seconds,
    )
    tally = _Tally(dtype_reason=dtype_reason)
    listing = (claimed.root, list(claimed.files), list(claimed.skipped))
    with worker_pool(workers if options.engine is Engine.LOCAL else 0) as pool:
        job = plan_job(
            claimed.root,
            vae,
            bucketing=options.bucketings,
            batch_size=options.batch_size,
            settings=settings,
            frames=options.frames,
            done=set(done),
            pool=pool,
            progress=progress,
            listing=listing,
        )
        captions = read_captions(job.root, [s.path for s in job.scans if s.error is None],
                                 metadata=options.captions, column=options.caption_column)
        try:
            _encode_job(job, vae, encode, options, pool, writer=writer, tally=tally, progress=progress)
        except KeyboardInterrupt:  # what is finished is in shards: say so in index.jsonl and cache.json
            _finish(out, job, vae, options=options, encode=encode, writer=writer, tally=tally, done=done,
                    dtype=dtype.value, t0=t0, captions=captions)
            raise
    return _finish(out, job, vae, options=options, encode=encode, writer=writer, tally=tally, done=done,
                   dtype=dtype.value, t0=t0, captions=captions)


def _encode_job(job: Job, vae, encode: EncodeSettings, options: CacheOptions, pool: Any, *,
                writer: ShardWriter, tally: _Tally, progress) -> None:
    """Job -> every batch run by the engine and written to shards; counts and failures into TALLY.
    Ctrl-C or an error still flushes what is finished."""
    total = job.to_encode
    if progress is not None:
        progress(0, total, "encoding")
    try:
        t_enc = time.perf_counter()
        batches, (dtype_used, reason) = run_engine(
            job, vae, encode, engine=options.engine, pool=pool, address=options.address, workers=options.workers,
            flip=options.flip, quiet=options.quiet)
        tally.dtype_reason = reason
        for batch, ok, enc, flipped, errors in batches:
            if not tally.processed:
                tally.first_batch_seconds = time.perf_counter() - t_enc
            before = tally.encoded
            _write_batch(batch, ok, enc, flipped, errors, dtype_used=dtype_used, options=options, encode=encode,
                         writer=writer, tally=tally)
            if not tally.processed:
                tally.first_batch_samples = tally.encoded - before
            writer.batch_done()
            tally.processed += len(batch.items)
            tally.encode_seconds = time.perf_counter() - t_enc
            if progress is not None:
                progress(tally.processed, total, "encoding")
        writer.flush()
        tally.complete = True
    finally:
        if not tally.complete:  # Ctrl-C, an error: keep what is finished
            writer.flush()


def _write_batch(batch, ok, enc, flipped, errors, *, dtype_used: str, options: CacheOptions,
                 encode: EncodeSettings, writer: ShardWriter, tally: _Tally) -> None:
    """One engine result -> its finite latents added to WRITER; decode errors and NaN/Inf handling into TALLY.
    A sample whose flipped latent is not finite is not written either (every record holds every tensor)."""
    for i, why in errors.items():
        tally.decode_failed[batch.items[i].path] = why
    if enc is None:
        return
    for j, i in enumerate(ok):
        item = batch.items[i]
        failed = enc.failed.get(j) or (flipped.failed.get(j) and f"flipped: {flipped.failed[j]}" if flipped else None)
        retried = j in enc.retried or (flipped is not None and j in flipped.retried)
        if retried or failed:
            action = failed or f"NaN/Inf at {dtype_used}; redone in fp32, finite"
            tally.nonfinite.append(
                {"source": item.rel, "key": item.key, "action": action, "written": not failed}
            )
        if failed:
            continue
        tensors = _tensors(enc, j, options, encode)
        if flipped is not None:
            tensors.update({f"flip_{k}": v for k, v in _tensors(flipped, j, options, encode).items()})
        writer.add(_record(item, batch, enc.mean[j], dtype_used, retried), tensors)
        tally.encoded += 1


def _tensors(enc, j: int, options: CacheOptions, encode: EncodeSettings) -> dict[str, Any]:
    tensors = {"mean": enc.mean[j]}
    if options.logvar and enc.logvar[j] is not None:
        tensors["logvar"] = enc.logvar[j]
    if encode.posterior is Posterior.SAMPLE:
        tensors["sample"] = enc.sample[j]
    return tensors


def _finish(out: Path, job: Job, vae, *, options: CacheOptions, encode: EncodeSettings, writer: ShardWriter,
            tally: _Tally, done, dtype: str, t0: float, captions: dict[str, str]) -> CacheReport:
    """Manifest after the run -> index.jsonl + cache.json (+ statistics) written -> CacheReport."""
    records = read_manifest(out)
    index, skipped = _index(job, records, tally.decode_failed, tally.nonfinite, captions)
    stats = None
    encoded = [r for r in index if "key" in r]
    if options.stats and tally.complete and encoded:
        from vaelens.datasets.stats import stats_of_records

        stats = stats_of_records(out, encoded, vae=vae).to_json()
    report = CacheReport(
        out=str(out),
        engine=options.engine.value,
        files=len({s.path for s in job.scans}),
        encoded=tally.encoded,
        reused=sum(1 for k in {r["key"] for r in encoded} if k in done),
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
        warnings=tuple({"source": r["source"], "warning": w} for r in encoded for w in r.get("warnings", ())),
        captions=sum(1 for r in encoded if r.get("caption") is not None),
        first_batch_seconds=tally.first_batch_seconds,
        first_batch_samples=tally.first_batch_samples,
    )
    # a VAE without a posterior (Tiny AE, DC-AE) has no logvar to store, whatever options.logvar says
    has_logvar = options.logvar and (not encoded or any("logvar" in r["tensors"] for r in encoded))
    write_index(out, index, _summary(report, job, vae, replace(options, logvar=has_logvar), encode))
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
        "resolution": item.resolution,
        "frames": batch.frames,
        "encode_dtype": "fp32" if retried else dtype,
    }


def _index(job: Job, records, decode_failed, nonfinite, captions: dict[str, str]
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every file of the dataset in order: its record per bucketing (under its own name, with today's
    caption and warnings), or why it has none (once per file when the file itself is not usable)."""
    index, skipped = [], []
    failed_keys = {n["key"]: n["action"] for n in nonfinite if not n["written"]}
    for scan in job.scans:
        if scan.error is not None:
            index.append({"source": scan.rel, "error": scan.error})
            skipped.append({"source": scan.rel, "reason": scan.error})
            continue
        for r in range(job.bucketings):
            key = job.keys.get((scan.path, r))
            rec = records.get(key) if key else None
            if rec is not None:
                item = job.items[key]
                entry = {**rec, "source": scan.rel, "caption": captions.get(scan.path),
                         "warnings": list(item.warnings)}
                entry.pop("shard_sha256", None)
                index.append(entry)
                continue
            reason = job.skipped.get((scan.path, r)) or (decode_failed.get(job.items[key].path) if key else None)
            reason = reason or (failed_keys.get(key) if key else None) or "not encoded (run interrupted)"
            extra = {"resolution": job.items[key].resolution} if key and job.bucketings > 1 else {}
            index.append({"source": scan.rel, "error": reason, **extra})
            skipped.append({"source": scan.rel, "reason": reason, **extra})
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

    tensors = ["mean"] + (["logvar"] if options.logvar else []) + (
        ["sample"] if encode.posterior is Posterior.SAMPLE else [])
    return {
        "format": FORMAT,
        "vaelens_version": __version__,
        "complete": report.complete,
        "data": job.root,
        "vae": job.vae_id,
        "settings": {**options.key_fields(), **replace(encode, threads=None).key_fields(report.dtype),
                     "compute_dtype": report.dtype, "filters": [b.filters_json() for b in options.bucketings]},
        "resolutions": sorted({b.resolution for b in options.bucketings if b.resolution is not None}),
        "normalization": normalization_record(vae),
        "tensors": tensors + [f"flip_{t}" for t in tensors if options.flip],
        "report": {k: v for k, v in report.to_json().items() if k != "stats"},
        "stats": report.stats,
    }
