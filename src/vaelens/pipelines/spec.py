"""Frozen specs of a whole diffusion pipeline: its text encoders, its denoiser and its VAE family.

A PipelineSpec names every component with the class the released pipeline loads (model_index.json)
and the architecture config of the released checkpoint (`<repo>/<component>/config.json`). Sizes are
never typed in: `vaelens.pipelines.components` builds each component on the meta device from this config.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Role(str, enum.Enum):
    """What a component does in the run."""

    TEXT_ENCODER = "text_encoder"
    DENOISER = "denoiser"
    VAE = "vae"


class Library(str, enum.Enum):
    DIFFUSERS = "diffusers"
    TRANSFORMERS = "transformers"


class Guidance(str, enum.Enum):
    """How the pipeline's __call__ applies classifier-free guidance in one denoising step.

    BATCH:      latents are concatenated [uncond, cond] -> one denoiser call at batch 2B
    SEQUENTIAL: two denoiser calls at batch B (cond, then uncond); the first output stays alive
    NONE:       one call at batch B (guidance-distilled models, or guidance off by default)
    """

    BATCH = "batch"
    SEQUENTIAL = "sequential"
    NONE = "none"


class DenoiserKind(str, enum.Enum):
    """Which calling convention the denoiser has (how its inputs are laid out by the pipeline)."""

    UNET = "unet"  # UNet2DConditionModel: sample [B,C,h,w]
    SD3 = "sd3"  # SD3Transformer2DModel: hidden_states [B,C,h,w], joint CLIP+T5 context
    FLUX = "flux"  # FluxTransformer2DModel: packed tokens [B, h/2·w/2, 4C] + ids
    QWEN = "qwen"  # QwenImageTransformer2DModel: packed tokens + img_shapes
    SANA = "sana"  # SanaTransformer2DModel: hidden_states [B,C,h,w]
    WAN = "wan"  # WanTransformer3DModel: [B,C,f,h,w]
    LTX = "ltx"  # LTXVideoTransformer3DModel: packed tokens [B, f·h·w, C]
    COGVIDEOX = "cogvideox"  # CogVideoXTransformer3DModel: [B,f,C,h,w] + 3-D RoPE
    HUNYUAN = "hunyuan"  # HunyuanVideoTransformer3DModel: [B,C,f,h,w]


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class TextEncoderCall:
    """How the pipeline calls a text encoder: input_ids [B, tokens] (+ mask) -> hidden states.

    `tokens` is the padded length at the pipeline's default max prompt length; `output_hidden_states`
    is True where the pipeline asks for every layer's hidden state (they all stay alive in the output).
    """

    tokens: int
    attention_mask: bool = False
    output_hidden_states: bool = False
    # Width of the embedding the pipeline keeps for the denoiser, per prompt: [B, kept_tokens, kept_dim].
    kept_tokens: int
    kept_dim: int
    # A pooled vector the pipeline keeps as well ([B, pooled_dim]), 0 when none.
    pooled_dim: int = 0
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentSpec:
    """One model of the pipeline, as the released checkpoint's `<name>/config.json` describes it."""

    name: str  # attribute on the diffusers pipeline: "text_encoder_2", "transformer", "unet"
    title: str  # human name: "T5-XXL encoder"
    role: Role
    library: Library
    class_name: str  # transformers / diffusers class the pipeline loads (model_index.json)
    config_class: str | None = None  # transformers config class ("T5Config"); None for diffusers
    config: Mapping[str, Any] = field(default_factory=dict)
    config_source: str
    call: TextEncoderCall | None = None  # text encoders only

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _frozen(self.config))


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineSpec:
    """A diffusers pipeline: text encoders run once, the denoiser once per step, the VAE decodes once.

    pixels [B,3,(F,)H,W] are what comes out; the latent [B,C,(F',)h,w] follows the VAE family
    `vae_family` of the registry (vaelens.families), whose decode the memory model predicts.
    """

    name: str
    title: str
    pipeline_class: str  # diffusers pipeline class
    repo: str  # released diffusers repository the configs come from
    text_encoders: tuple[ComponentSpec, ...]
    denoiser: ComponentSpec
    denoiser_kind: DenoiserKind
    vae_family: str  # registry name (vaelens.families)
    guidance: Guidance
    guidance_source: str
    default_size: tuple[int, int]  # (height, width), the pipeline's __call__ default
    default_frames: int | None = None
    # The pipeline's model_cpu_offload_seq: the order enable_model_cpu_offload moves models in.
    offload_seq: tuple[str, ...]
    # True where encode_prompt runs the text encoders a second time on the negative prompt (the
    # pipeline's default with guidance on); False where it zero-fills or skips the negative.
    encodes_negative: bool = False
    # SDXL: a fp16 VAE with force_upcast in its config is cast to fp32 for the decode.
    upcasts_fp16_vae: bool = False
    warnings: tuple[str, ...] = ()  # said with every estimate of this pipeline
    aliases: tuple[str, ...] = ()

    @property
    def is_video(self) -> bool:
        return self.default_frames is not None

    def text_calls(self) -> tuple[tuple[ComponentSpec, bool], ...]:
        """The text encoder calls of encode_prompt in order: (encoder, is_negative_prompt)."""
        calls = [(e, False) for e in self.text_encoders]
        if self.encodes_negative and self.guidance is not Guidance.NONE:
            calls += [(e, True) for e in self.text_encoders]
        return tuple(calls)

    @property
    def components(self) -> tuple[ComponentSpec, ...]:
        """Text encoders and denoiser (the VAE comes from the registry)."""
        return (*self.text_encoders, self.denoiser)
