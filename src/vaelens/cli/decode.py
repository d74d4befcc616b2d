"""`vaelens decode latents.safetensors --vae … -o out.png`: parse -> vaelens.run.decode_file -> render."""

from __future__ import annotations

import argparse

from vaelens.cli._budget import add_budget
from vaelens.cli._io import add_force, add_fps, add_quiet, add_strict, bar_for, batch_size_type, outputs, print_lines
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
        help="image (.png, .jpg, …) or, for video latents, .mp4 to write; a batch writes FILE_<source name>.png "
        "(the names recorded in the file) or FILE_00.png, FILE_01.png, …; video frames FILE_f000.png, …",
    )
    p.add_argument("--batch-size", type=batch_size_type(), metavar="N",
                   help="decode N batch items per call (default: all in one call)")
    p.add_argument("--save-frames", action="store_true", help="with -o FILE.mp4: also write every frame as PNG")
    add_fps(p, "frame rate of an .mp4 (default: the file's record; 16)")
    add_strict(p, "refuse a latent file encoded with other weights (its recorded sha256 or family differ); "
               "default: a warning")
    add_force(p)
    add_quiet(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--raw", action="store_true", help="treat the latents as raw, whatever the file says")
    g.add_argument("--normalized", action="store_true",
                   help="treat the latents as normalised (undoing the normalisation the file records, else the VAE's)")
    add_budget(p)
    add_device_profile(p)
    add_spill_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.render.codec import decode_json, render_decode, tiling_json, tiling_lines
    from vaelens.run import decode_file

    with bar_for(args, "decode", unit="item") as bar, outputs(), loading():
        result = decode_file(
            args.latents, args.output, vae=weights_from_args(args),
            normalized=True if args.normalized else (False if args.raw else None), batch_size=args.batch_size,
            save_frames=args.save_frames, fps=args.fps, upcast=args.upcast, budget=args.budget,
            device_profile=device_profile_from_args(args), spill_dir=args.spill_dir,
            strict=args.strict, force=args.force, progress=bar,
        )
    plans = {"decode": result.tiling} if args.budget else {}
    counts = {"decode": result.counts}
    shown = {"normalized": result.normalized, "pixel_shape": list(result.pixel_shape),
             "outputs": [str(p) for p in result.outputs]}
    for note in result.warnings:
        warn(note)
    if args.json:
        data = decode_json(result.vae, result.latents, result.report, source=args.latents, **shown)
        emit_json({**data, **tiling_json(plans, counts)} if plans else data)
    else:
        print(render_decode(result.vae, result.latents, result.report, **shown))
        print_lines(tiling_lines(plans, counts))
    if result.report.nonfinite:
        warn(f"{result.report.nonfinite} NaN/Inf values in the decoded pixels (written as clamped values)")
    return 0
