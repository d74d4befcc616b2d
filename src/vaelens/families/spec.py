"""Frozen specs of a VAE family: architecture, latent geometry, normalisation, tokens, size rule.

Every constant carries its source (a repo path); tests confirm each one against the real diffusers
module (tests/test_registry.py), so the table here is a claim that is checked, not a definition.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class NormKind(str, enum.Enum):
    """How a pipeline turns the VAE's raw latent z into the denoiser's latent."""

    NONE = "none"  # identity (TAESD: scaling_factor 1.0)
    AFFINE = "affine"  # (z - shift) * scale
    PER_CHANNEL = "per_channel"  # (z - mean_c) * scale / std_c
    BATCHNORM_PATCHED = "batchnorm_patched"  # FLUX.2: patchify p×p, then (x - running_mean)/sqrt(var+eps)


class SizeRuleKind(str, enum.Enum):
    """What the family's pipeline does with a height/width that is not a multiple of `multiple`."""

    RAISE = "raise"  # pipeline.check_inputs raises ValueError
    FLOOR = "floor"  # pipeline floors to the multiple and warns (FLUX, Wan, …)


class FrameRuleKind(str, enum.Enum):
    """What the family's pipeline does with a frame count off `t·k + 1`."""

    RAISE = "raise"
    FLOOR = "floor"  # rounds down to t·k + 1 with a warning (Wan)
    ANY = "any"  # the VAE accepts any count (latent frames = (F-1)//t + 1)


class SpecOrigin(str, enum.Enum):
    """Where a FamilySpec's constants come from, and so which pipeline rules are known."""

    REGISTRY = "registry"  # the table in families/image.py and video.py: each constant cited
    CONFIG = "config"  # a config.json: geometry probed on the meta device; no pipeline known


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Normalization:
    """raw latent z [B,C,…] -> normalised latent [B,C,…] the denoiser sees (and back).

    AFFINE:            (z - shift) * scale
    PER_CHANNEL:       (z - mean[c]) * scale / std[c]; mean/std from the config, or from the
                       checkpoint's buffers when `stats_from` names them (LTX-Video)
    BATCHNORM_PATCHED: patchify p×p -> [B, C·p·p, H/p, W/p], then (x - running_mean) / sqrt(running_var + eps)
                       with the BatchNorm buffers of the checkpoint (FLUX.2)
    """

    kind: NormKind
    scale: float = 1.0
    shift: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # Where statistics live when not in this spec: a module attribute path, e.g. "bn" or "latents_mean".
    stats_from: str | None = None
    patch: tuple[int, int] | None = None
    eps: float = 0.0
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TemporalRule:
    """Video: F pixel frames -> (F - 1) // factor + 1 latent frames; valid F are factor·k + 1."""

    factor: int
    rule: FrameRuleKind
    source: str = ""
    # CogVideoX decodes latent frames in chunks of this many (frame 0's chunk takes the remainder), and
    # its time upsampler doubles an even chunk but keeps the first frame of an odd one: the decoded
    # frame count then depends on the chunking, not only on (F' - 1)·t + 1.
    decode_chunk: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenPacking:
    """normalised latent [B,C,(F,)h,w] -> tokens [B, N, D] of the family's transformer.

    `patch` is (p_h, p_w) for images or (p_t, p_h, p_w) for video; N = prod(latent dims / patch),
    D = C · prod(patch) (the packed width before the transformer's input projection).
    """

    patch: tuple[int, ...]
    source: str = ""
    # How the transformer's self-attention scales with N: "softmax" (cost ∝ N²) or "linear" (∝ N).
    attention: str = "softmax"


@dataclass(frozen=True, slots=True, kw_only=True)
class SizeRule:
    """Pipeline rule for height/width: must be a multiple of `multiple`, else RAISE or FLOOR."""

    kind: SizeRuleKind
    multiple: int
    # A check some pipelines run before flooring: a side off this multiple raises even when kind is
    # FLOOR (Wan2.2 TI2V-5B: check_inputs raises on % 16, then __call__ floors to 16 · patch 2 = 32).
    raise_multiple: int | None = None
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilySpec:
    """One VAE family: enough to build the real diffusers module on the meta device and to say what
    happens to pixels [B,3,(F,)H,W] on the way to latent [B,C,(F',)H/f,W/f] and tokens."""

    name: str
    aliases: tuple[str, ...] = ()
    title: str
    diffusers_class: str
    # The released VAE's config.json arguments (without _class_name / _diffusers_version).
    config: Mapping[str, Any] = field(default_factory=dict)
    config_source: str
    latent_channels: int
    spatial_factor: int
    temporal: TemporalRule | None = None
    # True when the module takes 5-D pixels [B,3,F,H,W] even for a still image (Qwen-Image).
    video_module: bool = False
    normalization: Normalization
    tokens: TokenPacking | None = None
    size_rule: SizeRule
    default_size: tuple[int, int]  # (height, width)
    default_frames: int | None = None
    origin: SpecOrigin = SpecOrigin.REGISTRY
    notes: str = ""
    # Constant name -> repo path it was taken from, for anything not covered by a `source` field.
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _frozen(self.config))
        object.__setattr__(self, "sources", _frozen(self.sources))

    @property
    def is_video(self) -> bool:
        return self.temporal is not None

    def diffusers_config(self) -> dict[str, Any]:
        """The config dict diffusers' `from_config` takes, `_class_name` included."""
        return {"_class_name": self.diffusers_class, **self.config}
