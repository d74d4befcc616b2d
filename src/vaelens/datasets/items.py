"""A dataset's items: which files, their content hashes, their sizes (read from the header only).

DATA (folder, searched recursively | one file | a .txt list of paths) -> [Path] in sorted order
-> scan_item(path) -> Scan(content hash, (height, width) after EXIF orientation, frames, or an error).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelens.errors import VaeLensError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True, slots=True, kw_only=True)
class Scan:
    """One file, before decoding: its content hash and size, or why it cannot be used."""

    path: str
    rel: str  # path relative to the dataset root (what manifests record)
    kind: str  # "image" | "video"
    content_hash: str = ""
    size: tuple[int, int] | None = None  # (height, width) as displayed
    frames: int | None = None  # video frames the container declares (0: unknown)
    error: str | None = None


def list_items(data: str | Path) -> tuple[Path, list[Path]]:
    """DATA -> (root, files): a folder's images and videos (recursive, sorted by relative path), one
    file, or the paths listed one per line in a .txt file (relative to the list's folder)."""
    p = Path(data).expanduser()
    if p.is_dir():
        files = sorted(
            (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES),
            key=lambda f: f.relative_to(p).as_posix(),
        )
        if not files:
            raise VaeLensError(
                f"data {str(data)!r} holds no images or videos ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})"
            )
        return p, files
    if p.is_file() and p.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        files = [(p.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
        if not files:
            raise VaeLensError(f"data {str(data)!r} lists no files")
        return p.parent, files
    if p.is_file():
        return p.parent, [p]
    raise VaeLensError(f"data {str(data)!r} is neither a folder, a file, nor a .txt list of files")


def kind_of(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def content_hash(path: str | Path) -> str:
    """file -> sha256 hex digest of its bytes (the content, not the name or the modification time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def scan_item(path: Path, root: Path) -> Scan:
    """file -> Scan: sha256 of its bytes and its displayed size from the header (no pixel decoding)."""
    kind, rel = kind_of(path), _rel(path, root)
    try:
        digest = content_hash(path)
    except OSError as exc:
        return Scan(path=str(path), rel=rel, kind=kind, error=f"unreadable: {exc.strerror or exc}")
    try:
        size, frames = (_video_header(path) if kind == "video" else (_image_header(path), None))
    except Exception as exc:  # noqa: BLE001 — any decoder complaint means: not usable, listed and skipped
        return Scan(path=str(path), rel=rel, kind=kind, content_hash=digest, error=_reason(exc))
    return Scan(path=str(path), rel=rel, kind=kind, content_hash=digest, size=size, frames=frames)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _image_header(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        orientation = int(img.getexif().get(0x0112, 1) or 1)  # EXIF tag 274
    return (w, h) if orientation in _ROTATED else (h, w)


def _video_header(path: Path) -> tuple[tuple[int, int], int]:
    av = import_av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VaeLensError("no video stream")
        stream = container.streams.video[0]
        return (int(stream.height), int(stream.width)), int(stream.frames or 0)


def import_av() -> Any:
    """-> the PyAV module (FFmpeg bindings), or a one-line error saying how to install it."""
    try:
        import av
    except ImportError:
        raise VaeLensError("reading video clips needs PyAV: pip install 'vaelens[video]'") from None
    return av
