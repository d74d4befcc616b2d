"""What a run reads: the weights (a LoadedVae, or where to load one), input files (images, a video, latent
files; folders and globs expanded), and the frame rate and frame count of a clip, checked once.

items (as typed) -> files (vaelens.sources.expand_inputs) -> arrays [H,W,3] in [0,1] at the family's
multiple (images) or the frames of one clip, with ImageInfo / VideoInfo and their warnings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vaelens.errors import VaeLensError

# A clip's frame rate is recorded in the latent file and used when it is written back as MP4; PyAV
# writes a zero-length stream at absurd rates, and no video family is trained above 60 fps.
MAX_FPS = 240.0


def check_fps(fps: Any) -> float | None:
    """fps (None: not given) -> float in (0, MAX_FPS]; anything else raises naming the range.

    >>> check_fps(24)
    24.0
    """
    if fps is None:
        return None
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(fps, bool) or not math.isfinite(value) or not 0 < value <= MAX_FPS:
        raise VaeLensError(f"fps {fps!r} must be a number above 0 and at most {MAX_FPS:g}", param="fps", value=fps)
    return value


def check_max_frames(max_frames: Any) -> int | None:
    """max_frames (None: all) -> int ≥ 1."""
    if max_frames is None:
        return None
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise VaeLensError(f"max_frames {max_frames!r} must be a whole number of at least 1", param="max_frames",
                           value=max_frames)
    return max_frames


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VaeLensError(f"batch_size {batch_size!r} must be at least 1", param="batch_size", value=batch_size)
    return batch_size


@dataclass(frozen=True, slots=True, kw_only=True)
class Weights:
    """Where to load a VAE from and how (load_vae's arguments); "demo" is vaelens' built-in demo VAE."""

    source: str | Path = "demo"
    family: str | None = None
    device: str | None = None
    dtype: str = "fp32"  # fp32 | fp16 | bf16 | auto (bf16 on CUDA, fp32 on CPU)
    allow_pickle: bool = False

    def load(self):
        """-> LoadedVae (vaelens.weights.load.load_vae)."""
        from vaelens.weights.load import load_vae

        return load_vae(self.source, family=self.family, device=self.device, dtype=self.dtype,
                        allow_pickle=self.allow_pickle)


def weights_paths(vae: Any) -> list[str]:
    """The weights a run reads (never an output): a LoadedVae's files, or the file/folder a Weights names."""
    if isinstance(vae, (Weights, str, Path)):
        src = Path(str(vae.source if isinstance(vae, Weights) else vae))
        return [str(src)] if src.exists() else []
    return [str(f) for f in getattr(vae, "files", ())]


def loaded(vae: Any):
    """LoadedVae | diffusers module | Weights | source path or id -> LoadedVae."""
    if isinstance(vae, (str, Path)):
        vae = Weights(source=vae)
    if isinstance(vae, Weights):
        return vae.load()
    from vaelens.run.verbs import as_loaded

    return as_loaded(vae)


def expand(items: Sequence[str | Path], *, extra_suffixes: Sequence[str] = ()) -> list[str]:
    """inputs as typed -> files: files as given, a folder's images (sorted), glob matches (sorted), and
    `demo` for the shipped sample photograph (vaelens.sources.expand_inputs)."""
    from vaelens.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, expand_inputs

    if isinstance(items, (str, Path)):
        items = [items]
    return [str(p) for p in expand_inputs(items, suffixes=(*IMAGE_SUFFIXES, *VIDEO_SUFFIXES, *extra_suffixes))]


def stems(paths: Sequence[str | Path]) -> list[str]:
    """Input files -> distinct name stems for their outputs: coffee.png, cat.jpg -> coffee, cat (a stem
    that occurs twice gets the index of its file, zero-padded, in front: 03_coffee)."""
    names = [Path(p).stem for p in paths]
    width = len(str(len(names) - 1))
    dupes = {n for n in names if names.count(n) > 1}
    return [f"{i:0{width}d}_{n}" if n in dupes else n for i, n in enumerate(names)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Read:
    """Inputs read for a family: arrays [H,W,3] in [0,1] of equal size (images, or one clip's frames)."""

    arrays: list[np.ndarray]
    infos: list[Any]  # ImageInfo per image | one VideoInfo
    clip: bool = False
    fps: float | None = None
    warnings: tuple[str, ...] = field(default=())


def read_inputs(files: Sequence[str], spec: Any, *, size: tuple[int, int] | None = None, video: bool = False,
                fps: float | None = None, max_frames: int | None = None) -> Read:
    """files -> Read: images (one batch; equal sizes after the family's rule or `size` (H, W)), or one clip:
    a video file, or the images in order when video=True (an image sequence). fps / max_frames apply to
    clips; with an image VAE they are refused rather than ignored."""
    from vaelens.images import apply_family_size, read_for_family, resize_image
    from vaelens.sources import is_video_file
    from vaelens.video import DEFAULT_FPS, frames_for_family, read_video

    fps, max_frames = check_fps(fps), check_max_frames(max_frames)
    videos = [f for f in files if is_video_file(f)]
    if spec.temporal is None:
        if videos or video:
            raise VaeLensError(f"{spec.name} is an image VAE; a video (or video=True) needs a video family such as "
                               "wan21 (encode a clip's frames as images instead)", param="video", value=True)
        for name, value in (("fps", fps), ("max_frames", max_frames)):
            if value is not None:
                raise VaeLensError(f"{name}={value:g} applies to clips; {spec.name} is an image VAE", param=name,
                                   value=value)
    if videos and (len(files) > 1 or video):
        raise VaeLensError(f"give one video file per call (got {len(files)} inputs, {len(videos)} of them video)",
                           param="inputs", value=len(files))
    if not videos:
        if max_frames is not None:
            raise VaeLensError("max_frames applies to a video file", param="max_frames", value=max_frames)
        arrays, infos = read_for_family(list(files), spec, size=size)
        if not video:
            return Read(arrays=arrays, infos=infos)
        frames, note = frames_for_family(np.stack(arrays), spec)
        notes = [note] if note else []
        if fps is None:
            notes.append(f"image sequence recorded at {DEFAULT_FPS:g} fps (pass fps)")
        return Read(arrays=list(frames), infos=infos[: len(frames)], clip=True, fps=fps or DEFAULT_FPS,
                    warnings=tuple(notes))
    frames, vinfo = read_video(videos[0], max_frames=max_frames)
    frames, note = frames_for_family(frames, spec)
    out, warning = [], None
    for frame in frames:
        if size is not None:
            frame = resize_image(frame, *size)
        frame, warning, _ = apply_family_size(frame, spec)
        out.append(frame)
    notes = [*vinfo.warnings, *([note] if note else []), *([warning] if warning else [])]
    vinfo = replace(vinfo, frames=len(out), warnings=tuple(notes))
    return Read(arrays=out, infos=[vinfo], clip=True, fps=fps or _file_fps(vinfo.fps), warnings=tuple(notes))


def _file_fps(fps: float) -> float:
    """A video file's own rate, or the default when it records none usable."""
    from vaelens.video import DEFAULT_FPS

    return float(fps) if fps and math.isfinite(fps) and 0 < fps <= MAX_FPS else DEFAULT_FPS
