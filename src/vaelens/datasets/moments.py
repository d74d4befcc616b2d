"""Streaming statistics of latents over a whole dataset, merged exactly from partial statistics.

latent batches [B,C,(F,)h,w] -> Moments (count, per-channel mean, M2, co-moment matrix, min, max,
fixed-bin histogram) -> merge(a, b) -> DatasetStats (mean, std, min/max, percentiles, correlation).

Means, variances and correlations use Chan, Golub & LeVeque's pairwise update ("Updating formulae and a
pairwise algorithm for computing sample variances", 1979) in float64: merging the partial statistics of
any split of the data equals the one-pass result up to float64 rounding, with no second pass and no
latent kept. Percentiles come from a fixed-bin histogram per channel (integer counts, so merging is
exact): a percentile whose value lies inside the histogram range is exact to within one bin width
(`bin_width`, 2^-7 = 0.0078 latent units by default); one that falls outside the range is reported
clamped to the exact min/max and flagged. Exact percentiles would need every value kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vaelens.errors import VaeLensError

HIST_RANGE = 64.0  # raw latents of released VAEs stay within ±~60 (SDXL's std is 1/0.13025 ≈ 7.7)
HIST_BINS = 16384  # bin width 128 / 16384 = 2^-7
PERCENTILES = (0.1, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.9)


def channel_rows(latent) -> np.ndarray:
    """latent [B,C,(F,)h,w] (torch or numpy) -> float64 array [N, C] of every position's channel vector."""
    a = latent.detach().cpu().double().numpy() if hasattr(latent, "detach") else np.asarray(latent, np.float64)
    if a.ndim < 3:
        raise VaeLensError(f"latent shape {list(a.shape)} is not [B, C, (F,) h, w]", param="latent",
                           value=list(a.shape))
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


class Moments:
    """Partial statistics of C channels (an accumulator: add() batches, merge() other partials).

    Positions holding any NaN/Inf are counted in `nonfinite` and left out of every statistic.
    """

    def __init__(self, channels: int, *, hist_range: float = HIST_RANGE, hist_bins: int = HIST_BINS) -> None:
        c = int(channels)
        self.channels = c
        self.hist_range = float(hist_range)
        self.hist_bins = int(hist_bins)
        self.count = 0
        self.mean = np.zeros(c)
        self.m2 = np.zeros(c)
        self.comoment = np.zeros((c, c))
        self.min = np.full(c, np.inf)
        self.max = np.full(c, -np.inf)
        # [C, bins + 2]: slot 0 counts values below -range, slot bins+1 values at or above +range
        self.hist = np.zeros((c, self.hist_bins + 2), dtype=np.int64)
        self.nonfinite = 0
        self.samples = 0

    @property
    def bin_width(self) -> float:
        return 2.0 * self.hist_range / self.hist_bins

    def add(self, latent, *, samples: int | None = None) -> Moments:
        """latent [B,C,(F,)h,w] -> self, updated (the batch's own moments, then one Chan merge)."""
        x = channel_rows(latent)
        if x.shape[1] != self.channels:
            raise VaeLensError(f"latent has {x.shape[1]} channels; these statistics have {self.channels}",
                               param="latent", value=x.shape[1], choices=(self.channels,))
        ok = np.isfinite(x).all(axis=1)
        self.nonfinite += int((~ok).sum())
        self.samples += int(samples if samples is not None else np.asarray(latent.shape)[0])
        x = x[ok]
        if not len(x):
            return self
        part = Moments(self.channels, hist_range=self.hist_range, hist_bins=self.hist_bins)
        part.count = len(x)
        part.mean = x.mean(axis=0)
        centred = x - part.mean
        part.m2 = np.einsum("nc,nc->c", centred, centred)
        part.comoment = centred.T @ centred
        part.min, part.max = x.min(axis=0), x.max(axis=0)
        idx = np.floor((x + self.hist_range) / self.bin_width).astype(np.int64) + 1
        np.clip(idx, 0, self.hist_bins + 1, out=idx)
        flat = idx + np.arange(self.channels) * (self.hist_bins + 2)
        part.hist = np.bincount(flat.ravel(), minlength=self.channels * (self.hist_bins + 2)).reshape(
            self.channels, -1
        )
        self._merge_counts(part)
        return self

    def merge(self, other: Moments) -> Moments:
        """self + other -> self (exact up to float64 rounding; histograms add as integers)."""
        if (other.channels, other.hist_range, other.hist_bins) != (self.channels, self.hist_range, self.hist_bins):
            raise VaeLensError(
                f"cannot merge statistics of {other.channels} channels / range ±{other.hist_range} / "
                f"{other.hist_bins} bins into {self.channels} / ±{self.hist_range} / {self.hist_bins}",
                param="other", value=(other.channels, other.hist_range, other.hist_bins),
            )
        self.nonfinite += other.nonfinite
        self.samples += other.samples
        self._merge_counts(other)
        return self

    def _merge_counts(self, other: Moments) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean.copy(), other.m2.copy()
            self.comoment, self.min, self.max = other.comoment.copy(), other.min.copy(), other.max.copy()
            self.hist = self.hist + other.hist
            return
        na, nb = self.count, other.count
        n = na + nb
        delta = other.mean - self.mean
        # Chan et al. 1979, eq. 2.1: M2 = M2_a + M2_b + δ² n_a n_b / n (and the same for co-moments)
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + other.m2 + delta * delta * (na * nb / n)
        self.comoment = self.comoment + other.comoment + np.outer(delta, delta) * (na * nb / n)
        self.count = n
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)
        self.hist = self.hist + other.hist

    # ------------------------------------------------------------------ serialisation (Ray, shards)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """-> plain arrays (for sending between processes); from_arrays() inverts it."""
        return {
            "meta": np.array([self.channels, self.hist_bins, self.count, self.nonfinite, self.samples], np.int64),
            "range": np.array([self.hist_range]),
            "mean": self.mean,
            "m2": self.m2,
            "comoment": self.comoment,
            "min": self.min,
            "max": self.max,
            "hist": self.hist,
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Moments:
        channels, bins, count, nonfinite, samples = (int(v) for v in a["meta"])
        m = cls(channels, hist_range=float(a["range"][0]), hist_bins=bins)
        m.count, m.nonfinite, m.samples = count, nonfinite, samples
        m.mean, m.m2, m.comoment = a["mean"].copy(), a["m2"].copy(), a["comoment"].copy()
        m.min, m.max, m.hist = a["min"].copy(), a["max"].copy(), a["hist"].copy()
        return m

    def result(self, percentiles: tuple[float, ...] = PERCENTILES) -> DatasetStats:
        """-> DatasetStats (population std, Pearson correlation, histogram percentiles)."""
        if self.count == 0:
            raise VaeLensError("no finite latent values were seen: the statistics are empty")
        n = self.count
        var = self.m2 / n
        std = np.sqrt(var)
        overall_mean = float(self.mean.mean())
        # pooled over channels: within-channel M2 plus the spread of the channel means
        overall_var = float((self.m2.sum() + n * ((self.mean - overall_mean) ** 2).sum()) / (n * self.channels))
        denom = np.sqrt(np.outer(self.m2, self.m2))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(denom > 0, self.comoment / np.where(denom > 0, denom, 1.0), 0.0)
        np.fill_diagonal(corr, np.where(self.m2 > 0, 1.0, 0.0))
        per_channel = [
            self._percentiles(self.hist[c], self.min[c], self.max[c], percentiles) for c in range(self.channels)
        ]
        overall = self._percentiles(self.hist.sum(axis=0), self.min.min(), self.max.max(), percentiles)
        return DatasetStats(
            samples=self.samples,
            positions=n,
            channels=self.channels,
            mean=tuple(float(v) for v in self.mean),
            std=tuple(float(v) for v in std),
            min=tuple(float(v) for v in self.min),
            max=tuple(float(v) for v in self.max),
            overall_mean=overall_mean,
            overall_std=float(np.sqrt(overall_var)),
            overall_min=float(self.min.min()),
            overall_max=float(self.max.max()),
            correlation=tuple(tuple(float(v) for v in row) for row in corr),
            percentiles=tuple(float(p) for p in percentiles),
            channel_percentiles=tuple(tuple(v for v, _ in row) for row in per_channel),
            overall_percentiles=tuple(v for v, _ in overall),
            percentiles_clamped=any(c for row in (*per_channel, overall) for _, c in row),
            bin_width=self.bin_width,
            hist_range=self.hist_range,
            histogram=self.hist,
            nonfinite=self.nonfinite,
        )

    def _percentiles(self, counts: np.ndarray, lo: float, hi: float, ps) -> list[tuple[float, bool]]:
        """histogram row [bins+2] -> [(value, clamped)] per p, numpy's 'linear' convention: rank
        r = p/100·(n−1), value = x_(⌊r⌋) + (r − ⌊r⌋)·(x_(⌈r⌉) − x_(⌊r⌋)). Each order statistic x_(k) is
        placed inside its bin (values spread evenly), so it is within one bin width of the true one, and
        so is the interpolation; one in the under/overflow slot is clamped to min/max and flagged."""
        total = int(counts.sum())
        cum = np.cumsum(counts)

        def order_stat(k: int) -> tuple[float, bool]:
            slot = int(np.searchsorted(cum, k, side="right"))
            if slot == 0 or slot == self.hist_bins + 1:
                return float(lo if slot == 0 else hi), True
            frac = (k - cum[slot - 1] + 0.5) / counts[slot]
            left = -self.hist_range + (slot - 1) * self.bin_width
            return float(min(max(left + frac * self.bin_width, lo), hi)), False

        out = []
        for p in ps:
            rank = p / 100.0 * (total - 1)
            k = int(np.floor(rank))
            (a, ca), (b, cb) = order_stat(k), order_stat(min(k + 1, total - 1))
            out.append((a + (rank - k) * (b - a), ca or cb))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetStats:
    """Statistics of raw latents [N samples, C, …] over a dataset: per channel and pooled over channels."""

    samples: int
    positions: int  # latent positions per channel that entered the statistics
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]  # population std (ddof 0)
    min: tuple[float, ...]
    max: tuple[float, ...]
    overall_mean: float
    overall_std: float
    overall_min: float
    overall_max: float
    correlation: tuple[tuple[float, ...], ...]
    percentiles: tuple[float, ...]
    channel_percentiles: tuple[tuple[float, ...], ...]  # [C][len(percentiles)]
    overall_percentiles: tuple[float, ...]
    percentiles_clamped: bool  # some percentile fell outside ±hist_range and was clamped to min/max
    bin_width: float
    hist_range: float
    histogram: Any  # int64 [C, bins + 2] (under- and overflow at the ends), for figures
    nonfinite: int

    def to_json(self) -> dict[str, Any]:
        names = [f"p{p:g}" for p in self.percentiles]
        return {
            "samples": self.samples,
            "positions_per_channel": self.positions,
            "channels": self.channels,
            "per_channel": [
                {
                    "channel": c,
                    "mean": self.mean[c],
                    "std": self.std[c],
                    "min": self.min[c],
                    "max": self.max[c],
                    "percentiles": dict(zip(names, self.channel_percentiles[c], strict=True)),
                }
                for c in range(self.channels)
            ],
            "overall": {
                "mean": self.overall_mean,
                "std": self.overall_std,
                "min": self.overall_min,
                "max": self.overall_max,
                "percentiles": dict(zip(names, self.overall_percentiles, strict=True)),
            },
            "correlation": [list(r) for r in self.correlation],
            "percentile_method": {
                "method": "fixed-bin histogram, linear inside a bin",
                "bin_width": self.bin_width,
                "range": [-self.hist_range, self.hist_range],
                "max_error": self.bin_width,
                "clamped_to_min_max": self.percentiles_clamped,
            },
            "nonfinite_positions": self.nonfinite,
        }
