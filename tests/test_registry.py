"""The registry's claims against the real diffusers modules (meta device: no memory, no weights).

Each family's module is built from its spec, run through encode and decode on meta tensors, and its
config is compared with every constant of the spec. Pipeline formulas for the scale factors mirror
the cited files of diffusers 0.42.1 (src/diffusers/pipelines/…).
"""

from __future__ import annotations

import inspect
import math
from functools import cache

import pytest
import torch

from vaelens.build import build_module, run_decode, run_encode
from vaelens.families import FAMILIES, NormKind, get_family
from vaelens.families.spec import FamilySpec

EXPECTED_NAMES = [
    "sd15", "sd2", "sdxl", "sd3", "flux1", "flux2", "sana", "taesd", "taesdxl", "taef1", "qwen-image",
    "wan21", "wan22", "cogvideox-2b", "cogvideox-5b", "hunyuanvideo", "ltx-video", "mochi",
]  # fmt: skip
IDS = [s.name for s in FAMILIES]


@cache
def _module(name: str):
    return build_module(get_family(name))


def _kl_f(m) -> int:  # pipelines/{stable_diffusion,stable_diffusion_xl,stable_diffusion_3,flux,flux2}/…
    return 2 ** (len(m.config.block_out_channels) - 1)


# vae_scale_factor (spatial) exactly as each family's pipeline computes it from the VAE.
PIPELINE_SPATIAL = {
    "sd15": _kl_f, "sd2": _kl_f, "sdxl": _kl_f, "sd3": _kl_f, "flux1": _kl_f, "flux2": _kl_f,
    "taesd": _kl_f, "taesdxl": _kl_f, "taef1": _kl_f,  # AutoencoderTiny registers block_out_channels too
    "sana": lambda m: 2 ** (len(m.config.encoder_block_out_channels) - 1),  # sana/pipeline_sana.py
    "qwen-image": lambda m: 2 ** len(m.temperal_downsample),  # qwenimage/pipeline_qwenimage.py
    "wan21": lambda m: m.config.scale_factor_spatial,  # wan/pipeline_wan.py
    "wan22": lambda m: m.config.scale_factor_spatial,
    "cogvideox-2b": _kl_f, "cogvideox-5b": _kl_f,  # cogvideo/pipeline_cogvideox.py
    "hunyuanvideo": lambda m: m.spatial_compression_ratio,  # hunyuan_video/pipeline_hunyuan_video.py
    "ltx-video": lambda m: m.spatial_compression_ratio,  # ltx/pipeline_ltx.py
    "mochi": lambda m: 8,  # mochi/pipeline_mochi.py hard-codes vae_spatial_scale_factor = 8
}  # fmt: skip
PIPELINE_TEMPORAL = {
    "wan21": lambda m: m.config.scale_factor_temporal,
    "wan22": lambda m: m.config.scale_factor_temporal,
    "cogvideox-2b": lambda m: m.config.temporal_compression_ratio,
    "cogvideox-5b": lambda m: m.config.temporal_compression_ratio,
    "hunyuanvideo": lambda m: m.temporal_compression_ratio,
    "ltx-video": lambda m: m.temporal_compression_ratio,
    "mochi": lambda m: 6,  # mochi/pipeline_mochi.py hard-codes vae_temporal_scale_factor = 6
}


def test_registry_holds_every_family_once():
    assert [s.name for s in FAMILIES] == EXPECTED_NAMES
    seen: dict[str, str] = {}
    for spec in FAMILIES:
        for key in (spec.name, *spec.aliases):
            assert key == key.lower().strip(), f"{spec.name}: alias {key!r} must be lower-case"
            assert key not in seen, f"{key!r} names both {seen[key]} and {spec.name}"
            seen[key] = spec.name
            assert get_family(key) is spec
            assert get_family(key.upper()) is spec


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_every_constant_has_a_source(spec: FamilySpec):
    assert spec.config_source and spec.normalization.source and spec.size_rule.source
    if spec.tokens is not None:
        assert spec.tokens.source
    if spec.temporal is not None:
        assert spec.temporal.source and spec.default_frames
        assert (spec.default_frames - 1) % spec.temporal.factor == 0
    h, w = spec.default_size
    assert w % spec.size_rule.multiple == 0 and h % spec.size_rule.multiple == 0


def _frame_counts(spec: FamilySpec) -> list[int | None]:
    if spec.temporal is None:
        return [None]
    t = spec.temporal.factor
    return [2 * t + 1, 4 * t + 1]  # t·k + 1 with an odd number of latent frames (3, 5)


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_meta_encode_decode_shapes_follow_the_spec(spec: FamilySpec):
    module = _module(spec.name)
    f, c, b = spec.spatial_factor, spec.latent_channels, 2
    height, width = 2 * f, 3 * f  # not square: a swapped H/W would show
    for frames in _frame_counts(spec):
        if frames is None:
            pixels_shape = (b, 3, 1, height, width) if spec.video_module else (b, 3, height, width)
            expected = (b, c, 1, 2, 3) if spec.video_module else (b, c, 2, 3)
        else:
            t = spec.temporal.factor  # type: ignore[union-attr]
            pixels_shape = (b, 3, frames, height, width)
            expected = (b, c, (frames - 1) // t + 1, 2, 3)
        pixels = torch.empty(pixels_shape, device="meta")
        with torch.inference_mode():
            latent = run_encode(module, pixels)
            assert tuple(latent.shape) == expected, f"{spec.name} frames={frames}"
            decoded = run_decode(module, latent)
        assert tuple(decoded.shape) == pixels_shape, f"{spec.name} frames={frames}"


@pytest.mark.parametrize("spec", [s for s in FAMILIES if s.is_video], ids=lambda s: s.name)
def test_meta_frames_off_the_rule_and_even_latent_counts(spec: FamilySpec):
    """F = 2t + 2 (off t·k + 1) encodes to (F - 1) // t + 1 latent frames and decodes to (F' - 1)·t + 1:
    the extra frame is dropped. F = 3t + 1 gives an even F' = 4, which CogVideoX decodes differently."""
    module = _module(spec.name)
    t, f = spec.temporal.factor, spec.spatial_factor  # type: ignore[union-attr]
    for frames in (2 * t + 2, 3 * t + 1):
        pixels = torch.empty((1, 3, frames, 2 * f, 3 * f), device="meta")
        with torch.inference_mode():
            latent = run_encode(module, pixels)
            decoded = run_decode(module, latent).shape[2]
        n = (frames - 1) // t + 1
        assert latent.shape[2] == n
        if spec.diffusers_class == "AutoencoderKLCogVideoX" and n % 2 == 0:
            # autoencoder_kl_cogvideox.py decodes 2 latent frames per chunk (num_latent_frames_batch_size)
            # and its time upsampler doubles even chunks: 4 latent frames -> 2 chunks × 2t pixel frames.
            assert decoded == n * t
        else:
            assert decoded == (n - 1) * t + 1


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_spec_config_is_what_the_module_holds(spec: FamilySpec):
    """Every config key is an argument the class takes (none silently dropped) and keeps its value."""
    module = _module(spec.name)
    assert type(module).__name__ == spec.diffusers_class
    cfg = dict(module.config)
    for key, value in spec.config.items():
        assert key in cfg, f"{spec.name}: {key!r} is not an argument of {spec.diffusers_class}"
        got = cfg[key]
        if isinstance(value, (list, tuple)):
            assert _nested_list(got) == _nested_list(value), f"{spec.name}: {key}"
        else:
            assert got == value, f"{spec.name}: {key}"


def _nested_list(v):
    return [_nested_list(x) for x in v] if isinstance(v, (list, tuple)) else v


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_latent_channels_and_factors_match_module_and_pipeline(spec: FamilySpec):
    module = _module(spec.name)
    cfg = module.config
    assert cfg.get("latent_channels", cfg.get("z_dim")) == spec.latent_channels
    assert PIPELINE_SPATIAL[spec.name](module) == spec.spatial_factor
    ratio = getattr(module, "spatial_compression_ratio", None)
    if ratio is not None:  # the module's own claim, where diffusers records one
        assert ratio == spec.spatial_factor
    if spec.temporal is None:
        assert spec.name not in PIPELINE_TEMPORAL
    else:
        assert PIPELINE_TEMPORAL[spec.name](module) == spec.temporal.factor


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_normalization_constants_match_module(spec: FamilySpec):
    module, norm, cfg = _module(spec.name), spec.normalization, _module(spec.name).config
    if norm.kind is NormKind.NONE:
        assert cfg.scaling_factor == 1.0 and not cfg.get("shift_factor")
    elif norm.kind is NormKind.AFFINE:
        assert cfg.scaling_factor == norm.scale
        assert (cfg.get("shift_factor") or 0.0) == norm.shift
        assert not cfg.get("latents_mean") and not cfg.get("latents_std")
    elif norm.kind is NormKind.PER_CHANNEL:
        assert cfg.get("scaling_factor", 1.0) == norm.scale
        if norm.mean is not None:
            assert tuple(cfg.latents_mean) == norm.mean and tuple(cfg.latents_std) == norm.std
            assert len(norm.mean) == len(norm.std) == spec.latent_channels
        else:  # statistics are checkpoint buffers (LTX): check they exist, per channel
            assert norm.stats_from == "latents_mean"
            buffers = dict(module.named_buffers())
            assert buffers["latents_mean"].shape == buffers["latents_std"].shape == (spec.latent_channels,)
    elif norm.kind is NormKind.BATCHNORM_PATCHED:
        bn = getattr(module, norm.stats_from)
        assert isinstance(bn, torch.nn.BatchNorm2d) and not bn.affine
        assert bn.num_features == spec.latent_channels * math.prod(norm.patch)
        assert bn.eps == cfg.batch_norm_eps == norm.eps
        assert tuple(cfg.patch_size) == norm.patch
    else:  # pragma: no cover
        pytest.fail(f"unknown kind {norm.kind}")


def test_tokens_match_the_pipelines_own_packing():
    """FLUX.1, Qwen-Image, FLUX.2 and LTX pack in the pipeline: run their static packers."""
    from diffusers import Flux2Pipeline, FluxPipeline, LTXPipeline, QwenImagePipeline

    def packed(spec: FamilySpec, dims: tuple[int, ...]) -> tuple[int, int]:
        n = math.prod(d // p for d, p in zip(dims, spec.tokens.patch, strict=True))  # type: ignore[union-attr]
        return n, spec.latent_channels * math.prod(spec.tokens.patch)  # type: ignore[union-attr]

    z = torch.empty(2, 16, 6, 4, device="meta")
    assert FluxPipeline._pack_latents(z, 2, 16, 6, 4).shape[1:] == packed(get_family("flux1"), (6, 4))
    z5 = torch.empty(2, 1, 16, 6, 4, device="meta")  # QwenImage prepare_latents shape [B, 1, C, H, W]
    qwen = QwenImagePipeline._pack_latents(z5, 2, 16, 6, 4).shape[1:]
    assert qwen == packed(get_family("qwen-image"), (6, 4))
    z32 = torch.empty(2, 32, 6, 4, device="meta")
    flux2 = Flux2Pipeline._pack_latents(Flux2Pipeline._patchify_latents(z32)).shape[1:]
    assert flux2 == packed(get_family("flux2"), (6, 4))
    ltx = get_family("ltx-video")
    p_t, p, _ = ltx.tokens.patch  # type: ignore[union-attr]
    z128 = torch.empty(2, 128, 3, 4, 6, device="meta")
    assert LTXPipeline._pack_latents(z128, p, p_t).shape[1:] == packed(ltx, (3, 4, 6))


def _thw(a) -> tuple[int, int, int]:
    return (a["patch_size_t"] or 1, a["patch_size"], a["patch_size"])


# Families whose transformer patchifies inside: the spec's patch against the class' own default.
TRANSFORMER_PATCH = {
    "sd3": ("SD3Transformer2DModel", lambda a: (a["patch_size"],) * 2),
    "sana": ("SanaTransformer2DModel", lambda a: (a["patch_size"],) * 2),
    "wan21": ("WanTransformer3DModel", lambda a: tuple(a["patch_size"])),
    "wan22": ("WanTransformer3DModel", lambda a: tuple(a["patch_size"])),
    "cogvideox-2b": ("CogVideoXTransformer3DModel", _thw),
    "cogvideox-5b": ("CogVideoXTransformer3DModel", _thw),
    "hunyuanvideo": ("HunyuanVideoTransformer3DModel", _thw),
    "mochi": ("MochiTransformer3DModel", lambda a: (1, a["patch_size"], a["patch_size"])),
    "flux1": ("FluxTransformer2DModel", lambda a: a["in_channels"]),  # packed width D
    "flux2": ("Flux2Transformer2DModel", lambda a: a["in_channels"]),
    "qwen-image": ("QwenImageTransformer2DModel", lambda a: a["in_channels"]),
    "ltx-video": ("LTXVideoTransformer3DModel", _thw),
}  # fmt: skip


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_token_patch_matches_the_transformer(spec: FamilySpec):
    import diffusers

    if spec.tokens is None:
        assert spec.name not in TRANSFORMER_PATCH
        return
    cls_name, read = TRANSFORMER_PATCH[spec.name]
    sig = inspect.signature(getattr(diffusers, cls_name).__init__)
    defaults = {k: p.default for k, p in sig.parameters.items()}
    got = read(defaults)
    if isinstance(got, int):  # the transformer takes pre-packed tokens of width D
        assert got == spec.latent_channels * math.prod(spec.tokens.patch)
    else:
        assert got == spec.tokens.patch


# The pipeline class whose check_inputs / prepare_latents each family's size rule is taken from.
PIPELINE_CLASS = {
    "sd15": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "taesd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline", "taesdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline", "flux1": "FluxPipeline", "taef1": "FluxPipeline",
    "flux2": "Flux2Pipeline", "sana": "SanaPipeline", "qwen-image": "QwenImagePipeline",
    "wan21": "WanPipeline", "wan22": "WanPipeline", "cogvideox-2b": "CogVideoXPipeline",
    "cogvideox-5b": "CogVideoXPipeline", "hunyuanvideo": "HunyuanVideoPipeline",
    "ltx-video": "LTXPipeline", "mochi": "MochiPipeline",
}  # fmt: skip


def _pipeline_stub(cls, spec: FamilySpec):
    """An object standing in for `self` of a pipeline: the scale factor its __init__ would set, and
    the class' own static helpers (_pack_latents, …). No weights, no components."""
    from types import SimpleNamespace

    stub = SimpleNamespace(
        vae_scale_factor=spec.spatial_factor,
        patch_size=2,  # StableDiffusion3Pipeline reads transformer.config.patch_size (2) into this
        _callback_tensor_inputs=["latents"],
        config=SimpleNamespace(boundary_ratio=None),  # WanPipeline's check_inputs reads it
    )
    for name, attr in vars(cls).items():
        if isinstance(attr, staticmethod):
            setattr(stub, name, attr.__func__)
    return stub


def _check_inputs(spec: FamilySpec, height: int, width: int) -> None:
    import diffusers

    cls = getattr(diffusers, PIPELINE_CLASS[spec.name])
    kwargs = {}
    for name, param in inspect.signature(cls.check_inputs).parameters.items():
        if name == "self":
            continue
        if name in ("height", "width"):
            kwargs[name] = height if name == "height" else width
        elif name == "prompt":
            kwargs[name] = "a photo of a cat"
        elif param.default is inspect.Parameter.empty:
            kwargs[name] = None
    cls.check_inputs(_pipeline_stub(cls, spec), **kwargs)


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_size_rule_is_what_check_inputs_does(spec: FamilySpec):
    rule = spec.size_rule
    m = rule.multiple
    _check_inputs(spec, 4 * m, 6 * m)  # on the grid: accepted
    coarse = rule.raise_multiple or (m if rule.kind.value == "raise" else None)
    if coarse is not None:  # off the raise grid: check_inputs refuses
        with pytest.raises(ValueError, match=f"divisible by {coarse}"):
            _check_inputs(spec, 4 * m + coarse // 2, 6 * m)
    if rule.kind.value == "floor":  # off the floor grid (on the raise grid, if any): accepted
        _check_inputs(spec, 4 * m + (rule.raise_multiple or 1), 6 * m)


@pytest.mark.parametrize("name", ["flux1", "flux2", "qwen-image"])
def test_floor_rule_is_what_prepare_latents_does(name: str):
    """FLOOR families: the pipeline's own prepare_latents at an off-grid size packs exactly the tokens
    of the floored size the spec predicts."""
    import diffusers

    spec = get_family(name)
    cls = getattr(diffusers, PIPELINE_CLASS[name])
    height, width = 1000, 776  # neither is a multiple of 16
    used_h, used_w = (s // spec.size_rule.multiple * spec.size_rule.multiple for s in (height, width))
    channels = 32 if name == "flux2" else spec.latent_channels
    out = cls.prepare_latents(
        _pipeline_stub(cls, spec), 1, channels, height, width, torch.float32, torch.device("meta"), None
    )
    tokens = out[0] if isinstance(out, tuple) else out
    p_h, p_w = spec.tokens.patch  # type: ignore[union-attr]
    f = spec.spatial_factor
    n = (used_h // f // p_h) * (used_w // f // p_w)
    assert tuple(tokens.shape) == (1, n, spec.latent_channels * p_h * p_w)


VIDEO_PIPELINE_ATTRS = (  # the names each video pipeline's __init__ gives its scale factors
    "vae_scale_factor_temporal",  # wan, cogvideo, hunyuan_video
    "vae_temporal_compression_ratio",  # ltx
    "vae_temporal_scale_factor",  # mochi
)


@pytest.mark.parametrize("spec", [s for s in FAMILIES if s.is_video], ids=lambda s: s.name)
def test_frame_rule_is_what_prepare_latents_does(spec: FamilySpec):
    """The pipeline's prepare_latents at an off-rule frame count F = 2t + 2: (F - 1) // t + 1 latent
    frames, and no error (the frame check, where there is one, lives in __call__)."""
    from types import SimpleNamespace

    import diffusers

    cls = getattr(diffusers, PIPELINE_CLASS[spec.name])
    t, f = spec.temporal.factor, spec.spatial_factor  # type: ignore[union-attr]
    stub = _pipeline_stub(cls, spec)
    for attr in VIDEO_PIPELINE_ATTRS:
        setattr(stub, attr, t)
    for attr in ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_spatial_scale_factor"):
        setattr(stub, attr, f)
    stub.transformer_spatial_patch_size = stub.transformer_temporal_patch_size = 1  # LTX 0.9.0
    stub.scheduler = SimpleNamespace(init_noise_sigma=1.0)  # CogVideoX scales the noise by it
    frames = 2 * t + 2
    args = {
        "batch_size": 1, "num_channels_latents": spec.latent_channels, "num_frames": frames,
        "height": 4 * f, "width": 6 * f, "dtype": torch.float32, "device": torch.device("meta"),
        "generator": None,
    }  # fmt: skip
    out = cls.prepare_latents(stub, **args)
    latent_frames = (frames - 1) // t + 1
    c = spec.latent_channels
    expected = {
        "cogvideox-2b": (1, latent_frames, c, 4, 6),  # CogVideoX keeps [B, F, C, H, W]
        "cogvideox-5b": (1, latent_frames, c, 4, 6),
        "ltx-video": (1, latent_frames * 4 * 6, c),  # LTX returns packed tokens (patch 1)
    }.get(spec.name, (1, c, latent_frames, 4, 6))
    assert tuple(out.shape) == expected
    if spec.temporal.rule.value == "floor":  # type: ignore[union-attr]
        # WanPipeline.__call__ floors num_frames to t·k + 1 (with a warning) before prepare_latents.
        src = inspect.getsource(cls.__call__)
        assert "num_frames // self.vae_scale_factor_temporal * self.vae_scale_factor_temporal + 1" in src
