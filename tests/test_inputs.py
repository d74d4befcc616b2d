"""The data boundary: image files (size limit, folders, animated GIF, CMYK, float TIFF), config values,
input expansion (files, folders, globs, demo), and the benchmark's missing-data message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_models import tiny_kl
from vaelens.errors import SizeError, VaeLensError
from vaelens.images import open_image, read_image
from vaelens.options import MAX_SIDE
from vaelens.sources import expand_inputs

ROOT = Path(__file__).resolve().parents[1]


def test_a_14000_square_png_opens_under_the_one_size_limit(tmp_path):
    # 196 M pixels: Pillow's own guard raised DecompressionBombError (a traceback) for this file.
    p = tmp_path / "big.png"
    Image.new("1", (14000, 14000)).save(p)  # 1-bit: a few KB on disk, quick to write
    assert open_image(p).size == (14000, 14000)


def test_a_side_above_the_limit_is_refused_before_decoding(tmp_path):
    p = tmp_path / "strip.png"
    Image.new("RGB", (MAX_SIDE + 1, 8)).save(p)
    with pytest.raises(SizeError, match=f"{MAX_SIDE + 1}x8; vaelens' limit is {MAX_SIDE} pixels per side"):
        read_image(p)


def test_a_folder_is_not_reported_missing(tmp_path):
    with pytest.raises(VaeLensError, match="is a folder") as exc:
        read_image(tmp_path)
    assert "does not exist" not in str(exc.value)


def test_animated_gif_says_frame_0_is_used(tmp_path):
    frames = [Image.new("RGB", (8, 8), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    _, info = read_image(tmp_path / "a.gif")
    assert any("3 frames; frame 0 used" in n for n in info.warnings)


def test_cmyk_conversion_is_noted(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(tmp_path / "c.jpg")
    _, info = read_image(tmp_path / "c.jpg")
    assert any("CMYK converted to RGB" in n for n in info.warnings)


def test_float_tiff_is_not_stretched(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(tmp_path / "grey.tif")
    arr, _ = read_image(tmp_path / "grey.tif")
    assert np.allclose(arr, 0.5)  # a min-max stretch made this flat grey 0 (black)


BAD_CONFIGS = [
    ({"latent_channels": -3}, "latent_channels is -3"),
    ({"scaling_factor": "abc"}, "scaling_factor is 'abc'"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS)
@pytest.mark.parametrize("command", ["shapes", "memory"])
def test_bad_config_values_are_one_line(cli, tmp_path, change, message, command):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_kl(**change)))
    r = cli(command, str(cfg), "--size", "32x32")
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_bad_config_value_in_weights_folder_is_one_line_in_encode(cli, tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL.from_config(tiny_kl()).save_pretrained(tmp_path / "vae")
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    (tmp_path / "vae" / "config.json").write_text(json.dumps({**cfg, "scaling_factor": "abc"}))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    r = cli("encode", str(tmp_path / "a.png"), "--vae", str(tmp_path / "vae"), "-o", str(tmp_path / "z.safetensors"))
    assert r.code == 2 and "scaling_factor is 'abc'" in r.err and "Traceback" not in r.err


def test_expand_inputs_folders_globs_and_demo(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.jpg", "b.png"]  # sorted, images only
    assert [p.name for p in expand_inputs([str(tmp_path / "*.png"), str(tmp_path / "b.png")])] == ["b.png"]
    assert expand_inputs(["demo"])[0].is_file()
    with pytest.raises(VaeLensError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.webp")])
    with pytest.raises(VaeLensError, match="holds no files"):
        expand_inputs([tmp_path / "sub"])
    with pytest.raises(VaeLensError, match="does not exist"):
        expand_inputs([tmp_path / "missing.png"])


def test_memory_accuracy_benchmark_says_where_the_data_is_expected(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory_accuracy.py"), "--measurements", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "h100.jsonl" in r.stderr and "shared/measurements" in r.stderr


@pytest.mark.parametrize("command", ["shapes", "memory", "trace"])
def test_a_cached_repo_id_is_a_model(cli, tmp_path, monkeypatch, command):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-vae"
    (repo / "snapshots" / commit / "vae").mkdir(parents=True)
    (repo / "snapshots" / commit / "vae" / "config.json").write_text(json.dumps(tiny_kl()))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    r = cli(command, "acme/tiny-vae", "--size", "32x32", "--json")
    assert r.code == 0, r.err
    assert r.json()["family"] == "acme/tiny-vae"
    missing = cli(command, "acme/other", "--size", "32x32")
    assert missing.code == 2 and "never downloads" in missing.err and "acme/tiny-vae" in missing.err
