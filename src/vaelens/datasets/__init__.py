"""Whole datasets: statistics of raw latents, and a resumable latent cache (local processes or Ray Data).

compute_stats(DATA, vae, …) -> StatsReport        cache_dataset(DATA, vae, OUT, …) -> CacheReport
open_cache(OUT) -> CacheDataset (torch Dataset)  stats_of_cache(OUT) -> StatsReport
"""

from vaelens.datasets.cache import CacheOptions, CacheReport, cache_dataset
from vaelens.datasets.encoder import EncodeSettings
from vaelens.datasets.moments import DatasetStats, Moments
from vaelens.datasets.pixels import Bucketing, make_bucketing
from vaelens.datasets.reader import CacheDataset, open_cache
from vaelens.datasets.stats import StatsReport, compute_stats, stats_of_cache

__all__ = [
    "Bucketing",
    "CacheDataset",
    "CacheOptions",
    "CacheReport",
    "DatasetStats",
    "EncodeSettings",
    "Moments",
    "StatsReport",
    "cache_dataset",
    "compute_stats",
    "make_bucketing",
    "open_cache",
    "stats_of_cache",
]
