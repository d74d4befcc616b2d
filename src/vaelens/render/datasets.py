"""Text and figures for whole datasets: `vaelens stats` and `vaelens cache`.

StatsReport -> render_stats (table per channel, correlations, implied vs configured normalisation);
CacheReport -> render_cache; DatasetStats -> plot_latent_histograms (one panel per channel, one x scale).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def _g(x: float | None, digits: int = 5) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def _shifted(shift: float) -> str:
    """0.0609 -> '(z − 0.0609)'; -0.5 -> '(z + 0.5)'."""
    return f"(z − {_g(shift)})" if shift >= 0 else f"(z + {_g(-shift)})"


def render_stats(report) -> str:
    """StatsReport -> text: per-channel table, strongest correlation, implied normalisation."""
    s = report.stats
    cached = f", cached as {report.stored_dtype}" if report.stored_dtype else ""
    lines = [
        f"{report.family}: raw latents (posterior {report.posterior}{cached}) of {s.samples} samples from "
        f"{report.data} "
        f"({s.positions:,} positions per channel)",
    ]
    pick = [p for p in (1.0, 50.0, 99.0) if p in s.percentiles]
    cols = ["ch", "mean", "std", "min", "max", *[f"p{p:g}" for p in pick]]
    rows = []
    for c in range(s.channels):
        pv = [s.channel_percentiles[c][s.percentiles.index(p)] for p in pick]
        rows.append([str(c), *(_g(v) for v in (s.mean[c], s.std[c], s.min[c], s.max[c], *pv))])
    pv = [s.overall_percentiles[s.percentiles.index(p)] for p in pick]
    rows.append(["all", *(_g(v) for v in (s.overall_mean, s.overall_std, s.overall_min, s.overall_max, *pv))])
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]
    lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(cols, widths, strict=True)))
    lines += ["  " + "  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(
        f"  percentiles from a histogram with bins of {s.bin_width:g} (exact to one bin)"
        + (f"; some fell outside ±{s.hist_range:g} and were clamped to min/max" if s.percentiles_clamped else "")
    )
    cut = tail_counts(s)
    if cut["outside"]:
        lines.append(f"  the histogram's range ±{s.hist_range:g} cuts its tails: {cut['below']:,} values below, "
                     f"{cut['above']:,} above ({cut['fraction']:.3%}); min/max above are exact")
    if s.channels > 1:
        corr = np.asarray(s.correlation)
        off = np.abs(corr - np.diag(np.diag(corr)))
        i, j = np.unravel_index(int(np.argmax(off)), off.shape)
        lines.append(f"  strongest channel correlation: ch{i}-ch{j} r = {corr[i, j]:+.3f}")
    if s.nonfinite:
        lines.append(f"  {s.nonfinite} positions held NaN/Inf and were left out")
    if report.implied is not None:
        lines += _implied_lines(report.implied)
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} file(s):")
        lines += [f"  {x['source']}: {x['reason']}" for x in report.skipped[:20]]
        if len(report.skipped) > 20:
            lines.append(f"  … and {len(report.skipped) - 20} more (see --json)")
    return "\n".join(lines)


def tail_counts(stats, lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    """DatasetStats (+ an x range) -> values below / above it (default: the histogram's own range)."""
    hist = np.asarray(stats.histogram)
    if lo is None or hi is None:
        below, above = int(hist[:, 0].sum()), int(hist[:, -1].sum())
    else:
        edges = -stats.hist_range + np.arange(hist.shape[1] - 2) * stats.bin_width  # left edge of each bin
        inner = hist[:, 1:-1]
        below = int(hist[:, 0].sum() + inner[:, edges + stats.bin_width <= lo].sum())
        above = int(hist[:, -1].sum() + inner[:, edges >= hi].sum())
    total = int(hist.sum()) or 1
    return {"below": below, "above": above, "outside": below + above, "fraction": (below + above) / total}


def _implied_lines(im) -> list[str]:
    sc = im.implied["scale"]["scale"]
    ss = im.implied["shift_scale"]
    lines = [
        "implied normalisation (from these statistics):",
        f"  scale        z × {_g(sc)}                      (SD, SDXL: 1/std)",
        f"  shift+scale  {_shifted(ss['shift'])} × {_g(ss['scale'])}        (SD3, FLUX.1)",
        "  per-channel  (z − mean_c) / std_c with the table's mean and std   (Wan, Qwen-Image, LTX, Mochi)",
    ]
    if im.configured is None:
        lines.append(f"configured ({im.configured_kind}): {im.note}")
        return lines
    d = im.difference or {}
    if im.form == "per_channel":
        lines.append(
            f"configured per-channel ({im.configured_kind}): max |mean − configured| "
            f"{_g(d.get('max_abs_mean_difference'))}, std / configured off 1 by up to "
            f"{_g(d.get('max_std_ratio_deviation'))}"
        )
    elif im.form == "scale":
        lines.append(
            f"configured scale {_g(im.configured['scale'])}: implied / configured = "
            f"{_g(d.get('scale_over_configured'), 4)}"
        )
    else:
        lines.append(
            f"configured {_shifted(im.configured['shift'])} × {_g(im.configured['scale'])}: implied shift "
            f"{_g(d.get('shift_minus_configured'), 4):} off, scale × {_g(d.get('scale_over_configured'), 4)}"
        )
    if im.note:
        lines.append(f"  note: {im.note}")
    import json

    cfg = {k: (round(v, 6) if isinstance(v, float) else [round(x, 6) for x in v])
           for k, v in im.diffusers_config.items() if v is not None}
    lines.append("implied, as diffusers config.json keys (paste into vae/config.json):")
    lines.append("  " + json.dumps(cfg)[1:-1])
    return lines


def render_cache(report) -> str:
    """CacheReport -> text: counts, speed, buckets, NaN/Inf handling, skipped files."""
    lines = [
        f"{report.out}: {report.encoded} encoded, {report.reused} already cached, {len(report.skipped)} skipped "
        f"of {report.files} file(s) [{report.engine} engine, {report.dtype}"
        + (f": {report.dtype_reason}" if report.dtype_reason else "")
        + "]",
    ]
    if report.encoded:
        lines.append(
            f"  {report.images_per_second_steady:.2f} images/s after the first batch, "
            f"{report.images_per_second:.2f} with start-up ({report.first_batch_seconds:.1f} s to the first "
            f"batch); {report.seconds:.1f} s in all, {report.shards_written} shard(s) written"
        )
    if report.captions:
        lines.append(f"  {report.captions} sample(s) with a caption")
    if report.warnings:
        lines.append(f"  {len(report.warnings)} warning(s):")
        lines += [f"    {w['source']}: {w['warning']}" for w in report.warnings[:10]]
        if len(report.warnings) > 10:
            lines.append(f"    … and {len(report.warnings) - 10} more (--json; index.jsonl)")
    if report.buckets:
        lines.append("  buckets (WxH: files): " + ", ".join(f"{k}: {v}" for k, v in report.buckets.items()))
    for n in report.nonfinite:
        lines.append(f"  NaN/Inf {n['source']}: {n['action']}" + ("" if n["written"] else " — not written"))
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} file(s):")
        lines += [f"  {x['source']}: {x['reason']}" for x in report.skipped[:20]]
        if len(report.skipped) > 20:
            lines.append(f"  … and {len(report.skipped) - 20} more (index.jsonl lists every one)")
    if not report.complete:
        lines.append("interrupted: what was finished is kept; run the same command again to resume")
    return "\n".join(lines)


def plot_latent_histograms(stats, path: str | Path, *, title: str) -> dict[str, Any]:
    """DatasetStats -> figure file: one histogram per channel on one shared x range (the 0.1–99.9
    percentile span of all channels, widened to include 0) and a log count axis, so channels compare at
    a glance; the title says how many values that range leaves out. PATH must have been checked
    (vaelens.outputs.check_output, kind "figure"); it is written atomically."""
    from vaelens.outputs import atomic_write
    from vaelens.render.figures import _plt

    plt = _plt()
    hist = np.asarray(stats.histogram)[:, 1:-1]  # drop under/overflow slots
    edges = -stats.hist_range + np.arange(hist.shape[1] + 1) * stats.bin_width
    lo = min(0.0, stats.overall_percentiles[0]) if stats.percentiles[0] <= 1 else stats.overall_min
    hi = max(0.0, stats.overall_percentiles[-1]) if stats.percentiles[-1] >= 99 else stats.overall_max
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    # merge fine bins into ~120 display bins over [lo, hi]
    first, last = np.searchsorted(edges, lo) - 1, np.searchsorted(edges, hi)
    first, last = max(first, 0), min(last, hist.shape[1])
    group = max(1, (last - first) // 120)
    c = stats.channels
    cols = min(8, math.ceil(math.sqrt(c)))
    rows = math.ceil(c / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows + 0.6), sharex=True, squeeze=False)
    for ch in range(rows * cols):
        ax = axes[ch // cols][ch % cols]
        if ch >= c:
            ax.axis("off")
            continue
        counts = hist[ch, first:last]
        n = len(counts) // group * group
        merged = counts[:n].reshape(-1, group).sum(axis=1)
        left = edges[first : first + n : group]
        ax.bar(left, merged, width=stats.bin_width * group, align="edge", color="#4477aa")
        ax.set_yscale("log")
        ax.axvline(stats.mean[ch], color="#cc3311", lw=0.8)
        ax.set_title(f"ch{ch}: μ {stats.mean[ch]:.3g}, σ {stats.std[ch]:.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(lo, hi)
    cut = tail_counts(stats, lo, hi)
    if cut["outside"]:
        title += f"; x range cuts {cut['outside']:,} values ({cut['fraction']:.2%}) in the tails"
    fig.suptitle(title, fontsize=9)
    fig.supxlabel("raw latent value (one scale for every channel)", fontsize=8)
    fig.tight_layout()
    p = Path(path)
    with atomic_write(p) as tmp:
        fig.savefig(tmp, dpi=110)  # the temporary file keeps the suffix: matplotlib picks the format from it
    plt.close(fig)
    return {"path": str(p), "panels": c, "range": [lo, hi], "cut": cut}
