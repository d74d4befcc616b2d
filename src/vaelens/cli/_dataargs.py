"""Arguments shared by `vaelens stats` and `vaelens cache`: buckets, batching, workers, engine, posterior."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from vaelens.cli._vaeargs import add_vae, load_from_args
from vaelens.errors import VaeLensError
from vaelens.options import parse_size


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="folder of images/videos (recursive), one file, or a .txt list")
    add_vae(p, required=False)
    p.set_defaults(dtype="auto")
    for action in p._actions:  # the shared weights group's wording, for these commands
        if action.dest == "dtype":
            action.help = "compute dtype: auto (default: bf16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16"
        elif action.dest == "upcast":
            action.help = argparse.SUPPRESS  # NaN/Inf samples are always redone in fp32
    g = p.add_argument_group("pixels")
    g.add_argument("--size", metavar="WxH", help="resize (cover) and centre-crop every image to WxH")
    g.add_argument("--resolution", type=int, metavar="R",
                   help="aspect-ratio buckets of about R×R pixels (sides multiples of the family's size rule)")
    g.add_argument("--bucket-step", type=int, metavar="N", help="bucket side step (default 64, or the multiple)")
    g.add_argument("--frames", type=int, metavar="N", help="video clips: frames per clip (the family's rule)")
    g = p.add_argument_group("encoding")
    g.add_argument("--posterior", default="mode", choices=("mode", "sample"),
                   help="latent: the posterior mode (default) or a fixed-seed sample")
    g.add_argument("--seed", type=int, default=0, help="seed of --posterior sample (per file, batch-independent)")
    g.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per encode call (default 8)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="decode processes (default: half the CPUs when encoding on CPU, all up to 8 on CUDA)")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: the CPUs the workers leave)")
    g.add_argument("--budget", metavar="BYTES", help="memory budget per encode call (e.g. 8GiB): exact tiles "
                   "when the untiled encode does not fit (default: untiled)")
    g.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    g.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format")
    g.add_argument("--engine", default="local", choices=("local", "ray"), help="local processes or Ray Data")
    g.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local one)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def load_data_vae(args: argparse.Namespace):
    """-> LoadedVae at the compute dtype (auto: bf16 on CUDA, fp32 on CPU; fp16 + force_upcast: fp32)."""
    from vaelens.datasets.encoder import resolve_dtype
    from vaelens.weights.load import default_device

    if args.upcast != "auto":
        raise VaeLensError("--upcast: dataset commands always retry NaN/Inf samples in fp32 (auto)")
    device = args.device or default_device()
    requested = args.dtype
    ns = argparse.Namespace(**vars(args))
    ns.device = device
    ns.dtype = "fp32"
    vae = load_from_args(ns, default_demo=True)
    dtype, _ = resolve_dtype(requested, device=device, config=dict(vae.spec.config))
    if dtype.value != "fp32":
        from vaelens.weights.load import cast_module

        cast_module(vae.module, dtype=dtype.torch)
        from dataclasses import replace

        vae = replace(vae, dtype=dtype)
    return vae


def bucketing_from_args(args: argparse.Namespace, vae):
    from vaelens.datasets.pixels import make_bucketing

    size = parse_size(args.size) if args.size else None
    return make_bucketing(vae.spec, size=size, resolution=args.resolution, step=args.bucket_step)


def encode_settings_from_args(args: argparse.Namespace) -> Any:
    from vaelens.datasets.encoder import EncodeSettings

    return EncodeSettings(
        dtype=args.dtype,
        posterior=args.posterior,
        seed=args.seed,
        channels_last=not args.no_channels_last,
        compile=args.compile,
        threads=args.threads,
        budget=args.budget,
    )


class _Staged:
    """A progress callback (done, total, what) that draws one bar per stage (scanning files, then
    encoding images), so each bar's rate and ETA count one kind of step."""

    def __init__(self, description: str, enabled: bool) -> None:
        self.description, self.enabled = description, enabled
        self.stage: str | None = None
        self.stack = contextlib.ExitStack()
        self.bar: Any = None

    def __call__(self, done: int, total: int | None, what: str) -> None:
        from vaelens.progress import progress_bar

        if what != self.stage:
            self.stack.close()
            self.stack = contextlib.ExitStack()
            unit = "file" if what == "scanning" else "image"
            self.bar = self.stack.enter_context(
                progress_bar(f"{self.description}: {what}", total=total, enabled=self.enabled, unit=unit)
            )
            self.stage = what
        self.bar(done, total, "")


@contextlib.contextmanager
def progress_for(args: argparse.Namespace, description: str) -> Iterator[_Staged]:
    """-> a progress callback: bars with rate and ETA on stderr (none with --quiet, --json or no TTY)."""
    staged = _Staged(description, enabled=not (args.quiet or args.json))
    try:
        yield staged
    finally:
        staged.stack.close()
