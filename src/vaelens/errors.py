"""Errors. Every message names the argument, the bad value and what is allowed."""

from __future__ import annotations


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
