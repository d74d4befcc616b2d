"""`vaelens encode IMAGE… --vae … -o latents.safetensors`: images -> latent file (or ComfyUI .latent)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelens.cli._vaeargs import add_vae, load_from_args, progress
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
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or WebP files (same size after cropping)")
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
    add_json(p)
    p.set_defaults(func=run)


def _encode_batches(vae, arrays, args: argparse.Namespace, *, normalized: bool):
    """arrays [H,W,3] -> (latent [B,C,(F,)h,w], one StepReport per --batch-size call), with a progress bar."""
    import torch

    from vaelens.codec import encode
    from vaelens.images import to_pixels

    chunks, reports = [], []
    with progress(not args.json and len(arrays) > 1) as bar:
        task = bar.add_task(f"encoding with {vae.family}", total=len(arrays))
        for start in range(0, len(arrays), args.batch_size):
            batch = to_pixels(arrays[start : start + args.batch_size])
            latent, report = encode(
                vae, batch, sample=args.sample, seed=args.seed + start, normalized=normalized, upcast=args.upcast
            )
            chunks.append(latent)
            reports.append(report)
            bar.advance(task, len(batch))
    return torch.cat(chunks), reports


def _write(args: argparse.Namespace, latent, metadata) -> tuple[Path, str]:
    """-> (path written, format label): ComfyUI's .latent (raw) or vaelens' file with its metadata."""
    from vaelens.latents import save_comfy_latent, save_latents

    out = Path(args.output)
    if args.comfy:
        if out.suffix != ".latent":
            warn(f"ComfyUI's LoadLatent lists files ending in .latent; writing {out}")
        save_comfy_latent(out, latent)
        return out, "comfyui.latent (raw latents)"
    save_latents(out, latent, metadata=metadata)
    return out, "vaelens safetensors"


def run(args: argparse.Namespace) -> int:
    from vaelens.images import read_for_family
    from vaelens.latents import LatentMetadata
    from vaelens.render.codec import encode_json, render_encode

    if args.batch_size < 1:
        raise VaeLensError(f"--batch-size {args.batch_size} must be at least 1")
    vae = load_from_args(args)
    size = parse_size(args.size) if args.size else None
    arrays, infos = read_for_family(args.images, vae.spec, size=size[::-1] if size else None)
    normalized = not (args.raw or args.comfy)
    latent, reports = _encode_batches(vae, arrays, args, normalized=normalized)
    h, w = arrays[0].shape[:2]
    metadata = LatentMetadata(
        family=vae.family,
        diffusers_class=vae.spec.diffusers_class,
        normalized=normalized,
        normalization=vae.spec.normalization,
        pixel_shape=(len(arrays), 3, h, w),
        latent_shape=tuple(latent.shape),
        sources=tuple(i.path for i in infos),
        vae_source=vae.source,
        posterior="sample" if args.sample else "mode",
        seed=args.seed if args.sample else None,
        dtype=vae.dtype.value,
    )
    out, fmt = _write(args, latent, metadata)
    if args.json:
        emit_json(encode_json(vae, metadata, infos, reports, output=out, fmt=fmt))
    else:
        for note in (n for i in infos for n in i.notes):
            warn(note)
        print(render_encode(vae, metadata, reports, output=out, fmt=fmt))
    nonfinite = sum(r.nonfinite for r in reports)
    if nonfinite:
        warn(f"{nonfinite} NaN/Inf values in the latent; try --dtype fp32 or --upcast auto")
    return 0
