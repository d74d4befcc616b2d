"""`vaelens cache DATA --vae V -o OUT`: every image (and clip) encoded once into a resumable latent cache."""

from __future__ import annotations

import argparse

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
        "cache",
        help="encode a dataset into sharded latent files with a manifest (resumable)",
        description="Encode every image of DATA into safetensors shards in OUT with a manifest. Keys are the "
        "file's content hash + the VAE + the settings: run it again to resume after a kill, or after editing "
        "files (only changed files are encoded). NaN/Inf latents are redone in fp32 and reported; unreadable "
        "files are listed and skipped. --dtype auto is bf16 on CUDA and fp32 on CPU. Read the cache in "
        "training code with vaelens.open_cache(OUT).",
    )
    add_data_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="cache folder (created; resumed if present)")
    p.add_argument("--latent-dtype", default="fp16", choices=("fp32", "fp16", "bf16"),
                   help="dtype of the stored latents (default fp16)")
    p.add_argument("--logvar", action="store_true", help="store the posterior log-variance too")
    p.add_argument("--shard-size", type=int, default=256, metavar="N", help="samples per shard (default 256)")
    p.add_argument("--stats", action="store_true", help="statistics of the cached latents at the end")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.datasets.cache import CacheOptions, cache_dataset
    from vaelens.render.datasets import render_cache

    vae = load_data_vae(args)
    options = CacheOptions(
        bucketing=bucketing_from_args(args, vae),
        latent_dtype=args.latent_dtype,
        logvar=args.logvar,
        frames=args.frames,
        batch_size=args.batch_size,
        workers=args.workers,
        shard_size=args.shard_size,
        stats=args.stats,
        engine=args.engine,
        address=args.address,
    )
    with progress_for(args, f"caching with {vae.family}") as bar:
        report = cache_dataset(
            args.data, vae, args.output, options=options, encode=encode_settings_from_args(args), progress=bar
        )
    if args.json:
        emit_json(report.to_json())
    else:
        print(render_cache(report))
    return 0
