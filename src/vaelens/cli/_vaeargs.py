"""Arguments shared by the real-weights commands (encode, decode, roundtrip, inspect), and their loading."""

from __future__ import annotations

import argparse
import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vaelens.cli.common import warn
from vaelens.errors import VaeLensError


def add_vae(parser: argparse.ArgumentParser, *, required: bool, default: str = " (the default)") -> None:
    """The weights flags; `default` says what happens without --vae (when it is optional)."""
    g = parser.add_argument_group("weights")
    g.add_argument(
        "--vae",
        metavar="PATH_OR_ID",
        required=required,
        help="diffusers folder (or pipeline folder with vae/), single .safetensors file (diffusers or original "
        "keys, or a full checkpoint), or a repo id in the local Hugging Face cache"
        + "; 'demo': vaelens' built-in demo VAE"
        + ("" if required else default),
    )
    g.add_argument(
        "--family",
        metavar="NAME",
        help="family (or config.json) the weights must be; default: detected from the tensor shapes",
    )
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow .ckpt/.pt/.bin pickle checkpoints (read with torch.load(weights_only=True))",
    )
    g.add_argument("--device", help="cuda | cpu | cuda:N (default: cuda if torch sees one, else cpu)")
    g.add_argument("--dtype", default="fp32", metavar="D",
                   help="fp32 | fp16 | bf16 | auto (bf16 on CUDA, fp32 on CPU) (default fp32)")
    g.add_argument(
        "--upcast",
        default="auto",
        choices=("auto", "always", "never"),
        help="auto (default): fp32 when the config says force_upcast and dtype is fp16, and redo a "
        "step in fp32 when it produces NaN/Inf; always; never",
    )


def weights_from_args(args: argparse.Namespace):
    """--vae/--family/--device/--dtype/--allow-pickle -> vaelens.run.Weights (--vae absent: the demo VAE;
    a command that needs --vae marks it required)."""
    from vaelens.run.inputs import Weights

    return Weights(source=args.vae or "demo", family=args.family, device=args.device, dtype=args.dtype,
                   allow_pickle=args.allow_pickle)


def load_from_args(args: argparse.Namespace, *, default_demo: bool = False):
    """--vae/--family/--device/--dtype -> LoadedVae (the demo model when --vae is absent and allowed)."""
    from vaelens.weights.load import load_vae

    demo = args.vae == "demo" and not Path("demo").exists()  # `--vae demo`: the shipped demo VAE
    if args.vae is None or demo:
        if not (default_demo or demo):
            raise VaeLensError("--vae is required: a diffusers folder, a .safetensors file, or a cached repo id")
        from vaelens.weights.demo import demo_weights_path

        source: Any = demo_weights_path()
        if not Path(source).is_file():
            raise VaeLensError(f"the demo weights {source} are missing from this install; pass --vae")
    else:
        source = args.vae
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vae = load_vae(source, family=args.family, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    for w in caught:
        if "weights_only" in str(w.message) or "pickle" in str(w.message):
            warn(str(w.message))
    return vae


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Warnings that loading weights raises (a pickle checkpoint read with weights_only) -> one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                if "weights_only" in str(w.message) or "pickle" in str(w.message):
                    warn(str(w.message))
