"""Errors. Every message names the argument, the bad value and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A name and the names that exist -> 'did you mean a, b? ' (up to three close ones), or ''.

    >>> did_you_mean("sdxll", ["sd15", "sdxl", "flux1"])
    'did you mean sdxl? '
    """
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""


class VaeLensError(ValueError):
    """Base class: bad input to vaelens. The CLI prints the message on one line and exits 2."""


class UnknownFamilyError(VaeLensError):
    """A family name that is not in the registry (the message suggests the closest names)."""


class SizeError(VaeLensError):
    """A pixel size the family (or vaelens) cannot take."""


class FrameError(VaeLensError):
    """A frame count off the family's frame rule."""


class ConfigError(VaeLensError):
    """A diffusers config.json that cannot be turned into a module."""


class WeightsError(VaeLensError):
    """Local weights that are missing, corrupt, or of another family."""
