"""`vaelens encode IMAGE… --vae … -o latents.safetensors`: parse -> vaelens.run.encode_files -> render."""

from __future__ import annotations

import argparse

from vaelens.cli._budget import add_budget
from vaelens.cli._io import (
    add_clip_flags,
    add_force,
    add_quiet,
    add_size_flag,
    bar_for,
    batch_size_type,
    nonfinite_advice,
    outputs,
    print_lines,
)
from vaelens.cli._vaeargs import add_vae, loading, weights_from_args
from vaelens.cli.common import (
    add_device_profile,
    add_json,
    add_spill_dir,
    device_profile_from_args,
    emit_json,
    warn,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="encode images with real weights into a latent file",
        description="Encode images into latents with local weights. Images are read as RGB "
        "(alpha composited onto white, grayscale repeated, EXIF orientation applied) and "
        "centre-cropped to the family's multiple.",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (PNG, JPEG, WebP…; same size after cropping), folders, glob patterns, 'demo' (the "
        "sample photograph), or one video file (.mp4, .mov, .webm…) for a video VAE",
    )
    add_vae(p, required=True)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="latent file to write (.safetensors)")
    p.add_argument("--comfy", action="store_true",
                   help="write a ComfyUI .latent (raw latents, key latent_tensor) instead of vaelens' file")
    p.add_argument("--sample", action="store_true", help="sample the posterior (seeded) instead of its mode")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample: image i is drawn with SEED+i (default 0)")
    p.add_argument("--raw", action="store_true", help="store raw latents, without the family's normalisation")
    add_size_flag(p, "resize every image to WxH (Lanczos) before encoding")
    p.add_argument("--batch-size", type=batch_size_type(), default=4, metavar="N", help="images per call (default 4)")
    p.add_argument("--video", action="store_true",
                   help="video VAEs: the images, in order, are the frames of one clip (an image sequence)")
    add_clip_flags(p)
    add_force(p)
    add_quiet(p)
    add_budget(p)
    add_device_profile(p)
    add_spill_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.render.codec import encode_json, render_encode, tiling_json, tiling_lines
    from vaelens.run import encode_files

    with bar_for(args, "encode", unit="image") as bar, outputs(), loading():
        result = encode_files(
            args.images, args.output, vae=weights_from_args(args), normalized=not args.raw, comfy=args.comfy,
            posterior="sample" if args.sample else "mode", seed=args.seed, size=args.size,
            batch_size=args.batch_size, video=args.video, fps=args.fps, max_frames=args.max_frames,
            upcast=args.upcast, budget=args.budget,
            device_profile=device_profile_from_args(args), spill_dir=args.spill_dir, force=args.force, progress=bar,
        )
    plans = {"encode": result.tiling} if args.budget else {}
    counts = {"encode": result.counts}
    if args.json:
        data = encode_json(result.vae, result.metadata, result.infos, result.reports, output=result.output,
                           fmt=result.format)
        emit_json({**data, **tiling_json(plans, counts)} if plans else data)
    else:
        for note in result.warnings:
            warn(note)
        print(render_encode(result.vae, result.metadata, result.reports, output=result.output, fmt=result.format))
        print_lines(tiling_lines(plans, counts))
    if result.nonfinite:
        warn(f"{result.nonfinite} NaN/Inf values in the latent; {nonfinite_advice(args)}")
    return 0
