"""Whole datasets: statistics of raw latents, and a resumable latent cache (local processes or Ray Data).

compute_stats(DATA, vae, …) -> StatsReport        cache_dataset(DATA, vae, OUT, …) -> CacheReport
open_cache(OUT) -> CacheDataset (torch Dataset)  stats_of_cache(OUT) -> StatsReport
BucketSampler(CacheDataset, batch_size)           verify_cache(OUT) -> VerifyReport
"""

from vaelens.datasets.cache import CacheOptions, CacheReport, cache_dataset
from vaelens.datasets.encoder import EncodeSettings
from vaelens.datasets.engine import Engine
from vaelens.datasets.moments import DatasetStats, Moments
from vaelens.datasets.pixels import Bucketing, make_bucketing
from vaelens.datasets.posterior import LatentPosterior
from vaelens.datasets.reader import CacheDataset, open_cache
from vaelens.datasets.sampler import BucketSampler
from vaelens.datasets.stats import StatsReport, compute_stats, stats_of_cache
from vaelens.datasets.store import ClaimedCache, VerifyReport, claim_cache, verify_cache

__all__ = [
    "BucketSampler",
    "Bucketing",
    "CacheDataset",
    "ClaimedCache",
    "CacheOptions",
    "CacheReport",
    "DatasetStats",
    "EncodeSettings",
    "Engine",
    "LatentPosterior",
    "Moments",
    "StatsReport",
    "VerifyReport",
    "cache_dataset",
    "claim_cache",
    "compute_stats",
    "make_bucketing",
    "open_cache",
    "stats_of_cache",
    "verify_cache",
]
