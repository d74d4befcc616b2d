"""Captions for a dataset's items: a sidecar file per item, or a column of a metadata file.

(root, item paths, metadata file?, column?) -> {path: caption}:
- metadata given (JSONL or CSV): its `file_name` column (also `file`, `path`, `image`), relative to the
  metadata file's folder or to DATA, names the item; the caption is `column` (default: `text`, else
  `caption`) — Hugging Face imagefolder's layout (metadata.jsonl with file_name + text);
- else a sidecar next to each item, the first of photo.txt, photo.caption, photo.json (kohya sd-scripts
  and SimpleTuner read .txt/.caption; a .json sidecar holds a string or {"caption"|"text": ...});
- else DATA/metadata.jsonl or DATA/metadata.csv when present, read as above.
Captions are read on every run and stored in the index; they are not part of a latent's key, so editing a
caption re-encodes nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from vaelens.errors import VaeLensError

NAME_COLUMNS = ("file_name", "file", "path", "image")
CAPTION_COLUMNS = ("text", "caption")


def read_captions(root: str | Path, paths: list[str], *, metadata: str | Path | None = None,
                  column: str | None = None) -> dict[str, str]:
    """DATA root + item paths (+ a metadata JSONL/CSV file and its caption column) -> {path: caption}."""
    root = Path(root)
    if metadata is not None:
        return _from_metadata(Path(metadata), root, paths, column)
    out = {}
    for p in paths:
        caption = _sidecar(Path(p), column)
        if caption is not None:
            out[p] = caption
    if not out:
        for name in ("metadata.jsonl", "metadata.csv"):
            if (root / name).is_file():
                return _from_metadata(root / name, root, paths, column)
    return out


def _sidecar(path: Path, column: str | None) -> str | None:
    for suffix in (".txt", ".caption", ".json"):
        side = path.with_suffix(suffix)
        if side == path or not side.is_file():
            continue
        text = side.read_text(encoding="utf-8", errors="replace")
        if suffix != ".json":
            return text.strip()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VaeLensError(f"caption file {str(side)!r} is not JSON ({exc.msg}, line {exc.lineno})",
                               param="captions", value=str(side)) from None
        return data if isinstance(data, str) else _caption_of(data, column, str(side))
    return None


def _caption_of(row: dict[str, Any], column: str | None, where: str) -> str:
    if column is not None:
        if column not in row:
            raise VaeLensError(f"caption column {column!r} is not in {where}; it has: {', '.join(map(str, row))}",
                               param="caption_column", value=column, choices=tuple(map(str, row)))
        return str(row[column])
    for c in CAPTION_COLUMNS:
        if c in row:
            return str(row[c])
    raise VaeLensError(f"{where} has no caption column ({' or '.join(CAPTION_COLUMNS)}); name one: "
                       f"{', '.join(map(str, row))}", param="caption_column", choices=tuple(map(str, row)))


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise VaeLensError(f"captions {str(path)!r} does not exist", param="captions", value=str(path))
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise VaeLensError(f"captions {str(path)!r} is neither .jsonl nor .csv", param="captions", value=str(path))
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise VaeLensError(f"captions {str(path)!r} line {n} is not JSON ({exc.msg})",
                                       param="captions", value=str(path)) from None
    return rows


def _from_metadata(path: Path, root: Path, paths: list[str], column: str | None) -> dict[str, str]:
    by_name: dict[str, str] = {}
    for n, row in enumerate(_rows(path), 1):
        name_col = next((c for c in NAME_COLUMNS if c in row), None)
        if name_col is None:
            raise VaeLensError(f"captions {str(path)!r} row {n} names no file ({' or '.join(NAME_COLUMNS)})",
                               param="captions", value=str(path))
        by_name[Path(str(row[name_col])).as_posix()] = _caption_of(row, column, f"captions {str(path)!r} row {n}")
    out = {}
    for p in paths:
        for base in (path.parent, root):
            try:
                rel = Path(p).absolute().relative_to(base.absolute()).as_posix()
            except ValueError:
                continue
            if rel in by_name:
                out[p] = by_name[rel]
                break
    return out
