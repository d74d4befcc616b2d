"""`vaelens encode IMAGE… --vae … -o latents.safetensors`: images -> latent file (or ComfyUI .latent)."""

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
    nonfinite_advice,
    weights_inputs,
)
from vaelens.cli._vaeargs import add_vae, load_from_args
from vaelens.cli.common import add_json, emit_json, warn
from vaelens.errors import VaeLensError
from vaelens.options import parse_size


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
    p.add_argument(
        "--comfy",
        action="store_true",
        help="write a ComfyUI .latent (raw latents, key latent_tensor) instead of vaelens' file",
    )
    p.add_argument("--sample", action="store_true", help="sample the posterior (seeded) instead of its mode")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    p.add_argument("--raw", action="store_true", help="store raw latents, without the family's normalisation")
    p.add_argument("--size", metavar="WxH", help="resize every image to WxH (Lanczos) before encoding")
    p.add_argument("--batch-size", type=int, default=4, metavar="N", help="images per encode call (default 4)")
    p.add_argument(
        "--video",
        action="store_true",
        help="video VAEs: the images, in order, are the frames of one clip (an image sequence)",
    )
    p.add_argument("--fps", type=float, metavar="FPS", help="frame rate to record for a clip (default: the file's; 16)")
    p.add_argument("--max-frames", type=int, metavar="N", help="read at most N frames of a video file")
    add_force(p)
    add_quiet(p)
    add_budget(p)
    add_json(p)
    p.set_defaults(func=run)


def _encode_batches(vae, arrays, args: argparse.Namespace, *, normalized: bool, clip: bool = False):
    """arrays [H,W,3] -> (latent [B,C,(F,)h,w], one StepReport per --batch-size call), with a progress bar.
    clip: the arrays are the frames of one video, encoded in one call as pixels [1,3,F,H,W]."""
    import torch

    from vaelens.codec import encode
    from vaelens.images import to_pixels
    from vaelens.progress import progress_bar

    chunks, reports = [], []
    groups = [to_pixels(arrays).permute(1, 0, 2, 3).unsqueeze(0)] if clip else [
        to_pixels(arrays[start : start + args.batch_size]) for start in range(0, len(arrays), args.batch_size)
    ]
    unit = "clip" if clip else "image"
    with progress_bar(f"encode with {vae.family}", total=len(arrays) if not clip else 1, enabled=bar_enabled(args),
                      unit=unit) as bar:
        done = 0
        for batch in groups:
            bar.stage(f"{unit} {done + 1}" + (f"-{done + len(batch)}" if len(batch) > 1 else ""))
            latent, report = encode(
                vae, batch, sample=args.sample, seed=args.seed + done, normalized=normalized, upcast=args.upcast
            )
            chunks.append(latent)
            reports.append(report)
            done += len(batch)
            bar.advance(len(batch))
    return torch.cat(chunks), reports


def _read(args: argparse.Namespace, vae, files: list[str]):
    """-> (arrays [H,W,3] (images or a clip's frames), infos, clip metadata or None)."""
    from dataclasses import replace

    import numpy as np

    from vaelens.images import apply_family_size, read_for_family, resize_image
    from vaelens.sources import is_video_file
    from vaelens.video import DEFAULT_FPS, frames_for_family, read_video

    size = parse_size(args.size) if args.size else None
    videos = [f for f in files if is_video_file(f)]
    video_vae = vae.spec.temporal is not None
    if (videos or args.video) and not video_vae:
        raise VaeLensError(
            f"{vae.family} is an image VAE; a video (or --video) needs a video family such as wan21 "
            "(encode a clip's frames as images instead)"
        )
    if videos and (len(files) > 1 or args.video):
        raise VaeLensError(f"give one video file per call (got {len(files)} inputs, {len(videos)} of them video)")
    if not videos:
        arrays, infos = read_for_family(files, vae.spec, size=size)
        if not args.video:
            return arrays, infos, None
        frames, note = frames_for_family(np.stack(arrays), vae.spec)
        fps = args.fps or DEFAULT_FPS
        notes = [note] if note else []
        if not args.fps:
            notes.append(f"image sequence recorded at {DEFAULT_FPS:g} fps (pass --fps)")
        return list(frames), infos[: len(frames)], {"fps": fps, "frames": len(frames), "notes": notes}
    frames, vinfo = read_video(videos[0], max_frames=args.max_frames)
    frames, note = frames_for_family(frames, vae.spec)
    out = []
    for frame in frames:
        if size is not None:
            frame = resize_image(frame, *size)
        frame, warning, _ = apply_family_size(frame, vae.spec)
        out.append(frame)
    notes = list(vinfo.warnings) + ([note] if note else []) + ([warning] if warning else [])
    vinfo = replace(vinfo, frames=len(out), warnings=tuple(notes))
    return out, [vinfo], {"fps": args.fps or vinfo.fps, "frames": len(out), "notes": notes}


def _write(args: argparse.Namespace, latent, metadata) -> tuple[Path, str]:
    """-> (path written, format label): ComfyUI's .latent (raw) or vaelens' file with its metadata."""
    from vaelens.latents import save_comfy_latent, save_latents
    from vaelens.outputs import atomic_write

    out = Path(args.output)
    with atomic_write(out) as tmp:
        if args.comfy:
            if out.suffix != ".latent":
                warn(f"ComfyUI's LoadLatent lists files ending in .latent; writing {out}")
            save_comfy_latent(tmp, latent)
            return out, "comfyui.latent (raw latents)"
        save_latents(tmp, latent, metadata=metadata)
    return out, "vaelens safetensors"


def run(args: argparse.Namespace) -> int:
    from vaelens.codec import posterior_kind
    from vaelens.latents import LatentMetadata
    from vaelens.render.codec import encode_json, render_encode

    check_batch_size(args)
    files = expand_images(args.images)
    check_outputs(args, [args.output], inputs=files + weights_inputs(args), kind="comfy" if args.comfy else "latent")
    vae = load_from_args(args)
    budget = enable_budget(args, vae)
    arrays, infos, clip = _read(args, vae, files)
    normalized = not (args.raw or args.comfy)
    posterior = "sample" if args.sample else "mode"
    if posterior_kind(vae) == "deterministic":
        if args.sample:
            warn(f"--sample has no effect: {vae.family} ({vae.spec.diffusers_class}) has no posterior; its one "
                 "deterministic latent is stored (recorded as posterior: deterministic)")
        posterior = "deterministic"
    elif args.seed and not args.sample:
        warn(f"--seed {args.seed} has no effect without --sample: the posterior's mode is stored")
    latent, reports = _encode_batches(vae, arrays, args, normalized=normalized, clip=clip is not None)
    h, w = arrays[0].shape[:2]
    pixel_shape = (1, 3, len(arrays), h, w) if clip else (len(arrays), 3, h, w)
    metadata = LatentMetadata(
        family=vae.family,
        diffusers_class=vae.spec.diffusers_class,
        normalized=normalized,
        normalization=vae.spec.normalization,
        pixel_shape=pixel_shape,
        latent_shape=tuple(latent.shape),
        sources=tuple(i.path for i in infos),
        vae_source=vae.source,
        posterior=posterior,
        seed=args.seed if posterior == "sample" else None,
        dtype=vae.dtype.value,
        extra={"fps": clip["fps"], "frames": clip["frames"]} if clip else {},
    )
    out, fmt = _write(args, latent, metadata)
    if args.json:
        emit_json(with_tiling(encode_json(vae, metadata, infos, reports, output=out, fmt=fmt), budget, "encode"))
    else:
        for note in dict.fromkeys([*(n for i in infos for n in i.warnings), *(clip["notes"] if clip else [])]):
            warn(note)  # once each: a clip's frames share their notes
        print(render_encode(vae, metadata, reports, output=out, fmt=fmt))
        print_tiling(budget, ("encode",))
    nonfinite = sum(r.nonfinite for r in reports)
    if nonfinite:
        warn(f"{nonfinite} NaN/Inf values in the latent; {nonfinite_advice(args)}")
    return 0
