"""Safe output files: nothing is overwritten without asking, an input is never overwritten, and a file
is either the old one or the whole new one.

paths to write + the call's inputs -> checked paths (prepare_outputs) -> atomic_write(path) yields a
temporary path in the same folder; on success it replaces the target with os.replace (atomic on POSIX
and Windows within one file system), on failure it is removed. A crash leaves the old file or none.

Every command that writes (encode, decode, roundtrip, inspect, pipeline's plot, report, cache) goes
through here, so the rules are one set:
- an existing path is refused unless force=True;
- a path that is one of the call's inputs is refused even with force=True (compared as resolved
  paths, and with os.path.samefile for hard links);
- a suffix that contradicts the format is refused (a latent file named out.png);
- a folder that cannot be written (/proc, a parent that is a file, no permission) is one error, found
  before any work is done.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from vaelens.errors import OutputError, OutputExistsError
from vaelens.options import Choice, parse_choice

# Suffixes per format kind. Images: what Pillow writes losslessly or commonly; figures: what matplotlib writes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".pdf", ".webp", ".tif", ".tiff", ".eps", ".ps")
LATENT_SUFFIXES = (".safetensors",)
COMFY_SUFFIXES = (".latent", ".safetensors")
VIDEO_SUFFIXES = (".mp4",)


class OutputKind(Choice):
    """What a file holds, which fixes the suffixes its name may end in (KINDS)."""

    IMAGE = "image"
    FIGURE = "figure"
    LATENT = "latent"
    COMFY = "comfy"
    VIDEO = "video"
    JSON = "json"
    HTML = "html"


KINDS = {
    OutputKind.IMAGE: IMAGE_SUFFIXES,
    OutputKind.FIGURE: FIGURE_SUFFIXES,
    OutputKind.LATENT: LATENT_SUFFIXES,
    OutputKind.COMFY: COMFY_SUFFIXES,
    OutputKind.VIDEO: VIDEO_SUFFIXES,
    OutputKind.JSON: (".json",),
    OutputKind.HTML: (".html", ".htm"),
}


def _article(label: str) -> str:
    """'an' before a vowel sound ('an image', 'an HTML'), else 'a' ('a latent', 'a JSON')."""
    return "an" if label[0].lower() in "aeiou" or label.startswith("HTML") else "a"


def _blocked_parent(p: Path) -> Path | None:
    """-> the nearest existing ancestor of p that is not a folder (a file where a folder is needed)."""
    for parent in p.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _probe_writable(folder: Path, shown: str, what: str = "output") -> None:
    """Create the folder and a temporary file in it, then remove it: the one honest test of writability."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(folder, "")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"{what} {shown!r} cannot be written: {exc.strerror or exc} ({folder})", param=what,
                          value=shown) from None


def _open_temp(folder: Path, suffix: str) -> tuple[int, str]:
    name = folder / f".vaelens-tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), str(name)


def check_output(
    path: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    force: bool = False,
    kind: OutputKind | str | None = None,
    what: str = "output",
) -> Path:
    """path to write -> Path, after every rule above (nothing is written; the folder is created).

    kind: an OutputKind (or its value: "image", "figure", "latent", "comfy", "video", "json", "html"), or None
    for any suffix. Raises OutputExistsError for an existing path without force=True, OutputError otherwise.

    >>> check_output("/nonexistent-dir-for-doctest/x.png", kind="latent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vaelens.errors.OutputError: output '...x.png' is a latent file; its name must end in .safetensors, not .png
    """
    p = Path(path)
    shown = str(path)
    if kind is not None:
        kind = parse_choice(OutputKind, kind, "kind")
        allowed = KINDS[kind]
        if p.suffix.lower() not in allowed:
            label = {OutputKind.COMFY: "ComfyUI latent", OutputKind.HTML: "HTML"}.get(kind, kind.value)
            got = f"not {p.suffix}" if p.suffix else "it has no suffix"
            raise OutputError(
                f"{what} {shown!r} is {_article(label)} {label} file; its name must end in "
                f"{' or '.join(allowed)}, {got}", param=what, value=shown, choices=allowed
            )
    for src in inputs:
        if _same_file(p, Path(src)):
            raise OutputError(f"{what} {shown!r} is one of the inputs ({str(src)!r}); it is never overwritten",
                              param=what, value=shown)
    if p.is_dir():
        raise OutputError(f"{what} {shown!r} is a folder; give a file name inside it", param=what, value=shown)
    blocked = _blocked_parent(p)
    if blocked is not None:
        raise OutputError(f"{what} {shown!r} cannot be written: {str(blocked)!r} is a file, not a folder",
                          param=what, value=shown)
    if p.exists() or p.is_symlink():
        if not force:
            raise OutputExistsError(shown, what=what)
    _probe_writable(p.parent, shown, what)
    return p


def prepare_outputs(
    paths: Sequence[str | Path],
    *,
    inputs: Iterable[str | Path] = (),
    force: bool = False,
    kind: OutputKind | str | None = None,
    what: str = "output",
) -> list[Path]:
    """Several paths one call writes -> checked Paths (check_output each), refusing the same path twice."""
    inputs = list(inputs)
    seen: dict[Path, str] = {}
    out = []
    for path in paths:
        p = check_output(path, inputs=inputs, force=force, kind=kind, what=what)
        key = p.resolve()
        if key in seen:
            raise OutputError(f"{what} {str(path)!r} would be written twice (also as {seen[key]!r})", param=what,
                              value=str(path))
        seen[key] = str(path)
        out.append(p)
    return out


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Target path -> a temporary path (same folder, same suffix) to write; replaces the target on success.

    The temporary file is removed when the block raises, so a failed write leaves the old file or none.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(p.parent, p.suffix)
    except OSError as exc:
        raise OutputError(f"output {str(path)!r} cannot be written: {exc.strerror or exc}", param="output",
                          value=str(path)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish(tmp_path, p)
    except OSError as exc:
        raise OutputError(f"output {str(path)!r} could not be written: {exc.strerror or exc}", param="output",
                          value=str(path)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def current_umask() -> int:
    """-> the process umask (read from /proc where it is shown, else set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: str | Path) -> Path:
    """A finished temporary file -> `path`, with the mode a plain open() would have given it (0666 less the
    umask) and renamed over the target atomically (os.replace).

    Writers such as safetensors' save_file create their file 0600 whatever the umask; without the chmod that
    mode survives the rename, and a latent file or cache shard written by one user cannot be read by another.
    """
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """bytes -> file at path, atomically (see atomic_write)."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """str -> UTF-8 file at path, atomically (see atomic_write)."""
    return write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staged_prefix(prefix: str | Path) -> Iterator[Path]:
    """For writers that derive names from a prefix (PREFIX_channels.png, …): yields a temporary prefix in
    the same folder; on success every file written under it is renamed (os.replace) to the same name
    under `prefix`; on failure they are removed."""
    final = Path(prefix)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output {str(prefix)!r} cannot be written: {exc.strerror or exc}", param="output",
                          value=str(prefix)) from None
    tmp = final.parent / f".vaelens-tmp-{os.getpid()}-{secrets.token_hex(4)}-{final.name}"
    ok = False
    try:
        yield tmp
        ok = True
    finally:
        for f in [f for f in final.parent.iterdir() if f.name.startswith(tmp.name)]:
            if ok:
                publish(f, final.parent / (final.name + f.name[len(tmp.name):]))
            else:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()


def unstage(path: str | Path, staged: Path, prefix: str | Path) -> str:
    """A path a writer returned under the staged prefix -> the same file's final path under prefix."""
    p = Path(path)
    return str(Path(prefix).parent / (Path(prefix).name + p.name[len(staged.name):]))
