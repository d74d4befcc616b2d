"""Image VAE families. Configs are the released `vae/config.json` of each model (path in config_source).

`diffusers/…` paths below are files of diffusers 0.42.1 (src/diffusers/…); the checks in
tests/test_registry.py build each module on the meta device and compare every constant with it.
"""

from __future__ import annotations

from vaelens.families.spec import (
    FamilySpec,
    Normalization,
    NormKind,
    SizeRule,
    SizeRuleKind,
    TokenPacking,
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
_KL_FACTOR = "2 ** (len(block_out_channels) - 1) — diffusers pipeline vae_scale_factor"

_SD_PIPE = "diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py"
_SDXL_PIPE = "diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py"
_SD3_PIPE = "diffusers/pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py"
_FLUX_PIPE = "diffusers/pipelines/flux/pipeline_flux.py"
_FLUX2_PIPE = "diffusers/pipelines/flux2/pipeline_flux2.py"
_SANA_PIPE = "diffusers/pipelines/sana/pipeline_sana.py"
_QWEN_PIPE = "diffusers/pipelines/qwenimage/pipeline_qwenimage.py"

_SD_RAISE_8 = SizeRule(
    kind=SizeRuleKind.RAISE,
    multiple=8,
    source=f"{_SD_PIPE} (check_inputs: height and width have to be divisible by 8)",
)

SD15 = FamilySpec(
    name="sd15",
    aliases=("sd1.5", "sd-1.5", "sd1", "stable-diffusion-1.5", "stable-diffusion-v1-5"),
    title="Stable Diffusion 1.5",
    diffusers_class="AutoencoderKL",
    # The released file names no scaling_factor: the class default 0.18215 applies.
    config={**_KL_F8_BLOCKS, "latent_channels": 4, "sample_size": 512},
    config_source="stable-diffusion-v1-5/stable-diffusion-v1-5/vae/config.json "
    "(formerly runwayml/stable-diffusion-v1-5)",
    latent_channels=4,
    spatial_factor=8,
    normalization=Normalization(
        kind=NormKind.AFFINE,
        scale=0.18215,
        source="diffusers/models/autoencoders/autoencoder_kl.py (AutoencoderKL default scaling_factor "
        f"0.18215; the released config leaves it unset); {_SD_PIPE} (latents / scaling_factor before decode)",
    ),
    tokens=None,  # a UNet: the latent is convolved, never packed into tokens
    size_rule=_SD_RAISE_8,
    default_size=(512, 512),
    sources={
        "spatial_factor": _KL_FACTOR,
        "default_size": "unet sample_size 64 × vae_scale_factor 8 "
        "(stable-diffusion-v1-5/stable-diffusion-v1-5/unet/config.json)",
    },
)

SD2 = FamilySpec(
    name="sd2",
    aliases=("sd2.1", "sd21", "sd-2.1", "sd2.0", "stable-diffusion-2-1"),
    title="Stable Diffusion 2.1 (768-v)",
    diffusers_class="AutoencoderKL",
    config={**_KL_F8_BLOCKS, "latent_channels": 4, "sample_size": 768},
    config_source="stabilityai/stable-diffusion-2-1/vae/config.json",
    latent_channels=4,
    spatial_factor=8,
    normalization=Normalization(
        kind=NormKind.AFFINE,
        scale=0.18215,
        source="diffusers/models/autoencoders/autoencoder_kl.py (AutoencoderKL default scaling_factor "
        f"0.18215; the released config leaves it unset); {_SD_PIPE}",
    ),
    tokens=None,
    size_rule=_SD_RAISE_8,
    default_size=(768, 768),
    sources={
        "spatial_factor": _KL_FACTOR,
        "default_size": "unet sample_size 96 × 8 (stabilityai/stable-diffusion-2-1/unet/config.json)",
    },
)

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
        f"{_SDXL_PIPE} (latents / vae.config.scaling_factor before decode)",
    ),
    tokens=None,  # a UNet: the latent is convolved, never packed into tokens
    size_rule=SizeRule(
        kind=SizeRuleKind.RAISE,
        multiple=8,
        source=f"{_SDXL_PIPE} (check_inputs: height and width have to be divisible by 8)",
    ),
    default_size=(1024, 1024),
    sources={
        "spatial_factor": _KL_FACTOR,
    },
)

SD3 = FamilySpec(
    name="sd3",
    aliases=("sd35", "sd3.5", "sd-3.5", "sd3-medium", "sd3.5-large", "stable-diffusion-3"),
    title="Stable Diffusion 3 / 3.5",
    diffusers_class="AutoencoderKL",
    config={
        **_KL_F8_BLOCKS,
        "latent_channels": 16,
        "sample_size": 1024,
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": True,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    config_source="stabilityai/stable-diffusion-3-medium-diffusers/vae/config.json "
    "(stabilityai/stable-diffusion-3.5-large/vae/config.json holds the same VAE)",
    latent_channels=16,
    spatial_factor=8,
    normalization=Normalization(
        kind=NormKind.AFFINE,
        scale=1.5305,
        shift=0.0609,
        source="stabilityai/stable-diffusion-3-medium-diffusers/vae/config.json (scaling_factor, "
        f"shift_factor); {_SD3_PIPE} (latents / scaling_factor + shift_factor before decode)",
    ),
    tokens=TokenPacking(
        patch=(2, 2),
        source="stabilityai/stable-diffusion-3-medium-diffusers/transformer/config.json (patch_size 2); "
        "diffusers/models/transformers/transformer_sd3.py (PatchEmbed)",
    ),
    size_rule=SizeRule(
        kind=SizeRuleKind.RAISE,
        multiple=16,
        source=f"{_SD3_PIPE} (check_inputs: divisible by vae_scale_factor * patch_size = 16)",
    ),
    default_size=(1024, 1024),
    sources={
        "spatial_factor": _KL_FACTOR,
        "default_size": f"transformer sample_size 128 × vae_scale_factor 8 ({_SD3_PIPE} default_sample_size)",
    },
)

FLUX1 = FamilySpec(
    name="flux1",
    aliases=("flux", "flux.1", "flux-dev", "flux1-dev", "flux-schnell", "flux1-schnell"),
    title="FLUX.1 [dev] / [schnell]",
    diffusers_class="AutoencoderKL",
    config={
        **_KL_F8_BLOCKS,
        "latent_channels": 16,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": True,
        "mid_block_add_attention": True,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    config_source="black-forest-labs/FLUX.1-dev/vae/config.json (FLUX.1-schnell's is identical)",
    latent_channels=16,
    spatial_factor=8,
    normalization=Normalization(
        kind=NormKind.AFFINE,
        scale=0.3611,
        shift=0.1159,
        source="black-forest-labs/FLUX.1-dev/vae/config.json (scaling_factor, shift_factor); "
        f"{_FLUX_PIPE} (latents / scaling_factor + shift_factor before decode)",
    ),
    tokens=TokenPacking(patch=(2, 2), source=f"{_FLUX_PIPE} (_pack_latents: 2×2 patches → C·4 = 64)"),
    size_rule=SizeRule(
        kind=SizeRuleKind.FLOOR,
        multiple=16,
        source=f"{_FLUX_PIPE} (check_inputs warns; prepare_latents floors to vae_scale_factor * 2 = 16)",
    ),
    default_size=(1024, 1024),
    sources={"spatial_factor": _KL_FACTOR, "default_size": f"default_sample_size 128 × 8 ({_FLUX_PIPE})"},
)

FLUX2 = FamilySpec(
    name="flux2",
    aliases=("flux.2", "flux2-dev", "flux-2", "flux.2-dev"),
    title="FLUX.2 [dev]",
    diffusers_class="AutoencoderKLFlux2",
    config={
        **_KL_F8_BLOCKS,
        "latent_channels": 32,
        "sample_size": 1024,
        "mid_block_add_attention": True,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "batch_norm_eps": 0.0001,
        "batch_norm_momentum": 0.1,
        "patch_size": [2, 2],
    },
    config_source="black-forest-labs/FLUX.2-dev/vae/config.json",
    latent_channels=32,
    spatial_factor=8,
    normalization=Normalization(
        kind=NormKind.BATCHNORM_PATCHED,
        patch=(2, 2),
        eps=0.0001,
        stats_from="bn",
        source="black-forest-labs/FLUX.2-dev/vae/config.json (patch_size, batch_norm_eps); "
        f"{_FLUX2_PIPE} (_patchify_latents, then (x - bn.running_mean) / sqrt(bn.running_var + "
        "batch_norm_eps); the statistics are checkpoint buffers of vae.bn)",
    ),
    # The 2×2 patchify already happened in the normalisation; _pack_latents only flattens: D = 32·4.
    tokens=TokenPacking(patch=(2, 2), source=f"{_FLUX2_PIPE} (_patchify_latents + _pack_latents → D 128)"),
    size_rule=SizeRule(
        kind=SizeRuleKind.FLOOR,
        multiple=16,
        source=f"{_FLUX2_PIPE} (check_inputs warns; prepare_latents floors to vae_scale_factor * 2 = 16)",
    ),
    default_size=(1024, 1024),
    notes="The released config also lists force_upcast: true, which AutoencoderKLFlux2 does not take "
    "(diffusers ignores it); it is left out here.",
    sources={"spatial_factor": _KL_FACTOR, "default_size": f"default_sample_size 128 × 8 ({_FLUX2_PIPE})"},
)

_DCAE_BLOCKS = ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3
SANA = FamilySpec(
    name="sana",
    aliases=("dc-ae", "dcae", "dc-ae-f32c32", "sana-1600m", "sana-1.0"),
    title="Sana (DC-AE f32c32)",
    diffusers_class="AutoencoderDC",
    config={
        "in_channels": 3,
        "latent_channels": 32,
        "attention_head_dim": 32,
        "encoder_block_types": _DCAE_BLOCKS,
        "decoder_block_types": _DCAE_BLOCKS,
        "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
        "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
        "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
        "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
        "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "downsample_block_type": "Conv",
        "upsample_block_type": "interpolate",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "scaling_factor": 0.41407,
    },
    config_source="Efficient-Large-Model/Sana_1600M_1024px_diffusers/vae/config.json "
    "(= mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers; diffusers scripts/convert_dcae_to_diffusers.py)",
    latent_channels=32,
    spatial_factor=32,
    normalization=Normalization(
        kind=NormKind.AFFINE,
        scale=0.41407,
        source="Efficient-Large-Model/Sana_1600M_1024px_diffusers/vae/config.json (scaling_factor); "
        f"{_SANA_PIPE} (vae.decode(latents / scaling_factor))",
    ),
    tokens=TokenPacking(
        patch=(1, 1),
        source="Efficient-Large-Model/Sana_1600M_1024px_diffusers/transformer/config.json (patch_size 1)",
        # diffusers/models/transformers/sana_transformer.py: self-attention uses SanaLinearAttnProcessor2_0
        attention="linear",
    ),
    size_rule=SizeRule(
        kind=SizeRuleKind.RAISE,
        multiple=32,
        source=f"{_SANA_PIPE} (check_inputs: divisible by 32; with use_resolution_binning, the default, "
        "the request is first snapped to an aspect-ratio bin and the image resized back after decode)",
    ),
    default_size=(1024, 1024),
    sources={
        "spatial_factor": f"2 ** (len(encoder_block_out_channels) - 1) — {_SANA_PIPE} vae_scale_factor",
        "default_size": "transformer sample_size 32 × vae_scale_factor 32",
    },
)

_TINY = {
    "in_channels": 3,
    "out_channels": 3,
    "encoder_block_out_channels": [64, 64, 64, 64],
    "decoder_block_out_channels": [64, 64, 64, 64],
    "act_fn": "relu",
    "num_encoder_blocks": [1, 3, 3, 3],
    "num_decoder_blocks": [3, 3, 3, 1],
    "latent_magnitude": 3,
    "latent_shift": 0.5,
    "upsampling_scaling_factor": 2,
    "force_upcast": False,
    "scaling_factor": 1.0,
}
_TINY_NORM = (
    "config.json (scaling_factor 1.0): TAESD latents already live in the scaled space of the VAE it "
    "stands in for, so the pipeline's division by scaling_factor is the identity"
)
_TINY_FACTOR = "three stride-2 convs in the encoder (diffusers/models/autoencoders/vae.py EncoderTiny)"

TAESD = FamilySpec(
    name="taesd",
    aliases=("tae-sd", "taesd15", "tiny-sd"),
    title="TAESD (tiny autoencoder for SD 1.x/2.x)",
    diffusers_class="AutoencoderTiny",
    config={**_TINY, "latent_channels": 4},
    config_source="madebyollin/taesd/config.json",
    latent_channels=4,
    spatial_factor=8,
    normalization=Normalization(kind=NormKind.NONE, source=f"madebyollin/taesd/{_TINY_NORM}"),
    tokens=None,
    size_rule=_SD_RAISE_8,
    default_size=(512, 512),
    notes="Drop-in for the SD VAE inside StableDiffusionPipeline; deterministic latents (no KL).",
    sources={"spatial_factor": _TINY_FACTOR},
)

TAESDXL = FamilySpec(
    name="taesdxl",
    aliases=("tae-sdxl", "tiny-sdxl"),
    title="TAESDXL (tiny autoencoder for SDXL)",
    diffusers_class="AutoencoderTiny",
    config={**_TINY, "latent_channels": 4},
    config_source="madebyollin/taesdxl/config.json",
    latent_channels=4,
    spatial_factor=8,
    normalization=Normalization(kind=NormKind.NONE, source=f"madebyollin/taesdxl/{_TINY_NORM}"),
    tokens=None,
    size_rule=SDXL.size_rule,
    default_size=(1024, 1024),
    notes="Drop-in for the SDXL VAE inside StableDiffusionXLPipeline.",
    sources={"spatial_factor": _TINY_FACTOR},
)

TAEF1 = FamilySpec(
    name="taef1",
    aliases=("tae-flux", "taeflux", "tiny-flux"),
    title="TAEF1 (tiny autoencoder for FLUX.1)",
    diffusers_class="AutoencoderTiny",
    config={**_TINY, "latent_channels": 16, "shift_factor": 0.0},
    config_source="madebyollin/taef1/config.json",
    latent_channels=16,
    spatial_factor=8,
    normalization=Normalization(kind=NormKind.NONE, source=f"madebyollin/taef1/{_TINY_NORM}; shift 0.0"),
    tokens=None,
    size_rule=FLUX1.size_rule,
    default_size=(1024, 1024),
    notes="Drop-in for the FLUX.1 VAE: its latents are FLUX's after (z - 0.1159) × 0.3611.",
    sources={"spatial_factor": _TINY_FACTOR},
)

_WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
_WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)  # fmt: skip
# The Wan 2.1 VAE's architecture and statistics; Qwen-Image's VAE config carries the same values
# (Qwen/Qwen-Image/vae/config.json and Wan-AI/Wan2.1-T2V-14B-Diffusers/vae/config.json).
_WAN21_CONFIG = {
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
        "latents_mean": list(_WAN21_MEAN),
        "latents_std": list(_WAN21_STD),
}

QWEN_IMAGE = FamilySpec(
    name="qwen-image",
    aliases=("qwen", "qwenimage", "qwen_image"),
    title="Qwen-Image",
    diffusers_class="AutoencoderKLQwenImage",
    config=_WAN21_CONFIG,
    config_source="Qwen/Qwen-Image/vae/config.json",
    latent_channels=16,
    spatial_factor=8,
    video_module=True,  # a Wan-2.1-style causal 3-D VAE: pixels go in as [B,3,1,H,W]
    normalization=Normalization(
        kind=NormKind.PER_CHANNEL,
        mean=_WAN21_MEAN,
        std=_WAN21_STD,
        source="Qwen/Qwen-Image/vae/config.json (latents_mean, latents_std); "
        f"{_QWEN_PIPE} (latents / (1 / latents_std) + latents_mean before decode)",
    ),
    tokens=TokenPacking(patch=(2, 2), source=f"{_QWEN_PIPE} (_pack_latents: 2×2 patches → C·4 = 64)"),
    size_rule=SizeRule(
        kind=SizeRuleKind.FLOOR,
        multiple=16,
        source=f"{_QWEN_PIPE} (check_inputs warns; prepare_latents floors to vae_scale_factor * 2 = 16)",
    ),
    default_size=(1024, 1024),
    sources={
        "spatial_factor": f"2 ** len(vae.temperal_downsample) — {_QWEN_PIPE} vae_scale_factor",
        "default_size": f"default_sample_size 128 × 8 ({_QWEN_PIPE})",
    },
)

FAMILIES: tuple[FamilySpec, ...] = (
    SD15,
    SD2,
    SDXL,
    SD3,
    FLUX1,
    FLUX2,
    SANA,
    TAESD,
    TAESDXL,
    TAEF1,
    QWEN_IMAGE,
)
