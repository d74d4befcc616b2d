"""The registry: one frozen FamilySpec per VAE family, looked up by name or alias."""

from __future__ import annotations

from vaelens.errors import UnknownFamilyError, did_you_mean
from vaelens.families import image, video
from vaelens.families.spec import (
    FamilySpec,
    FrameRuleKind,
    Normalization,
    NormKind,
    SizeRule,
    SizeRuleKind,
    SpecOrigin,
    TemporalRule,
    TokenPacking,
)

FAMILIES: tuple[FamilySpec, ...] = image.FAMILIES + video.FAMILIES


def _index() -> dict[str, FamilySpec]:
    table: dict[str, FamilySpec] = {}
    for spec in FAMILIES:
        for key in (spec.name, *spec.aliases):
            key = key.lower()
            if key in table:
                raise RuntimeError(f"registry: {key!r} names both {table[key].name} and {spec.name}")
            table[key] = spec
    return table


_BY_NAME = _index()


def family_names() -> list[str]:
    """Canonical names, in registry order."""
    return [spec.name for spec in FAMILIES]


def get_family(name: str) -> FamilySpec:
    """'sdxl' | alias -> FamilySpec; unknown names raise with the closest suggestions.

    >>> get_family("SDXL").latent_channels
    4
    """
    key = name.strip().lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    raise UnknownFamilyError(
        f"unknown family {name!r}; {did_you_mean(key, _BY_NAME)}known: {', '.join(family_names())} "
        "(or a path to a diffusers config.json / model folder)",
        param="family", value=name, choices=family_names(),
    )


__all__ = [
    "FAMILIES",
    "FamilySpec",
    "FrameRuleKind",
    "NormKind",
    "Normalization",
    "SizeRule",
    "SizeRuleKind",
    "SpecOrigin",
    "TemporalRule",
    "TokenPacking",
    "family_names",
    "get_family",
]
