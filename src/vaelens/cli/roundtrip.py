"""`vaelens roundtrip [IMAGE] [--vae …]`: encode -> decode, scored (PSNR, SSIM), with an error heat-map,
time and peak memory. Without --vae / IMAGE: the built-in demo VAE and its held-out sample image."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelens.cli._vaeargs import add_vae, load_from_args
from vaelens.cli.common import add_json, emit_json, warn
from vaelens.options import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "roundtrip",
        help="encode and decode an image; PSNR, SSIM, error map, time, memory",
        description="Encode then decode an image with real weights and score the reconstruction. "
        "With no IMAGE and no --vae: vaelens' demo VAE on its held-out sample photograph.",
    )
    p.add_argument("image", nargs="?", metavar="IMAGE", help="image file (default: the demo sample image)")
    add_vae(p, required=False)
    p.add_argument(
        "-o",
        "--out",
        default="roundtrip",
        metavar="PREFIX",
        help="writes PREFIX_recon.png, PREFIX_error.png, PREFIX_compare.png (default: roundtrip)",
    )
    p.add_argument("--size", metavar="WxH", help="resize the image to WxH (Lanczos) first")
    p.add_argument("--sample", action="store_true", help="sample the posterior (seeded) instead of its mode")
    p.add_argument("--seed", type=int, default=0)
    add_json(p)
    p.set_defaults(func=run)


def _plot(rt, image: str, pixels, prefix: Path, vae) -> dict[str, str]:
    """-> {"reconstruction", "error_map", "comparison"}: PREFIX_recon.png, PREFIX_error.png, PREFIX_compare.png."""
    from vaelens.images import from_pixels, save_image
    from vaelens.render.figures import plot_comparison, plot_error_map

    h, w = pixels.shape[-2:]
    title = f"{vae.family}: {Path(image).name} {w}x{h}  PSNR {rt.psnr[0]:.2f} dB  SSIM {rt.ssim[0]:.4f}"
    return {
        "reconstruction": str(save_image(rt.reconstruction[0], f"{prefix}_recon.png")),
        "error_map": str(plot_error_map(rt.error[0], f"{prefix}_error.png", title=title)),
        "comparison": str(
            plot_comparison(
                from_pixels(pixels)[0], rt.reconstruction[0], rt.error[0], f"{prefix}_compare.png", title=title
            )
        ),
    }


def run(args: argparse.Namespace) -> int:
    from vaelens.codec import roundtrip
    from vaelens.images import read_for_family, to_pixels
    from vaelens.render.codec import render_roundtrip, roundtrip_json
    from vaelens.weights.demo import demo_image_path

    vae = load_from_args(args, default_demo=True)
    image = args.image or str(demo_image_path())
    size = parse_size(args.size) if args.size else None
    arrays, infos = read_for_family([image], vae.spec, size=size[::-1] if size else None)  # (H, W)
    pixels = to_pixels(arrays)
    rt = roundtrip(vae, pixels, sample=args.sample, seed=args.seed, upcast=args.upcast)
    files = _plot(rt, image, pixels, Path(args.out), vae)
    if args.json:
        emit_json(roundtrip_json(vae, infos[0], rt, pixel_shape=pixels.shape, files=files))
    else:
        for note in infos[0].notes:
            warn(note)
        print(render_roundtrip(vae, rt, name=Path(image).name, pixel_shape=pixels.shape, files=files))
    if rt.encode.nonfinite or rt.decode.nonfinite:
        warn("NaN/Inf values appeared; see the encode/decode reports (try --upcast auto or --dtype fp32)")
    return 0
