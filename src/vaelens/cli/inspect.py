"""`vaelens inspect [LATENTS | IMAGE --vae …]`: a latent as channels — per-channel statistics, the scaling
factor the data implies beside the configured one, channel correlations, a heat-map grid, and a labelled
RGB approximation. Without arguments: the demo VAE on its sample image."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from vaelens.cli._io import add_force, add_quiet, bar_enabled, check_outputs, expand_images, stems, weights_inputs
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
        nargs="*",
        metavar="LATENTS_OR_IMAGE",
        help="latent files (.safetensors / ComfyUI .latent) or images, folders or glob patterns "
        "('demo': the sample photograph, the default)",
    )
    add_vae(p, required=False)
    p.add_argument(
        "-o",
        "--out",
        default="inspect",
        metavar="PREFIX",
        help="writes PREFIX_channels.png and PREFIX_rgb_approx.png (default: inspect); several inputs write "
        "PREFIX_<input name>_channels.png, …",
    )
    p.add_argument("--index", type=int, default=0, help="which batch item to draw (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--raw", action="store_true", help="a latent file holds raw latents, whatever it says")
    g.add_argument("--normalized", action="store_true", help="a latent file holds normalised latents")
    add_force(p)
    add_quiet(p)
    add_json(p)
    p.set_defaults(func=run)


def _raw_latent(source: str, args: argparse.Namespace):
    """LATENTS_OR_IMAGE -> (raw latent z, LoadedVae or None, family, warnings)."""
    from vaelens.latents import MissingModuleError, raw_latent_from_file

    if Path(source).suffix.lower() in LATENT_SUFFIXES:
        vae = load_from_args(args) if args.vae else None
        override = True if args.normalized else (False if args.raw else None)
        try:
            raw, lf, notes = raw_latent_from_file(source, vae=vae, normalized=override)
        except MissingModuleError as exc:
            raise VaeLensError(str(exc).replace("pass vae=", "pass --vae")) from None
        except VaeLensError as exc:
            text = str(exc).replace("pass normalized=True or normalized=False", "pass --raw or --normalized")
            raise VaeLensError(text.replace("normalized=False", "--raw")) from None
        return raw, vae, (vae.family if vae else lf.family), notes
    from vaelens.codec import encode
    from vaelens.images import read_for_family, to_pixels

    vae = load_from_args(args, default_demo=True)
    arrays, infos = read_for_family([source], vae.spec)
    raw, _ = encode(vae, to_pixels(arrays), normalized=False, upcast=args.upcast)
    return raw, vae, vae.family, infos[0].warnings


def run(args: argparse.Namespace) -> int:
    from vaelens.progress import progress_bar

    sources = expand_images(args.input or ["demo"], extra_suffixes=LATENT_SUFFIXES)
    prefixes = [Path(args.out)] if len(sources) == 1 else [Path(f"{args.out}_{n}") for n in stems(sources)]
    planned = [Path(f"{p}_{k}.png") for p in prefixes for k in ("channels", "rgb_approx")]
    check_outputs(args, planned, inputs=[*sources, *weights_inputs(args)], kind="image")
    results = []
    with progress_bar("inspect", total=len(sources), enabled=bar_enabled(args), unit="input") as bar:
        for source, prefix in zip(sources, prefixes, strict=True):
            bar.stage(Path(source).name)
            results.append(_inspect_one(args, source, prefix))
            bar.advance(1)
    if args.json:
        emit_json(results[0] if len(results) == 1 else {"count": len(results), "results": results})
    return 0


def _inspect_one(args: argparse.Namespace, source: str, prefix: Path) -> dict | None:
    from vaelens.latents import inspect_latent
    from vaelens.outputs import staged_prefix, unstage
    from vaelens.render.latents import inspect_json, plot_inspection, render_inspection

    raw, vae, family, notes = _raw_latent(source, args)
    if not 0 <= args.index < raw.shape[0]:
        raise VaeLensError(f"--index {args.index} is outside the batch of {raw.shape[0]}")
    insp = inspect_latent(raw, vae=vae, family=family, warnings=tuple(notes), upcast=args.upcast)
    with staged_prefix(prefix) as tmp:
        grid, files = plot_inspection(insp, tmp, index=args.index)
    files = {k: unstage(v, tmp, prefix) for k, v in files.items()}
    grid = replace(grid, path=unstage(grid.path, tmp, prefix))
    if args.json:
        return inspect_json(insp, source=source, grid=grid, files=files)
    for note in insp.warnings:
        warn(note.replace("no VAE given:", "no --vae:"))
    print(render_inspection(insp, source=source, files=files))
    if insp.stats.nonfinite:
        warn(f"{insp.stats.nonfinite} NaN/Inf values in the latent (left out of the statistics)")
    return None
