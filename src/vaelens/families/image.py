"""Image VAE families. Configs are the released `vae/config.json` of each model (path in config_source)."""

from __future__ import annotations

from vaelens.families.spec import (
    FamilySpec,
    Normalization,
    NormKind,
    SizeRule,
    SizeRuleKind,
)

_KL_F8_BLOCKS = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
}

SDXL = FamilySpec(
    name="sdxl",
    aliases=("sdxl-base", "sdxl-1.0", "stable-diffusion-xl"),
    title="Stable Diffusion XL",
    diffusers_class="AutoencoderKL",
    config={
        **_KL_F8_BLOCKS,
        "latent_channels": 4,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
        "force_upcast": True,
    },
    config_source="stabilityai/stable-diffusion-xl-base-1.0/vae/config.json",
    latent_channels=4,
    spatial_factor=8,
    normalization=Normalization(
        kind=NormKind.AFFINE,
        scale=0.13025,
        source="stabilityai/stable-diffusion-xl-base-1.0/vae/config.json (scaling_factor); "
        "diffusers/src/diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py "
        "(latents / vae.config.scaling_factor before decode)",
    ),
    tokens=None,  # a UNet: the latent is convolved, never packed into tokens
    size_rule=SizeRule(
        kind=SizeRuleKind.RAISE,
        multiple=8,
        source="diffusers/src/diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py "
        "(check_inputs: height and width have to be divisible by 8)",
    ),
    default_size=(1024, 1024),
    sources={
        "spatial_factor": "2 ** (len(block_out_channels) - 1) — diffusers pipeline vae_scale_factor",
    },
)

FAMILIES: tuple[FamilySpec, ...] = (SDXL,)
