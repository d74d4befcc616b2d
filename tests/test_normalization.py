"""normalize / denormalize against hand computation and against the diffusers pipelines' own code.

Checkpoint statistics (FLUX.2's BatchNorm, LTX's latents_mean/std buffers) come from small CPU
modules of the real diffusers classes whose buffers are filled with seeded random values.
"""

from __future__ import annotations

import pytest
import torch

from vaelens.errors import VaeLensError
from vaelens.families import FAMILIES, NormKind, get_family
from vaelens.families.spec import FamilySpec
from vaelens.normalization import denormalize, describe, normalize, patchify, unpatchify

IDS = [s.name for s in FAMILIES]


def _tiny_flux2(seed: int = 0):
    """A real AutoencoderKLFlux2 (one level, 8 channels) with the released latent width and a
    BatchNorm of 32·2·2 = 128 channels holding seeded random running statistics."""
    from diffusers import AutoencoderKLFlux2

    m = AutoencoderKLFlux2(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=32,
    ).eval()
    g = torch.Generator().manual_seed(seed)
    m.bn.running_mean.copy_(torch.randn(128, generator=g) * 0.5)
    m.bn.running_var.copy_(torch.rand(128, generator=g) * 3 + 0.05)
    return m


def _tiny_ltx(seed: int = 0):
    """A real AutoencoderKLLTXVideo (one 8-channel level) with 128 latent channels and seeded random
    latents_mean / latents_std buffers (zeros / ones until a checkpoint fills them)."""
    from diffusers import AutoencoderKLLTXVideo

    m = AutoencoderKLLTXVideo(
        latent_channels=128,
        block_out_channels=(8,),
        decoder_block_out_channels=(8,),
        layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False),
        upsample_residual=(False,),
        upsample_factor=(1,),
        down_block_types=("LTXVideoDownBlock3D",),
        downsample_type=("conv",),
    ).eval()
    g = torch.Generator().manual_seed(seed)
    m.latents_mean.copy_(torch.randn(128, generator=g))
    m.latents_std.copy_(torch.rand(128, generator=g) * 2 + 0.1)
    return m


def _stats_module(spec: FamilySpec):
    if spec.normalization.kind is NormKind.BATCHNORM_PATCHED:
        return _tiny_flux2()
    if spec.normalization.stats_from is not None:
        return _tiny_ltx()
    return None


def _latent(spec: FamilySpec, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = spec.latent_channels
    shape = (2, c, 3, 4, 6) if spec.is_video else (2, c, 1, 4, 6) if spec.video_module else (2, c, 4, 6)
    return torch.randn(shape, generator=g) * 3 + 0.5


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_denormalize_inverts_normalize(spec: FamilySpec):
    z = _latent(spec)
    module = _stats_module(spec)
    x = normalize(z, spec.normalization, module=module)
    if spec.normalization.kind is NormKind.BATCHNORM_PATCHED:
        assert x.shape == (2, spec.latent_channels * 4, 2, 3)
    else:
        assert x.shape == z.shape
    if spec.normalization.kind is NormKind.AFFINE or spec.normalization.kind is NormKind.PER_CHANNEL:
        assert not torch.allclose(x, z)  # it did something
    back = denormalize(x, spec.normalization, module=module)
    assert back.shape == z.shape
    torch.testing.assert_close(back, z, rtol=1e-5, atol=1e-5)


def test_affine_matches_hand_computation():
    norm = get_family("flux1").normalization
    z = torch.tensor([[[[0.0, 1.0], [-2.5, 0.1159]]]], dtype=torch.float64).expand(1, 16, 2, 2)
    expected = [[(v - 0.1159) * 0.3611 for v in row] for row in ([0.0, 1.0], [-2.5, 0.1159])]
    x = normalize(z, norm)
    for c in (0, 7, 15):
        for i in range(2):
            assert x[0, c, i].tolist() == pytest.approx(expected[i], abs=1e-15)
    # FLUX pipeline before decode: latents / vae.config.scaling_factor + vae.config.shift_factor
    x_hand = (-2.5 - 0.1159) * 0.3611
    assert denormalize(torch.full((1, 16, 1, 1), x_hand, dtype=torch.float64), norm)[0, 3, 0, 0].item() == (
        pytest.approx(x_hand / 0.3611 + 0.1159, abs=1e-15)
    )
    sdxl = normalize(torch.full((1, 4, 1, 1), 2.0), get_family("sdxl").normalization)
    assert sdxl.flatten().tolist() == pytest.approx([2.0 * 0.13025] * 4)


def test_per_channel_matches_hand_computation_and_the_wan_pipeline():
    from vaelens.build import build_module

    spec = get_family("wan21")
    cfg = build_module(spec).config  # the module's own config, not the spec's tuples
    z = _latent(spec).double()
    x = normalize(z, spec.normalization)
    for c in range(spec.latent_channels):
        expected = (z[:, c] - cfg.latents_mean[c]) / cfg.latents_std[c]
        torch.testing.assert_close(x[:, c], expected)
    # pipelines/wan/pipeline_wan.py before decode: latents_std = 1 / std; latents / latents_std + mean
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float64).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float64).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(denormalize(x, spec.normalization), x / inv_std + mean)


def test_per_channel_from_checkpoint_buffers_equals_ltx_pipeline():
    from diffusers import LTXPipeline

    spec, module = get_family("ltx-video"), _tiny_ltx(seed=3)
    z = _latent(spec)
    expected = LTXPipeline._normalize_latents(z, module.latents_mean, module.latents_std, 1.0)
    torch.testing.assert_close(normalize(z, spec.normalization, module=module), expected)
    undone = LTXPipeline._denormalize_latents(expected, module.latents_mean, module.latents_std, 1.0)
    torch.testing.assert_close(denormalize(expected, spec.normalization, module=module), undone)


def test_flux2_batchnorm_equals_functional_batch_norm_in_eval_mode():
    import torch.nn.functional as F
    from diffusers import Flux2Pipeline

    spec, module = get_family("flux2"), _tiny_flux2(seed=5)
    z = _latent(spec)
    patched = Flux2Pipeline._patchify_latents(z)
    expected = F.batch_norm(
        patched, module.bn.running_mean, module.bn.running_var, training=False, eps=module.bn.eps
    )
    got = normalize(z, spec.normalization, module=module)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, module.bn(patched))  # the module's own BatchNorm, eval mode
    torch.testing.assert_close(patchify(z, (2, 2)), patched)
    torch.testing.assert_close(unpatchify(patched, (2, 2)), Flux2Pipeline._unpatchify_latents(patched))


def test_checkpoint_statistics_are_required_and_must_be_real():
    from vaelens.build import build_module

    flux2, ltx = get_family("flux2"), get_family("ltx-video")
    with pytest.raises(VaeLensError, match="pass module="):
        normalize(_latent(flux2), flux2.normalization)
    with pytest.raises(VaeLensError, match="meta device"):
        normalize(_latent(ltx), ltx.normalization, module=build_module(ltx))
    with pytest.raises(VaeLensError, match="no attribute 'bn'"):
        normalize(_latent(flux2), flux2.normalization, module=_tiny_ltx())
    with pytest.raises(VaeLensError, match="channels"):
        normalize(torch.zeros(1, 12, 4, 4), get_family("wan21").normalization)
    with pytest.raises(VaeLensError, match="divisible"):
        normalize(torch.zeros(1, 32, 5, 4), flux2.normalization, module=_tiny_flux2())


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("flux1", "(z − 0.1159) × 0.3611"),
        ("sd3", "(z − 0.0609) × 1.5305"),
        ("sdxl", "z × 0.13025"),
        ("cogvideox-2b", "z × 1.15258426"),
        ("wan21", "(z − mean_c) / std_c, 16 per-channel constants from the config"),
        ("wan22", "(z − mean_c) / std_c, 48 per-channel constants from the config"),
        ("ltx-video", "(z − mean_c) / std_c, per-channel statistics from the checkpoint buffers"),
        ("flux2", "2×2 patchify → [B, 4C, H/2, W/2], then (x − running_mean_c) / √(running_var_c + 0.0001)"),
        ("taesd", "identity"),
    ],
)
def test_describe_gives_the_formula(name: str, text: str):
    assert describe(get_family(name).normalization).startswith(text)
