"""From a library error's fields to the CLI's words, read from the parser itself.

A VaeLensError names the library parameter at fault in `param` (``frames``, ``budget``). The subcommand's
parser knows which option fills that parameter: an option whose dest is the parameter's name, or one marked
with `feeds(action, "source")` where the names differ (``--vae`` fills ``load_vae(source)``). The error line
says which, as argparse does for its own errors: ``vaelens shapes: error: argument --frames: <message>``.
The message itself is printed as the library wrote it.
"""

from __future__ import annotations

import argparse

from vaelens.errors import OutputExistsError, VaeLensError


def feeds(action: argparse.Action, *params: str) -> argparse.Action:
    """Mark an option as the CLI spelling of library parameters named otherwise than its dest -> the action."""
    action.library_params = (*getattr(action, "library_params", ()), *params)  # type: ignore[attr-defined]
    return action


def flag_for(parser: argparse.ArgumentParser, param: str | None) -> str | None:
    """A library parameter -> how this parser spells it ('--frames', 'MODEL'), or None if it takes none.

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--frames", type=int)
    >>> _ = feeds(p.add_argument("--vae"), "source")
    >>> flag_for(p, "frames"), flag_for(p, "source"), flag_for(p, "budget")
    ('--frames', '--vae', None)
    """
    if not param:
        return None
    for action in parser._actions:
        if param == action.dest or param in getattr(action, "library_params", ()):
            if action.option_strings:
                return max(action.option_strings, key=len)  # --frames rather than -f
            return str(action.metavar or action.dest)
    return None


def error_line(command: str, parser: argparse.ArgumentParser, exc: VaeLensError) -> str:
    """A library error -> the one line the CLI prints for it (without the trailing newline)."""
    head = f"vaelens {command}: error: " if command else "vaelens: error: "
    flag = flag_for(parser, exc.param)
    if isinstance(exc, OutputExistsError) and flag_for(parser, "force"):
        shown = f"{flag} " if flag else ""
        return f"{head}{shown}{str(exc.path)!r} already exists; pass --force to replace it"
    return f"{head}argument {flag}: {exc}" if flag else f"{head}{exc}"
