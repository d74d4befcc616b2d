"""`vaelens stats DATA --vae V`: statistics of raw latents over a whole dataset, and the normalisation
they imply beside the configured one (also as diffusers config keys). DATA may also be a finished
`vaelens cache` folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelens.cli._dataargs import (
    add_data_args,
    bucketing_from_args,
    early_checks,
    encode_settings_from_args,
    load_data_vae,
    progress_for,
)
from vaelens.cli._io import add_force, check_outputs
from vaelens.cli.common import add_json, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="per-channel statistics of a dataset's raw latents; implied normalisation",
        description="Encode every image of DATA (streaming; nothing is kept) and report per-channel mean, std, "
        "min/max, percentiles (histogram, exact to one bin) and channel correlations of the raw latents, "
        "merged exactly across batches in float64, with the normalisation they imply in each family's form "
        "beside the configured one, and as diffusers config.json keys to paste. --dtype auto is bf16 on CUDA "
        "and fp32 on CPU. DATA may be a cache folder.",
    )
    add_data_args(p)
    p.add_argument("--plot", metavar="FIGURE",
                   help="write per-channel histograms (one scale) to this file (.png, .svg, .pdf, …; an existing "
                   "file needs --force; never one of DATA's files)")
    add_force(p)
    add_json(p)
    p.set_defaults(func=run)


def _inputs(data: str) -> list[Path]:
    """DATA's files, which --plot must never replace (a cache folder: its own files)."""
    p = Path(data)
    if p.is_dir():
        return [f for f in p.rglob("*") if f.is_file()]
    return [p] if p.exists() else []


def run(args: argparse.Namespace) -> int:
    from vaelens.datasets.stats import compute_stats, stats_of_cache
    from vaelens.render.datasets import plot_latent_histograms, render_stats

    plot = None
    if args.plot:  # checked before any work: an error after encoding everything would waste it
        [plot] = check_outputs(args, [args.plot], inputs=_inputs(args.data), kind="figure", what="--plot")
    if (Path(args.data) / "cache.json").is_file():
        report = stats_of_cache(args.data, posterior=getattr(args, "posterior", "mode"))
    else:
        early_checks(args)
        from vaelens.datasets.items import list_items

        list_items(args.data)  # a missing or empty DATA is said before the model loads
        vae = load_data_vae(args)
        with progress_for(args, f"stats with {vae.family}") as bar:
            report = compute_stats(
                args.data,
                vae,
                bucketing=bucketing_from_args(args, vae),
                encode=encode_settings_from_args(args),
                batch_size=args.batch_size,
                frames=args.frames,
                workers=args.workers,
                engine=args.engine,
                address=args.address,
                progress=bar,
                quiet=args.quiet,
            )
    figure = None
    if plot is not None:
        figure = plot_latent_histograms(
            report.stats, plot, title=f"{report.family}: raw latents of {report.stats.samples} samples"
        )
    if args.json:
        emit_json({**report.to_json(), "figure": figure})
    else:
        print(render_stats(report))
        if figure:
            print(f"wrote {figure['path']}")
    return 0
