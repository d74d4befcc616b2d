"""Video VAE families (and their frame rules). Configs are the released `vae/config.json`.

`diffusers/…` paths are files of diffusers 0.42.1 (src/diffusers/…). Every video VAE here is causal in
time: F pixel frames -> (F - 1) // t + 1 latent frames, frame 0 encoded on its own.
"""

from __future__ import annotations

from vaelens.families.image import _WAN21_CONFIG, _WAN21_MEAN, _WAN21_STD
from vaelens.families.spec import (
    FamilySpec,
    FrameRuleKind,
    Normalization,
    NormKind,
    SizeRule,
    SizeRuleKind,
    TemporalRule,
    TokenPacking,
)

_WAN_PIPE = "diffusers/pipelines/wan/pipeline_wan.py"
_COG_PIPE = "diffusers/pipelines/cogvideo/pipeline_cogvideox.py"
_HY_PIPE = "diffusers/pipelines/hunyuan_video/pipeline_hunyuan_video.py"
_LTX_PIPE = "diffusers/pipelines/ltx/pipeline_ltx.py"
_MOCHI_PIPE = "diffusers/pipelines/mochi/pipeline_mochi.py"

_WAN_FRAMES = TemporalRule(
    factor=4,
    rule=FrameRuleKind.FLOOR,
    source=f"{_WAN_PIPE} (__call__: num_frames % 4 != 1 warns and floors to num_frames // 4 * 4 + 1)",
)
_WAN_TOKENS = TokenPacking(
    patch=(1, 2, 2),
    source="Wan-AI/Wan2.1-T2V-14B-Diffusers/transformer/config.json (patch_size [1, 2, 2]); "
    "diffusers/models/transformers/transformer_wan.py (Conv3d patch_embedding)",
)

WAN21 = FamilySpec(
    name="wan21",
    aliases=("wan2.1", "wan-2.1", "wan", "wan2.1-t2v", "wan21-t2v"),
    title="Wan 2.1 (T2V/I2V 1.3B, 14B)",
    diffusers_class="AutoencoderKLWan",
    config=_WAN21_CONFIG,
    config_source="Wan-AI/Wan2.1-T2V-14B-Diffusers/vae/config.json (same file in the 1.3B and I2V repos)",
    latent_channels=16,
    spatial_factor=8,
    temporal=_WAN_FRAMES,
    normalization=Normalization(
        kind=NormKind.PER_CHANNEL,
        mean=_WAN21_MEAN,
        std=_WAN21_STD,
        source="Wan-AI/Wan2.1-T2V-14B-Diffusers/vae/config.json (latents_mean, latents_std); "
        f"{_WAN_PIPE} (latents / (1 / latents_std) + latents_mean before decode)",
    ),
    tokens=_WAN_TOKENS,
    # check_inputs raises first on % 16; the later floor to vae 8 × patch 2 = 16 then never changes a size.
    size_rule=SizeRule(
        kind=SizeRuleKind.RAISE,
        multiple=16,
        source=f"{_WAN_PIPE} (check_inputs: height and width have to be divisible by 16)",
    ),
    default_size=(480, 832),
    default_frames=81,
    sources={
        "spatial_factor": f"vae.config.scale_factor_spatial (class default 8) — {_WAN_PIPE}",
        "temporal.factor": f"vae.config.scale_factor_temporal (class default 4) — {_WAN_PIPE}",
        "default_size": f"{_WAN_PIPE} __call__ defaults height=480, width=832, num_frames=81",
    },
)

_WAN22_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
_WAN22_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

WAN22 = FamilySpec(
    name="wan22",
    aliases=("wan2.2", "wan-2.2", "wan22-ti2v", "wan2.2-ti2v-5b", "wan-ti2v"),
    title="Wan 2.2 TI2V-5B (Wan2.2 VAE)",
    diffusers_class="AutoencoderKLWan",
    config={
        "base_dim": 160,
        "decoder_base_dim": 256,
        "z_dim": 48,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
        "is_residual": True,
        # patch_size 2 inside the VAE: RGB is pixel-unshuffled to 3·2·2 = 12 channels before the encoder.
        "in_channels": 12,
        "out_channels": 12,
        "patch_size": 2,
        "scale_factor_temporal": 4,
        "scale_factor_spatial": 16,
        "latents_mean": list(_WAN22_MEAN),
        "latents_std": list(_WAN22_STD),
    },
    config_source="Wan-AI/Wan2.2-TI2V-5B-Diffusers/vae/config.json",
    latent_channels=48,
    spatial_factor=16,
    temporal=_WAN_FRAMES,
    normalization=Normalization(
        kind=NormKind.PER_CHANNEL,
        mean=_WAN22_MEAN,
        std=_WAN22_STD,
        source="Wan-AI/Wan2.2-TI2V-5B-Diffusers/vae/config.json (latents_mean, latents_std); "
        f"{_WAN_PIPE} (latents / (1 / latents_std) + latents_mean before decode)",
    ),
    tokens=TokenPacking(
        patch=(1, 2, 2),
        source="Wan-AI/Wan2.2-TI2V-5B-Diffusers/transformer/config.json (patch_size [1, 2, 2], "
        "in_channels 48)",
    ),
    size_rule=SizeRule(
        kind=SizeRuleKind.FLOOR,
        multiple=32,
        raise_multiple=16,
        source=f"{_WAN_PIPE} (check_inputs raises unless divisible by 16; __call__ then floors to "
        "scale_factor_spatial 16 × patch 2 = 32 with a warning)",
    ),
    default_size=(704, 1280),
    default_frames=121,
    notes="The released config also holds clip_output: false, an argument AutoencoderKLWan in "
    "diffusers 0.42.1 does not take; it is left out. WanPipeline's own defaults are 832×480, 81 frames.",
    sources={
        "spatial_factor": f"vae.config.scale_factor_spatial — {_WAN_PIPE}",
        "temporal.factor": f"vae.config.scale_factor_temporal — {_WAN_PIPE}",
        "default_size": "Wan-AI/Wan2.2-TI2V-5B-Diffusers model card (height 704, width 1280, "
        "num_frames 121); Wan2.2 wan/configs/wan_ti2v_5B.py (frame_num 121)",
    },
)

_COG_BLOCKS = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["CogVideoXDownBlock3D"] * 4,
    "up_block_types": ["CogVideoXUpBlock3D"] * 4,
    "block_out_channels": [128, 256, 256, 512],
    "latent_channels": 16,
    "layers_per_block": 3,
    "act_fn": "silu",
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "temporal_compression_ratio": 4,
    "sample_height": 480,
    "sample_width": 720,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
_COG_FRAMES = TemporalRule(
    factor=4,
    rule=FrameRuleKind.ANY,
    source=f"{_COG_PIPE} (prepare_latents: (num_frames - 1) // vae_scale_factor_temporal + 1; no check)",
    decode_chunk=2,  # diffusers/models/autoencoders/autoencoder_kl_cogvideox.py num_latent_frames_batch_size
)
_COG_TOKENS = TokenPacking(
    patch=(1, 2, 2),
    source="THUDM/CogVideoX-2b/transformer/config.json (patch_size 2, no patch_size_t); "
    "diffusers/models/embeddings.py (CogVideoXPatchEmbed: per-frame Conv2d)",
)
_COG_SIZE = SizeRule(
    kind=SizeRuleKind.RAISE,
    multiple=8,
    source=f"{_COG_PIPE} (check_inputs: height and width have to be divisible by 8)",
)
_COG_SOURCES = {
    "spatial_factor": f"2 ** (len(block_out_channels) - 1) — {_COG_PIPE} vae_scale_factor_spatial",
    "temporal.factor": f"vae.config.temporal_compression_ratio — {_COG_PIPE}",
    "default_size": "transformer sample_width 90 × 8, sample_height 60 × 8, sample_frames 49 "
    f"(THUDM/CogVideoX-2b/transformer/config.json; {_COG_PIPE})",
}


def _cog_norm(repo: str, scale: float) -> Normalization:
    return Normalization(
        kind=NormKind.AFFINE,
        scale=scale,
        source=f"{repo}/vae/config.json (scaling_factor); {_COG_PIPE} (decode_latents: "
        "1 / vae_scaling_factor_image * latents)",
    )


COGVIDEOX_2B = FamilySpec(
    name="cogvideox-2b",
    aliases=("cogvideox", "cogvideo", "cogvideox2b", "cogvideox-2b-v1"),
    title="CogVideoX-2B",
    diffusers_class="AutoencoderKLCogVideoX",
    config={**_COG_BLOCKS, "scaling_factor": 1.15258426},
    config_source="THUDM/CogVideoX-2b/vae/config.json",
    latent_channels=16,
    spatial_factor=8,
    temporal=_COG_FRAMES,
    normalization=_cog_norm("THUDM/CogVideoX-2b", 1.15258426),
    tokens=_COG_TOKENS,
    size_rule=_COG_SIZE,
    default_size=(480, 720),
    default_frames=49,
    notes="The pipeline keeps latents as [B, F, C, H, W] between steps; shapes here are [B, C, F, H, W].",
    sources=_COG_SOURCES,
)

COGVIDEOX_5B = FamilySpec(
    name="cogvideox-5b",
    aliases=("cogvideox5b", "cogvideo-5b"),
    title="CogVideoX-5B",
    diffusers_class="AutoencoderKLCogVideoX",
    config={**_COG_BLOCKS, "scaling_factor": 0.7},
    config_source="THUDM/CogVideoX-5b/vae/config.json",
    latent_channels=16,
    spatial_factor=8,
    temporal=_COG_FRAMES,
    normalization=_cog_norm("THUDM/CogVideoX-5b", 0.7),
    tokens=_COG_TOKENS,
    size_rule=_COG_SIZE,
    default_size=(480, 720),
    default_frames=49,
    notes="Same VAE weights as 2B; only scaling_factor differs (0.7 vs 1.15258426).",
    sources=_COG_SOURCES,
)

HUNYUANVIDEO = FamilySpec(
    name="hunyuanvideo",
    aliases=("hunyuan", "hunyuan-video", "hunyuanvideo-t2v", "hyvideo"),
    title="HunyuanVideo",
    diffusers_class="AutoencoderKLHunyuanVideo",
    config={
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 16,
        "down_block_types": ["HunyuanVideoDownBlock3D"] * 4,
        "up_block_types": ["HunyuanVideoUpBlock3D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "scaling_factor": 0.476986,
        "spatial_compression_ratio": 8,
        "temporal_compression_ratio": 4,
        "mid_block_add_attention": True,
    },
    config_source="hunyuanvideo-community/HunyuanVideo/vae/config.json",
    latent_channels=16,
    spatial_factor=8,
    temporal=TemporalRule(
        factor=4,
        rule=FrameRuleKind.ANY,
        source=f"{_HY_PIPE} (prepare_latents: (num_frames - 1) // vae_scale_factor_temporal + 1; no check)",
    ),
    normalization=Normalization(
        kind=NormKind.AFFINE,
        scale=0.476986,
        source="hunyuanvideo-community/HunyuanVideo/vae/config.json (scaling_factor); "
        f"{_HY_PIPE} (latents / vae.config.scaling_factor before decode)",
    ),
    tokens=TokenPacking(
        patch=(1, 2, 2),
        source="hunyuanvideo-community/HunyuanVideo/transformer/config.json (patch_size 2, patch_size_t 1)",
    ),
    size_rule=SizeRule(
        kind=SizeRuleKind.RAISE,
        multiple=16,
        source=f"{_HY_PIPE} (check_inputs: height and width have to be divisible by 16)",
    ),
    default_size=(720, 1280),
    default_frames=129,
    sources={
        "spatial_factor": f"vae.spatial_compression_ratio — {_HY_PIPE}",
        "temporal.factor": f"vae.temporal_compression_ratio — {_HY_PIPE}",
        "default_size": f"{_HY_PIPE} __call__ defaults height=720, width=1280, num_frames=129",
    },
)

LTX_VIDEO = FamilySpec(
    name="ltx-video",
    aliases=("ltx", "ltxv", "ltxvideo", "ltx-0.9.0", "ltxv-0.9.0"),
    title="LTX-Video 0.9.0",
    diffusers_class="AutoencoderKLLTXVideo",
    config={
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 128,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": [4, 3, 3, 3, 4],
        "spatio_temporal_scaling": [True, True, True, False],
        "patch_size": 4,
        "patch_size_t": 1,
        "resnet_norm_eps": 1e-06,
        "scaling_factor": 1.0,
        "encoder_causal": True,
        "decoder_causal": False,
    },
    config_source="Lightricks/LTX-Video/vae/config.json (0.9.0; diffusers "
    "scripts/convert_ltx_to_diffusers.py get_vae_config('0.9.0'))",
    latent_channels=128,
    spatial_factor=32,  # patch_size 4 (pixel-unshuffle inside the VAE) × three 2× down blocks
    temporal=TemporalRule(
        factor=8,
        rule=FrameRuleKind.ANY,
        source=f"{_LTX_PIPE} (prepare_latents: (num_frames - 1) // vae_temporal_compression_ratio + 1; "
        "no check)",
    ),
    normalization=Normalization(
        kind=NormKind.PER_CHANNEL,
        scale=1.0,
        stats_from="latents_mean",  # and latents_std: persistent buffers filled from the checkpoint
        source=f"{_LTX_PIPE} (_normalize_latents: (z - latents_mean) * scaling_factor / latents_std, with "
        "vae.latents_mean / vae.latents_std); diffusers/models/autoencoders/autoencoder_kl_ltx.py "
        "(register_buffer latents_mean zeros, latents_std ones: real values come with the weights)",
    ),
    tokens=TokenPacking(
        patch=(1, 1, 1),
        source="Lightricks/LTX-Video/transformer/config.json (patch_size 1, patch_size_t 1); "
        f"{_LTX_PIPE} (_pack_latents)",
    ),
    size_rule=SizeRule(
        kind=SizeRuleKind.RAISE,
        multiple=32,
        source=f"{_LTX_PIPE} (check_inputs: height and width have to be divisible by 32)",
    ),
    default_size=(512, 704),
    default_frames=161,
    sources={
        "spatial_factor": "vae.spatial_compression_ratio = patch_size · 2 ** sum(spatio_temporal_scaling) "
        "(diffusers/models/autoencoders/autoencoder_kl_ltx.py)",
        "temporal.factor": "vae.temporal_compression_ratio = patch_size_t · 2 ** "
        "sum(spatio_temporal_scaling)",
        "default_size": f"{_LTX_PIPE} __call__ defaults height=512, width=704, num_frames=161",
    },
)

_MOCHI_MEAN = (
    -0.06730895953510081, -0.038011381506090416, -0.07477820912866141, -0.05565264470995561,
    0.012767231469026969, -0.04703542746246419, 0.043896967884726704, -0.09346305707025976,
    -0.09918314763016893, -0.008729793427399178, -0.011931556316503654, -0.0321993391887285,
)  # fmt: skip
_MOCHI_STD = (
    0.9263795028493863, 0.9248894543193766, 0.9393059390890617, 0.959253732819592,
    0.8244560132752793, 0.917259975397747, 0.9294154431013696, 1.3720942357788521,
    0.881393668867029, 0.9168315692124348, 0.9185249279345552, 0.9274757570805041,
)  # fmt: skip

MOCHI = FamilySpec(
    name="mochi",
    aliases=("mochi-1", "mochi1", "mochi-1-preview", "genmo-mochi"),
    title="Mochi 1 (preview)",
    diffusers_class="AutoencoderKLMochi",
    config={
        # 15 = RGB + 12 Fourier features the encoder appends to its input
        "in_channels": 15,
        "out_channels": 3,
        "encoder_block_out_channels": [64, 128, 256, 384],
        "decoder_block_out_channels": [128, 256, 512, 768],
        "latent_channels": 12,
        "layers_per_block": [3, 3, 4, 6, 3],
        "act_fn": "silu",
        "temporal_expansions": [1, 2, 3],
        "spatial_expansions": [2, 2, 2],
        "add_attention_block": [False, True, True, True, True],
        "latents_mean": list(_MOCHI_MEAN),
        "latents_std": list(_MOCHI_STD),
        "scaling_factor": 1.0,
    },
    config_source="genmo/mochi-1-preview/vae/config.json",
    latent_channels=12,
    spatial_factor=8,
    temporal=TemporalRule(
        factor=6,
        rule=FrameRuleKind.ANY,
        source=f"{_MOCHI_PIPE} (vae_temporal_scale_factor = 6; prepare_latents (num_frames - 1) // 6 + 1; "
        "no check)",
    ),
    normalization=Normalization(
        kind=NormKind.PER_CHANNEL,
        scale=1.0,
        mean=_MOCHI_MEAN,
        std=_MOCHI_STD,
        source="genmo/mochi-1-preview/vae/config.json (latents_mean, latents_std, scaling_factor); "
        f"{_MOCHI_PIPE} (latents * latents_std / scaling_factor + latents_mean before decode)",
    ),
    tokens=TokenPacking(
        patch=(1, 2, 2),
        source="genmo/mochi-1-preview/transformer/config.json (patch_size 2); "
        f"{_MOCHI_PIPE} (patch_size = 2)",
    ),
    size_rule=SizeRule(
        kind=SizeRuleKind.RAISE,
        multiple=8,
        source=f"{_MOCHI_PIPE} (check_inputs: height and width have to be divisible by 8)",
    ),
    default_size=(480, 848),
    default_frames=19,
    sources={
        "spatial_factor": f"vae_spatial_scale_factor = 8, hard-coded in {_MOCHI_PIPE}",
        "temporal.factor": f"vae_temporal_scale_factor = 6 = prod(temporal_expansions), {_MOCHI_PIPE}",
        "default_size": f"{_MOCHI_PIPE} default_height 480, default_width 848, num_frames=19",
    },
)

FAMILIES: tuple[FamilySpec, ...] = (
    WAN21,
    WAN22,
    COGVIDEOX_2B,
    COGVIDEOX_5B,
    HUNYUANVIDEO,
    LTX_VIDEO,
    MOCHI,
)
