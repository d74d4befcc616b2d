"""The built-in pipelines. Every config is the released `<repo>/<component>/config.json` (path in
`config_source`); every call detail cites the diffusers pipeline file it was read from.

Parameter counts are not here on purpose: they come from building these configs on the meta device
(tests/test_pipelines.py checks them against the published sizes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vaelens.pipelines.spec import (
    ComponentSpec,
    DenoiserKind,
    Guidance,
    Library,
    PipelineSpec,
    Role,
    TextEncoderCall,
)

_P = "diffusers/src/diffusers/pipelines/"  # prefix of the pipeline sources cited below

# ── text encoder architectures (transformers configs) ──────────────────────────────────────────
# openai/clip-vit-large-patch14 text tower, as shipped in text_encoder/config.json of SD 1.5 / SDXL /
# SD3 / FLUX.1 / HunyuanVideo (text_encoder_2).
_CLIP_L: Mapping[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
    "projection_dim": 768, "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
# OpenCLIP ViT-bigG/14 text tower: stabilityai/stable-diffusion-xl-base-1.0/text_encoder_2/config.json
_CLIP_G: Mapping[str, Any] = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "projection_dim": 1280,
    "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
# google/t5-v1_1-xxl encoder: black-forest-labs/FLUX.1-dev/text_encoder_2/config.json (identical in
# SD3 text_encoder_3, LTX-Video, CogVideoX text_encoder)
_T5_XXL: Mapping[str, Any] = {
    "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False,
}
# google/umt5-xxl encoder: Wan-AI/Wan2.1-T2V-14B-Diffusers/text_encoder/config.json
_UMT5_XXL: Mapping[str, Any] = {**_T5_XXL, "vocab_size": 256384, "scalable_attention": True}


def _clip_l(name: str, *, with_projection: bool, call: TextEncoderCall, source: str) -> ComponentSpec:
    return ComponentSpec(
        name=name, title="CLIP ViT-L/14 text", role=Role.TEXT_ENCODER, library=Library.TRANSFORMERS,
        class_name="CLIPTextModelWithProjection" if with_projection else "CLIPTextModel",
        config_class="CLIPTextConfig", config=_CLIP_L, config_source=source, call=call,
    )


def _clip_g(name: str, *, call: TextEncoderCall, source: str) -> ComponentSpec:
    return ComponentSpec(
        name=name, title="OpenCLIP ViT-bigG/14 text", role=Role.TEXT_ENCODER,
        library=Library.TRANSFORMERS, class_name="CLIPTextModelWithProjection",
        config_class="CLIPTextConfig", config=_CLIP_G, config_source=source, call=call,
    )


def _t5(name: str, *, tokens: int, mask: bool, source: str, call_source: str) -> ComponentSpec:
    return ComponentSpec(
        name=name, title="T5-XXL encoder", role=Role.TEXT_ENCODER, library=Library.TRANSFORMERS,
        class_name="T5EncoderModel", config_class="T5Config", config=_T5_XXL, config_source=source,
        call=TextEncoderCall(tokens=tokens, attention_mask=mask, kept_tokens=tokens, kept_dim=4096,
                             source=call_source),
    )


def _denoiser(name: str, title: str, cls: str, config: Mapping[str, Any], source: str) -> ComponentSpec:
    return ComponentSpec(name=name, title=title, role=Role.DENOISER, library=Library.DIFFUSERS,
                         class_name=cls, config=config, config_source=source)


# ── Stable Diffusion 1.5 ───────────────────────────────────────────────────────────────────────
_SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15 = PipelineSpec(
    name="sd15", aliases=("sd1.5", "stable-diffusion-v1-5"), title="Stable Diffusion 1.5",
    pipeline_class="StableDiffusionPipeline", repo=_SD15_REPO,
    text_encoders=(
        _clip_l("text_encoder", with_projection=False, source=f"{_SD15_REPO}/text_encoder/config.json",
                call=TextEncoderCall(tokens=77, kept_tokens=77, kept_dim=768,
                                     source=_P + "stable_diffusion/pipeline_stable_diffusion.py "
                                     "(encode_prompt)")),
    ),
    denoiser=_denoiser("unet", "UNet", "UNet2DConditionModel", {
        "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                         "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32,
        "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }, f"{_SD15_REPO}/unet/config.json"),
    denoiser_kind=DenoiserKind.UNET, vae_family="sd15",
    guidance=Guidance.BATCH,
    guidance_source=_P + "stable_diffusion/pipeline_stable_diffusion.py "
    "(guidance_scale=7.5; torch.cat([latents] * 2))",
    default_size=(512, 512), offload_seq=("text_encoder", "unet", "vae"),
    encodes_negative=True,  # encode_prompt: negative_prompt defaults to "" and is encoded
)

# ── Stable Diffusion XL ────────────────────────────────────────────────────────────────────────
_SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
_SDXL_CALL = _P + "stable_diffusion_xl/pipeline_stable_diffusion_xl.py (encode_prompt: hidden_states[-2])"
SDXL = PipelineSpec(
    name="sdxl", aliases=("sdxl-base", "stable-diffusion-xl"), title="Stable Diffusion XL base 1.0",
    pipeline_class="StableDiffusionXLPipeline", repo=_SDXL_REPO,
    text_encoders=(
        _clip_l("text_encoder", with_projection=False, source=f"{_SDXL_REPO}/text_encoder/config.json",
                call=TextEncoderCall(tokens=77, output_hidden_states=True, kept_tokens=77, kept_dim=768,
                                     source=_SDXL_CALL)),
        _clip_g("text_encoder_2", source=f"{_SDXL_REPO}/text_encoder_2/config.json",
                call=TextEncoderCall(tokens=77, output_hidden_states=True, kept_tokens=77, kept_dim=1280,
                                     pooled_dim=1280, source=_SDXL_CALL)),
    ),
    denoiser=_denoiser("unet", "UNet", "UNet2DConditionModel", {
        "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32,
        "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }, f"{_SDXL_REPO}/unet/config.json"),
    denoiser_kind=DenoiserKind.UNET, vae_family="sdxl",
    guidance=Guidance.BATCH,
    guidance_source=_P + "stable_diffusion_xl/pipeline_stable_diffusion_xl.py "
    "(guidance_scale=5.0; torch.cat([latents] * 2))",
    default_size=(1024, 1024), offload_seq=("text_encoder", "text_encoder_2", "unet", "vae"),
    # force_zeros_for_empty_prompt=True (model_index.json): no negative prompt -> zero embeddings.
    encodes_negative=False, upcasts_fp16_vae=True,  # at fp16 the VAE decodes in fp32 (force_upcast)
)


# ── Stable Diffusion 3 / 3.5 (same three text encoders, MMDiT of different size) ─────────────────
def _sd3_encoders(repo: str) -> tuple[ComponentSpec, ...]:
    call = _P + "stable_diffusion_3/pipeline_stable_diffusion_3.py " \
        "(_get_clip_prompt_embeds: hidden_states[-2])"
    t5_call = _P + "stable_diffusion_3/pipeline_stable_diffusion_3.py (__call__ max_sequence_length=256)"
    return (
        _clip_l("text_encoder", with_projection=True, source=f"{repo}/text_encoder/config.json",
                call=TextEncoderCall(tokens=77, output_hidden_states=True, kept_tokens=77, kept_dim=768,
                                     pooled_dim=768, source=call)),
        _clip_g("text_encoder_2", source=f"{repo}/text_encoder_2/config.json",
                call=TextEncoderCall(tokens=77, output_hidden_states=True, kept_tokens=77, kept_dim=1280,
                                     pooled_dim=1280, source=call)),
        _t5("text_encoder_3", tokens=256, mask=False, source=f"{repo}/text_encoder_3/config.json",
            call_source=t5_call),
    )


_SD3_GUIDANCE = _P + "stable_diffusion_3/pipeline_stable_diffusion_3.py " \
    "(guidance_scale=7.0; torch.cat([latents] * 2))"
_SD3_SEQ = ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae")
_SD3M_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"
SD3_MEDIUM = PipelineSpec(
    name="sd3-medium", aliases=("sd3",), title="Stable Diffusion 3 Medium",
    pipeline_class="StableDiffusion3Pipeline", repo=_SD3M_REPO, text_encoders=_sd3_encoders(_SD3M_REPO),
    denoiser=_denoiser("transformer", "MMDiT", "SD3Transformer2DModel", {
        "attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16,
        "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24, "out_channels": 16,
        "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "sample_size": 128,
    }, f"{_SD3M_REPO}/transformer/config.json"),
    denoiser_kind=DenoiserKind.SD3, vae_family="sd3", guidance=Guidance.BATCH, guidance_source=_SD3_GUIDANCE,
    default_size=(1024, 1024), offload_seq=_SD3_SEQ, encodes_negative=True,
)
_SD35L_REPO = "stabilityai/stable-diffusion-3.5-large"
SD35_LARGE = PipelineSpec(
    name="sd35-large", aliases=("sd3.5-large", "sd35"), title="Stable Diffusion 3.5 Large",
    pipeline_class="StableDiffusion3Pipeline", repo=_SD35L_REPO, text_encoders=_sd3_encoders(_SD35L_REPO),
    denoiser=_denoiser("transformer", "MMDiT", "SD3Transformer2DModel", {
        "attention_head_dim": 64, "caption_projection_dim": 2432, "in_channels": 16,
        "joint_attention_dim": 4096, "num_attention_heads": 38, "num_layers": 38, "out_channels": 16,
        "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "qk_norm": "rms_norm",
        "sample_size": 128,
    }, f"{_SD35L_REPO}/transformer/config.json"),
    denoiser_kind=DenoiserKind.SD3, vae_family="sd3", guidance=Guidance.BATCH, guidance_source=_SD3_GUIDANCE,
    default_size=(1024, 1024), offload_seq=_SD3_SEQ, encodes_negative=True,
)


# ── FLUX.1 [dev] / [schnell] ───────────────────────────────────────────────────────────────────
def _flux(
    name: str, repo: str, *, guidance_embeds: bool, title: str, aliases: tuple[str, ...],
) -> PipelineSpec:
    call = _P + "flux/pipeline_flux.py (_get_clip_prompt_embeds: pooler_output)"
    return PipelineSpec(
        name=name, aliases=aliases, title=title, pipeline_class="FluxPipeline", repo=repo,
        text_encoders=(
            _clip_l("text_encoder", with_projection=False, source=f"{repo}/text_encoder/config.json",
                    call=TextEncoderCall(tokens=77, kept_tokens=0, kept_dim=768, pooled_dim=768,
                                         source=call)),
            _t5("text_encoder_2", tokens=512, mask=False, source=f"{repo}/text_encoder_2/config.json",
                call_source=_P + "flux/pipeline_flux.py (__call__ max_sequence_length=512)"),
        ),
        denoiser=_denoiser("transformer", "MMDiT (FLUX)", "FluxTransformer2DModel", {
            "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": guidance_embeds,
            "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768,
        }, f"{repo}/transformer/config.json"),
        denoiser_kind=DenoiserKind.FLUX, vae_family="flux1", guidance=Guidance.NONE,
        guidance_source=_P + "flux/pipeline_flux.py (true_cfg_scale=1.0: one transformer call per step; "
        "FLUX.1-dev embeds guidance_scale instead)",
        default_size=(1024, 1024), offload_seq=("text_encoder", "text_encoder_2", "transformer", "vae"),
    )


FLUX1_DEV = _flux("flux1-dev", "black-forest-labs/FLUX.1-dev", guidance_embeds=True,
                  title="FLUX.1 [dev]", aliases=("flux-dev", "flux1"))
FLUX1_SCHNELL = _flux("flux1-schnell", "black-forest-labs/FLUX.1-schnell", guidance_embeds=False,
                      title="FLUX.1 [schnell]", aliases=("flux-schnell",))

# ── Qwen-Image ─────────────────────────────────────────────────────────────────────────────────
_QWEN_REPO = "Qwen/Qwen-Image"
QWEN_IMAGE = PipelineSpec(
    name="qwen-image", title="Qwen-Image", pipeline_class="QwenImagePipeline", repo=_QWEN_REPO,
    text_encoders=(ComponentSpec(
        name="text_encoder", title="Qwen2.5-VL-7B", role=Role.TEXT_ENCODER, library=Library.TRANSFORMERS,
        class_name="Qwen2_5_VLForConditionalGeneration", config_class="Qwen2_5_VLConfig",
        config={
            "text_config": {
                "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": [16, 24, 24]},
                "hidden_act": "silu", "tie_word_embeddings": False,
            },
            "vision_config": {
                "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                "hidden_act": "silu", "in_channels": 3,
            },
            "tie_word_embeddings": False,
        },
        config_source=f"{_QWEN_REPO}/text_encoder/config.json",
        # tokenizer max_length = tokenizer_max_length (1024) + prompt_template_encode_start_idx (34);
        # the 34 template tokens are dropped and the rest cut to max_sequence_length=512.
        call=TextEncoderCall(tokens=1024 + 34, attention_mask=True, output_hidden_states=True,
                             kept_tokens=512, kept_dim=3584,
                             source=_P + "qwenimage/pipeline_qwenimage.py (_get_qwen_prompt_embeds)"),
    ),),
    denoiser=_denoiser("transformer", "MMDiT (Qwen-Image)", "QwenImageTransformer2DModel", {
        "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": False,
        "in_channels": 64, "joint_attention_dim": 3584, "num_attention_heads": 24, "num_layers": 60,
        "out_channels": 16, "patch_size": 2,
    }, f"{_QWEN_REPO}/transformer/config.json"),
    denoiser_kind=DenoiserKind.QWEN, vae_family="qwen-image", guidance=Guidance.SEQUENTIAL,
    guidance_source=_P + "qwenimage/pipeline_qwenimage.py (true_cfg_scale=4.0 with a negative prompt, as "
    "the model card runs it: a second transformer call per step)",
    default_size=(1024, 1024), offload_seq=("text_encoder", "transformer", "vae"), encodes_negative=True,
    warnings=("without a negative prompt the pipeline makes one transformer call per step",),
)

# ── Sana 1600M 1024px ──────────────────────────────────────────────────────────────────────────
_SANA_REPO = "Efficient-Large-Model/Sana_1600M_1024px_diffusers"
SANA = PipelineSpec(
    name="sana", aliases=("sana-1600m",), title="Sana 1600M 1024px", pipeline_class="SanaPipeline",
    repo=_SANA_REPO,
    text_encoders=(ComponentSpec(
        name="text_encoder", title="Gemma-2-2B", role=Role.TEXT_ENCODER, library=Library.TRANSFORMERS,
        class_name="Gemma2Model", config_class="Gemma2Config",
        config={
            "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
            "max_position_embeddings": 8192, "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
            "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        },
        config_source=f"{_SANA_REPO}/text_encoder/config.json",
        call=TextEncoderCall(tokens=300, attention_mask=True, kept_tokens=300, kept_dim=2304,
                             source=_P + "sana/pipeline_sana.py "
                             "(_get_gemma_prompt_embeds, max_sequence_length=300)"),
    ),),
    denoiser=_denoiser("transformer", "Linear DiT (Sana)", "SanaTransformer2DModel", {
        "attention_bias": False, "attention_head_dim": 32, "caption_channels": 2304,
        "cross_attention_dim": 2240, "cross_attention_head_dim": 112, "dropout": 0.0, "in_channels": 32,
        "mlp_ratio": 2.5, "norm_elementwise_affine": False, "norm_eps": 1e-6, "num_attention_heads": 70,
        "num_cross_attention_heads": 20, "num_layers": 20, "out_channels": 32, "patch_size": 1,
        "sample_size": 32,
    }, f"{_SANA_REPO}/transformer/config.json"),
    denoiser_kind=DenoiserKind.SANA, vae_family="sana", guidance=Guidance.BATCH,
    guidance_source=_P + "sana/pipeline_sana.py (guidance_scale=4.5; torch.cat([latents] * 2))",
    default_size=(1024, 1024), offload_seq=("text_encoder", "transformer", "vae"), encodes_negative=True,
    warnings=("the complex-human-instruction prefix adds tokens to the Gemma input that only its tokenizer "
              "can count; the text stage is traced at the 300 prompt tokens alone",),
)


# ── Wan 2.1 text-to-video ──────────────────────────────────────────────────────────────────────
def _wan(name: str, repo: str, *, heads: int, layers: int, ffn: int, title: str) -> PipelineSpec:
    return PipelineSpec(
        name=name, title=title, pipeline_class="WanPipeline", repo=repo,
        text_encoders=(ComponentSpec(
            name="text_encoder", title="UMT5-XXL encoder", role=Role.TEXT_ENCODER,
            library=Library.TRANSFORMERS, class_name="UMT5EncoderModel", config_class="UMT5Config",
            config=_UMT5_XXL, config_source=f"{repo}/text_encoder/config.json",
            call=TextEncoderCall(tokens=512, attention_mask=True, kept_tokens=512, kept_dim=4096,
                                 source=_P + "wan/pipeline_wan.py (__call__ max_sequence_length=512)"),
        ),),
        denoiser=_denoiser("transformer", "DiT (Wan)", "WanTransformer3DModel", {
            "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-6,
            "ffn_dim": ffn, "freq_dim": 256, "image_dim": None, "in_channels": 16,
            "num_attention_heads": heads, "num_layers": layers, "out_channels": 16, "patch_size": [1, 2, 2],
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096,
        }, f"{repo}/transformer/config.json"),
        denoiser_kind=DenoiserKind.WAN, vae_family="wan21", guidance=Guidance.SEQUENTIAL,
        guidance_source=_P + "wan/pipeline_wan.py (guidance_scale=5.0: cond call, then uncond call)",
        default_size=(480, 832), default_frames=81, offload_seq=("text_encoder", "transformer", "vae"),
        encodes_negative=True,
    )


WAN21_T2V_1_3B = _wan("wan21-t2v-1.3b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", heads=12, layers=30, ffn=8960,
                      title="Wan 2.1 T2V 1.3B")
WAN21_T2V_14B = _wan("wan21-t2v-14b", "Wan-AI/Wan2.1-T2V-14B-Diffusers", heads=40, layers=40, ffn=13824,
                     title="Wan 2.1 T2V 14B")

# ── LTX-Video 0.9 ──────────────────────────────────────────────────────────────────────────────
_LTX_REPO = "Lightricks/LTX-Video"
LTX_VIDEO = PipelineSpec(
    name="ltx-video", aliases=("ltx",), title="LTX-Video 0.9", pipeline_class="LTXPipeline", repo=_LTX_REPO,
    text_encoders=(_t5("text_encoder", tokens=128, mask=True, source=f"{_LTX_REPO}/text_encoder/config.json",
                       call_source=_P + "ltx/pipeline_ltx.py (__call__ max_sequence_length=128)"),),
    denoiser=_denoiser("transformer", "DiT (LTX)", "LTXVideoTransformer3DModel", {
        "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 64,
        "attention_out_bias": True, "caption_channels": 4096, "cross_attention_dim": 2048,
        "in_channels": 128, "norm_elementwise_affine": False, "norm_eps": 1e-6, "num_attention_heads": 32,
        "num_layers": 28, "out_channels": 128, "patch_size": 1, "patch_size_t": 1,
        "qk_norm": "rms_norm_across_heads",
    }, f"{_LTX_REPO}/transformer/config.json"),
    denoiser_kind=DenoiserKind.LTX, vae_family="ltx-video", guidance=Guidance.BATCH,
    guidance_source=_P + "ltx/pipeline_ltx.py (guidance_scale=3; torch.cat([latents] * 2))",
    default_size=(512, 704), default_frames=161, offload_seq=("text_encoder", "transformer", "vae"),
    encodes_negative=True,
)

# ── CogVideoX-5b ───────────────────────────────────────────────────────────────────────────────
_COG_REPO = "THUDM/CogVideoX-5b"
COGVIDEOX_5B = PipelineSpec(
    name="cogvideox-5b", aliases=("cogvideox",), title="CogVideoX-5b", pipeline_class="CogVideoXPipeline",
    repo=_COG_REPO,
    text_encoders=(_t5("text_encoder", tokens=226, mask=False, source=f"{_COG_REPO}/text_encoder/config.json",
                       call_source=_P + "cogvideo/pipeline_cogvideox.py "
                       "(__call__ max_sequence_length=226)"),),
    denoiser=_denoiser("transformer", "Expert DiT (CogVideoX)", "CogVideoXTransformer3DModel", {
        "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 64,
        "dropout": 0.0, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 16,
        "max_text_seq_length": 226, "norm_elementwise_affine": True, "norm_eps": 1e-5,
        "num_attention_heads": 48, "num_layers": 42, "out_channels": 16, "patch_size": 2,
        "sample_frames": 49, "sample_height": 60, "sample_width": 90, "spatial_interpolation_scale": 1.875,
        "temporal_compression_ratio": 4, "temporal_interpolation_scale": 1.0, "text_embed_dim": 4096,
        "time_embed_dim": 512, "timestep_activation_fn": "silu", "use_learned_positional_embeddings": False,
        "use_rotary_positional_embeddings": True,
    }, f"{_COG_REPO}/transformer/config.json"),
    denoiser_kind=DenoiserKind.COGVIDEOX, vae_family="cogvideox-5b", guidance=Guidance.BATCH,
    guidance_source=_P + "cogvideo/pipeline_cogvideox.py (guidance_scale=6; torch.cat([latents] * 2))",
    default_size=(480, 720), default_frames=49, offload_seq=("text_encoder", "transformer", "vae"),
    encodes_negative=True,
)

# ── HunyuanVideo ───────────────────────────────────────────────────────────────────────────────
_HY_REPO = "hunyuanvideo-community/HunyuanVideo"
_HY_CALL = _P + "hunyuan_video/pipeline_hunyuan_video.py"
HUNYUANVIDEO = PipelineSpec(
    name="hunyuanvideo", aliases=("hunyuan-video",), title="HunyuanVideo",
    pipeline_class="HunyuanVideoPipeline",
    repo=_HY_REPO,
    text_encoders=(
        ComponentSpec(
            name="text_encoder", title="LLaVA-Llama-3-8B (text)", role=Role.TEXT_ENCODER,
            library=Library.TRANSFORMERS, class_name="LlamaModel", config_class="LlamaConfig",
            config={
                "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128320,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
                "tie_word_embeddings": False,
            },
            config_source=f"{_HY_REPO}/text_encoder/config.json",
            # max_sequence_length=256 plus the prompt template's crop_start=95 tokens, cropped after.
            call=TextEncoderCall(tokens=256 + 95, attention_mask=True, output_hidden_states=True,
                                 kept_tokens=256, kept_dim=4096,
                                 source=f"{_HY_CALL} (_get_llama_prompt_embeds)"),
        ),
        _clip_l("text_encoder_2", with_projection=False, source=f"{_HY_REPO}/text_encoder_2/config.json",
                call=TextEncoderCall(tokens=77, kept_tokens=0, kept_dim=768, pooled_dim=768,
                                     source=f"{_HY_CALL} (_get_clip_prompt_embeds: pooler_output)")),
    ),
    denoiser=_denoiser("transformer", "MMDiT (HunyuanVideo)", "HunyuanVideoTransformer3DModel", {
        "attention_head_dim": 128, "guidance_embeds": True, "in_channels": 16, "mlp_ratio": 4.0,
        "num_attention_heads": 24, "num_layers": 20, "num_refiner_layers": 2, "num_single_layers": 40,
        "out_channels": 16, "patch_size": 2, "patch_size_t": 1, "pooled_projection_dim": 768,
        "qk_norm": "rms_norm", "rope_axes_dim": [16, 56, 56], "rope_theta": 256.0, "text_embed_dim": 4096,
    }, f"{_HY_REPO}/transformer/config.json"),
    denoiser_kind=DenoiserKind.HUNYUAN, vae_family="hunyuanvideo", guidance=Guidance.NONE,
    guidance_source=f"{_HY_CALL} (true_cfg_scale=1.0: one call per step; guidance is embedded)",
    default_size=(720, 1280), default_frames=129,
    offload_seq=("text_encoder", "text_encoder_2", "transformer", "vae"),
)

PIPELINES: tuple[PipelineSpec, ...] = (
    SD15, SDXL, SD3_MEDIUM, SD35_LARGE, FLUX1_DEV, FLUX1_SCHNELL, QWEN_IMAGE, SANA,
    WAN21_T2V_1_3B, WAN21_T2V_14B, LTX_VIDEO, COGVIDEOX_5B, HUNYUANVIDEO,
)
