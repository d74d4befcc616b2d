"""`vaelens roundtrip [IMAGE] [--vae …]`: encode -> decode, scored (PSNR, SSIM), with an error heat-map,
time and peak memory. Without --vae / IMAGE: the built-in demo VAE and its held-out sample image."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelens.cli._budget import add_budget, enable_budget, print_tiling, with_tiling
from vaelens.cli._io import (
    add_force,
    add_quiet,
    bar_enabled,
    check_batch_size,
    check_outputs,
    expand_images,
    group_same_size,
    nonfinite_advice,
    stems,
    weights_inputs,
)
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
    p.add_argument(
        "image",
        nargs="*",
        metavar="IMAGE",
        help="image files, folders or glob patterns ('demo': the sample photograph, the default)",
    )
    add_vae(p, required=False)
    p.add_argument(
        "-o",
        "--out",
        default="roundtrip",
        metavar="PREFIX",
        help="writes PREFIX_recon.png, PREFIX_error.png, PREFIX_compare.png (default: roundtrip); "
        "several images write PREFIX_<image name>_recon.png, …",
    )
    p.add_argument("--size", metavar="WxH", help="resize the image to WxH (Lanczos) first")
    p.add_argument("--sample", action="store_true", help="sample the posterior (seeded) instead of its mode")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    p.add_argument(
        "--batch-size", type=int, default=1, metavar="N", help="images of equal size per encode/decode call (default 1)"
    )
    add_force(p)
    add_quiet(p)
    add_budget(p)
    add_json(p)
    p.set_defaults(func=run)


FILES = {"reconstruction": "recon", "error_map": "error", "comparison": "compare"}


def _plot(rt, i: int, image: str, pixels, paths: dict[str, Path], vae) -> dict[str, str]:
    """Batch item i -> {"reconstruction", "error_map", "comparison"} written (atomically) to paths."""
    from vaelens.images import from_pixels, save_image
    from vaelens.outputs import atomic_write
    from vaelens.render.figures import plot_comparison, plot_error_map

    h, w = pixels.shape[-2:]
    title = f"{vae.family}: {Path(image).name} {w}x{h}  PSNR {rt.psnr[i]:.2f} dB  SSIM {rt.ssim[i]:.4f}"
    writers = {
        "reconstruction": lambda t: save_image(rt.reconstruction[i], t),
        "error_map": lambda t: plot_error_map(rt.error[i], t, title=title),
        "comparison": lambda t: plot_comparison(
            from_pixels(pixels[i : i + 1])[0], rt.reconstruction[i], rt.error[i], t, title=title
        ),
    }
    for key, write in writers.items():
        with atomic_write(paths[key]) as tmp:
            write(tmp)
    return {key: str(paths[key]) for key in writers}


def run(args: argparse.Namespace) -> int:
    from vaelens.codec import posterior_kind, roundtrip
    from vaelens.images import read_for_family, to_pixels
    from vaelens.progress import progress_bar
    from vaelens.render.codec import render_roundtrip, roundtrip_json

    images = expand_images(args.image or ["demo"])
    batch_size = check_batch_size(args)
    prefixes = [Path(args.out)] if len(images) == 1 else [Path(f"{args.out}_{n}") for n in stems(images)]
    paths = [{k: Path(f"{prefix}_{v}.png") for k, v in FILES.items()} for prefix in prefixes]
    check_outputs(args, [p for d in paths for p in d.values()], inputs=images + weights_inputs(args), kind="image")
    vae = load_from_args(args, default_demo=True)
    if args.sample and posterior_kind(vae) == "deterministic":
        warn(f"--sample has no effect: {vae.family} ({vae.spec.diffusers_class}) has no posterior; "
             "its one deterministic latent is used")
    budget = enable_budget(args, vae)
    size = parse_size(args.size) if args.size else None
    read = [read_for_family([image], vae.spec, size=size) for image in images]
    results: list[dict] = []
    failed = False
    bar_cm = progress_bar(f"roundtrip with {vae.family}", total=len(images), enabled=bar_enabled(args), unit="image")
    with bar_cm as bar:
        for group in group_same_size(read, lambda r: r[0][0].shape, batch_size):
            pixels = to_pixels([read[i][0][0] for i in group])
            label = Path(images[group[0]]).name + (f" (+{len(group) - 1})" if len(group) > 1 else "")
            rt = roundtrip(
                vae, pixels, sample=args.sample, seed=args.seed, upcast=args.upcast,
                on_stage=lambda stage, label=label: bar.stage(f"{stage} {label}"),
            )
            for j, i in enumerate(group):
                one, info = rt.item(j), read[i][1][0]
                files = _plot(rt, j, images[i], pixels, paths[i], vae)
                failed = failed or not one.finite
                if args.json:
                    results.append(with_tiling(roundtrip_json(vae, info, one, pixel_shape=pixels[j : j + 1].shape,
                                                              files=files), budget, "roundtrip"))
                else:
                    for note in info.warnings:
                        warn(note)
                    print(render_roundtrip(vae, one, name=Path(images[i]).name, pixel_shape=pixels[j : j + 1].shape,
                                           files=files))
                    print_tiling(budget, ("encode", "decode"))
                bar.advance(1)
            if rt.encode.nonfinite or rt.decode.nonfinite or not rt.finite:
                warn(f"NaN/Inf values appeared in the round trip of {label}; {nonfinite_advice(args)}")
    if args.json:
        many = {"family": vae.family, "count": len(results), "results": results}
        emit_json(results[0] if len(results) == 1 else many)
    return 1 if failed else 0
