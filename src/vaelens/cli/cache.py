"""`vaelens cache DATA --vae V -o OUT`: every image (and clip) encoded once into a resumable latent cache;
`vaelens cache --verify OUT`: every shard's content checked against the manifest."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from vaelens.cli._dataargs import (
    add_data_args,
    bucketing_from_args,
    early_checks,
    encode_settings_from_args,
    load_data_vae,
    progress_for,
)
from vaelens.cli._io import add_force, force_message
from vaelens.cli.common import add_json, emit_json
from vaelens.cli.flags import feeds
from vaelens.errors import VaeLensError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache",
        help="encode a dataset into sharded latent files with a manifest (resumable)",
        description="Encode every image of DATA into safetensors shards in OUT with a manifest. Keys are the "
        "file's content hash + the VAE + the settings: run it again to resume after a kill, or after editing "
        "files (only changed files are encoded), or to repair a cache whose shard was deleted or truncated. "
        "NaN/Inf latents are redone in fp32 and reported; every file under DATA that is not encoded is listed "
        "with the reason. --dtype auto is bf16 on CUDA and fp32 on CPU. `vaelens cache --verify OUT` checks "
        "every shard's sha256. Read the cache in training code with vaelens.open_cache(OUT).",
    )
    add_data_args(p, data_required=False)
    feeds(p.add_argument("-o", "--output", metavar="OUT",
                         help="cache folder (created; resumed if it is a vaelens cache; refused if it is another "
                         "non-empty folder, unless --force)"), "out")
    p.add_argument("--latent-dtype", default="fp16", choices=("fp32", "fp16", "bf16"),
                   help="dtype of the stored latents (default fp16)")
    p.add_argument("--logvar", action="store_true", help="store the posterior log-variance too")
    p.add_argument("--flip", action="store_true",
                   help="store the horizontally flipped image's latent too (chosen at read time)")
    p.add_argument("--captions", metavar="FILE",
                   help="a metadata .jsonl/.csv with file_name and caption columns (default: sidecar "
                   ".txt/.caption/.json files, else DATA/metadata.jsonl or .csv)")
    p.add_argument("--caption-column", metavar="NAME", help="the caption column (default: text, else caption)")
    p.add_argument("--shard-size", type=_positive, default=256, metavar="N", help="samples per shard (default 256)")
    p.add_argument("--stats", action="store_true", help="statistics of the cached latents at the end")
    p.add_argument("--verify", action="store_true",
                   help="with OUT only: check every shard's sha256 and exit; with DATA -o OUT: also delete "
                   "the shards that fail, then re-encode their samples")
    add_force(p)
    p.set_defaults(func=run)
    add_json(p)


def _positive(text: str) -> int:
    from vaelens.cli._dataargs import _int_at_least

    return _int_at_least(1)(text)


def run(args: argparse.Namespace) -> int:
    if args.verify and args.output is None:
        return _verify_only(args)
    if args.data is None or args.output is None:
        raise VaeLensError("give DATA and -o OUT (or --verify OUT to check a cache)")
    from vaelens.datasets.cache import CacheOptions, cache_dataset
    from vaelens.render.datasets import render_cache

    early_checks(args)
    with _claim(args) as claimed:  # before the model loads
        vae = load_data_vae(args)
        options = CacheOptions(
            bucketing=bucketing_from_args(args, vae),
            latent_dtype=args.latent_dtype,
            logvar=args.logvar,
            flip=args.flip,
            frames=args.frames,
            batch_size=args.batch_size,
            workers=args.workers,
            shard_size=args.shard_size,
            stats=args.stats,
            engine=args.engine,
            address=args.address,
            captions=args.captions,
            caption_column=args.caption_column,
            quiet=args.quiet,
        )
        with progress_for(args, f"caching with {vae.family}") as bar:
            report = cache_dataset(args.data, vae, claimed, options=options, encode=encode_settings_from_args(args),
                                   progress=bar, verify=args.verify)
    if args.json:
        emit_json(report.to_json())
    else:
        print(render_cache(report))
    return 0 if report.encoded + report.reused or not report.files else 1


@contextlib.contextmanager
def _claim(args: argparse.Namespace) -> Iterator[Any]:
    """claim_cache; its refusals name -o through their param (out=, which -o fills), and a folder in the way
    says what --force does (from the error's fields)."""
    from vaelens.datasets.store import claim_cache
    from vaelens.errors import OutputExistsError

    try:
        cm = claim_cache(args.data, args.output, force=args.force)
        claimed = cm.__enter__()
    except OutputExistsError as exc:
        raise VaeLensError(force_message(exc), param=exc.param, value=exc.value) from None
    try:
        yield claimed
    except BaseException:
        if not cm.__exit__(*sys.exc_info()):
            raise
    else:
        cm.__exit__(None, None, None)


def _verify_only(args: argparse.Namespace) -> int:
    from vaelens.datasets.store import verify_cache

    if args.data is None:
        raise VaeLensError("--verify needs the cache: vaelens cache --verify OUT")
    report = verify_cache(args.data)
    if args.json:
        emit_json(report.to_json())
    elif report.ok:
        print(f"{report.out}: {report.shards} shard(s), {report.samples} samples: every sha256 matches the manifest")
    else:
        print(f"{report.out}: {len(report.bad)} of {report.shards} shard(s) fail:")
        for b in report.bad:
            print(f"  {b['problem']} ({b['samples']} samples)")
        print(f"repair: vaelens cache DATA -o {report.out} --verify (deletes these shards and re-encodes them)")
    return 0 if report.ok else 1
