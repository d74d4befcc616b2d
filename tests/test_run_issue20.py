"""Issue 20, the run half: each numbered defect (6, 7, 8, 10) and the confusing edges around the
real-weights commands, through the library and the CLI, on the demo VAE and tiny VAEs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vaelens
from vaelens.errors import VaeLensError

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def demo():
    from vaelens.weights.demo import load_demo_vae

    return load_demo_vae(device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two readable 32x32 images and one file with an image suffix that is not an image."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for name in ("a", "c"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{name}.png")
    (root / "b.png").write_bytes(b"not a png")
    return root


def one_line_error(r, *needles: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    for needle in needles:
        assert needle in r.err, r.err


# ------------------------------------------------------------------------------------------- 6


def test_issue20_6_thin_image_ssim_null(cli, tmp_path):
    thin = tmp_path / "thin.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 512, 3), dtype=np.uint8)).save(thin)
    r = cli("roundtrip", str(thin), "--vae", "demo", "-o", str(tmp_path / "rt"), "--json")
    assert r.code == 0, r.err
    data = r.json()
    assert data["ssim"] == [None] and "11 px" in data["null_reasons"]["ssim[0]"]
    assert data["psnr_db"][0] is not None and data["psnr_db"][0] > 0
    for path in data["files"].values():
        assert (tmp_path / path).exists() or __import__("pathlib").Path(path).exists()
    r = cli("roundtrip", str(thin), "--vae", "demo", "-o", str(tmp_path / "rt2"))
    assert r.code == 0 and "SSIM n/a (SSIM needs at least 11 px per side" in r.out, r.err


def test_issue20_6_report_on_a_thin_image_has_ssim_null_and_writes_the_page(cli, tmp_path):
    thin = tmp_path / "thin.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (8, 512, 3), dtype=np.uint8)).save(thin)
    page = tmp_path / "r.html"
    r = cli("report", "sd15", "--size", "64x64", "--vae", "demo", "--image", str(thin), "-o", str(page), "--json")
    assert r.code == 0, r.err
    real = r.json()["real_weights"]
    assert real["ssim"] is None and "11 px" in real["ssim_reason"] and real["psnr_db"] > 0
    assert page.exists() and "n/a (SSIM needs at least 11 px" in page.read_text()


def test_issue20_6_ssim_unavailable_names_the_window():
    from vaelens.metrics import ssim, ssim_unavailable

    assert ssim_unavailable((8, 4096, 3)) is not None and ssim_unavailable((11, 11)) is None
    with pytest.raises(VaeLensError, match="11 px"):
        ssim(np.zeros((8, 64)), np.zeros((8, 64)))


# ------------------------------------------------------------------------------------------- 7


@pytest.mark.parametrize("fps", ["0", "-5", "1e9", "nan", "inf", "abc"])
def test_issue20_7_fps_checked_at_parse_time(cli, tmp_path, fps):
    for argv in (("encode", "demo", "--vae", "demo", "-o", str(tmp_path / "z.safetensors")),
                 ("decode", str(tmp_path / "z.safetensors"), "--vae", "demo", "-o", str(tmp_path / "x.png"))):
        one_line_error(cli(*argv, "--fps", fps), "--fps")
    assert not (tmp_path / "z.safetensors").exists()


@pytest.mark.parametrize("fps", [0, -5, 1e9, float("nan"), "24", True])
def test_issue20_7_fps_checked_in_the_library(fps):
    from vaelens.run.inputs import check_fps

    if fps == "24":
        assert check_fps(fps) == 24.0
        return
    with pytest.raises(VaeLensError) as info:
        check_fps(fps)
    assert info.value.param == "fps"


def test_issue20_7_fps_with_an_image_vae_is_refused_not_ignored(cli, tmp_path):
    for flag, value in (("--fps", "24"), ("--max-frames", "3")):
        r = cli("encode", "demo", "--vae", "demo", "-o", str(tmp_path / "z.safetensors"), flag, value)
        one_line_error(r, "image VAE")
    assert not (tmp_path / "z.safetensors").exists()


# ------------------------------------------------------------------------------------------- 8


def _other_demo_weights(path):
    """The demo VAE's architecture (and its config metadata) with slightly different weights."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vaelens.weights.demo import demo_weights_path

    with safe_open(str(demo_weights_path()), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in sorted(tensors) if k.endswith("weight"))
    tensors[key] = tensors[key] * 1.01
    save_file(tensors, str(path), metadata=meta)
    return path


def test_issue20_8_weights_hash_recorded_and_checked(cli, tmp_path):
    import hashlib

    from vaelens.latents import load_latents
    from vaelens.weights.demo import demo_weights_path

    z = tmp_path / "z.safetensors"
    assert cli("encode", "demo", "--vae", "demo", "-o", str(z)).code == 0
    recorded = load_latents(z).info.weights_sha256
    assert recorded == (hashlib.sha256(demo_weights_path().read_bytes()).hexdigest(),)
    same = cli("decode", str(z), "--vae", "demo", "-o", str(tmp_path / "same.png"))
    assert same.code == 0 and "other weights" not in same.err
    other = _other_demo_weights(tmp_path / "other.safetensors")
    r = cli("decode", str(z), "--vae", str(other), "-o", str(tmp_path / "d.png"))
    assert r.code == 0 and "encoded with other weights" in r.err, r.err
    one_line_error(cli("decode", str(z), "--vae", str(other), "-o", str(tmp_path / "e.png"), "--strict"),
                   "encoded with other weights")
    assert not (tmp_path / "e.png").exists()


# ------------------------------------------------------------------------------------------ 10


def test_issue20_10_library_boundary_raises_vaelens_errors(demo):
    pixels = torch.zeros(1, 3, 32, 32)
    cases = [
        (lambda: vaelens.encode(demo, torch.zeros(1, 4, 32, 32), normalized=True), "pixels"),
        (lambda: vaelens.encode(demo, pixels.to(torch.uint8), normalized=True), "pixels"),
        (lambda: vaelens.encode(demo, pixels.numpy(), normalized=True), "pixels"),
        (lambda: vaelens.decode(demo, torch.zeros(1, 3, 8, 8), normalized=False), "latent"),
        (lambda: vaelens.decode(demo, torch.zeros(1, 4, 8, 8, dtype=torch.int64), normalized=False), "latent"),
        (lambda: vaelens.decode(demo, [[0.0]], normalized=False), "latent"),
        (lambda: vaelens.decode(demo, torch.zeros(1, 4, 8, 8), normalized="yes"), "normalized"),
        (lambda: vaelens.decode(object(), torch.zeros(1, 4, 8, 8), normalized=False), "vae"),
    ]
    for call, param in cases:
        with pytest.raises(VaeLensError) as info:
            call()
        assert info.value.param == param, (param, str(info.value))


def test_issue20_10_normalized_has_no_default(demo):
    with pytest.raises(TypeError, match="normalized"):
        vaelens.decode(demo, torch.zeros(1, 4, 8, 8))  # type: ignore[call-arg]


def test_one_door_takes_a_diffusers_module_and_a_budget(demo):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = vaelens.decode(demo.module, latent, normalized=False)
    budgeted = vaelens.decode(demo.module, latent, normalized=False, budget="1TiB")
    assert plain.tiling is None and budgeted.tiling is not None and not budgeted.tiling.tiled
    torch.testing.assert_close(plain.pixels, budgeted.pixels)
    with torch.inference_mode():
        reference = demo.module.decode(latent).sample
    torch.testing.assert_close(plain.pixels, reference)
    normalised = vaelens.encode(demo.module, torch.zeros(1, 3, 32, 32), normalized=True)
    raw = vaelens.encode(demo, torch.zeros(1, 3, 32, 32), normalized=False)
    scale = demo.spec.normalization.scale
    torch.testing.assert_close(normalised.latent, (raw.latent - demo.spec.normalization.shift) * scale)
    assert not hasattr(demo.module, "_vaelens_budget")  # the budget is the call's only


# --------------------------------------------------------------------------------- the edges


def test_load_vae_demo_is_the_demo_vae():
    from vaelens.weights.demo import demo_weights_path

    assert vaelens.load_vae("demo").source == str(demo_weights_path())


@pytest.mark.parametrize("device", ["cpu:7", "mps", "cuda:x"])
def test_device_is_checked(device):
    with pytest.raises(VaeLensError) as info:
        vaelens.load_vae("demo", device=device)
    assert info.value.param == "device"


def test_comfy_latent_without_marker_says_how_it_was_scaled(tmp_path):
    from safetensors.torch import save_file

    from vaelens.latents import COMFY_LEGACY_MULTIPLIER, load_latents

    t = torch.randn(1, 4, 8, 8)
    save_file({"latent_tensor": t}, str(tmp_path / "old.latent"))
    lf = load_latents(tmp_path / "old.latent")
    torch.testing.assert_close(lf.latent, t * COMFY_LEGACY_MULTIPLIER)
    assert lf.warnings and "1/0.18215" in lf.warnings[0] and "latent_format_version_0" in lf.warnings[0]


def test_corrupt_normalization_record_is_an_error(tmp_path):
    from safetensors.torch import save_file

    from vaelens.latents import load_latents

    for record in ({"kind": "nonsense"}, "zz", [1, 2]):
        save_file({"latent": torch.randn(1, 4, 8, 8)}, str(tmp_path / "z.safetensors"),
                  metadata={"normalized": "true", "normalization": json.dumps(record)})
        with pytest.raises(VaeLensError) as info:
            load_latents(tmp_path / "z.safetensors")
        assert info.value.param == "normalization"


def test_integer_latents_are_refused(tmp_path):
    from safetensors.torch import save_file

    from vaelens.latents import load_latents

    save_file({"latent": torch.zeros(1, 4, 8, 8, dtype=torch.int32)}, str(tmp_path / "z.safetensors"))
    with pytest.raises(VaeLensError, match="int32"):
        load_latents(tmp_path / "z.safetensors")


def test_decoded_size_differing_from_the_record_is_named(tmp_path, cli):
    from safetensors.torch import save_file

    save_file({"latent": torch.randn(1, 4, 8, 8)}, str(tmp_path / "z.safetensors"),
              metadata={"normalized": "false", "pixel_shape": "[1, 3, 40, 40]"})
    r = cli("decode", str(tmp_path / "z.safetensors"), "--vae", "demo", "-o", str(tmp_path / "d.png"))
    assert r.code == 0 and "decoded size 32x32 differs from the 40x40" in r.err, r.err


@pytest.mark.parametrize("command", ["roundtrip", "inspect"])
def test_folder_policy_skip_list_exit_1_strict_stops(cli, folder, tmp_path, command):
    r = cli(command, str(folder), "--vae", "demo", "-o", str(tmp_path / "x"), "--json")
    assert r.code == 1, r.err
    data = r.json()
    assert data["count"] == 2 and [s["path"] for s in data["skipped"]] == [str(folder / "b.png")]
    assert "skipped" in r.err and "1 input skipped" in r.err
    r = cli(command, str(folder), "--vae", "demo", "-o", str(tmp_path / "y"), "--strict")
    one_line_error(r, "b.png")


def test_inspect_help_does_not_claim_demo_for_latent_files(cli):
    r = cli("inspect", "--help")
    text = " ".join(r.out.split())
    assert "a latent file without --vae: statistics only" in text
    assert "'demo': vaelens' built-in demo VAE (the default)" not in text


def test_roundtrip_size_checked_at_parse_time(cli, tmp_path):
    one_line_error(cli("roundtrip", "--size", "0x64", "-o", str(tmp_path / "r")), "--size")
    one_line_error(cli("roundtrip", "--batch-size", "0", "-o", str(tmp_path / "r")), "--batch-size")
    assert not list(tmp_path.iterdir())


def test_plurals_in_encode_output(cli, tmp_path):
    r = cli("encode", "demo", "--vae", "demo", "-o", str(tmp_path / "z.safetensors"))
    assert r.code == 0 and r.out.startswith("1 image [1, 3"), r.out


def test_python_file_level_calls_match_the_cli(tmp_path, cli):
    from vaelens.latents import load_latents
    from vaelens.run import decode_file, encode_files, roundtrip_files

    run = encode_files("demo", tmp_path / "py.safetensors", vae="demo")
    assert cli("encode", "demo", "--vae", "demo", "-o", str(tmp_path / "cli.safetensors")).code == 0
    torch.testing.assert_close(run.latent, load_latents(tmp_path / "cli.safetensors").latent)
    assert run.metadata.posterior == "mode" and run.format == "vaelens safetensors"
    dec = decode_file(run.output, tmp_path / "py.png", vae=run.vae)
    assert dec.outputs == (tmp_path / "py.png",) and dec.normalized and dec.pixel_shape == (1, 3, 200, 296)
    rt = roundtrip_files("demo", tmp_path / "rt", vae=run.vae)
    assert len(rt.items) == 1 and rt.items[0].result.psnr[0] > 15 and not rt.skipped
