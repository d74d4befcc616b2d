"""Input files for encode, roundtrip and inspect: several files, a folder, a glob, or `demo`.

items (as typed) -> image or video files, in a stated order: files as given; a folder's readable files
sorted by name (not recursive); a glob pattern's matches sorted by name; `demo` -> the shipped sample
photograph (when no file of that name exists). Nothing is guessed silently: a folder without images, a
pattern that matches nothing and a path that is missing are refused naming what was looked for.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from vaelens.errors import VaeLensError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")
DEMO_NAME = "demo"
_GLOB_CHARS = set("*?[")


def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(
    items: Sequence[str | Path], *, suffixes: Sequence[str] = IMAGE_SUFFIXES + VIDEO_SUFFIXES
) -> list[Path]:
    """items -> files (see the module docstring); each file once, in the order found.

    >>> expand_inputs(["demo"])[0].name
    'demo_coffee.png'
    """
    files: list[Path] = []
    allowed = tuple(s.lower() for s in suffixes)
    for item in items:
        text = str(item)
        p = Path(text)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in allowed)
            if not found:
                raise VaeLensError(
                    f"folder {text!r} holds no files ending in {', '.join(allowed)} (folders are not searched "
                    "recursively)",
                    param="inputs",
                )
            files.extend(found)
        elif p.exists():
            files.append(p)
        elif text == DEMO_NAME:
            from vaelens.weights.demo import demo_image_path

            files.append(demo_image_path())
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(text) if Path(m).is_file())
            if not matches:
                raise VaeLensError(f"pattern {text!r} matches no file", param="inputs")
            files.extend(matches)
        else:
            raise VaeLensError(f"input {text!r} does not exist (give files, a folder, a glob pattern, or 'demo')",
                param="inputs")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique
