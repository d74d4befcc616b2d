"""Errors. Every message names the argument, the bad value and what is allowed; the fields carry the same.

The library speaks in parameter names (``vae=``, ``frames=``). An error raised for one parameter says so in
`param`, so a front end can name its own spelling of it (the CLI maps `param` to its flag from the parser)
without reading the message.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A name and the names that exist -> 'did you mean a, b? ' (up to three close ones), or ''.

    >>> did_you_mean("sdxll", ["sd15", "sdxl", "flux1"])
    'did you mean sdxl? '
    """
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""


class VaeLensError(ValueError):
    """Base class: bad input to vaelens. The CLI prints the message on one line and exits 2.

    Fields (all optional): `param` the library parameter at fault (``"frames"``, ``"budget"``), `value` the
    value given, `choices` the valid values where they are a closed set, `needed_bytes` the smallest
    memory that would work where the error is a budget refusal.

    >>> err = VaeLensError("frames 6 is not 4k+1", param="frames", value=6, choices=(5, 9))
    >>> (err.param, err.value, err.choices, str(err))
    ('frames', 6, (5, 9), 'frames 6 is not 4k+1')
    """

    def __init__(self, message: str, *, param: str | None = None, value: Any = None,
                 choices: Iterable[Any] | None = None, needed_bytes: int | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.value = value
        self.choices = tuple(choices) if choices is not None else None
        self.needed_bytes = needed_bytes


class UnknownFamilyError(VaeLensError):
    """A family name that is not in the registry (the message suggests the closest names)."""


class UnknownPipelineError(VaeLensError):
    """A pipeline name that is not in the catalog (the message suggests the closest names)."""


class SizeError(VaeLensError):
    """A pixel size the family (or vaelens) cannot take."""


class FrameError(VaeLensError):
    """A frame count off the family's frame rule."""


class ConfigError(VaeLensError):
    """A diffusers config.json that cannot be turned into a module."""


class WeightsError(VaeLensError):
    """Local weights that are missing, corrupt, or of another family."""


class BudgetError(VaeLensError):
    """A memory budget that cannot be met; `needed_bytes` is the smallest budget that would work, if known."""


class OutputError(VaeLensError):
    """An output path that cannot be written (a folder, an input, a wrong suffix, an unwritable place)."""


class OutputExistsError(OutputError):
    """An output path that exists; force=True replaces it (never an input). `path` is that path."""

    def __init__(self, message: str, path: Any, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.path = path


class MissingModuleError(VaeLensError):
    """A latent whose normalisation statistics live in a checkpoint, read without that VAE (pass vae=)."""
