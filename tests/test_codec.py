"""Encode/decode against the module itself, normalisation applied, fp16 overflow and the fp32 redo,
PSNR and SSIM against known values, CPU memory measurement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tiny_models import tiny_kl
from vaelens.codec import Upcast, decode, encode, measure_memory, roundtrip
from vaelens.errors import VaeLensError
from vaelens.metrics import psnr, ssim
from vaelens.weights.load import load_vae

TINY = tiny_kl(shift_factor=0.25, force_upcast=False)  # AutoencoderKL's default is True


def loaded(tmp_path, *, dtype="fp32", blow_up: float | None = None, **overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    module = AutoencoderKL.from_config({**TINY, **overrides}).eval()
    if blow_up is not None:
        with torch.no_grad():  # activations past fp16's 65504: the SDXL-VAE-in-fp16 failure, made small
            module.encoder.conv_in.weight.mul_(blow_up)
            module.decoder.conv_in.weight.mul_(blow_up)
    folder = tmp_path / f"vae{len(list(tmp_path.iterdir()))}"
    module.save_pretrained(folder)
    return module, load_vae(folder, device="cpu", dtype=dtype)


PIXELS = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_encode_is_the_module_mode_then_normalised(tmp_path):
    module, vae = loaded(tmp_path)
    z, report = encode(vae, PIXELS)
    with torch.inference_mode():
        raw = module.encode(PIXELS).latent_dist.mode()
    torch.testing.assert_close(z, (raw - 0.25) * 0.5)  # (z - shift_factor) * scaling_factor
    raw_back, _ = encode(vae, PIXELS, normalized=False)
    torch.testing.assert_close(raw_back, raw)
    assert report.dtype_used.value == "fp32" and report.nonfinite == 0 and report.upcast_reason is None
    out, _ = decode(vae, z)
    with torch.inference_mode():
        torch.testing.assert_close(out, module.decode(raw).sample)


def test_sample_is_seeded_and_differs_from_mode(tmp_path):
    _, vae = loaded(tmp_path)
    a, _ = encode(vae, PIXELS, sample=True, seed=3)
    b, _ = encode(vae, PIXELS, sample=True, seed=3)
    m, _ = encode(vae, PIXELS)
    assert torch.equal(a, b) and not torch.equal(a, m)


def test_fp16_overflow_is_detected_and_redone_in_fp32(tmp_path):
    module, vae = loaded(tmp_path, dtype="fp16", blow_up=1e5)
    z, report = encode(vae, PIXELS, upcast="auto")
    assert report.nonfinite_first > 0 and report.nonfinite == 0
    assert report.dtype_used.value == "fp32" and "NaN/Inf values at fp16; redone in fp32" in report.upcast_reason
    assert next(vae.module.parameters()).dtype == torch.float16  # the module is back at the asked dtype
    with torch.inference_mode():
        expected = (module.encode(PIXELS).latent_dist.mode() - 0.25) * 0.5
    torch.testing.assert_close(z, expected, atol=2e-2, rtol=2e-2)  # fp16 weights, fp32 compute
    _, never = encode(vae, PIXELS, upcast=Upcast.NEVER)
    assert never.nonfinite > 0 and never.dtype_used.value == "fp16"


def test_force_upcast_config_runs_fp16_in_fp32(tmp_path):
    _, vae = loaded(tmp_path, dtype="fp16", force_upcast=True)
    _, report = encode(vae, PIXELS)
    assert report.dtype_used.value == "fp32" and "force_upcast" in report.upcast_reason
    _, report = encode(vae, PIXELS, upcast="never")
    assert report.dtype_used.value == "fp16"


def test_nonfinite_input_is_refused(tmp_path):
    _, vae = loaded(tmp_path)
    bad = torch.zeros(1, 4, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(VaeLensError, match="latent holds 1 NaN/Inf values of 256") as err:
        decode(vae, bad)
    assert "nothing finite" not in str(err.value)  # 255 of the 256 values are finite
    with pytest.raises(VaeLensError, match="upcast 'sometimes'"):
        encode(vae, PIXELS, upcast="sometimes")


def test_roundtrip_scores_match_a_direct_computation(tmp_path):
    module, vae = loaded(tmp_path)
    rt = roundtrip(vae, PIXELS)
    with torch.inference_mode():
        rec = module.decode(module.encode(PIXELS).latent_dist.mode()).sample
    src01 = ((PIXELS + 1) / 2).permute(0, 2, 3, 1).numpy()
    rec01 = ((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    for i in range(2):
        mse = float(np.mean((src01[i].astype(np.float64) - rec01[i]) ** 2))
        assert rt.psnr[i] == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)
    np.testing.assert_allclose(rt.error, np.abs(src01 - rec01).mean(-1), atol=1e-6)
    assert set(rt.to_json()) >= {"psnr_db", "ssim", "seconds", "encode", "decode", "latent_shape"}


def test_psnr_known_values():
    a = np.zeros((8, 8, 3))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a + 0.01) == pytest.approx(40.0)
    assert psnr(a, a) == math.inf


def test_ssim_closed_form_for_flat_images():
    # Flat images: σ terms vanish, so SSIM = (2·a·b + C1) / (a² + b² + C1) exactly (Wang et al. 2004, eq. 13).
    a, b = 0.3, 0.6
    c1 = (0.01) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(np.full((20, 20), a), np.full((20, 20), b)) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 3))
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, 1 - x) < 0  # anti-correlated structure gives negative SSIM


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    x = rng.random((40, 48, 3))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    theirs = metrics.structural_similarity(
        x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(x, y) == pytest.approx(theirs, abs=1e-9)


def test_cpu_memory_measurement_sees_an_allocation():
    with measure_memory("cpu") as mem:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        block += 1
    assert mem["peak_bytes"] >= 48 * 1024 * 1024
    assert "CPU" in mem["method"] and "not comparable" in mem["method"]


def test_autoencoder_tiny_has_no_posterior_and_still_roundtrips(tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    module = AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    ).eval()
    module.save_pretrained(tmp_path / "taesd-like")
    vae = load_vae(tmp_path / "taesd-like", device="cpu")
    assert vae.spec.normalization.kind.value == "none"  # scaling_factor 1.0
    z, _ = encode(vae, PIXELS, sample=True)  # no posterior to sample: the deterministic latent
    with torch.inference_mode():
        torch.testing.assert_close(z, module.encode(PIXELS).latents)
    rt = roundtrip(vae, PIXELS)
    assert rt.reconstruction.shape == (2, 16, 16, 3)


def test_video_vae_takes_an_image_as_one_frame(tmp_path):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    module = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[True],
        latents_mean=[0.1, 0.2, 0.3, 0.4],
        latents_std=[1.0, 2.0, 3.0, 4.0],
    ).eval()
    module.save_pretrained(tmp_path / "wan-like")
    vae = load_vae(tmp_path / "wan-like", device="cpu")
    assert vae.spec.is_video and vae.spec.normalization.kind.value == "per_channel"
    z, _ = encode(vae, PIXELS[:1])
    with torch.inference_mode():
        raw = module.encode(PIXELS[:1].unsqueeze(2)).latent_dist.mode()  # [B,3,1,H,W]
    mean = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1, 1)
    std = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(z, (raw - mean) / std)
    rt = roundtrip(vae, PIXELS[:1])
    assert tuple(rt.latent.shape) == (1, 4, 1, 8, 8) and rt.reconstruction.shape == (1, 16, 16, 3)


def test_decode_adds_or_drops_the_one_frame_axis(tmp_path):
    from diffusers import AutoencoderKLWan

    _, kl = loaded(tmp_path)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    image, _ = decode(kl, z, normalized=False)
    one_frame, _ = decode(kl, z.unsqueeze(2), normalized=False)  # [B,C,1,h,w] to an image VAE
    assert torch.equal(image, one_frame)
    with pytest.raises(VaeLensError, match="has 2 frames"):
        decode(kl, torch.zeros(1, 4, 2, 8, 8), normalized=False)
    torch.manual_seed(0)
    wan_module = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True])
    wan_module.eval().save_pretrained(tmp_path / "wan-like")
    wan = load_vae(tmp_path / "wan-like", device="cpu")
    image, _ = decode(wan, z, normalized=False)  # [B,C,h,w] to a video VAE: one latent frame
    one_frame, _ = decode(wan, z.unsqueeze(2), normalized=False)
    assert torch.equal(image, one_frame) and tuple(image.shape) == (1, 3, 16, 16)
