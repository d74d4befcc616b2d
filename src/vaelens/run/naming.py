"""Where decode writes: one file per batch item (named after the sources the latent file records), and
for video latents an MP4 and/or one PNG per frame.

FILE + LatentFile [B,C,(F',)h,w] -> [(item base, [files])] -> write_item(pixels [3,(F,)H,W]) -> files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vaelens.errors import OutputError, VaeLensError


def _item_names(lf, count: int) -> list[str]:
    """Batch items -> name parts: the source file stems the latent file records, else 00, 01, …"""
    stems = [Path(s).stem for s in lf.info.sources]
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
    shape = lf.info.pixel_shape
    return int(shape[2]) if shape is not None and len(shape) == 5 else None


def output_names(out: Path, lf, *, save_frames: bool, source: str) -> list[tuple[Path, list[Path]]]:
    """-> for each batch item (its base name, the files decode will write: an image; a video's .mp4 and/or
    one PNG per frame)."""
    from vaelens.outputs import IMAGE_SUFFIXES

    count = lf.latent.shape[0]
    video = lf.latent.ndim == 5 and lf.latent.shape[2] > 1
    suffix = out.suffix.lower()
    if suffix == ".mp4" and not video:
        raise OutputError(f"output {str(out)!r} is a video, but {source} holds image latents; write .png",
                          param="output", value=str(out))
    if suffix not in (*IMAGE_SUFFIXES, ".mp4"):
        raise OutputError(
            f"output {str(out)!r} must end in .mp4 (video latents) or an image suffix ({', '.join(IMAGE_SUFFIXES)})",
            param="output", value=str(out), choices=(*IMAGE_SUFFIXES, ".mp4"),
        )
    if save_frames and suffix != ".mp4":
        raise VaeLensError("save_frames goes with an .mp4 output (an image output writes every frame anyway)",
                           param="save_frames", value=True)
    items = [out] if count == 1 else [out.with_name(f"{out.stem}_{n}{out.suffix}") for n in _item_names(lf, count)]
    if not video:
        return [(p, [p]) for p in items]
    frames = _frames_out(lf)
    return [(p, _video_files(p, frames, save_frames)) for p in items]


def _video_files(base: Path, frames: int | None, save_frames: bool) -> list[Path]:
    """A video item's files: base.mp4 and/or base_f000.png … (none listed when the frame count is unknown)."""
    mp4 = base.suffix.lower() == ".mp4"
    files = [base] if mp4 else []
    if frames and (not mp4 or save_frames):
        files += [_frame_path(base, f, frames) for f in range(frames)]
    return files


def _frame_path(item: Path, frame: int, frames: int) -> Path:
    width = max(3, len(str(frames - 1)))
    return item.with_name(f"{item.stem}_f{frame:0{width}d}{'.png' if item.suffix == '.mp4' else item.suffix}")


def write_item(pixels, base: Path, *, planned: list[Path], inputs: Iterable[str | Path], force: bool,
               save_frames: bool, fps: float | None) -> list[Path]:
    """pixels [3,H,W] or [3,F,H,W] of one batch item -> the files written (atomically): base, or a video's
    base.mp4 and/or its frames. A file the plan did not list (a frame count the metadata did not give) is
    checked before it is written."""
    from vaelens.images import from_pixels, save_image
    from vaelens.outputs import check_output

    frames = from_pixels(pixels[None])  # [F,H,W,3] for a video item, [1,H,W,3] for an image
    files = [base] if pixels.ndim == 3 else _video_files(base, len(frames), save_frames)
    for p in files:
        if p not in planned:
            check_output(p, inputs=list(inputs), force=force)
    for p in files:
        if p.suffix.lower() == ".mp4":
            from vaelens.video import DEFAULT_FPS, write_video

            write_video(p, frames, fps=fps or DEFAULT_FPS)
            continue
        save_image(frames[0 if pixels.ndim == 3 else int(p.stem.rsplit("_f", 1)[1])], p)
    return files
