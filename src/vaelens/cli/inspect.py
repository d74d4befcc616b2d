"""`vaelens inspect [LATENTS | IMAGE --vae …]`: a latent as channels — per-channel statistics, the scaling
factor the data implies beside the configured one, channel correlations, a heat-map grid, and a labelled
RGB approximation. Without arguments: the demo VAE on its sample image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaelens.cli._vaeargs import add_vae, load_from_args
from vaelens.cli.common import add_json, emit_json, warn
from vaelens.errors import VaeLensError

LATENT_SUFFIXES = (".safetensors", ".latent")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="latent channels: statistics, implied scaling, heat-maps, RGB approximation",
        description="Inspect a latent file, or an image encoded with --vae (default: the demo VAE "
        "and its sample image). Statistics are of the raw latent z, in the VAE's own units.",
    )
    p.add_argument(
        "input",
        nargs="?",
        metavar="LATENTS_OR_IMAGE",
        help="latent file (.safetensors / ComfyUI .latent) or image (default: the demo sample image)",
    )
    add_vae(p, required=False)
    p.add_argument(
        "-o",
        "--out",
        default="inspect",
        metavar="PREFIX",
        help="writes PREFIX_channels.png and PREFIX_rgb_approx.png (default: inspect)",
    )
    p.add_argument("--index", type=int, default=0, help="which batch item to draw (default 0)")
    add_json(p)
    p.set_defaults(func=run)


def _raw_from_file(path: str, args: argparse.Namespace):
    """latent file -> (raw latent, vae or None, notes)."""
    from vaelens.latents import load_latents, normalization_from_json
    from vaelens.normalization import denormalize

    lf = load_latents(path)
    vae = load_from_args(args) if args.vae else None
    notes = []
    z = lf.latent
    if lf.normalized:
        if vae is not None:
            z = denormalize(z, vae.spec.normalization, module=vae.module)
        elif isinstance(lf.metadata.get("normalization"), dict):
            norm = normalization_from_json(lf.metadata["normalization"])
            if norm.stats_from:  # the statistics are checkpoint buffers, not in the file's metadata
                raise VaeLensError(
                    f"{path} holds normalised latents whose statistics live in the VAE checkpoint "
                    f"({norm.stats_from}); pass --vae to undo the normalisation"
                )
            z = denormalize(z, norm)
        else:
            raise VaeLensError(f"{path} holds normalised latents without their normalisation; pass --vae")
        notes.append("file holds normalised latents; statistics are of the raw latent after undoing it")
    return z.float().cpu(), vae, lf, notes


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vaelens.codec import encode
    from vaelens.images import read_for_family, to_pixels
    from vaelens.latents import channel_stats, normalization_to_json, project_with_decoder
    from vaelens.normalization import describe, normalize
    from vaelens.render.figures import render_channel_grid, render_rgb_approximation
    from vaelens.weights.demo import demo_image_path

    source = args.input or str(demo_image_path())
    lf = None
    if Path(source).suffix.lower() in LATENT_SUFFIXES:
        raw, vae, lf, notes = _raw_from_file(source, args)
    else:
        vae = load_from_args(args, default_demo=True)
        arrays, infos = read_for_family([source], vae.spec)
        raw, _ = encode(vae, to_pixels(arrays), normalized=False, upcast=args.upcast)
        notes = list(infos[0].notes)
    if not 0 <= args.index < raw.shape[0]:
        raise VaeLensError(f"--index {args.index} is outside the batch of {raw.shape[0]}")
    stats = channel_stats(raw)
    family = vae.family if vae else (lf.family if lf else None)
    norm = vae.spec.normalization if vae else None
    configured: dict[str, Any] | None = None
    if norm is not None:
        normed = normalize(raw, norm, module=vae.module)
        configured = {
            "normalization": normalization_to_json(norm),
            "formula": describe(norm),
            "scaling_factor": norm.scale,
            "normalized_std": round(float(normed.float().std()), 6),
            "normalized_mean": round(float(normed.float().mean()), 6),
        }
    prefix = Path(args.out)
    item = raw[args.index]
    if item.ndim == 4:  # video latent [C,F,h,w]: draw the first latent frame
        notes.append(f"video latent: drawing latent frame 0 of {item.shape[1]}")
        item = item[:, 0]
    grid = render_channel_grid(
        item,
        f"{prefix}_channels.png",
        title=f"{family or 'latent'} raw latent z, item {args.index}: {item.shape[0]} channels "
        f"({item.shape[1]}x{item.shape[2]}), shared symmetric scale",
        units="raw latent value z (VAE units)",
    )
    files = {"channels": grid.path}
    projection = None
    if vae is not None and raw.ndim == 4:
        proj, approx, decoded = project_with_decoder(vae, raw, upcast=args.upcast)
        files["rgb_approximation"] = str(
            render_rgb_approximation(approx[args.index], decoded[args.index], f"{prefix}_rgb_approx.png", r2=proj.r2)
        )
        projection = proj.to_json()
    elif vae is None:
        notes.append("no --vae: the RGB approximation needs the decoder, skipped")
    if args.json:
        emit_json(
            {
                "input": source,
                "family": family,
                "latent_shape": list(raw.shape),
                "units": "raw latent z",
                "stats": stats.to_json(),
                "configured": configured,
                "grid": {
                    "panels": grid.panels,
                    "rows": grid.rows,
                    "cols": grid.cols,
                    "vmin": grid.vmin,
                    "vmax": grid.vmax,
                },
                "rgb_approximation": projection,
                "files": files,
                "notes": notes,
            }
        )
        return 0
    for note in notes:
        warn(note)
    print(f"{source}: raw latent {list(raw.shape)}" + (f" ({family})" if family else ""))
    print(f"  {'ch':>3} {'mean':>9} {'std':>9} {'min':>9} {'max':>9}")
    for c in range(stats.channels):
        print(f"  {c:>3} {stats.mean[c]:>9.4f} {stats.std[c]:>9.4f} {stats.min[c]:>9.4f} {stats.max[c]:>9.4f}")
    print(f"  all {stats.overall_mean:>9.4f} {stats.overall_std:>9.4f}")
    line = f"  implied scaling factor 1/std = {stats.implied_scale:.5f}"
    if configured:
        line += f"; configured: {configured['formula']} -> normalised std {configured['normalized_std']:.4f}"
    print(line)
    corr = np.asarray(stats.correlation)
    if stats.channels > 1:
        off = corr[~np.eye(stats.channels, dtype=bool)]
        off_abs = np.abs(corr)
        np.fill_diagonal(off_abs, -1.0)  # the strongest pair is two different channels, even when every r is 0
        i, j = np.unravel_index(np.argmax(off_abs), corr.shape)
        print(
            f"  channel correlation: mean |r| off-diagonal {np.abs(off).mean():.3f}; "
            f"strongest ch{i}-ch{j} r = {corr[i, j]:+.3f}"
        )
        if stats.channels <= 8:
            for c in range(stats.channels):
                print("   " + " ".join(f"{v:+.2f}" for v in corr[c]))
    if stats.nonfinite:
        warn(f"{stats.nonfinite} NaN/Inf values in the latent (left out of the statistics)")
    if projection:
        print(f"  RGB approximation (linear least-squares fit to the decoder's output, R² = {projection['r2']:.3f})")
    for name, path in files.items():
        print(f"wrote {path} ({name.replace('_', ' ')})")
    return 0
