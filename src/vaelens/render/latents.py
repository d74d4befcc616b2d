"""LatentInspection -> the `vaelens inspect` text report, its JSON, and its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaelens.latents import LatentInspection
from vaelens.render.figures import GridInfo, plot_channel_grid, plot_rgb_approximation


def plot_inspection(insp: LatentInspection, prefix: str | Path, *, index: int) -> tuple[GridInfo, dict[str, str]]:
    """-> (the channel grid drawn, {"channels": path, ["rgb_approximation": path]}): PREFIX_channels.png
    for batch item `index` (a video latent: latent frame 0), PREFIX_rgb_approx.png when there is one."""
    item = insp.item(index)
    grid = plot_channel_grid(
        item,
        f"{prefix}_channels.png",
        title=f"{insp.family or 'latent'} raw latent z, item {index}: {item.shape[0]} channels "
        f"({item.shape[1]}x{item.shape[2]}), shared symmetric scale",
        units="raw latent value z (VAE units)",
    )
    files = {"channels": grid.path}
    if insp.projection is not None and insp.approximation is not None:
        decoded = insp.decoded[index] if insp.decoded is not None else None
        files["rgb_approximation"] = str(
            plot_rgb_approximation(
                insp.approximation[index], decoded, f"{prefix}_rgb_approx.png", r2=insp.projection.r2
            )
        )
    return grid, files


def inspect_json(insp: LatentInspection, *, source: str, grid: GridInfo, files: dict[str, str]) -> dict[str, Any]:
    """`vaelens inspect --json`. The image/file warnings are under `warnings`."""
    return {
        "input": source,
        "family": insp.family,
        "latent_shape": list(insp.raw.shape),
        "units": "raw latent z",
        "stats": insp.stats.to_json(),
        "configured": insp.configured.to_json() if insp.configured else None,
        "grid": {"panels": grid.panels, "rows": grid.rows, "cols": grid.cols, "vmin": grid.vmin, "vmax": grid.vmax},
        "rgb_approximation": insp.projection.to_json() if insp.projection else None,
        "files": files,
        "warnings": list(insp.warnings),
    }


def render_inspection(insp: LatentInspection, *, source: str, files: dict[str, str]) -> str:
    """`vaelens inspect`: per-channel table, implied vs configured scaling, correlations, files written."""
    stats = insp.stats
    lines = [f"{source}: raw latent {list(insp.raw.shape)}" + (f" ({insp.family})" if insp.family else "")]
    lines.append(f"  {'ch':>3} {'mean':>9} {'std':>9} {'min':>9} {'max':>9}")
    for c in range(stats.channels):
        lines.append(
            f"  {c:>3} {stats.mean[c]:>9.4f} {stats.std[c]:>9.4f} {stats.min[c]:>9.4f} {stats.max[c]:>9.4f}"
        )
    lines.append(f"  all {stats.overall_mean:>9.4f} {stats.overall_std:>9.4f}")
    line = f"  implied scaling factor 1/std = {stats.implied_scale:.5f}"
    if insp.configured:
        from vaelens.normalization import describe

        line += (
            f"; configured: {describe(insp.configured.normalization)} -> normalised std "
            f"{insp.configured.normalized_std:.4f}"
        )
    lines.append(line)
    lines += _correlation_lines(insp)
    if insp.projection:
        lines.append(
            "  RGB approximation (linear least-squares fit to the decoder's output, "
            f"R² = {insp.projection.r2:.3f})"
        )
    lines += [f"wrote {path} ({name.replace('_', ' ')})" for name, path in files.items()]
    return "\n".join(lines)


def _correlation_lines(insp: LatentInspection) -> list[str]:
    stats = insp.stats
    pair = stats.strongest_pair()
    if pair is None:
        return []
    i, j, r = pair
    lines = [
        f"  channel correlation: mean |r| off-diagonal {stats.mean_abs_correlation():.3f}; "
        f"strongest ch{i}-ch{j} r = {r:+.3f}"
    ]
    if stats.channels <= 8:
        lines += ["   " + " ".join("    –" if v is None else f"{v:+.2f}" for v in row) for row in stats.correlation]
    return lines


def draw_inspection(run: Any) -> Any:
    """InspectRun (vaelens.run.inspect_files) -> the same run with each item's figures written (its `files`:
    PREFIX_channels.png, PREFIX_rgb_approx.png) and its channel grid (GridInfo) set; every file of an item is
    staged and renamed into place together (vaelens.outputs.staged_prefix)."""
    from dataclasses import replace

    from vaelens.outputs import staged_prefix, unstage

    items = []
    for item in run.items:
        with staged_prefix(item.prefix) as tmp:
            grid, files = plot_inspection(item.inspection, tmp, index=item.index)
        files = {k: unstage(v, tmp, item.prefix) for k, v in files.items()}
        grid = replace(grid, path=unstage(grid.path, tmp, item.prefix))
        items.append(replace(item, grid=grid, files=files))
    return replace(run, items=tuple(items))
