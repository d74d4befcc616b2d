"""`vaelens decode latents.safetensors --vae … -o out.png`: latent file (vaelens' or ComfyUI's) -> images."""

from __future__ import annotations

import argparse

from vaelens.cli._vaeargs import add_vae, load_from_args
from vaelens.cli.common import add_json, emit_json, warn
from vaelens.errors import VaeLensError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decode",
        help="decode a latent file with real weights into images",
        description="Decode a vaelens latent file or a ComfyUI .latent (raw latents) to PNG.",
    )
    p.add_argument("latents", metavar="LATENTS", help="vaelens .safetensors latent file or ComfyUI .latent")
    add_vae(p, required=True)
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="image to write (a batch writes FILE_0.png, FILE_1.png, …)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--raw", action="store_true", help="treat the latents as raw, whatever the file says")
    g.add_argument("--normalized", action="store_true", help="treat the latents as normalised")
    add_json(p)
    p.set_defaults(func=run)


def _normalized(args: argparse.Namespace, lf) -> bool:
    """--raw / --normalized, else what the file says; a file that does not say is refused."""
    if args.raw or args.normalized:
        return bool(args.normalized)
    if lf.normalized is None:
        raise VaeLensError(
            f"{args.latents} does not say whether its latents are normalised; pass --raw or --normalized"
        )
    return lf.normalized


def _check_channels(args: argparse.Namespace, lf, vae, normalized: bool) -> None:
    if lf.family and lf.family != vae.family:
        warn(f"{args.latents} was encoded with {lf.family}; decoding with {vae.family}")
    channels = lf.latent.shape[1]
    expect = vae.spec.latent_channels
    if not (normalized and vae.spec.normalization.patch) and channels != expect:
        raise VaeLensError(
            f"{args.latents} holds {channels}-channel latents {list(lf.latent.shape)}; "
            f"{vae.family} decodes {expect}-channel latents"
        )


def run(args: argparse.Namespace) -> int:
    from vaelens.codec import decode
    from vaelens.images import from_pixels, numbered, save_image
    from vaelens.latents import load_latents
    from vaelens.render.codec import decode_json, render_decode

    lf = load_latents(args.latents)
    vae = load_from_args(args)
    normalized = _normalized(args, lf)
    _check_channels(args, lf, vae, normalized)
    pixels, report = decode(vae, lf.latent, normalized=normalized, upcast=args.upcast)
    images = from_pixels(pixels)
    paths = [str(save_image(img, numbered(args.output, i, len(images)))) for i, img in enumerate(images)]
    shown = {"normalized": normalized, "pixel_shape": pixels.shape, "outputs": paths}
    if args.json:
        emit_json(decode_json(vae, lf, report, source=args.latents, **shown))
    else:
        print(render_decode(vae, lf, report, **shown))
    if report.nonfinite:
        warn(f"{report.nonfinite} NaN/Inf values in the decoded pixels (written as clamped values)")
    return 0
