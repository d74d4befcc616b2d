"""`vaelens decode latents.safetensors --vae … -o out.png`: latent file (vaelens' or ComfyUI's) -> images."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelens.cli._budget import add_budget, enable_budget, print_tiling, with_tiling
from vaelens.cli._io import add_force, add_quiet, bar_enabled, check_batch_size, check_outputs, weights_inputs
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
        help="image (.png, .jpg, …) or, for video latents, .mp4 to write; a batch writes FILE_<source name>.png "
        "(the names recorded in the file) or FILE_00.png, FILE_01.png, …; video frames FILE_f000.png, …",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="decode N batch items per call (default: all in one call)"
    )
    p.add_argument("--save-frames", action="store_true", help="with -o FILE.mp4: also write every frame as PNG")
    p.add_argument("--fps", type=float, metavar="FPS", help="frame rate of an .mp4 (default: the file's record; 16)")
    add_force(p)
    add_quiet(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--raw", action="store_true", help="treat the latents as raw, whatever the file says")
    g.add_argument(
        "--normalized",
        action="store_true",
        help="treat the latents as normalised (undoing the normalisation the file records, else the VAE's)",
    )
    add_budget(p)
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
    from vaelens.codec import decode, recorded_normalization
    from vaelens.latents import load_latents
    from vaelens.progress import progress_bar
    from vaelens.render.codec import decode_json, merge_steps, render_decode

    lf = load_latents(args.latents)
    names = output_names(args, lf)
    check_outputs(args, [p for _, files in names for p in files], inputs=[args.latents, *weights_inputs(args)])
    vae = load_from_args(args)
    budget = enable_budget(args, vae)
    normalized = _normalized(args, lf)
    _check_channels(args, lf, vae, normalized)
    norm, note = recorded_normalization(lf.info.normalization, vae) if normalized else (None, None)
    if note:
        warn(note)
    batch = check_batch_size(args) if args.batch_size is not None else lf.latent.shape[0]
    reports, paths, pixel_shape = [], [], None
    total = lf.latent.shape[0]
    with progress_bar(f"decode with {vae.family}", total=total, enabled=bar_enabled(args), unit="item") as bar:
        for start in range(0, total, batch):
            bar.stage(f"items {start + 1}-{min(start + batch, total)} of {total}")
            pixels, report = decode(
                vae, lf.latent[start : start + batch], normalized=normalized, upcast=args.upcast, normalization=norm
            )
            reports.append(report)
            pixel_shape = [total, *pixels.shape[1:]]
            for j in range(pixels.shape[0]):
                base, planned = names[start + j]
                written = write_item(args, pixels[j], base, lf, planned=planned)
                paths.extend(written)
            bar.advance(pixels.shape[0])
    report = merge_steps(reports)
    shown = {"normalized": normalized, "pixel_shape": pixel_shape, "outputs": [str(p) for p in paths]}
    if args.json:
        emit_json(with_tiling(decode_json(vae, lf, report, source=args.latents, **shown), budget, "decode"))
    else:
        print(render_decode(vae, lf, report, **shown))
        print_tiling(budget, ("decode",))
    if report.nonfinite:
        warn(f"{report.nonfinite} NaN/Inf values in the decoded pixels (written as clamped values)")
    return 0


def _item_names(lf, count: int) -> list[str]:
    """Batch items -> name parts: the source file stems the latent file records, else 00, 01, …"""
    sources = lf.metadata.get("sources") if isinstance(lf.metadata.get("sources"), list) else []
    stems = [Path(str(s)).stem for s in sources]
    if len(stems) == count and len(set(stems)) == count and all(stems):
        return stems
    width = max(2, len(str(count - 1)))
    return [f"{i:0{width}d}" for i in range(count)]


def _frames_out(lf) -> int | None:
    """Decoded frames per item of a video latent [B,C,F',h,w] with F' > 1 (None for images)."""
    if lf.latent.ndim != 5 or lf.latent.shape[2] == 1:
        return None
    frames = lf.metadata.get("frames")
    if isinstance(frames, int) and frames > 0:
        return frames
    pixel_shape = lf.metadata.get("pixel_shape")
    if isinstance(pixel_shape, list) and len(pixel_shape) == 5:
        return int(pixel_shape[2])
    return None


def output_names(args: argparse.Namespace, lf) -> list[tuple[Path, list[Path]]]:
    """-> for each batch item (its base name, the files decode will write: an image; a video's .mp4 and/or
    one PNG per frame)."""
    from vaelens.outputs import IMAGE_SUFFIXES, OutputError

    out = Path(args.output)
    count = lf.latent.shape[0]
    video = lf.latent.ndim == 5 and lf.latent.shape[2] > 1
    suffix = out.suffix.lower()
    if suffix == ".mp4" and not video:
        raise OutputError(f"output {args.output!r} is a video, but {args.latents} holds image latents; write .png")
    if suffix not in (*IMAGE_SUFFIXES, ".mp4"):
        raise OutputError(
            f"output {args.output!r} must end in .mp4 (video latents) or an image suffix ({', '.join(IMAGE_SUFFIXES)})"
        )
    if args.save_frames and suffix != ".mp4":
        raise VaeLensError("--save-frames goes with -o FILE.mp4 (with -o FILE.png every frame is written anyway)")
    items = [out] if count == 1 else [out.with_name(f"{out.stem}_{n}{out.suffix}") for n in _item_names(lf, count)]
    if not video:
        return [(p, [p]) for p in items]
    frames = _frames_out(lf)
    return [(p, _video_files(args, p, frames)) for p in items]


def _video_files(args: argparse.Namespace, base: Path, frames: int | None) -> list[Path]:
    """A video item's files: base.mp4 and/or base_f000.png … (none listed when the frame count is unknown)."""
    mp4 = base.suffix.lower() == ".mp4"
    files = [base] if mp4 else []
    if frames and (not mp4 or args.save_frames):
        files += [_frame_path(base, f, frames) for f in range(frames)]
    return files


def _frame_path(item: Path, frame: int, frames: int) -> Path:
    width = max(3, len(str(frames - 1)))
    return item.with_name(f"{item.stem}_f{frame:0{width}d}{'.png' if item.suffix == '.mp4' else item.suffix}")


def write_item(args: argparse.Namespace, pixels, base: Path, lf, *, planned: list[Path]) -> list[Path]:
    """pixels [3,H,W] or [3,F,H,W] of one batch item -> the files written (atomically): base, or a video's
    base.mp4 and/or its frames. A file the plan did not list (a frame count the metadata did not give) is
    checked before it is written."""
    from vaelens.images import from_pixels, save_image
    from vaelens.outputs import atomic_write, check_output

    frames = from_pixels(pixels[None])  # [F,H,W,3] for a video item, [1,H,W,3] for an image
    files = [base] if pixels.ndim == 3 else _video_files(args, base, len(frames))
    for p in files:
        if p not in planned:
            check_output(p, inputs=[args.latents], force=args.force)
    for p in files:
        if p.suffix.lower() == ".mp4":
            from vaelens.video import DEFAULT_FPS, write_video

            write_video(p, frames, fps=float(args.fps or lf.metadata.get("fps") or DEFAULT_FPS))
            continue
        frame = 0 if pixels.ndim == 3 else int(p.stem.rsplit("_f", 1)[1])
        with atomic_write(p) as tmp:
            save_image(frames[frame], tmp)
    return files
