"""CLI glue for files: --force / --quiet / --strict, output checks worded with CLI flags, flags checked at
parse time (--size, --fps, --max-frames), the progress bar, and the skipped-input listing."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vaelens.errors import ChoiceRequiredError, OutputExistsError, VaeLensError
from vaelens.outputs import prepare_outputs


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


def add_strict(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--strict", action="store_true", help=what)


def _typed(check, flag: str):
    """A library check -> an argparse type: a bad value is a usage error in flag words, at parse time."""

    def parse(text: str):
        try:
            return check(text)
        except VaeLensError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    parse.__name__ = flag
    return parse


def _size(text: str) -> tuple[int, int]:
    from vaelens.options import parse_size

    return parse_size(text)


def _max_frames(text: str) -> int:
    from vaelens.run.inputs import check_max_frames

    try:
        value = int(text)
    except ValueError:
        raise VaeLensError("must be a whole number of at least 1") from None
    return check_max_frames(value)  # type: ignore[return-value]


def _batch_size(text: str) -> int:
    from vaelens.run.inputs import check_batch_size

    try:
        return check_batch_size(int(text))
    except ValueError:
        raise VaeLensError("must be a whole number of at least 1") from None


def batch_size_type():
    """--batch-size N: a whole number of at least 1, checked at parse time."""
    return _typed(_batch_size, "--batch-size")


def _fps(text: str) -> float:
    from vaelens.run.inputs import check_fps

    return check_fps(text)  # type: ignore[return-value]


def add_size_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--size", metavar="WxH", type=_typed(_size, "--size"), help=help_text)


def add_fps(parser: argparse.ArgumentParser, help_text: str) -> None:
    from vaelens.run.inputs import MAX_FPS

    parser.add_argument("--fps", type=_typed(_fps, "--fps"), metavar="FPS",
                        help=f"{help_text} (0 < FPS <= {MAX_FPS:g})")


def add_clip_flags(parser: argparse.ArgumentParser) -> None:
    add_fps(parser, "frame rate to record for a clip (default: the file's; 16); video VAEs only")
    parser.add_argument("--max-frames", type=_typed(_max_frames, "--max-frames"), metavar="N",
                        help="read at most N frames of a video file (video VAEs only)")


def check_outputs(
    args: argparse.Namespace,
    paths: Sequence[str | Path],
    *,
    inputs: Iterable[str | Path] = (),
    kind: str | None = None,
    what: str = "output",
) -> list[Path]:
    """prepare_outputs with the CLI's --force; an existing file's message names --force."""
    with outputs(what):
        return prepare_outputs(paths, inputs=inputs, force=bool(getattr(args, "force", False)), kind=kind, what=what)


# How this CLI passes each value of a library parameter that an input may leave open (ChoiceRequiredError):
# decode's and inspect's --normalized / --raw fill normalized=True / False.
CHOICE_FLAGS = {("normalized", True): "--normalized", ("normalized", False): "--raw"}


def force_message(exc: OutputExistsError, shown: str | None = None) -> str:
    """An output in the way -> its line in flag words, from the error's fields: what is in the way and
    what --force does (`shown` names the output as the command does, e.g. '-o'; default: the library's)."""
    return f"{shown or exc.what} {str(exc.path)!r} {exc.reason}; pass --force to {exc.effect}"


@contextlib.contextmanager
def outputs(what: str = "output") -> Iterator[None]:
    """Library errors whose remedy is a CLI flag -> that remedy said in flags, built from the error's fields
    (never by editing its message): an output in the way names --force; a choice the input leaves open
    names the flags that make it (CHOICE_FLAGS)."""
    try:
        yield
    except OutputExistsError as exc:
        raise VaeLensError(force_message(exc, what), param="force", value=False) from None
    except ChoiceRequiredError as exc:
        flags = [CHOICE_FLAGS[exc.param, c] for c in exc.choices if (exc.param, c) in CHOICE_FLAGS]
        if not flags:
            raise
        raise VaeLensError(f"{exc.reason}; pass {' or '.join(flags)}", param=exc.param, value=exc.value,
                           choices=exc.choices) from None


def bar_enabled(args: argparse.Namespace) -> bool:
    """A progress bar unless --quiet or --json (stderr being a TTY is checked by vaelens.progress)."""
    return not (getattr(args, "quiet", False) or getattr(args, "json", False))


@contextlib.contextmanager
def bar_for(args: argparse.Namespace, verb: str, *, unit: str) -> Iterator[Any]:
    """-> the progress bar of a real-weights command ("encode with sdxl-vae"); the library sets its total."""
    from vaelens.progress import progress_bar

    vae = getattr(args, "vae", None)
    label = f"{verb} with {Path(str(vae)).name if vae else 'demo'}"
    with progress_bar(label, enabled=bar_enabled(args), unit=unit) as bar:
        yield bar


def weights_inputs(args: argparse.Namespace) -> list[str]:
    """The weights a command reads (a file or folder given to --vae): never an output either."""
    vae = getattr(args, "vae", None)
    return [vae] if vae and Path(vae).exists() else []


def report_skipped(skipped: dict[str, str], warn) -> int:
    """Inputs skipped (path -> reason) -> one warning each and a summary; -> exit code 1 if any, else 0."""
    for path, reason in skipped.items():
        warn(f"skipped {path}: {reason}")
    if skipped:
        n = len(skipped)
        warn(f"{n} input{'' if n == 1 else 's'} skipped (--strict stops at the first)")
    return 1 if skipped else 0


def print_lines(lines: Sequence[str]) -> None:
    if lines:
        print("\n".join(lines))


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
