"""Progress on long work: a bar with rate and ETA on stderr, or nothing.

work of `total` steps -> progress_bar(...) -> Bar; bar.advance(n, what) after each step; bar.stage(text)
names the step under way (encode, decode, metrics…) so a single slow step still shows a live clock.

The library never draws: a long function takes an optional `progress: ProgressFn` callback
(done, total, what) and calls it; the CLI passes a Bar (which is such a callback) or nothing. Bars are
drawn only when asked and stderr is a terminal, so pipes, logs and --json stay clean.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol

# A long-running library call reports through this: (steps done, total steps or None, what is under way).
ProgressFn = Callable[[int, "int | None", str], None]


class Bar(Protocol):
    def advance(self, n: int = 1, what: str | None = None) -> None: ...

    def stage(self, what: str) -> None: ...

    def __call__(self, done: int, total: int | None, what: str) -> None: ...


def wanted(*, quiet: bool = False, stream: Any = None) -> bool:
    """True when a bar should be drawn: not quiet, and the stream (stderr) is a terminal."""
    if quiet:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class _Null:
    """A bar that draws nothing (quiet, not a terminal, --json)."""

    def advance(self, n: int = 1, what: str | None = None) -> None:
        return None

    def stage(self, what: str) -> None:
        return None

    def __call__(self, done: int, total: int | None, what: str) -> None:
        return None


class _Rich:
    """rich.progress on stderr: description, bar, done/total, rate, elapsed, ETA (transient)."""

    def __init__(self, progress: Any, task: Any, description: str, unit: str) -> None:
        self._p, self._task, self._desc, self._unit = progress, task, description, unit

    def advance(self, n: int = 1, what: str | None = None) -> None:
        if what is None:  # keep the stage shown
            self._p.update(self._task, advance=n)
        else:
            self._p.update(self._task, advance=n, description=self._label(what))

    def stage(self, what: str) -> None:
        self._p.update(self._task, description=self._label(what))

    def __call__(self, done: int, total: int | None, what: str) -> None:
        self._p.update(self._task, completed=done, total=total, description=self._label(what))

    def _label(self, what: str | None) -> str:
        return f"{self._desc}: {what}" if what else self._desc


def _rate_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """'2.31 image/s' or '12.4 s/image' (whichever reads better)."""

        def __init__(self, unit: str) -> None:
            super().__init__()
            self.unit = unit

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("", style="progress.data.speed")
            text = f"{speed:.2f} {self.unit}/s" if speed >= 1 else f"{1 / speed:.1f} s/{self.unit}"
            return Text(text, style="progress.data.speed")

    return RateColumn


@contextlib.contextmanager
def progress_bar(
    description: str, *, total: int | None = None, enabled: bool = True, unit: str = "step"
) -> Iterator[Bar]:
    """-> a Bar for `total` steps (None: unknown); draws on stderr only when enabled and stderr is a TTY."""
    if not (enabled and wanted()):
        yield _Null()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _rate_column()(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield _Rich(progress, task, description, unit)


def null_bar() -> Bar:
    """A Bar that does nothing (for library calls made without progress)."""
    return _Null()
