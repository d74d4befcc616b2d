"""`vaelens stats DATA --vae V`: statistics of raw latents over a whole dataset, and the normalisation
they imply beside the configured one. DATA may also be a finished `vaelens cache` folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelens.cli._dataargs import (
    add_data_args,
    bucketing_from_args,
    encode_settings_from_args,
    load_data_vae,
    progress_for,
)
from vaelens.cli.common import add_json, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="per-channel statistics of a dataset's raw latents; implied normalisation",
        description="Encode every image of DATA (streaming; nothing is kept) and report per-channel mean, std, "
        "min/max, percentiles (histogram, exact to one bin) and channel correlations of the raw latents, "
        "merged exactly across batches in float64, with the normalisation they imply in each family's form "
        "beside the configured one. --dtype auto is bf16 on CUDA and fp32 on CPU. DATA may be a cache folder.",
    )
    add_data_args(p)
    p.add_argument("--plot", metavar="PNG", help="write per-channel histograms (one scale) to this file")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.datasets.stats import compute_stats, stats_of_cache
    from vaelens.render.datasets import plot_latent_histograms, render_stats

    if (Path(args.data) / "cache.json").is_file():
        report = stats_of_cache(args.data)
    else:
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
            )
    figure = None
    if args.plot:
        figure = plot_latent_histograms(
            report.stats, args.plot, title=f"{report.family}: raw latents of {report.stats.samples} samples"
        )
    if args.json:
        emit_json({**report.to_json(), "figure": figure})
    else:
        print(render_stats(report))
        if figure:
            print(f"wrote {figure['path']}")
    return 0
