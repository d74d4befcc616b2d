"""A dataset's items: which files, their content hashes, their sizes (read from the header only).

DATA (folder, searched recursively | one file | a .txt list of paths) -> [Path] in sorted order, and every
other file under DATA with the reason it is not an item (another suffix, a dangling symlink, a symlink loop,
a hidden file); caption sidecars and metadata files are neither
-> scan_item(path) -> Scan(content hash, (height, width) after EXIF orientation, frames, the image
reader's warnings (CMYK, 16-bit colour, frames after the first), or an error).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelens.errors import VaeLensError

# GIF: the first frame, with the image reader's note (vaelens/images.py _mode_notes)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
CAPTION_SUFFIXES = (".txt", ".caption", ".json")  # sidecars: photo.jpg + photo.txt
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")  # Hugging Face imagefolder's caption files
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
    warnings: tuple[str, ...] = ()


def list_items(data: str | Path) -> tuple[Path, list[Path], list[tuple[Path, str]]]:
    """DATA -> (root, files, skipped): a folder's images and videos (recursive, sorted by relative path, folder
    symlinks followed once), one file, or the paths listed one per line in a .txt file (relative to the
    list's folder); `skipped` holds every other file under a folder with why it is not an item."""
    p = Path(data).expanduser()
    if p.is_dir():
        files: list[Path] = []
        skipped: list[tuple[Path, str]] = []
        _walk(p, files, skipped, seen=set())
        files.sort(key=lambda f: f.relative_to(p).as_posix())
        stems = {f.with_suffix("") for f in files}
        skipped = [
            (f, why) for f, why in skipped
            if not (f.suffix.lower() in CAPTION_SUFFIXES and f.with_suffix("") in stems)
            and not (f.parent == p and f.name in METADATA_NAMES)
        ]
        skipped.sort(key=lambda s: s[0].relative_to(p).as_posix())
        if not files:
            others = f" ({len(skipped)} other files, e.g. {skipped[0][0].name!r}: {skipped[0][1]})" if skipped else ""
            raise VaeLensError(
                f"data {str(data)!r} holds no images or videos ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})"
                + others, param="data", value=str(data))
        return p, files, skipped
    if p.is_file() and p.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        files = [(p.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
        if not files:
            raise VaeLensError(f"data {str(data)!r} lists no files", param="data", value=str(data))
        return p.parent, files, []
    if p.is_file():
        return p.parent, [p], []
    what = "does not exist" if not p.exists() and not p.is_symlink() else "is neither a folder nor a file"
    raise VaeLensError(f"data {str(data)!r} {what}; give a folder of images/videos, one file, or a .txt list",
                       param="data", value=str(data))


def _walk(folder: Path, files: list[Path], skipped: list[tuple[Path, str]], *, seen: set[str]) -> None:
    """One folder, recursively: items into FILES, everything else into SKIPPED with its reason."""
    import os

    real = os.path.realpath(folder)
    if real in seen:
        skipped.append((folder, f"symlink loop: folder {real!r} is scanned already"))
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        skipped.append((folder, f"unreadable folder: {exc.strerror or exc}"))
        return
    for e in entries:
        path = Path(e.path)
        try:
            is_dir = e.is_dir(follow_symlinks=True)
            is_file = e.is_file(follow_symlinks=True)
        except OSError as exc:  # ELOOP: a symlink that points at itself
            skipped.append((path, f"symlink loop ({exc.strerror})"))
            continue
        if is_dir:
            _walk(path, files, skipped, seen=seen)
        elif e.is_symlink() and not is_file:
            why = "symlink loop" if _loops(path) else f"dangling symlink (to {os.readlink(path)!r})"
            skipped.append((path, why))
        elif not is_file:
            skipped.append((path, "not a regular file"))
        elif e.name.startswith("."):
            skipped.append((path, "hidden file"))
        elif path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            files.append(path)
        elif not path.suffix and _is_image(path):
            files.append(path)
        else:
            what = f"suffix {path.suffix!r}" if path.suffix else "no suffix, and Pillow does not recognise it"
            skipped.append((path, f"not an image or video ({what})"))


def _loops(path: Path) -> bool:
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return True
    except OSError as exc:
        import errno

        return exc.errno == errno.ELOOP
    return False


def _is_image(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path):
            return True
    except Exception:  # noqa: BLE001 — anything Pillow cannot identify is not an image
        return False


def kind_of(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def content_hash(path: str | Path) -> str:
    """file -> sha256 hex digest of its bytes (the content, not the name or the modification time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rel_path(path: Path, root: Path) -> str:
    for pair in (lambda: (path, root), lambda: (path.absolute(), root.absolute()),
                 lambda: (path.resolve(), root.resolve())):
        try:
            a, b = pair()
            return a.relative_to(b).as_posix()
        except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
            continue
    return str(path)


def scan_item(path: Path, root: Path) -> Scan:
    """file -> Scan: sha256 of its bytes and its displayed size from the header (no pixel decoding)."""
    kind, rel = kind_of(path), rel_path(path, root)
    try:
        digest = content_hash(path)
    except OSError as exc:
        return Scan(path=str(path), rel=rel, kind=kind, error=f"unreadable: {exc.strerror or exc}")
    warnings: tuple[str, ...] = ()
    try:
        if kind == "video":
            size, frames = _video_header(path)
        else:
            (size, warnings), frames = _image_header(path), None
    except Exception as exc:  # noqa: BLE001 — any decoder complaint means: not usable, listed and skipped
        return Scan(path=str(path), rel=rel, kind=kind, content_hash=digest, error=_reason(exc))
    return Scan(path=str(path), rel=rel, kind=kind, content_hash=digest, size=size, frames=frames,
                warnings=warnings)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _image_header(path: Path) -> tuple[tuple[int, int], tuple[str, ...]]:
    """image file -> ((height, width) as displayed, the one image reader's warnings), from the header:
    vaelens.images opens it (its size limit) and says what reading will not keep."""
    from vaelens.images import _mode_notes, _png_bit_depth, open_image

    with open_image(path) as img:
        w, h = img.size
        orientation = int(img.getexif().get(0x0112, 1) or 1)  # EXIF tag 274
        notes = list(_mode_notes(img))
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            notes.append("16-bit grayscale kept at 16 bits, repeated into 3 channels")
        elif _png_bit_depth(path) == 16:
            notes.append("16-bit colour PNG read at 8 bits per channel (Pillow decodes 48/64-bit PNG to 8-bit RGB)")
    return ((w, h) if orientation in _ROTATED else (h, w)), tuple(notes)


def _video_header(path: Path) -> tuple[tuple[int, int], int]:
    av = import_av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VaeLensError("no video stream", param="data", value=str(path))
        stream = container.streams.video[0]
        return (int(stream.height), int(stream.width)), int(stream.frames or 0)


def import_av() -> Any:
    """-> the PyAV module (FFmpeg bindings), or a one-line error saying how to install it."""
    try:
        import av
    except ImportError:
        raise VaeLensError("reading video clips needs PyAV: pip install 'vaelens[video]'") from None
    return av
