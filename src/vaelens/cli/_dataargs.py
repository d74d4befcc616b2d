"""Arguments shared by `vaelens stats` and `vaelens cache`: buckets, batching, workers, engine, posterior.

Every number is checked as it is parsed (argparse types: one line naming the flag, exit 2), and what can be
known without the weights (--frames on an image VAE, a Ray --address that answers nothing) is checked
before the model is loaded (`early_checks`)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from vaelens.cli._vaeargs import add_vae, load_from_args
from vaelens.datasets.engine import Engine
from vaelens.errors import VaeLensError
from vaelens.options import MAX_SIDE, Posterior, parse_size


def _int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"{v} is not allowed; give {low}..{high}" if high is not None
                                             else f"{v} is not allowed; give {low} or more")
        return v

    parse.__name__ = "int"
    return parse


def _resolutions(text: str) -> tuple[int, ...]:
    """'512,1024' -> (512, 1024), each 1..MAX_SIDE (vaelens' one size limit, as --size)."""
    parse = _int_at_least(1, MAX_SIDE)
    values = tuple(parse(t.strip()) for t in text.split(",") if t.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names no resolution")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} names a resolution twice")
    return values


def _aspect(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 1.0:
        raise argparse.ArgumentTypeError(f"{v:g} is not allowed; a ratio long:short side is at least 1")
    return v


def add_data_args(p: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    p.add_argument("data", metavar="DATA", nargs=None if data_required else "?",
                   help="folder of images/videos (recursive), one file, or a .txt list")
    add_vae(p, required=False)
    p.set_defaults(dtype="auto")
    for action in p._actions:  # the shared weights group's wording, for these commands
        if action.dest == "dtype":
            action.help = "compute dtype: auto (default: bf16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16"
        elif action.dest == "upcast":
            action.help = argparse.SUPPRESS  # NaN/Inf samples are always redone in fp32
    g = p.add_argument_group("pixels")
    g.add_argument("--size", metavar="WxH", help="resize (cover) and centre-crop every image to WxH")
    g.add_argument("--resolution", type=_resolutions, metavar="R[,R…]",
                   help=f"aspect-ratio buckets of about R×R pixels (sides multiples of the family's size rule; "
                   f"R ≤ {MAX_SIDE}); several (512,1024) cache every image at each, chosen at read time")
    g.add_argument("--bucket-step", type=_int_at_least(1, MAX_SIDE), metavar="N",
                   help="bucket side step (default 64, or the multiple)")
    g.add_argument("--no-upscale", action="store_true", help="skip images smaller than their bucket (listed)")
    g.add_argument("--min-size", type=_int_at_least(1, MAX_SIDE), metavar="PX",
                   help="skip images whose shorter side is below PX (listed)")
    g.add_argument("--max-aspect", type=_aspect, metavar="R",
                   help="skip images longer than R:1, e.g. panoramas (listed)")
    g.add_argument("--frames", type=_int_at_least(1), metavar="N",
                   help="video clips: frames per clip (the family's rule; video VAEs only)")
    g = p.add_argument_group("encoding")
    g.add_argument("--posterior", default="mode", choices=[m.value for m in Posterior],
                   help="latent: the posterior mode (default) or a fixed-seed sample")
    g.add_argument("--seed", type=int, default=0, help="seed of --posterior sample (per file, batch-independent)")
    g.add_argument("--batch-size", type=_int_at_least(1, 4096), default=8, metavar="N",
                   help="images per encode call (default 8)")
    g.add_argument("--workers", type=_int_at_least(0, 256), metavar="N",
                   help="decode processes, 0: decode in the encoding process (default: chosen per device; "
                   "see docs/datasets.md)")
    g.add_argument("--threads", type=_int_at_least(1, 1024), metavar="N",
                   help="torch CPU threads (default: all CPUs on CPU)")
    g.add_argument("--budget", metavar="BYTES", help="memory budget per encode call (e.g. 8GiB): exact tiles "
                   "when the untiled encode does not fit (default: untiled)")
    g.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    g.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format")
    g.add_argument("--engine", default="local", choices=[m.value for m in Engine], help="local processes or Ray Data")
    g.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local one)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (and Ray's own log lines off)")


def early_checks(args: argparse.Namespace) -> None:
    """What is wrong before any model is loaded: --frames on an image VAE (when the family is known from
    --family, the demo or a config.json), a Ray --address where nothing answers."""
    known = _known_family(args)
    if args.frames is not None and known is not None and not known[1]:
        raise VaeLensError(f"--frames {args.frames}: {known[0]} is an image VAE; --frames applies to video "
                           "families only")
    if args.engine == Engine.RAY.value:
        from vaelens.datasets.ray_engine import check_address

        check_address(args.address)  # its param=address names --address on the error line


def _known_family(args: argparse.Namespace) -> tuple[str, bool] | None:
    """-> (family name, is video) of the weights, when known without reading them; else None."""
    import json
    from pathlib import Path

    from vaelens.families import get_family
    from vaelens.weights.load import registry_match

    if args.family and not args.family.endswith(".json"):
        spec = get_family(args.family)
        return spec.name, bool(spec.is_video)
    if args.vae is None or (args.vae == "demo" and not Path("demo").exists()):
        return "the demo VAE", False  # an AutoencoderKL (vaelens/weights/demo.py)
    p = Path(args.vae)
    for cfg in (p / "config.json", p / "vae" / "config.json"):
        if cfg.is_file():
            try:
                spec = registry_match(json.loads(cfg.read_text()))
            except (ValueError, OSError):
                return None
            return (spec.name, bool(spec.is_video)) if spec is not None else None
    return None


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
    """-> one Bucketing, or a tuple of them for several --resolution values."""
    from vaelens.datasets.pixels import make_bucketing

    size = parse_size(args.size) if args.size else None
    filters = {"upscale": not args.no_upscale, "min_size": args.min_size, "max_aspect": args.max_aspect}
    resolutions = args.resolution or (None,)
    made = tuple(make_bucketing(vae.spec, size=size, resolution=r, step=args.bucket_step, **filters)
                 for r in resolutions)
    return made if len(made) > 1 else made[0]


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
