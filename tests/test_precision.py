"""vaelens precision: a planted fp16 overflow found at its layer and removed by the upcast it recommends
(applied for real), emulation against real half precision on CPU, the demo VAE end to end through the
CLI, other VAE classes, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import tiny_kl
from vaelens.errors import VaeLensError
from vaelens.images import from_pixels
from vaelens.metrics import psnr
from vaelens.precision import FP16_MAX, measure_precision, run_real
from vaelens.weights.load import load_vae

# The conv whose weights are scaled up: its fp32 output passes fp16's 65504 (and the resnet's residual
# carries that to every later layer until the decoder's output GroupNorm), far below bf16's 3.4e38.
PLANTED = "decoder.up_blocks.1.resnets.0.conv2"
PIXELS = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def tiny_vae(tmp_path, *, scale: float | None = None, name: str = "vae", poison: bool = False):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    module = AutoencoderKL.from_config(tiny_kl(force_upcast=False)).eval()
    with torch.no_grad():
        if scale is not None:
            module.get_submodule(PLANTED).weight.mul_(scale)
        if poison:  # a broken checkpoint: NaN weights in one conv
            module.get_submodule("encoder.conv_in").weight[0, 0, 0, 0] = math.nan
    module.save_pretrained(tmp_path / name)
    return module, load_vae(tmp_path / name, device="cpu")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    module, vae = tiny_vae(tmp_path_factory.mktemp("planted"), scale=1e5)
    return module, vae, measure_precision(vae, PIXELS)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    module, vae = tiny_vae(tmp_path_factory.mktemp("clean"))
    return module, vae, measure_precision(vae, PIXELS)


def test_planted_overflow_is_named_for_fp16_and_bf16_is_safe(planted):
    _, _, rep = planted
    assert rep.fp16.overflow and rep.fp16.first.layer == PLANTED and rep.fp16.first.function == "conv2d"
    assert rep.fp16.failing == ("tensor[0]", "tensor[1]") and rep.fp16.psnr_db is None
    fp32_max = next(r.max_abs for r in rep.layers if r.name == PLANTED)
    assert fp32_max > FP16_MAX  # the fp32 record says the same: that layer is past fp16's range
    assert rep.fp16.first.max_abs == pytest.approx(fp32_max, rel=0.01)  # the value that overflowed, unrounded
    assert not rep.bf16.overflow and rep.bf16.psnr_db is not None


def test_the_recommended_upcast_removes_the_overflow_when_applied(planted):
    module, _, rep = planted
    fix = rep.upcast
    assert fix.verified and fix.blocks[0] == "decoder.up_blocks.1"  # starts at the block holding the layer
    assert all(b in rep.blocks for b in fix.blocks)
    first_block = rep.blocks.index(fix.blocks[0])
    assert fix.blocks == rep.blocks[first_block : first_block + len(fix.blocks)]  # consecutive, in call order
    for i in range(2):
        out, first = run_real(module, PIXELS[i : i + 1], dtype="fp16")
        assert first is not None and first.layer == PLANTED  # real fp16 on CPU fails where emulation said
        out, first = run_real(module, PIXELS[i : i + 1], dtype="fp16", upcast=fix.blocks, after=fix.after)
        assert first is None and bool(torch.isfinite(out).all())
    shorter = fix.blocks[:-1]  # one block fewer is not enough (the search stopped at the first finite re-run)
    _, first = run_real(module, PIXELS[:1], dtype="fp16", upcast=shorter, after=fix.blocks[-1])
    assert first is not None
    assert "vae.get_submodule(n).float()" in fix.snippet and f'"{fix.blocks[0]}"' in fix.snippet


def test_upcast_memory_is_the_mixed_module_priced(planted):
    module, _, rep = planted
    fp16, fp32, mixed = rep.prices["fp16"], rep.prices["fp32"], rep.prices["fp16+upcast"]
    extra = sum(t.numel() * 2 for b in rep.upcast.blocks
                for t in (*module.get_submodule(b).parameters(), *module.get_submodule(b).buffers()))
    assert mixed.weights_bytes == fp16.weights_bytes + extra  # the upcast blocks' weights at 4 bytes, not 2
    assert fp16.peak_bytes < mixed.peak_bytes and fp16.peak_bytes < fp32.peak_bytes
    assert mixed.peak_bytes_low <= mixed.peak_bytes <= mixed.peak_bytes_high


def test_unmodified_model_is_safe_in_fp16_above_40_db(clean):
    _, _, rep = clean
    assert not rep.fp16.overflow and not rep.bf16.overflow and rep.upcast is None
    assert rep.fp16.psnr_db > 40 and rep.fp16.psnr_db > rep.bf16.psnr_db  # fp16 keeps 3 more mantissa bits
    assert all(0.99 < s <= 1 for s in rep.fp16.ssim)
    names = [r.name for r in rep.layers]
    assert PLANTED in names and "decoder.conv_out" in names and len(names) == len(set(names))
    assert all(r.max_abs >= r.p9999_abs >= 0 and 0 <= r.underflow_fraction <= 1 for r in rep.layers)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_emulation_matches_real_half_precision_on_cpu(clean, dtype):
    module, _, rep = clean
    emulated = rep.fp16 if dtype == "fp16" else rep.bf16
    for i in range(2):
        x = PIXELS[i : i + 1]
        with torch.inference_mode():
            ref = module.decode(module.encode(x).latent_dist.mode()).sample
        real, first = run_real(module, x, dtype=dtype)
        assert first is None
        real_db = psnr(from_pixels(ref), from_pixels(real))
        assert abs(real_db - emulated.psnr[i]) < 1.0, (dtype, real_db, emulated.psnr[i])


def test_decode_only_and_encode_only(planted):
    _, vae, _ = planted
    dec = measure_precision(vae, PIXELS[:1], op="decode", price=False)
    assert dec.fp16.first.layer == PLANTED and all(r.name.startswith(("decoder", "post_quant")) for r in dec.layers)
    enc = measure_precision(vae, PIXELS[:1], op="encode", price=False)
    assert not enc.fp16.overflow and all(r.name.startswith(("encoder", "quant")) for r in enc.layers)


def test_vae_nan_in_fp32_is_said_and_not_judged(tmp_path):
    _, vae = tiny_vae(tmp_path, poison=True)
    rep = measure_precision(vae, PIXELS[:1])
    assert rep.fp32_failure is not None and rep.fp32_failure.layer == "encoder.conv_in"
    assert rep.fp16 is None and rep.bf16 is None


def test_no_images_is_refused(clean):
    _, vae, _ = clean
    with pytest.raises(VaeLensError, match="images= is empty") as exc:
        measure_precision(vae, [])
    assert exc.value.param == "images"


def test_other_classes_tiny_and_video(tmp_path):
    from diffusers import AutoencoderKLWan, AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=4).eval().save_pretrained(tmp_path / "tiny")
    rep = measure_precision(load_vae(tmp_path / "tiny", device="cpu"), PIXELS[:1], price=False)
    assert rep.blocks and all(b.startswith(("encoder.layers.", "decoder.layers.")) for b in rep.blocks)
    assert not rep.fp16.overflow and rep.fp16.psnr_db > 40
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                     temperal_downsample=[True]).eval().save_pretrained(tmp_path / "wan")
    clip = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1  # 4k+1 frames
    rep = measure_precision(load_vae(tmp_path / "wan", device="cpu"), clip, price=False)
    assert rep.input_shapes == ((1, 3, 5, 16, 16),) and rep.blocks
    assert not rep.fp16.overflow and rep.fp16.psnr_db > 40


# ------------------------------------------------------------------------------------------------- CLI


def strict_json(text: str):
    def refuse(name: str):
        raise AssertionError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_cli_demo_report_json_and_plot(cli, tmp_path):
    plot = tmp_path / "precision.png"
    res = cli("precision", "demo", "--vae", "demo", "--size", "64x64", "--plot", str(plot))
    assert res.code == 0, res.err
    assert "fp16: safe, PSNR" in res.out and "bf16: safe, PSNR" in res.out and "decoder.up_blocks.0" in res.out
    assert "fp32 (force_upcast)" in res.out and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = cli("precision", "demo", "--vae", "demo", "--size", "64x64", "--plot", str(plot))
    assert again.code == 2 and "--force" in again.err and len(again.err.strip().splitlines()) == 1
    res = cli("precision", "demo", "--vae", "demo", "--size", "64x64", "--json", "--no-memory")
    data = strict_json(res.out)
    assert res.code == 0
    for key in ("fp16", "bf16"):
        assert {"overflow", "first_overflow", "psnr_db", "ssim"} <= set(data[key])
        assert data[key]["overflow"] is False and data[key]["first_overflow"] is None and data[key]["psnr_db"] > 40
    assert data["upcast"] == [] and data["upcast_peak_bytes"] is None
    assert {"name", "max_abs", "p9999_abs", "underflow_fraction"} <= set(data["layers"][0])
    assert "decoder.conv_out" in {layer["name"] for layer in data["layers"]}


def test_cli_planted_overflow_json(cli, planted):
    _, vae, _ = planted
    res = cli("precision", "demo", "--vae", vae.source, "--size", "32x32", "--json")
    data = strict_json(res.out)
    assert res.code == 0
    assert data["fp16"]["overflow"] is True and data["fp16"]["first_overflow"] == PLANTED
    assert data["fp16"]["psnr_db"] is None and "null_reason" in data["fp16"]
    assert data["bf16"]["overflow"] is False
    assert data["upcast"][0] == "decoder.up_blocks.1" and data["upcast_verified"] is True
    assert data["fp16_peak_bytes"] < data["upcast_peak_bytes"] and data["memory"]["fp16+upcast"]["peak_bytes"] == \
        data["upcast_peak_bytes"]
    assert data["verdicts"][0].startswith(f"fp16: overflows at {PLANTED} (max ")


def test_cli_bad_input(cli, tmp_path):
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "tiny.png")  # under the demo VAE's 4 px
    res = cli("precision", str(tmp_path / "tiny.png"), "--vae", "demo")
    assert res.code == 2 and "tiny.png" not in res.out and len(res.err.strip().splitlines()) == 1
    assert "multiple of 4" in res.err
    (tmp_path / "empty").mkdir()
    res = cli("precision", str(tmp_path / "empty"), "--vae", "demo")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    res = cli("precision", "--vae", "demo")
    assert res.code == 2 and "IMAGE" in res.err
    res = cli("precision", str(tmp_path / "tiny.png"), "--vae", "demo", "--plot", str(tmp_path / "tiny.png"), "--force")
    assert res.code == 2 and "is one of the inputs" in res.err  # never written over an input, even with --force


def test_cli_nan_in_fp32_exits_1(cli, tmp_path):
    _, vae = tiny_vae(tmp_path, poison=True)
    res = cli("precision", "demo", "--vae", vae.source, "--size", "32x32")
    assert res.code == 1 and "fp32: the VAE itself produces inf/NaN at encoder.conv_in" in res.out
    assert "broken" in res.err


def test_report_has_a_precision_section_with_vae_and_image(cli, tmp_path):
    from vaelens.images import read_image, resize_image, save_image
    from vaelens.weights.demo import demo_image_path

    small = tmp_path / "small.png"
    save_image(resize_image(read_image(demo_image_path())[0], 48, 64), small)
    out = tmp_path / "r.html"
    res = cli("report", "sd15", "--size", "64x64", "--vae", "demo", "--image", str(small), "-o", str(out), "--json")
    assert res.code == 0, res.err
    data = strict_json(res.out)
    assert data["precision"]["fp16"]["overflow"] is False and data["precision"]["images"] == ["small.png"]
    html = out.read_text()
    assert '<section id="precision">' in html and 'id="precision-verdicts"' in html
    assert data["precision"]["verdicts"][0].split(",")[0] in html  # "fp16: safe" with its PSNR
    plain = cli("report", "sd15", "--size", "64x64", "--vae", "demo", "-o", str(tmp_path / "p.html"), "--json")
    assert plain.code == 0 and strict_json(plain.out).get("precision") is None  # no --image: no section


@pytest.mark.parametrize("name", ["flux2", "sana"])
def test_flux2_and_dc_ae_layers_are_module_names(tmp_path, name):
    # sana (DC-AE): diffusers computes its linear attention in fp32 inside an fp16 module
    # (attention_processor.py, query.float()); the emulation runs that island in fp32 as a GPU does.
    from test_tiling import _build

    module = _build(name)
    module.save_pretrained(tmp_path / name)
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rep = measure_precision(load_vae(tmp_path / name, device="cpu"), x, price=False)
    names = dict(module.named_modules())
    assert rep.layers and all(r.name in names for r in rep.layers) and rep.blocks
    assert not rep.fp16.overflow and rep.fp16.psnr_db > 40


def test_video_file_is_a_clip_for_a_video_vae_and_refused_by_an_image_vae(tmp_path, clean):
    pytest.importorskip("av")
    from diffusers import AutoencoderKLWan

    from vaelens.video import write_video

    frames = np.random.default_rng(0).random((6, 16, 16, 3)).astype(np.float32)
    clip = write_video(tmp_path / "clip.mp4", frames)
    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                     temperal_downsample=[True]).eval().save_pretrained(tmp_path / "wan")
    rep = measure_precision(load_vae(tmp_path / "wan", device="cpu"), [clip], price=False)
    assert rep.input_shapes == ((1, 3, 5, 16, 16),)  # 6 frames floored to Wan's 4k+1
    assert any("frames" in w for w in rep.warnings) and not rep.fp16.overflow
    _, kl, _ = clean
    with pytest.raises(VaeLensError, match="is an image VAE") as exc:
        measure_precision(kl, [clip])
    assert exc.value.param == "images"
