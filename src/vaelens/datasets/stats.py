"""`compute_stats`: statistics of raw latents over a whole dataset (or over a finished cache), streaming.

DATA + LoadedVae -> plan (scan, bucket, batches) -> engine (local | Ray) -> one Moments per batch,
merged exactly (Chan et al.) -> DatasetStats + ImpliedNormalization -> StatsReport.
A cache folder as DATA reads its stored latents instead (no VAE run, the stored dtype's precision).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vaelens.datasets.encoder import EncodeSettings
from vaelens.datasets.implied import ImpliedNormalization, implied_normalization
from vaelens.datasets.moments import HIST_BINS, HIST_RANGE, DatasetStats, Moments
from vaelens.datasets.pixels import Bucketing
from vaelens.options import Posterior


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsReport:
    """Statistics of one dataset's raw latents, the normalisation they imply, and how they were made."""

    data: str
    family: str
    stats: DatasetStats
    implied: ImpliedNormalization | None
    posterior: str  # which latent was measured: "mode" | "sample" (options.Posterior)
    stored_dtype: str | None = None  # a cache's stored latent dtype ("bf16"); None for latents encoded now
    files: int
    skipped: tuple[dict[str, str], ...]
    seconds: float
    engine: str

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "family": self.family,
            "posterior": self.posterior,
            "stored_dtype": self.stored_dtype,
            "files": self.files,
            "skipped": list(self.skipped),
            "engine": self.engine,
            "seconds": round(self.seconds, 3),
            "stats": self.stats.to_json(),
            "implied_normalization": self.implied.to_json() if self.implied else None,
        }


def compute_stats(
    data: str | Path,
    vae,
    *,
    bucketing: Bucketing,
    encode: EncodeSettings | None = None,
    batch_size: int = 8,
    frames: int | None = None,
    workers: int | None = None,
    engine: str = "local",
    address: str | None = None,
    hist_range: float = HIST_RANGE,
    hist_bins: int = HIST_BINS,
    progress: Any = None,
    quiet: bool = False,
) -> StatsReport:
    """DATA + LoadedVae -> StatsReport of the raw latents (the posterior mean, or a fixed-seed sample)."""
    encode = encode or EncodeSettings()
    from vaelens.datasets.engine import Engine, run_engine
    from vaelens.datasets.local import split_cpus, worker_pool
    from vaelens.datasets.plan import clip_frames, plan_job
    from vaelens.run.steps import resolve_dtype

    t0 = time.perf_counter()
    frames = clip_frames(vae.spec, frames)
    dtype, _ = resolve_dtype(encode.dtype, device=vae.device, config=dict(vae.spec.config))
    n, threads = split_cpus(workers, encode.threads, vae.device)
    encode = replace(encode, threads=threads)
    total = Moments(vae.spec.latent_channels, hist_range=hist_range, hist_bins=hist_bins)
    skipped: dict[str, str] = {}
    with worker_pool(n if Engine.parse(engine) is Engine.LOCAL else 0) as pool:
        job = plan_job(data, vae, bucketing=bucketing, batch_size=batch_size,
                       settings={"frames": frames, **encode.key_fields(dtype.value)}, frames=frames,
                       pool=pool, progress=progress)
        skipped.update({p: why for (p, _), why in job.skipped.items()})
        batches, _ = run_engine(job, vae, encode, engine=engine, pool=pool, address=address, workers=workers,
                                quiet=quiet)
        _accumulate(batches, job.to_encode, total=total, skipped=skipped, posterior=encode.posterior,
                    progress=progress)
    stats = total.result()
    return StatsReport(
        data=str(data),
        family=vae.spec.name,
        stats=stats,
        implied=implied_normalization(stats, vae.spec.normalization, family=vae.spec.name, module=vae.module),
        posterior=encode.posterior.value,
        files=len(job.scans),
        skipped=tuple({"source": _rel(p, job.root), "reason": r} for p, r in skipped.items()),
        seconds=time.perf_counter() - t0,
        engine=Engine.parse(engine).value,
    )


def _accumulate(batches, to_encode: int, *, total: Moments, skipped: dict[str, str], posterior: str,
                progress: Any) -> None:
    """The engine's batches -> their latents merged into TOTAL; files that failed into SKIPPED."""
    done = 0
    for batch, ok, enc, _flipped, errors in batches:
        _add_batch(batch, ok, enc, errors, total=total, skipped=skipped, posterior=posterior)
        done += len(batch.items)
        if progress is not None:
            progress(done, to_encode, "encoding")


def _add_batch(batch, ok, enc, errors, *, total: Moments, skipped: dict[str, str], posterior: str) -> None:
    """One engine result -> its finite latents (mean, or the sample) added to TOTAL; failures into SKIPPED."""
    for i, why in errors.items():
        skipped[batch.items[i].path] = why
    if enc is None:
        return
    import torch

    which = enc.sample if posterior == Posterior.SAMPLE else enc.mean
    for j, i in enumerate(ok):
        if j in enc.failed:
            skipped[batch.items[i].path] = enc.failed[j]
    good = [which[j] for j in range(len(ok)) if j not in enc.failed]
    if good:
        total.add(torch.stack(good), samples=len(good))


def _rel(path: str, root: str) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path


def stats_of_records(
    out: str | Path, records: list[dict[str, Any]], *, vae=None, posterior: Posterior | str = Posterior.MODE,
    hist_range: float = HIST_RANGE, hist_bins: int = HIST_BINS,
) -> DatasetStats:
    """cache folder + index records -> DatasetStats of the stored raw latents (the posterior's mode or its
    stored sample), one shard open at a time."""
    from safetensors import safe_open

    from vaelens.datasets.reader import TENSOR_OF

    tensor = TENSOR_OF[Posterior.parse(posterior)]
    moments: Moments | None = None
    by_shard: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for r in records:
        if r["key"] not in seen:  # duplicate files share one latent: count it once
            seen.add(r["key"])
            by_shard.setdefault(r["shard"], []).append(r)
    for shard, recs in by_shard.items():
        with safe_open(str(Path(out) / shard), framework="pt") as f:
            for r in recs:
                z = f.get_tensor(r["tensors"][tensor])
                if moments is None:
                    moments = Moments(z.shape[0], hist_range=hist_range, hist_bins=hist_bins)
                moments.add(z[None], samples=1)
    if moments is None:
        from vaelens.errors import VaeLensError

        raise VaeLensError(f"cache {str(out)!r} holds no latents", param="out", value=str(out))
    return moments.result()


def stats_of_cache(out: str | Path, *, posterior: Posterior | str = Posterior.MODE) -> StatsReport:
    """finished cache folder -> StatsReport of its stored latents (`posterior`: "mode" or "sample", when the
    cache stored a sample), with the normalisation it recorded."""
    from vaelens.datasets.reader import CacheDataset, _normalization
    from vaelens.datasets.store import read_index, read_summary

    t0 = time.perf_counter()
    posterior = CacheDataset(out, posterior=posterior, normalized=False).posterior  # every shard checked
    summary = read_summary(out)
    index = read_index(out)
    stats = stats_of_records(out, [r for r in index if "key" in r], posterior=posterior)
    family = summary["vae"]["family"]
    norm = _normalization(summary["normalization"])
    return StatsReport(
        data=str(out),
        family=family,
        stats=stats,
        implied=implied_normalization(stats, norm, family=family),
        posterior=posterior.value,
        stored_dtype=summary["settings"]["latent_dtype"],
        files=len({r["source"] for r in index}),
        skipped=tuple({"source": r["source"], "reason": r["error"]} for r in index if "key" not in r),
        seconds=time.perf_counter() - t0,
        engine="cache",
    )
