"""Latent statistics against numpy, the least-squares projection against a known map, latent files, the grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vaelens.errors import VaeLensError
from vaelens.families import get_family
from vaelens.latents import (
    COMFY_KEY,
    COMFY_VERSION_KEY,
    channel_stats,
    fit_rgb_projection,
    load_latents,
    normalization_from_json,
    normalization_to_json,
    save_comfy_latent,
    save_latents,
)

GEN = torch.Generator().manual_seed(0)


def test_channel_stats_match_numpy():
    z = torch.randn(2, 5, 6, 7, generator=GEN) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5]).view(1, 5, 1, 1)
    z = z + torch.arange(5.0).view(1, 5, 1, 1)
    s = channel_stats(z)
    a = z.numpy().astype(np.float64)
    per = a.transpose(1, 0, 2, 3).reshape(5, -1)
    np.testing.assert_allclose(s.mean, per.mean(1), atol=1e-5)
    np.testing.assert_allclose(s.std, per.std(1), atol=1e-5)
    np.testing.assert_allclose(s.min, per.min(1), atol=1e-5)
    np.testing.assert_allclose(s.max, per.max(1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(s.correlation), np.corrcoef(per), atol=1e-5)
    assert s.implied_scale == pytest.approx(1 / a.std(), rel=1e-5)
    assert s.channels == 5 and s.nonfinite == 0


def test_correlated_channels_show_in_the_matrix():
    base = torch.randn(1, 1, 32, 32, generator=GEN)
    z = torch.cat(
        [
            base,
            -2 * base + 0.01 * torch.randn(1, 1, 32, 32, generator=GEN),
            torch.randn(1, 1, 32, 32, generator=GEN),
        ],
        dim=1,
    )
    corr = np.asarray(channel_stats(z).correlation)
    assert corr[0, 1] < -0.99 and abs(corr[0, 2]) < 0.2


def test_nonfinite_values_are_counted_and_skipped():
    z = torch.ones(1, 2, 4, 4)
    z[0, 0, 0, 0] = float("nan")
    z[0, 1, 1, 1] = float("inf")
    s = channel_stats(z)
    assert s.nonfinite == 2 and s.mean == (1.0, 1.0)
    with pytest.raises(VaeLensError, match="no finite values"):
        channel_stats(torch.full((1, 2, 2, 2), float("nan")))


def test_projection_recovers_a_known_linear_map():
    w = np.array([[0.3, -0.2, 0.1, 0.05], [0.0, 0.4, -0.1, 0.2], [-0.25, 0.1, 0.3, 0.0]])
    b = np.array([0.5, 0.45, 0.4])
    z = torch.randn(2, 4, 9, 11, generator=GEN, dtype=torch.float64)
    rgb = torch.einsum("kc,bchw->bkhw", torch.from_numpy(w), z) + torch.from_numpy(b).view(1, 3, 1, 1)
    proj = fit_rgb_projection(z, rgb)
    np.testing.assert_allclose(np.asarray(proj.weight), w, atol=1e-10)
    np.testing.assert_allclose(proj.bias, b, atol=1e-10)
    assert proj.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(proj.apply(z), rgb.permute(0, 2, 3, 1).numpy(), atol=1e-10)
    noisy = rgb + 0.5 * torch.randn(rgb.shape, generator=GEN, dtype=torch.float64)
    assert fit_rgb_projection(z, noisy).r2 < 0.9  # R² says when a linear read-out does not explain colour
    assert proj.to_json()["label"].startswith("approximation")


def test_vaelens_latent_file_roundtrip(tmp_path):
    z = torch.randn(2, 4, 3, 5, generator=GEN)
    norm = get_family("sdxl").normalization
    save_latents(
        tmp_path / "z.safetensors",
        z,
        metadata={
            "family": "sdxl",
            "normalized": True,
            "normalization": normalization_to_json(norm),
            "pixel_shape": [2, 3, 24, 40],
            "latent_shape": list(z.shape),
            "sources": ["a.png", "b.png"],
        },
    )
    lf = load_latents(tmp_path / "z.safetensors")
    assert torch.equal(lf.latent, z) and lf.family == "sdxl" and lf.normalized is True and not lf.comfy
    assert lf.metadata["pixel_shape"] == [2, 3, 24, 40] and lf.metadata["format"] == "vaelens.latent/1"
    assert lf.metadata["vaelens_version"]
    assert normalization_from_json(lf.metadata["normalization"]) == norm


def test_comfy_latent_file_is_what_comfyui_writes(tmp_path):
    z = torch.randn(1, 4, 8, 8, generator=GEN)
    save_comfy_latent(tmp_path / "x.latent", z)
    raw = load_file(str(tmp_path / "x.latent"))
    assert set(raw) == {COMFY_KEY, COMFY_VERSION_KEY} and raw[COMFY_VERSION_KEY].numel() == 0
    lf = load_latents(tmp_path / "x.latent")
    assert lf.comfy and lf.normalized is False and torch.equal(lf.latent, z)
    # A file from before latent_format_version_0 held SD1 latents ×0.18215; ComfyUI's LoadLatent undoes it.
    save_file({COMFY_KEY: z}, str(tmp_path / "old.latent"))
    old = load_latents(tmp_path / "old.latent")
    torch.testing.assert_close(old.latent, z / 0.18215)


def test_latent_file_errors(tmp_path):
    save_file({"other": torch.zeros(1)}, str(tmp_path / "o.safetensors"))
    with pytest.raises(VaeLensError, match="expected 'latent'"):
        load_latents(tmp_path / "o.safetensors")
    # a weights file given as latents: the message names a few keys and the count, not all of them
    save_file({f"decoder.block.{i}.weight": torch.zeros(1) for i in range(200)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(VaeLensError) as err:
        load_latents(tmp_path / "w.safetensors")
    assert "(200 tensors)" in str(err.value) and len(str(err.value)) < 300
    (tmp_path / "bad.latent").write_bytes(b"junk")
    with pytest.raises(VaeLensError, match="not a readable safetensors"):
        load_latents(tmp_path / "bad.latent")


@pytest.mark.parametrize("channels", [4, 16, 32])
def test_grid_has_one_panel_per_channel(tmp_path, channels):
    pytest.importorskip("matplotlib")
    from vaelens.render.figures import plot_channel_grid

    z = torch.randn(channels, 6, 8, generator=GEN)
    info = plot_channel_grid(z, tmp_path / "g.png", title="t", units="raw latent value z")
    assert info.panels == channels and info.rows * info.cols >= channels
    assert info.vmax == pytest.approx(float(z.abs().max())) and info.vmin == -info.vmax
    assert (tmp_path / "g.png").stat().st_size > 1000


def test_writing_latents_to_a_folder_is_refused(tmp_path):
    z = torch.zeros(1, 4, 2, 2)
    for save in (lambda p: save_latents(p, z, metadata={}), lambda p: save_comfy_latent(p, z)):
        with pytest.raises(VaeLensError, match="is a folder; give a file name"):
            save(tmp_path)


def test_constant_latent_stats_are_strict_json():
    import json

    data = channel_stats(torch.zeros(1, 4, 3, 3)).to_json()
    assert data["implied_scaling_factor"] is None
    json.dumps(data, allow_nan=False)  # no Infinity / NaN tokens, which JSON parsers such as jq refuse


@pytest.mark.parametrize("shape", [(4, 8), (4, 8, 8), (1, 4, 0, 8), (1, 4, 1, 2, 2, 2)])
@pytest.mark.parametrize("key", ["latent", COMFY_KEY])
def test_latent_files_of_the_wrong_rank_or_empty_are_refused(tmp_path, shape, key):
    save_file({key: torch.zeros(shape)}, str(tmp_path / "z.safetensors"))
    with pytest.raises(VaeLensError, match=r"expected \[B, C, h, w\] or \[B, C, F, h, w\] with no empty axis"):
        load_latents(tmp_path / "z.safetensors")
