"""`vaelens inspect [LATENTS | IMAGE --vae …]`: a latent as channels — per-channel statistics, the scaling
factor the data implies beside the configured one, channel correlations, a heat-map grid, and a labelled
RGB approximation. Without arguments: the demo VAE on its sample image."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def _raw_latent(source: str, args: argparse.Namespace):
    """LATENTS_OR_IMAGE -> (raw latent z, LoadedVae or None, family, warnings)."""
    from vaelens.latents import MissingModuleError, raw_latent_from_file

    if Path(source).suffix.lower() in LATENT_SUFFIXES:
        vae = load_from_args(args) if args.vae else None
        try:
            raw, lf, notes = raw_latent_from_file(source, vae=vae)
        except MissingModuleError as exc:
            raise VaeLensError(str(exc).replace("pass vae=", "pass --vae")) from None
        return raw, vae, (vae.family if vae else lf.family), notes
    from vaelens.codec import encode
    from vaelens.images import read_for_family, to_pixels

    vae = load_from_args(args, default_demo=True)
    arrays, infos = read_for_family([source], vae.spec)
    raw, _ = encode(vae, to_pixels(arrays), normalized=False, upcast=args.upcast)
    return raw, vae, vae.family, infos[0].notes


def run(args: argparse.Namespace) -> int:
    from vaelens.latents import inspect_latent
    from vaelens.render.latents import inspect_json, plot_inspection, render_inspection
    from vaelens.weights.demo import demo_image_path

    source = args.input or str(demo_image_path())
    raw, vae, family, notes = _raw_latent(source, args)
    if not 0 <= args.index < raw.shape[0]:
        raise VaeLensError(f"--index {args.index} is outside the batch of {raw.shape[0]}")
    insp = inspect_latent(raw, vae=vae, family=family, warnings=tuple(notes), upcast=args.upcast)
    grid, files = plot_inspection(insp, Path(args.out), index=args.index)
    if args.json:
        emit_json(inspect_json(insp, source=source, grid=grid, files=files))
        return 0
    for note in insp.warnings:
        warn(note.replace("no VAE given:", "no --vae:"))
    print(render_inspection(insp, source=source, files=files))
    if insp.stats.nonfinite:
        warn(f"{insp.stats.nonfinite} NaN/Inf values in the latent (left out of the statistics)")
    return 0
