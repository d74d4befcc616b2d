"""Image fidelity metrics: PSNR and SSIM on [0, 1] arrays (numpy, float64; no torch)."""

from __future__ import annotations

import math

import numpy as np

from vaelens.errors import VaeLensError


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """arrays in [0,1] (same shape) -> PSNR in dB (inf when equal).

    >>> round(psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)), 6)
    20.0
    """
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """[H,W] -> separable Gaussian filter, 'valid' region only (windows wholly inside the image)."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=1) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=0) @ g


def ssim_unavailable(shape: tuple[int, ...], *, sigma: float = 1.5) -> str | None:
    """image shape [H,W(,C)] -> why SSIM cannot be computed on it (a side shorter than the Gaussian
    window), or None when it can.

    >>> ssim_unavailable((8, 4096, 3))
    'SSIM needs at least 11 px per side (its Gaussian window); the image is 4096x8'
    """
    k = len(_gaussian_window(sigma))
    h, w = shape[0], shape[1]
    if min(h, w) < k:
        return f"SSIM needs at least {k} px per side (its Gaussian window); the image is {w}x{h}"
    return None


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """arrays [H,W] or [H,W,C] in [0, data_range] -> mean SSIM (Wang et al. 2004), channels averaged.

    Gaussian window σ = 1.5 (11 taps), K1 = 0.01, K2 = 0.03, population covariances, means over the
    positions whose window lies inside the image — the paper's settings (skimage's structural_similarity
    with gaussian_weights=True, use_sample_covariance=False gives the same).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise VaeLensError(f"ssim: shapes differ, {list(a.shape)} vs {list(b.shape)}", param="b")
    if a.ndim == 3:
        return float(
            np.mean([ssim(a[..., c], b[..., c], data_range=data_range, sigma=sigma) for c in range(a.shape[2])])
        )
    g = _gaussian_window(sigma)
    reason = ssim_unavailable(a.shape, sigma=sigma)
    if reason:
        raise VaeLensError(f"ssim: {reason}", param="a", value=list(a.shape))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
