"""CLI glue for files: --force / --quiet, output checks worded with CLI flags, and many inputs
(several files, a folder, a glob, or `demo`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

from vaelens.errors import VaeLensError
from vaelens.outputs import OutputExistsError, prepare_outputs


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace output files that already exist (never one of the inputs)",
    )


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar (there is none anyway when stderr is not a terminal)",
    )


def check_outputs(
    args: argparse.Namespace,
    paths: Sequence[str | Path],
    *,
    inputs: Iterable[str | Path] = (),
    kind: str | None = None,
    what: str = "output",
) -> list[Path]:
    """prepare_outputs with the CLI's --force; an existing file's message names --force."""
    try:
        return prepare_outputs(paths, inputs=inputs, force=bool(getattr(args, "force", False)), kind=kind, what=what)
    except OutputExistsError as exc:
        raise VaeLensError(f"{what} {str(exc.path)!r} already exists; pass --force to replace it") from None


def bar_enabled(args: argparse.Namespace) -> bool:
    """A progress bar unless --quiet or --json (stderr being a TTY is checked by vaelens.progress)."""
    return not (getattr(args, "quiet", False) or getattr(args, "json", False))


def expand_images(items: Sequence[str], *, extra_suffixes: Sequence[str] = ()) -> list[str]:
    """IMAGE arguments -> image (and video) files: files as given, a folder's images (sorted by name),
    glob patterns expanded (sorted), and `demo` for the shipped sample photograph."""
    from vaelens.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, expand_inputs

    return [str(p) for p in expand_inputs(items, suffixes=(*IMAGE_SUFFIXES, *VIDEO_SUFFIXES, *extra_suffixes))]


def weights_inputs(args: argparse.Namespace) -> list[str]:
    """The weights a command reads (a file or folder given to --vae): never an output either."""
    vae = getattr(args, "vae", None)
    return [vae] if vae and Path(vae).exists() else []


def stems(paths: Sequence[str | Path]) -> list[str]:
    """Input files -> distinct name stems for their outputs: coffee.png, cat.jpg -> coffee, cat (a stem
    that occurs twice gets the index of its file, zero-padded, in front: 03_coffee)."""
    names = [Path(p).stem for p in paths]
    width = len(str(len(names) - 1))
    dupes = {n for n in names if names.count(n) > 1}
    return [f"{i:0{width}d}_{n}" if n in dupes else n for i, n in enumerate(names)]


def check_batch_size(args: argparse.Namespace) -> int:
    n = getattr(args, "batch_size", 1)
    if n < 1:
        raise VaeLensError(f"--batch-size {n} must be at least 1")
    return n


def nonfinite_advice(args: argparse.Namespace) -> str:
    """What to try after NaN/Inf, leaving out what is already in effect."""
    tips = []
    if str(getattr(args, "dtype", "fp32")).lower() not in ("fp32", "float32", "float"):
        tips.append("--dtype fp32")
    if getattr(args, "upcast", "auto") == "never":
        tips.append("--upcast auto")
    if tips:
        return "try " + " or ".join(tips)
    return "this happened in fp32, so the weights or the input produce non-finite values (check the weights file)"


def group_same_size(items: Sequence, shape_of, batch_size: int) -> list[list[int]]:
    """Consecutive items of equal shape_of(item), at most batch_size each -> lists of indices."""
    groups: list[list[int]] = []
    for i, item in enumerate(items):
        last = groups[-1] if groups else None
        if last and len(last) < batch_size and shape_of(items[last[0]]) == shape_of(item):
            last.append(i)
        else:
            groups.append([i])
    return groups
