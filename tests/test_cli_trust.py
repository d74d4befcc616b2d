"""Issue 13 through the CLI, with tiny VAEs written to disk: overwrite rules, one-line errors for
unwritable paths, normalisation from the latent file, JSON always valid, true max error, NaN exit
status and advice, deterministic posteriors, output naming, many inputs."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import tiny_kl

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("trust")
    torch.manual_seed(0)
    AutoencoderKL.from_config(tiny_kl(force_upcast=False)).eval().save_pretrained(root / "vae")
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{name}.png")
    return root


def one_line_error(r, *needles: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    for needle in needles:
        assert needle in r.err, r.err


# ------------------------------------------------------------------------------------ overwriting


def test_encode_never_overwrites_its_input_even_with_force(cli, root, tmp_path):
    victim = tmp_path / "victim.png"
    victim.write_bytes((root / "a.png").read_bytes())
    before = victim.read_bytes()
    for extra in ((), ("--force",)):
        r = cli("encode", str(victim), "--vae", str(root / "vae"), "-o", str(victim), *extra)
        assert r.code == 2 and victim.read_bytes() == before, r.err


def test_encode_refuses_a_suffix_that_contradicts_the_format(cli, root, tmp_path):
    r = cli("encode", str(root / "a.png"), "--vae", str(root / "vae"), "-o", str(tmp_path / "out.png"))
    one_line_error(r, "must end in .safetensors")
    assert not (tmp_path / "out.png").exists()


def test_existing_outputs_need_force(cli, root, tmp_path):
    out = tmp_path / "z.safetensors"
    args = ("encode", str(root / "a.png"), "--vae", str(root / "vae"), "-o", str(out))
    assert cli(*args).code == 0
    first = out.read_bytes()
    one_line_error(cli(*args), "already exists", "--force")
    assert out.read_bytes() == first
    assert cli(*args, "--force").code == 0
    prefix = str(tmp_path / "rt")
    rt = ("roundtrip", str(root / "a.png"), "--vae", str(root / "vae"), "-o", prefix)
    assert cli(*rt).code == 0
    one_line_error(cli(*rt), "rt_recon.png", "already exists")
    assert cli(*rt, "--force").code == 0


UNWRITABLE = [
    ("encode", "{a}", "--vae", "{vae}", "-o", "/proc/x.safetensors"),
    ("encode", "{a}", "--vae", "{vae}", "-o", "/proc/x.latent", "--comfy"),
    ("encode", "{a}", "--vae", "{vae}", "-o", "{file}/x.safetensors"),
    ("decode", "{z}", "--vae", "{vae}", "-o", "{file}/x.png"),
    ("inspect", "{a}", "--vae", "{vae}", "-o", "/proc/ins"),
    ("roundtrip", "{a}", "--vae", "{vae}", "-o", "/proc/rt"),
    ("pipeline", "sd15", "--plot", "/proc/p.png"),
]


@pytest.mark.parametrize("argv", UNWRITABLE, ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_unwritable_outputs_are_one_line(cli, root, tmp_path, argv):
    if "/proc/x" in " ".join(argv) or "/proc/" in " ".join(argv):
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc")
    (tmp_path / "file").write_text("a file, not a folder")
    z = root / "z.safetensors"  # written once for the module (the decode case reads it)
    if not z.exists():
        assert cli("encode", str(root / "a.png"), "--vae", str(root / "vae"), "-o", str(z)).code == 0
    fill = {"a": str(root / "a.png"), "vae": str(root / "vae"), "file": str(tmp_path / "file"), "z": str(z)}
    r = cli(*(a.format(**fill) for a in argv))
    one_line_error(r)


# ------------------------------------------------------------------------------------ numbers


def test_roundtrip_reports_the_true_max_error_and_the_maps_max_separately(cli, root, tmp_path):
    r = cli("roundtrip", str(root / "a.png"), "--vae", str(root / "vae"), "-o", str(tmp_path / "rt"), "--json")
    data = r.json()
    src = np.asarray(Image.open(root / "a.png"), np.float64) / 255
    rec = np.asarray(Image.open(tmp_path / "rt_recon.png"), np.float64) / 255
    true_max = np.abs(src - rec).max()
    assert data["max_abs_error"][0] == pytest.approx(true_max, abs=1 / 255 + 1e-6)  # recon PNG is 8-bit
    assert data["max_abs_error"][0] > data["max_abs_error_map"][0]  # the map averages RGB first


@pytest.fixture(scope="module")
def nan_vae(root):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    m = AutoencoderKL.from_config(tiny_kl(force_upcast=False)).eval()
    with torch.no_grad():
        m.decoder.conv_out.bias.fill_(float("nan"))
    m.save_pretrained(root / "nanvae")
    return root / "nanvae"


def test_nan_roundtrip_is_valid_json_and_exits_nonzero(cli, root, nan_vae, tmp_path):
    r = cli("roundtrip", str(root / "a.png"), "--vae", str(nan_vae), "-o", str(tmp_path / "n"), "--json")
    assert r.code != 0
    data = json.loads(r.out, parse_constant=lambda c: pytest.fail(f"non-JSON token {c}"))
    assert data["psnr_db"] == [None] and "psnr_db[0]" in data["null_reasons"]
    # fp32 and --upcast auto are already in effect: the advice must not suggest them
    assert "--dtype fp32" not in r.err and "--upcast auto" not in r.err and "fp32" in r.err


def test_json_never_holds_nan_or_infinity():
    from vaelens.cli.common import to_json

    text = to_json({"a": [math.nan, 1.0, math.inf], "b": {"c": -math.inf}})
    assert json.loads(text) == {"a": [None, 1.0, None], "b": {"c": None}}


def test_sample_on_a_deterministic_vae_is_not_recorded_as_a_sample(cli, root, tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1), latent_channels=4, upsampling_scaling_factor=2,
    ).eval().save_pretrained(tmp_path / "tiny")
    out = tmp_path / "z.safetensors"
    r = cli("encode", str(root / "a.png"), "--vae", str(tmp_path / "tiny"), "-o", str(out), "--sample", "--seed", "3")
    assert r.code == 0, r.err
    assert "a posterior sample was asked for" in r.err and "deterministic latent is stored" in r.err
    from vaelens.latents import load_latents

    meta = load_latents(out).metadata
    assert meta["posterior"] == "deterministic" and meta["seed"] is None


def test_python_encode_refuses_a_uint8_tensor(root):
    from vaelens import encode, load_vae
    from vaelens.errors import VaeLensError

    vae = load_vae(str(root / "vae"))
    with pytest.raises(VaeLensError, match=r"uint8 tensor.*\[-1, 1\].*float\(\) / 127.5 - 1"):
        encode(vae, torch.zeros(1, 3, 16, 16, dtype=torch.uint8), normalized=True)


# ------------------------------------------------------------------------------------ many inputs


def test_roundtrip_of_a_folder_names_outputs_after_inputs(cli, root, tmp_path):
    r = cli("roundtrip", str(root / "*.png"), "--vae", str(root / "vae"), "-o", str(tmp_path / "rt"), "--json",
            "--batch-size", "2")
    assert r.code == 0, r.err
    data = r.json()
    assert data["count"] == 3
    assert [os.path.basename(x["files"]["reconstruction"]) for x in data["results"]] == [
        "rt_a_recon.png", "rt_b_recon.png", "rt_c_recon.png"]


# ------------------------------------------------------------------------------------ normalisation


def test_decode_undoes_the_normalisation_recorded_in_the_file(cli, root, tmp_path):
    """Encoded with scale 0.5 / shift 0.1, decoded with the same weights configured as scale 1.0."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    m = AutoencoderKL.from_config(tiny_kl(force_upcast=False, scaling_factor=0.5, shift_factor=0.1)).eval()
    m.save_pretrained(tmp_path / "enc")
    cfg = json.loads((tmp_path / "enc" / "config.json").read_text())
    m.save_pretrained(tmp_path / "dec")
    (tmp_path / "dec" / "config.json").write_text(json.dumps({**cfg, "scaling_factor": 1.0, "shift_factor": 0.0}))
    z = tmp_path / "z.safetensors"
    assert cli("encode", str(root / "a.png"), "--vae", str(tmp_path / "enc"), "-o", str(z)).code == 0
    same = cli("decode", str(z), "--vae", str(tmp_path / "enc"), "-o", str(tmp_path / "same.png"))
    other = cli("decode", str(z), "--vae", str(tmp_path / "dec"), "-o", str(tmp_path / "other.png"))
    assert same.code == 0 and other.code == 0, other.err
    assert "recorded in the file" in other.err and "z × 1" not in other.err.split("not")[0]
    a = np.asarray(Image.open(tmp_path / "same.png"), np.int16)
    b = np.asarray(Image.open(tmp_path / "other.png"), np.int16)
    assert np.abs(a - b).max() == 0  # was up to 255 when decode used the VAE's scale


def test_files_without_metadata_are_treated_alike_by_decode_and_inspect(cli, root, tmp_path):
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"latent": torch.randn(1, 4, 8, 8)}, str(bare))
    vae = str(root / "vae")
    for argv in (("decode", str(bare), "--vae", vae, "-o", str(tmp_path / "d.png")),
                 ("inspect", str(bare), "-o", str(tmp_path / "i"))):
        one_line_error(cli(*argv), "does not say whether its latents are normalised", "--raw")
        assert cli(*argv, "--raw").code == 0


# ------------------------------------------------------------------------------------ naming


def test_decode_names_a_batch_after_its_sources_or_zero_padded(cli, root, tmp_path):
    vae = str(root / "vae")
    z = tmp_path / "z.safetensors"
    assert cli("encode", str(root), "--vae", vae, "-o", str(z), "--batch-size", "2").code == 0
    r = cli("decode", str(z), "--vae", vae, "-o", str(tmp_path / "x.png"), "--batch-size", "2", "--json")
    assert [os.path.basename(p) for p in r.json()["outputs"]] == ["x_a.png", "x_b.png", "x_c.png"]
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"latent": torch.randn(11, 4, 4, 4)}, str(bare))
    r = cli("decode", str(bare), "--vae", vae, "-o", str(tmp_path / "y.png"), "--raw", "--json")
    names = [os.path.basename(p) for p in r.json()["outputs"]]
    assert names[0] == "y_00.png" and names[-1] == "y_10.png" and names == sorted(names)


@pytest.fixture(scope="module")
def wan_vae(root):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[], temperal_downsample=[True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval().save_pretrained(root / "wan")
    return root / "wan"


def _clip(path, frames: int = 7, fps: int = 12) -> None:
    from vaelens.video import write_video

    t = np.linspace(0, 1, frames, dtype=np.float32)[:, None, None, None]
    write_video(path, np.broadcast_to(t, (frames, 16, 16, 3)).copy(), fps=fps)


def test_video_file_encodes_and_decodes_to_mp4_and_frames(cli, wan_vae, tmp_path):
    pytest.importorskip("av")
    from vaelens.latents import load_latents
    from vaelens.video import read_video

    _clip(tmp_path / "clip.mp4", frames=9, fps=12)
    z = tmp_path / "clip.safetensors"
    r = cli("encode", str(tmp_path / "clip.mp4"), "--vae", str(wan_vae), "-o", str(z), "--json")
    assert r.code == 0, r.err
    lf = load_latents(z)
    assert lf.latent.shape[2] == 3  # 9 frames, time factor 4: (9 - 1) // 4 + 1
    assert lf.metadata["fps"] == 12 and lf.metadata["frames"] == 9
    r = cli("decode", str(z), "--vae", str(wan_vae), "-o", str(tmp_path / "out.mp4"), "--save-frames", "--json")
    assert r.code == 0, r.err
    names = [os.path.basename(p) for p in r.json()["outputs"]]
    assert names[0] == "out.mp4" and names[1:] == [f"out_f{i:03d}.png" for i in range(9)]
    frames, info = read_video(tmp_path / "out.mp4")
    assert frames.shape[0] == 9 and info.fps == pytest.approx(12)


def test_image_sequence_for_a_video_vae(cli, wan_vae, tmp_path):
    from vaelens.latents import load_latents

    for i in range(6):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / f"frame{i}.png")
    z = tmp_path / "seq.safetensors"
    r = cli("encode", str(tmp_path / "frame*.png"), "--video", "--fps", "8", "--vae", str(wan_vae), "-o", str(z))
    assert r.code == 0, r.err
    assert "6 frames -> first 5" in r.err  # Wan takes 4k+1 frames
    lf = load_latents(z)
    assert lf.latent.shape[:3] == (1, 4, 2) and lf.metadata["fps"] == 8 and lf.metadata["frames"] == 5


def test_a_video_for_an_image_vae_is_refused(cli, root, tmp_path):
    pytest.importorskip("av")
    _clip(tmp_path / "clip.mp4")
    r = cli("encode", str(tmp_path / "clip.mp4"), "--vae", str(root / "vae"), "-o", str(tmp_path / "z.safetensors"))
    one_line_error(r, "image VAE")


# ------------------------------------------------------------------------------------ cosmetics


def test_budget_needs_a_unit(cli):
    one_line_error(cli("memory", "sd15", "--size", "64x64", "--budget", "8"), "budget '8' has no unit", "8GiB")
    from vaelens.units import parse_bytes

    assert parse_bytes("8B") == 8


def test_one_frame_is_singular_and_width_without_height_names_what_is_missing(cli):
    r = cli("shapes", "wan21", "--size", "64x64", "--frames", "1")
    assert r.code == 0 and ", 1 frame" in r.out and "1 frames" not in r.out
    one_line_error(cli("shapes", "sdxl", "--width", "1024"), "--width 1024 without --height")
    assert "None" not in cli("shapes", "sdxl", "--height", "512").err


def test_compression_below_one_is_not_called_fewer(cli, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_kl(latent_channels=16, down_block_types=["DownEncoderBlock2D"],
                                      up_block_types=["UpDecoderBlock2D"], block_out_channels=[8])))
    r = cli("shapes", str(cfg), "--size", "32x32")
    assert r.code == 0, r.err
    assert "fewer elements" not in r.out and "more elements than the pixels" in r.out


def test_unknown_option_names_the_subcommand(cli):
    r = cli("shapes", "sdxl", "--bogus")
    assert r.code == 2 and r.err.startswith("vaelens shapes: error: unrecognized arguments: --bogus")


def test_tiled_and_sliced_header_names_both(cli):
    r = cli("memory", "sd15", "--size", "64x64", "--tiled", "--sliced")
    assert r.code == 0 and "(tiled, sliced)" in r.out


def test_constant_latent_correlation_is_null():
    from vaelens.latents import channel_stats

    stats = channel_stats(np.ones((1, 3, 4, 4)))
    assert stats.to_json()["correlation"] == [[None] * 3] * 3
    assert stats.strongest_pair() is None and stats.mean_abs_correlation() is None


def test_issue20_7_a_recorded_fps_that_cannot_be_written_is_refused_before_decoding(cli, wan_vae, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    for i in range(5):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / f"frame{i}.png")
    z = tmp_path / "seq.safetensors"
    assert cli("encode", str(tmp_path / "frame*.png"), "--video", "--vae", str(wan_vae), "-o", str(z)).code == 0
    with safe_open(str(z), framework="pt") as f:
        meta, latent = f.metadata(), f.get_tensor("latent")
    save_file({"latent": latent}, str(tmp_path / "bad.safetensors"), metadata={**meta, "fps": "-5"})
    r = cli("decode", str(tmp_path / "bad.safetensors"), "--vae", str(wan_vae), "-o", str(tmp_path / "x.mp4"))
    assert r.code == 2 and "fps" in r.err and "Traceback" not in r.err, r.err
    assert not (tmp_path / "x.mp4").exists()
    r = cli("decode", str(tmp_path / "bad.safetensors"), "--vae", str(wan_vae), "-o", str(tmp_path / "y.mp4"),
            "--fps", "10")
    assert r.code == 0, r.err
