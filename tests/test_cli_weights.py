"""encode / decode / roundtrip / inspect through the CLI with a tiny VAE written to disk; every --json parses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import tiny_kl
from vaelens.cli import main

pytest.importorskip("matplotlib")

TINY = tiny_kl(force_upcast=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    module = AutoencoderKL.from_config(TINY).eval()
    module.save_pretrained(root / "vae")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (18, 21, 3), dtype=np.uint8)).save(root / f"{name}.png")
    return root, module


def run_json(capsys, argv: list[str]) -> dict:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_encode_decode_roundtrip_inspect(setup, capsys):
    root, module = setup
    vae = str(root / "vae")
    enc = run_json(
        capsys,
        [
            "encode",
            str(root / "a.png"),
            str(root / "b.png"),
            "--vae",
            vae,
            "-o",
            str(root / "z.safetensors"),
            "--batch-size",
            "1",
        ],
    )
    # 21x18 is cropped to the derived family's multiple of 2: 20x18 -> latent 10x9
    assert enc["pixel_shape"] == [2, 3, 18, 20] and enc["latent_shape"] == [2, 4, 9, 10]
    assert enc["normalized"] is True and enc["encode"]["calls"] == 2 and enc["nonfinite"] == 0
    assert "centre-cropped" in enc["images"][0]["warnings"][0]

    dec = run_json(capsys, ["decode", str(root / "z.safetensors"), "--vae", vae, "-o", str(root / "out.png")])
    assert dec["pixel_shape"] == [2, 3, 18, 20] and len(dec["outputs"]) == 2
    assert Image.open(dec["outputs"][1]).size == (20, 18)

    rt = run_json(capsys, ["roundtrip", str(root / "a.png"), "--vae", vae, "-o", str(root / "rt")])
    assert set(rt["files"]) == {"reconstruction", "error_map", "comparison"}
    assert rt["psnr_db"][0] > 0 and -1 <= rt["ssim"][0] <= 1
    assert "peak_bytes" in rt["decode"]["memory"]

    ins = run_json(capsys, ["inspect", str(root / "z.safetensors"), "--vae", vae, "-o", str(root / "in")])
    assert ins["grid"]["panels"] == 4 and ins["stats"]["channels"] == 4
    assert ins["rgb_approximation"]["label"].startswith("approximation")
    assert ins["configured"]["scaling_factor"] == 0.5
    assert ins["stats"]["implied_scaling_factor"] == pytest.approx(1 / ins["stats"]["overall"]["std"])


def test_comfy_latent_roundtrip_through_decode(setup, capsys):
    root, _ = setup
    vae = str(root / "vae")
    enc = run_json(capsys, ["encode", str(root / "a.png"), "--vae", vae, "-o", str(root / "c.latent"), "--comfy"])
    assert enc["normalized"] is False and enc["format"].startswith("comfyui")
    dec = run_json(capsys, ["decode", str(root / "c.latent"), "--vae", vae, "-o", str(root / "c.png")])
    assert dec["comfy"] is True and dec["normalized"] is False
    # the same image through vaelens' own (normalised) file decodes to the same pixels
    run_json(capsys, ["encode", str(root / "a.png"), "--vae", vae, "-o", str(root / "n.safetensors")])
    run_json(capsys, ["decode", str(root / "n.safetensors"), "--vae", vae, "-o", str(root / "n.png")])
    a, b = np.asarray(Image.open(root / "c.png")), np.asarray(Image.open(root / "n.png"))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_errors_are_one_line_exit_2(setup, capsys):
    root, _ = setup
    code = main(
        [
            "encode",
            str(root / "a.png"),
            "--vae",
            str(root / "vae"),
            "--family",
            "sdxl",
            "-o",
            str(root / "x.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "not sdxl" in err and err.count("\n") == 1
    code = main(["decode", str(root / "nothing.safetensors"), "--vae", str(root / "vae"), "-o", "x.png"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_roundtrip_and_inspect_default_to_the_demo(tmp_path, capsys):
    rt = run_json(capsys, ["roundtrip", "-o", str(tmp_path / "rt")])
    assert rt["family"] == "demo" and rt["image"]["path"].endswith("demo_coffee.png")
    assert rt["psnr_db"][0] > 20
    ins = run_json(capsys, ["inspect", "-o", str(tmp_path / "in")])
    assert ins["family"] == "demo" and ins["grid"]["panels"] == 4
    assert 0 < ins["rgb_approximation"]["r2"] <= 1


@pytest.mark.parametrize("device", ["tpu", "mps", "meta"])
def test_unsupported_device_is_one_line_exit_2(setup, capsys, device):
    root, _ = setup
    argv = ["encode", str(root / "a.png"), "--vae", str(root / "vae"), "-o", str(root / "d.safetensors")]
    code = main([*argv, "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and f"device {device!r} is not one of: cpu, cuda, cuda:N" in err and err.count("\n") == 1


def test_inspect_names_two_different_channels_as_the_strongest_pair(tmp_path, capsys):
    from vaelens.latents import save_latents

    # one latent position: no channel correlates with another (every off-diagonal r is 0)
    save_latents(tmp_path / "z.safetensors", torch.arange(4.0).reshape(1, 4, 1, 1), metadata={"normalized": False})
    assert main(["inspect", str(tmp_path / "z.safetensors"), "-o", str(tmp_path / "in")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "strongest" in x)
    assert "strongest ch0-ch1 r = +0.000" in line


def test_roundtrip_says_transparency_was_composited(setup, tmp_path, capsys):
    root, _ = setup
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    code = main(["roundtrip", str(tmp_path / "t.png"), "--vae", str(root / "vae"), "-o", str(tmp_path / "rt")])
    assert code == 0 and "warning: alpha composited onto white" in capsys.readouterr().err


def test_inspect_of_latents_normalised_with_checkpoint_statistics_asks_for_vae(tmp_path, capsys):
    from vaelens.families import get_family
    from vaelens.latents import normalization_to_json, save_latents

    norm = normalization_to_json(get_family("ltx-video").normalization)  # latents_mean/std buffers
    meta = {"normalized": True, "family": "ltx-video", "normalization": norm}
    save_latents(tmp_path / "z.safetensors", torch.zeros(1, 128, 2, 4, 4), metadata=meta)
    assert main(["inspect", str(tmp_path / "z.safetensors"), "-o", str(tmp_path / "in")]) == 2
    err = capsys.readouterr().err
    assert "argument --vae:" in err and "module=" not in err and err.count("\n") == 1
