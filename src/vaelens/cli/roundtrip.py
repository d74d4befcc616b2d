"""`vaelens roundtrip [IMAGE] [--vae …]`: parse -> vaelens.run.roundtrip_files -> draw and render. Without --vae /
IMAGE: the built-in demo VAE and its held-out sample image."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelens.cli._budget import add_budget
from vaelens.cli._io import (
    add_force,
    add_quiet,
    add_size_flag,
    add_strict,
    bar_for,
    batch_size_type,
    nonfinite_advice,
    outputs,
    print_lines,
    report_skipped,
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
        "roundtrip",
        help="encode and decode an image; PSNR, SSIM, error map, time, memory",
        description="Encode then decode an image with real weights and score the reconstruction. "
        "With no IMAGE and no --vae: vaelens' demo VAE on its held-out sample photograph.",
    )
    p.add_argument("image", nargs="*", metavar="IMAGE",
                   help="image files, folders or glob patterns ('demo': the sample photograph, the default)")
    add_vae(p, required=False)
    p.add_argument("-o", "--out", default="roundtrip", metavar="PREFIX",
                   help="writes PREFIX_recon.png, PREFIX_error.png, PREFIX_compare.png (default: roundtrip); "
                   "several images write PREFIX_<image name>_recon.png, …")
    add_size_flag(p, "resize the image to WxH (Lanczos) first")
    p.add_argument("--sample", action="store_true", help="sample the posterior (seeded) instead of its mode")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    p.add_argument("--batch-size", type=batch_size_type(), default=1, metavar="N",
                   help="images of equal size per encode/decode call (default 1)")
    add_strict(p, "stop at the first image that cannot be read (default: skip it, list it, exit 1)")
    add_force(p)
    add_quiet(p)
    add_budget(p)
    add_device_profile(p)
    add_spill_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.render.codec import draw_roundtrip, render_roundtrip, roundtrip_json, tiling_json, tiling_lines
    from vaelens.run import roundtrip_files

    with bar_for(args, "roundtrip", unit="image") as bar, outputs(), loading():
        result = draw_roundtrip(roundtrip_files(
            args.image or ["demo"], args.out, vae=weights_from_args(args), size=args.size,
            posterior="sample" if args.sample else "mode", seed=args.seed, batch_size=args.batch_size,
            upcast=args.upcast, budget=args.budget, device_profile=device_profile_from_args(args),
            spill_dir=args.spill_dir, strict=args.strict, force=args.force, progress=bar,
        ))  # the engine returns data and the figure paths; render draws
    vae, results, failed = result.vae, [], False
    for note in result.warnings:
        warn(note)
    for item in result.items:
        rt = item.result
        failed = failed or not rt.finite
        extra = tiling_json(rt.tiling, rt.counts, roundtrip=True) if args.budget else {}
        if args.json:
            results.append({**roundtrip_json(vae, item.info, rt, pixel_shape=item.pixel_shape, files=item.files),
                            **extra})
        else:
            for note in item.info.warnings:
                warn(note)
            print(render_roundtrip(vae, rt, name=Path(item.source).name, pixel_shape=item.pixel_shape,
                                   files=item.files))
            print_lines(tiling_lines(rt.tiling, rt.counts))
        if rt.encode.nonfinite or rt.decode.nonfinite or not rt.finite:
            warn(f"NaN/Inf values appeared in the round trip of {Path(item.source).name}; {nonfinite_advice(args)}")
    if args.json:
        many = {"family": vae.family, "count": len(results), "results": results,
                "skipped": [{"path": p, "reason": r} for p, r in result.skipped.items()]}
        emit_json(results[0] if len(results) == 1 and not result.skipped else many)
    return max(report_skipped(result.skipped, warn), 1 if failed else 0)
