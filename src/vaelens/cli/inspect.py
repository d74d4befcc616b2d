"""`vaelens inspect [LATENTS | IMAGE --vae …]`: parse -> vaelens.run.inspect_files -> draw and render: a latent as
channels (per-channel statistics, the implied scaling factor, channel correlations, a heat-map grid, a
labelled RGB approximation). Without arguments: the demo VAE on its sample image."""

from __future__ import annotations

import argparse

from vaelens.cli._io import add_force, add_quiet, add_strict, bar_for, outputs, report_skipped
from vaelens.cli._vaeargs import add_vae, loading
from vaelens.cli.common import add_json, emit_json, warn


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="latent channels: statistics, implied scaling, heat-maps, RGB approximation",
        description="Inspect a latent file, or an image encoded with --vae (default: the demo VAE "
        "and its sample image). Statistics are of the raw latent z, in the VAE's own units.",
    )
    p.add_argument("input", nargs="*", metavar="LATENTS_OR_IMAGE",
                   help="latent files (.safetensors / ComfyUI .latent) or images, folders or glob patterns "
                   "('demo': the sample photograph, the default)")
    add_vae(p, required=False, default=" (images without --vae: the demo VAE; a latent file without --vae: "
            "statistics only, no RGB approximation)")
    p.add_argument("-o", "--out", default="inspect", metavar="PREFIX",
                   help="writes PREFIX_channels.png and PREFIX_rgb_approx.png (default: inspect); several inputs "
                   "write PREFIX_<input name>_channels.png, …")
    p.add_argument("--index", type=int, default=0, help="which batch item to draw (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--raw", action="store_true", help="a latent file holds raw latents, whatever it says")
    g.add_argument("--normalized", action="store_true", help="a latent file holds normalised latents")
    add_strict(p, "stop at the first input that cannot be read (default: skip it, list it, exit 1)")
    add_force(p)
    add_quiet(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.cli._vaeargs import weights_from_args
    from vaelens.render.latents import draw_inspection, inspect_json, render_inspection
    from vaelens.run import inspect_files

    with bar_for(args, "inspect", unit="input") as bar, outputs(), loading():
        result = draw_inspection(inspect_files(
            args.input or ["demo"], args.out, vae=weights_from_args(args) if args.vae else None,
            normalized=True if args.normalized else (False if args.raw else None), index=args.index,
            upcast=args.upcast, strict=args.strict, force=args.force, progress=bar,
        ))  # the engine returns data and the figure paths; render draws
    results = []
    for item in result.items:
        insp = item.inspection
        if args.json:
            results.append(inspect_json(insp, source=item.source, grid=item.grid, files=item.files))
            continue
        for note in insp.warnings:
            warn(note)
        print(render_inspection(insp, source=item.source, files=item.files))
        if insp.stats.nonfinite:
            warn(f"{insp.stats.nonfinite} NaN/Inf values in the latent (left out of the statistics)")
    if args.json:
        skipped = [{"path": p, "reason": r} for p, r in result.skipped.items()]
        many = {"count": len(results), "results": results, "skipped": skipped}
        emit_json(results[0] if len(results) == 1 and not skipped else many)
    return report_skipped(result.skipped, warn)
