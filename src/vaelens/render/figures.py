"""Pictures of latents and errors (matplotlib, imported inside each function).

latent [C,h,w] -> grid PNG, one heat-map per channel on a diverging colour map, one colour bar in
latent units; error [H,W] -> heat-map PNG; projection rgb [h,w,3] -> PNG labelled as an approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIVERGING = "RdBu_r"  # zero is white: positive red, negative blue; the sign of a channel is visible


@dataclass(frozen=True, slots=True, kw_only=True)
class GridInfo:
    """What was drawn: one panel per channel (counted from the figure), the shared colour range."""

    path: str
    panels: int
    rows: int
    cols: int
    vmin: float
    vmax: float


def check_figure_path(path: str | Path, *, force: bool = False, what: str = "plot",
                      inputs: tuple[str | Path, ...] = ()) -> Path:
    """A figure path -> the checked Path, before any work: a suffix matplotlib writes (none: .png is added, as
    matplotlib itself would), then every rule of the one safe-output path (vaelens.outputs: no overwrite
    without force, never an input, a writable folder)."""
    from matplotlib.backend_bases import FigureCanvasBase

    from vaelens.errors import OutputError
    from vaelens.outputs import FIGURE_SUFFIXES, check_output

    writable = FigureCanvasBase.get_supported_filetypes()
    formats = sorted(s.lstrip(".") for s in FIGURE_SUFFIXES if s.lstrip(".") in writable)
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix and suffix not in formats:
        raise OutputError(f"{what} {str(path)!r}: matplotlib cannot write .{suffix}; use one of: "
                          f"{', '.join(formats)}", param=what, value=str(path), choices=formats)
    out = Path(path) if suffix or Path(path).is_dir() else Path(path).with_suffix(".png")
    return check_output(out, kind="figure", force=force, what=what, inputs=inputs)


def save_figure(fig, path: str | Path, *, dpi: int, force: bool = False, what: str = "plot") -> Path:
    """A matplotlib figure -> the file at path (checked by check_figure_path, written atomically), closed."""
    from vaelens.outputs import atomic_write

    out = check_figure_path(path, force=force, what=what)
    try:
        with atomic_write(out) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        _plt().close(fig)
    return out


def _plt():
    try:
        import matplotlib
    except ImportError:
        from vaelens.errors import VaeLensError

        raise VaeLensError(
            "drawing PNGs needs matplotlib, which is not installed: pip install 'vaelens[viz]'"
        ) from None

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_channel_grid(latent, path: str | Path, *, title: str, units: str) -> GridInfo:
    """latent [C,h,w] -> PNG: C heat-maps on one symmetric diverging scale (±max|z|), one colour bar.

    One shared scale keeps channels comparable; per-channel scales would make a near-silent channel
    look as busy as a loud one.
    """
    plt = _plt()
    a = latent.detach().float().cpu().numpy() if hasattr(latent, "detach") else np.asarray(latent, np.float32)
    if a.ndim != 3:
        from vaelens.errors import VaeLensError

        raise VaeLensError(f"plot_channel_grid takes [C, h, w]; got {list(a.shape)}", param="latent",
                           value=list(a.shape))
    c, h, w = a.shape
    cols = min(16, math.ceil(math.sqrt(c)))
    rows = math.ceil(c / cols)
    finite = a[np.isfinite(a)]
    lim = float(np.abs(finite).max()) if finite.size else 1.0
    lim = lim or 1.0
    panel = 2.2
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(cols * panel * max(w / h, 0.5) + 1.2, rows * panel + 0.6),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= c:
            ax.set_axis_off()
            continue
        image = ax.imshow(a[i], cmap=DIVERGING, vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"ch {i}  μ={np.nanmean(a[i]):.2f} σ={np.nanstd(a[i]):.2f}", fontsize=7)
    bar = fig.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label(units)
    fig.suptitle(title, fontsize=9)
    panels = sum(1 for ax in fig.axes if ax.images)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return GridInfo(path=str(out), panels=panels, rows=rows, cols=cols, vmin=-lim, vmax=lim)


def plot_error_map(error: np.ndarray, path: str | Path, *, title: str) -> Path:
    """error [H,W] (mean |input − reconstruction| over RGB, [0,1] units) -> PNG heat-map with colour bar."""
    plt = _plt()
    h, w = error.shape
    fig, ax = plt.subplots(
        figsize=(min(12, 2 + 6 * w / max(h, w)), min(12, 1 + 6 * h / max(h, w))), layout="constrained"
    )
    im = ax.imshow(error, cmap="magma", vmin=0.0, vmax=max(float(error.max()), 1e-6), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8).set_label("|input − reconstruction|, mean over RGB (0–1 scale)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_comparison(
    original: np.ndarray, reconstruction: np.ndarray, error: np.ndarray, path: str | Path, *, title: str
) -> Path:
    """[H,W,3], [H,W,3], [H,W] in [0,1] -> one PNG: input | reconstruction | error heat-map."""
    plt = _plt()
    h, w = error.shape
    fig, axes = plt.subplots(1, 3, figsize=(3 * 4 * w / max(h, w) + 1.5, 4 * h / max(h, w) + 0.8), layout="constrained")
    for ax, img, name in zip(axes[:2], (original, reconstruction), ("input", "reconstruction"), strict=True):
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_title(name, fontsize=9)
    im = axes[2].imshow(error, cmap="magma", vmin=0.0, vmax=max(float(error.max()), 1e-6), interpolation="nearest")
    axes[2].set_title("|error| (mean over RGB)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    fig.suptitle(title, fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_rgb_approximation(rgb: np.ndarray, decoded: np.ndarray | None, path: str | Path, *, r2: float) -> Path:
    """rgb [h,w,3] from the linear latent→RGB fit (and the decoder's output) -> PNG titled as an approximation."""
    plt = _plt()
    n = 2 if decoded is not None else 1
    h, w = rgb.shape[:2]
    fig, axes = plt.subplots(
        1,
        n,
        figsize=(n * 4 * w / max(h, w) + 0.5, 4 * h / max(h, w) + 0.9),
        squeeze=False,
        layout="constrained",
    )
    axes[0, 0].imshow(np.clip(rgb, 0, 1), interpolation="nearest")
    axes[0, 0].set_title(f"APPROXIMATION: linear latent→RGB fit (R²={r2:.3f})\nnot the latent's colours", fontsize=8)
    if decoded is not None:
        axes[0, 1].imshow(np.clip(decoded, 0, 1), interpolation="nearest")
        axes[0, 1].set_title("decoder output (what the fit was fitted to)", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
