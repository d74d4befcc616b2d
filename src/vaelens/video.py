"""Video files <-> frames, through PyAV (FFmpeg's libraries; the `video` extra: pip install vaelens[video]).

video file -> frames [F,H,W,3] float32 in [0,1] + fps -> (encode: pixels [1,3,F,H,W] in [-1,1]);
decoded pixels [B,3,F,H,W] -> frames [F,H,W,3] in [0,1] -> H.264 MP4 (yuv420p, 8-bit) at the recorded fps.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vaelens.errors import VaeLensError

DEFAULT_FPS = 16.0  # Wan 2.1's pipelines export at 16 fps (diffusers examples: export_to_video(..., fps=16))


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - the extra is installed in dev
        raise VaeLensError("reading or writing video needs PyAV: pip install 'vaelens[video]' (or: pip install av)",
                           param="video") from None
    return av


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoInfo:
    """What reading a video file found: its frame rate, frame count, size (H, W) and what was kept."""

    path: str
    fps: float
    frames: int  # frames read (after max_frames)
    total_frames: int  # frames in the file
    size: tuple[int, int]  # (height, width)
    codec: str
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "fps": self.fps,
            "frames": self.frames,
            "total_frames": self.total_frames,
            "size": list(self.size),
            "codec": self.codec,
            "warnings": list(self.warnings),
        }


def read_video(path: str | Path, *, max_frames: int | None = None) -> tuple[np.ndarray, VideoInfo]:
    """video file -> (frames [F,H,W,3] float32 in [0,1], VideoInfo); the first max_frames frames when given."""
    from vaelens.options import MAX_FRAMES, MAX_SIDE

    av = _av()
    p = Path(path)
    if not p.is_file():
        raise VaeLensError(f"video {str(path)!r} does not exist", param="video")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, OSError) as exc:
        raise VaeLensError(f"video {str(path)!r} could not be read ({exc})", param="video") from None
    with container:
        if not container.streams.video:
            raise VaeLensError(f"video {str(path)!r} has no video stream", param="video")
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if max(w, h) > MAX_SIDE:
            raise VaeLensError(f"video {str(path)!r} is {w}x{h}; vaelens' limit is {MAX_SIDE} pixels per side",
                param="video")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else DEFAULT_FPS
        limit = min(max_frames or MAX_FRAMES, MAX_FRAMES)
        frames, total = [], 0
        try:
            for frame in container.decode(stream):
                total += 1
                if len(frames) < limit:
                    frames.append(frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as exc:
            raise VaeLensError(f"video {str(path)!r} could not be decoded ({exc})", param="video") from None
        codec = stream.codec_context.name
    if not frames:
        raise VaeLensError(f"video {str(path)!r} holds no frames", param="video")
    notes = []
    if total > len(frames):
        notes.append(f"first {len(frames)} of {total} frames used")
    if not rate:
        notes.append(f"no frame rate in the file; {DEFAULT_FPS:g} fps assumed")
    info = VideoInfo(
        path=str(p), fps=fps, frames=len(frames), total_frames=total, size=(h, w), codec=codec, warnings=tuple(notes)
    )
    return np.stack(frames).astype(np.float32) / 255.0, info


def write_video(path: str | Path, frames: np.ndarray, *, fps: float = DEFAULT_FPS) -> Path:
    """frames [F,H,W,3] in [0,1] -> H.264 MP4 at fps (yuv420p: an odd width/height loses its last column/row)."""
    from vaelens.outputs import atomic_write

    av = _av()
    arr = (np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise VaeLensError(f"frames of shape {list(arr.shape)} are not [F, H, W, 3]", param="frames")
    arr = arr[:, : arr.shape[1] // 2 * 2, : arr.shape[2] // 2 * 2]  # yuv420p needs even sides
    if 0 in arr.shape:
        raise VaeLensError(f"frames of shape {list(frames.shape)} are too small for an MP4 (2x2 at least)",
            param="frames")
    with atomic_write(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        with container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = arr.shape[2], arr.shape[1], "yuv420p"
            stream.options = {"crf": "18"}
            for frame in arr:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return Path(path)


def frames_for_family(frames: np.ndarray, spec) -> tuple[np.ndarray, str | None]:
    """frames [F,H,W,3] -> (the first F' frames the family takes (its frame rule, floored), note or None)."""
    from vaelens.contract import apply_frame_rule
    from vaelens.errors import FrameError

    count = frames.shape[0]
    if spec.temporal is None:
        return frames, None
    t = spec.temporal.factor
    if count < 1:
        raise FrameError(f"a clip of {count} frames is empty", param="frames")
    try:
        used, _ = apply_frame_rule(spec, count)
    except FrameError:
        used = (count - 1) // t * t + 1  # a RAISE family: take the frames it can, and say so
    if used != count:
        return frames[:used], f"{count} frames -> first {used}: {spec.name} takes {t}k+1 frames"
    return frames, None
