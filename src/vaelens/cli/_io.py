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


def expand_images(items: Sequence[str]) -> list[str]:
    """IMAGE arguments -> image files: files as given, a folder's images (sorted by name), glob
    patterns expanded (sorted), and `demo` for the shipped sample photograph."""
    from vaelens.sources import expand_inputs

    return [str(p) for p in expand_inputs(items)]
