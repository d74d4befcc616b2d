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
    """An output path that is in the way; force=True overrides it (never for an input).

    The remedy is data, so a front end says it in its own words: `path` the path, `what` the parameter's
    word for it ("output", "out"), `reason` what is in the way ("already exists"), `effect` what force does
    ("replace it"). The message is ``{what} '{path}' {reason}; pass force=True to {effect}``.

    >>> err = OutputExistsError("a.png")
    >>> (str(err), err.param, err.reason, err.effect)
    ("output 'a.png' already exists; pass force=True to replace it", 'output', 'already exists', 'replace it')
    """

    def __init__(self, path: Any, *, what: str = "output", reason: str = "already exists",
                 effect: str = "replace it", **fields: Any) -> None:
        fields.setdefault("param", what)
        fields.setdefault("value", str(path))
        super().__init__(f"{what} {str(path)!r} {reason}; pass force=True to {effect}", **fields)
        self.path = path
        self.what = what
        self.reason = reason
        self.effect = effect


class ChoiceRequiredError(VaeLensError):
    """A parameter left to the input (None) that the input does not settle: the caller passes one of `choices`.

    `reason` says what the input lacks; the message adds the remedy in parameter words, from `param` and
    `choices` (a front end says it in its own, e.g. the CLI's flags).

    >>> err = ChoiceRequiredError("z.safetensors does not say", param="normalized", choices=(True, False))
    >>> str(err), err.reason
    ('z.safetensors does not say; pass normalized=True or normalized=False', 'z.safetensors does not say')
    """

    def __init__(self, reason: str, *, param: str, choices: Iterable[Any], value: Any = None, **fields: Any) -> None:
        choices = tuple(choices)
        remedy = " or ".join(f"{param}={c!r}" for c in choices)
        super().__init__(f"{reason}; pass {remedy}", param=param, value=value, choices=choices, **fields)
        self.reason = reason


class MissingModuleError(VaeLensError):
    """A latent whose normalisation statistics live in a checkpoint, read without that VAE (pass vae=)."""
