"""Encode/decode against the module itself, normalisation applied, fp16 overflow and the fp32 redo,
PSNR and SSIM against known values, CPU memory measurement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tiny_models import tiny_kl
from vaelens.errors import VaeLensError
from vaelens.metrics import psnr, ssim
from vaelens.run import Upcast, decode, encode, roundtrip
from vaelens.run.steps import measure_memory
from vaelens.weights.load import load_vae

TINY = tiny_kl(shift_factor=0.25, force_upcast=False)  # AutoencoderKL's default is True


def enc(vae, x, *, normalized=True, sample=False, **kw):
    """The door with the old defaults: -> (latent, StepReport)."""
    r = encode(vae, x, normalized=normalized, posterior="sample" if sample else "mode", **kw)
    return r.latent, r.report


def dec(vae, z, *, normalized=True, **kw):
    r = decode(vae, z, normalized=normalized, **kw)
    return r.pixels, r.report


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
    z, report = enc(vae, PIXELS)
    with torch.inference_mode():
        raw = module.encode(PIXELS).latent_dist.mode()
    torch.testing.assert_close(z, (raw - 0.25) * 0.5)  # (z - shift_factor) * scaling_factor
    raw_back, _ = enc(vae, PIXELS, normalized=False)
    torch.testing.assert_close(raw_back, raw)
    assert report.dtype_used.value == "fp32" and report.nonfinite == 0 and report.upcast_reason is None
    out, _ = dec(vae, z)
    with torch.inference_mode():
        torch.testing.assert_close(out, module.decode(raw).sample)


def test_sample_is_seeded_and_differs_from_mode(tmp_path):
    _, vae = loaded(tmp_path)
    a, _ = enc(vae, PIXELS, sample=True, seed=3)
    b, _ = enc(vae, PIXELS, sample=True, seed=3)
    m, _ = enc(vae, PIXELS)
    assert torch.equal(a, b) and not torch.equal(a, m)


def test_fp16_overflow_is_detected_and_redone_in_fp32(tmp_path):
    module, vae = loaded(tmp_path, dtype="fp16", blow_up=1e5)
    z, report = enc(vae, PIXELS, upcast="auto")
    assert report.nonfinite_first > 0 and report.nonfinite == 0
    assert report.dtype_used.value == "fp32" and report.retried == (0, 1)
    assert "NaN/Inf values at fp16 in 2 batch items; redone alone in fp32" in report.upcast_reason
    assert next(vae.module.parameters()).dtype == torch.float16  # the module is back at the asked dtype
    with torch.inference_mode():
        expected = (module.encode(PIXELS).latent_dist.mode() - 0.25) * 0.5
    torch.testing.assert_close(z, expected, atol=2e-2, rtol=2e-2)  # fp16 weights, fp32 compute
    _, never = enc(vae, PIXELS, upcast=Upcast.NEVER)
    assert never.nonfinite > 0 and never.dtype_used.value == "fp16"


def test_nan_retry_is_per_sample(tmp_path):
    """Only the item that overflows in fp16 is redone in fp32; the other keeps its fp16 latent."""
    module, vae = loaded(tmp_path, dtype="fp16", blow_up=1e3)
    pixels = PIXELS.clone()
    pixels[1] *= 1e3  # item 1 overflows fp16's 65504 at this weight scale, item 0 does not
    alone0, first = enc(vae, pixels[:1], upcast="never")
    assert first.nonfinite == 0, "item 0 must be finite at fp16 for this test to mean anything"
    z, report = enc(vae, pixels, upcast="auto")
    assert report.retried == (1,) and report.nonfinite_first > 0 and report.nonfinite == 0
    assert report.dtype_used.value == "fp16"  # not every item needed fp32
    torch.testing.assert_close(z[:1], alone0)  # item 0: the fp16 result, untouched
    with torch.inference_mode():
        expected = (module.encode(pixels[1:]).latent_dist.mode() - 0.25) * 0.5
    torch.testing.assert_close(z[1:], expected, atol=2e-2, rtol=2e-2)


def test_force_upcast_config_runs_fp16_in_fp32(tmp_path):
    _, vae = loaded(tmp_path, dtype="fp16", force_upcast=True)
    _, report = enc(vae, PIXELS)
    assert report.dtype_used.value == "fp32" and "force_upcast" in report.upcast_reason
    _, report = enc(vae, PIXELS, upcast="never")
    assert report.dtype_used.value == "fp16"


def test_nonfinite_input_is_refused(tmp_path):
    _, vae = loaded(tmp_path)
    bad = torch.zeros(1, 4, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(VaeLensError, match="latent holds 1 NaN/Inf values of 256") as err:
        dec(vae, bad)
    assert "nothing finite" not in str(err.value)  # 255 of the 256 values are finite
    with pytest.raises(VaeLensError, match="upcast 'sometimes'"):
        enc(vae, PIXELS, upcast="sometimes")


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
    z, _ = enc(vae, PIXELS, sample=True)  # no posterior to sample: the deterministic latent
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
    z, _ = enc(vae, PIXELS[:1])
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
    image, _ = dec(kl, z, normalized=False)
    one_frame, _ = dec(kl, z.unsqueeze(2), normalized=False)  # [B,C,1,h,w] to an image VAE
    assert torch.equal(image, one_frame)
    with pytest.raises(VaeLensError, match="has 2 frames"):
        dec(kl, torch.zeros(1, 4, 2, 8, 8), normalized=False)
    torch.manual_seed(0)
    wan_module = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True])
    wan_module.eval().save_pretrained(tmp_path / "wan-like")
    wan = load_vae(tmp_path / "wan-like", device="cpu")
    image, _ = dec(wan, z, normalized=False)  # [B,C,h,w] to a video VAE: one latent frame
    one_frame, _ = dec(wan, z.unsqueeze(2), normalized=False)
    assert torch.equal(image, one_frame) and tuple(image.shape) == (1, 3, 16, 16)


def test_moments_step_gives_mean_and_logvar_with_the_per_item_retry(tmp_path):
    from vaelens.run.steps import moments_step

    module, vae = loaded(tmp_path, dtype="fp16", blow_up=1e3)
    pixels = PIXELS.clone()
    pixels[1] *= 1e3  # item 1 overflows in fp16, item 0 does not
    mean, logvar, report = moments_step(vae, pixels)
    assert report.retried == (1,) and torch.isfinite(mean).all() and torch.isfinite(logvar).all()
    with torch.inference_mode():
        dist = module.encode(pixels[1:]).latent_dist
    torch.testing.assert_close(mean[1:], dist.mean, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(logvar[1:], dist.logvar, atol=2e-2, rtol=2e-2)
