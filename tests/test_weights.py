"""Loading local weights: every on-disk layout, family detection and refusal, corrupt and pickle files.

Tiny AutoencoderKLs are built here and written in each layout; what loads back must equal the
original module tensor for tensor (and so give the same latents)."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tiny_models import tiny_kl
from vaelens.errors import WeightsError
from vaelens.families.from_config import spec_from_config
from vaelens.weights import load as W
from vaelens.weights.load import Layout, load_vae

TINY = tiny_kl()


def tiny_vae(seed: int = 0, **overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    cfg = {**TINY, **overrides}
    return AutoencoderKL.from_config(cfg).eval(), cfg


def to_ldm(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> original (CompVis ldm) keys: the inverse of diffusers'
    convert_ldm_vae_checkpoint, written independently so the test checks that conversion."""
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, value in state.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda m: f"decoder.up.{blocks - 1 - int(m.group(1))}.block.",
            k,
        )
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{blocks - 1 - int(m.group(1))}.upsample.",
            k,
        )
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", k)
        m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", k)
        if m:
            k = f"{m.group(1)}.mid.attn_1.{attn[m.group(2)]}.{m.group(3)}"
            if value.ndim == 2:  # ldm stores the attention projections as 1×1 convolutions
                value = value[:, :, None, None]
        out[k] = value.clone()
    return out


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].float(), sb[k].float()), k


@pytest.fixture(scope="module")
def tiny():
    return tiny_vae()


def test_diffusers_folder_loads_the_same_module(tmp_path, tiny):
    module, cfg = tiny
    module.save_pretrained(tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae", device="cpu")
    assert loaded.layout is Layout.DIFFUSERS_FOLDER
    assert "derived from config.json" in loaded.detection
    assert loaded.spec.latent_channels == 4 and loaded.spec.spatial_factor == 2
    assert loaded.spec.normalization.scale == 0.5
    assert_same_weights(module, loaded.module)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(module.encode(x).latent_dist.mode(), loaded.module.encode(x).latent_dist.mode())


def test_pipeline_folder_with_vae_subfolder(tmp_path, tiny):
    module, _ = tiny
    module.save_pretrained(tmp_path / "pipe" / "vae")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    loaded = load_vae(tmp_path / "pipe", device="cpu")
    assert loaded.files[0].endswith("vae/diffusion_pytorch_model.safetensors")
    assert_same_weights(module, loaded.module)


def test_single_file_with_original_keys_is_converted_by_diffusers(tmp_path, tiny):
    module, cfg = tiny
    ldm = to_ldm(module.state_dict(), blocks=2)
    assert "decoder.up.1.block.0.conv1.weight" in ldm and "encoder.mid.attn_1.q.weight" in ldm
    save_file(ldm, str(tmp_path / "tiny_vae.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = load_vae(tmp_path / "tiny_vae.safetensors", family=str(tmp_path / "config.json"), device="cpu")
    assert loaded.layout is Layout.SINGLE_FILE and loaded.converted
    assert_same_weights(module, loaded.module)


def test_full_checkpoint_reads_only_first_stage_model(tmp_path, tiny):
    module, cfg = tiny
    full = {f"first_stage_model.{k}": v for k, v in to_ldm(module.state_dict(), blocks=2).items()}
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(3, 3)  # a UNet tensor to ignore
    save_file(full, str(tmp_path / "full.safetensors"))
    state, _ = W.read_state_dict(tmp_path / "full.safetensors")
    assert all(k.startswith("first_stage_model.") for k in state)
    loaded = load_vae(tmp_path / "full.safetensors", family=spec_from_config(cfg, source="tiny"), device="cpu")
    assert_same_weights(module, loaded.module)


def test_hf_cache_layout(tmp_path, tiny, monkeypatch):
    module, _ = tiny
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-vae"
    module.save_pretrained(repo / "snapshots" / commit / "vae")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_vae("acme/tiny-vae", device="cpu")
    assert loaded.layout is Layout.HF_CACHE
    assert commit in loaded.files[0]
    assert_same_weights(module, loaded.module)
    with pytest.raises(WeightsError, match=r"acme/other.*never downloads.*cached repos: acme/tiny-vae"):
        load_vae("acme/other", device="cpu")


def test_derived_family_is_named_by_what_the_user_gave(tmp_path, tiny, monkeypatch):
    module, _ = tiny
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-top"
    module.save_pretrained(repo / "snapshots" / commit)  # config.json at the top, no vae/
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert load_vae("acme/tiny-top", device="cpu").family == "acme/tiny-top"  # not the snapshot hash
    module.save_pretrained(tmp_path / "my-pipeline" / "vae")
    assert load_vae(tmp_path / "my-pipeline", device="cpu").family == "my-pipeline"  # not 'vae'


def test_wrong_family_is_refused_naming_both(tmp_path):
    module, cfg = tiny_vae(latent_channels=16)
    module.save_pretrained(tmp_path / "vae16")
    with pytest.raises(WeightsError) as err:
        load_vae(tmp_path / "vae16", family="sdxl", device="cpu")
    msg = str(err.value)
    assert "not sdxl (4 latent channels)" in msg
    assert "the file has 16 latent channels" in msg


def test_detection_from_shapes_and_ambiguity(tmp_path, tiny, monkeypatch):
    module, cfg = tiny
    save_file(to_ldm(module.state_dict(), blocks=2), str(tmp_path / "x.safetensors"))
    a = spec_from_config(cfg, source="a")
    a = replace(a, name="tiny-a")
    b = replace(a, name="tiny-b")
    other = replace(spec_from_config({**cfg, "latent_channels": 8}, source="c"), name="tiny-c8")
    monkeypatch.setattr(W, "FAMILIES", (a, other))
    loaded = load_vae(tmp_path / "x.safetensors", device="cpu")
    assert loaded.family == "tiny-a" and loaded.detection == "tensor shapes fit tiny-a only"
    monkeypatch.setattr(W, "FAMILIES", (a, b, other))
    with pytest.raises(WeightsError, match=r"\(4 latent channels\) fit tiny-a, tiny-b alike.*family="):
        load_vae(tmp_path / "x.safetensors", device="cpu")
    monkeypatch.setattr(W, "FAMILIES", (other,))
    with pytest.raises(WeightsError, match="fit no registry family"):
        load_vae(tmp_path / "x.safetensors", device="cpu")


def test_fit_reports_the_mismatching_tensor(tiny):
    module, cfg = tiny
    spec8 = spec_from_config({**cfg, "latent_channels": 8}, source="c8")
    fit = W.fit_family(spec8, module.state_dict())
    assert not fit.ok
    assert "decoder.conv_in.weight is [16, 4, 3, 3] in the file, [16, 8, 3, 3]" in fit.problem
    assert W.latent_channels_hint(module.state_dict()) == 4


@pytest.mark.parametrize("content", [b"not a safetensors file at all", b""])
def test_corrupt_file_is_a_weights_error(tmp_path, content):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_vae(p, device="cpu")


def test_truncated_file_is_a_weights_error(tmp_path, tiny):
    module, _ = tiny
    good = tmp_path / "good.safetensors"
    save_file(module.state_dict(), str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_vae(cut, device="cpu")


def test_missing_path_and_unknown_suffix(tmp_path):
    with pytest.raises(WeightsError, match="neither a file, a folder, nor a repo id"):
        load_vae(tmp_path / "nope" / "x.safetensors", device="cpu")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="suffix '.onnx'"):
        load_vae(tmp_path / "w.onnx", device="cpu")


def test_pickle_needs_the_flag_and_warns(tmp_path, tiny):
    module, cfg = tiny
    p = tmp_path / "vae.ckpt"
    torch.save({"state_dict": to_ldm(module.state_dict(), blocks=2)}, p)
    spec = spec_from_config(cfg, source="tiny")
    with pytest.raises(WeightsError, match="allow_pickle=True"):
        load_vae(p, family=spec, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_vae(p, family=spec, device="cpu", allow_pickle=True)
    assert any("weights_only=True" in str(w.message) for w in caught)
    assert_same_weights(module, loaded.module)


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_unreadable_pickle_is_one_line_without_torchs_advice(tmp_path):
    torch.save({"w": _RunsCode()}, tmp_path / "evil.pt")
    (tmp_path / "junk.ckpt").write_bytes(b"garbage" * 100)
    for name, reason in (("evil.pt", "Unsupported global: GLOBAL print"), ("junk.ckpt", "Unsupported operand")):
        with pytest.raises(WeightsError) as err, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_vae(tmp_path / name, device="cpu", allow_pickle=True)
        msg = str(err.value)
        assert "\n" not in msg and reason in msg and "weights_only=False" not in msg


def test_dtype_and_offline_env_restored(tmp_path, tiny, monkeypatch):
    module, _ = tiny
    module.save_pretrained(tmp_path / "vae")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    loaded = load_vae(tmp_path / "vae", device="cpu", dtype="bf16")
    assert next(loaded.module.parameters()).dtype == torch.bfloat16
    with W.offline():
        import os

        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in __import__("os").environ


def test_registry_match_uses_registry_spec(tmp_path):
    from vaelens.families import get_family

    sdxl = get_family("sdxl")
    assert W.registry_match(sdxl.diffusers_config()) is sdxl
    assert W.registry_match({**sdxl.diffusers_config(), "latent_channels": 16}) is None


def test_weights_folder_without_weights(tmp_path, tiny):
    _, cfg = tiny
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="no weights vaelens can pick"):
        load_vae(tmp_path / "f", device="cpu")


def test_loaded_json_keys(tmp_path, tiny):
    module, _ = tiny
    module.save_pretrained(tmp_path / "vae")
    info = load_vae(tmp_path / "vae", device="cpu").to_json()
    assert info["parameters"] == sum(p.numel() for p in module.parameters())
    assert set(info) >= {"family", "class", "source", "layout", "detection", "device", "dtype"}
    assert Path(info["files"][0]).name == "diffusion_pytorch_model.safetensors"


def meta_checkpoint(name: str, *, ldm: bool) -> dict[str, torch.Tensor]:
    """A registry family's real module on the meta device -> its state dict (shapes only, no memory),
    in diffusers keys or the original ldm keys released files use."""
    from vaelens.build import build_module
    from vaelens.families import get_family

    spec = get_family(name)
    state = build_module(spec).state_dict()
    return to_ldm(state, len(spec.config["block_out_channels"])) if ldm else dict(state)


def test_detection_on_released_geometries_in_original_layout():
    from vaelens.families import get_family

    sdxl_file = meta_checkpoint("sdxl", ldm=True)
    with pytest.raises(WeightsError, match=r"\(4 latent channels\) fit sd15, sd2, sdxl alike"):
        W._spec_for_file(Path("sd_xl_vae.safetensors"), sdxl_file, {}, None)
    fit = W.fit_family(get_family("sdxl"), sdxl_file)
    assert fit.ok and fit.converted
    flux_file = meta_checkpoint("flux1", ldm=True)  # ae.safetensors: ldm keys, no quant convs
    assert "quant_conv.weight" not in flux_file
    bad = W.fit_family(get_family("sdxl"), flux_file)
    assert not bad.ok
    msg = str(W._mismatch("ae.safetensors", flux_file, get_family("sdxl"), bad))
    assert "not sdxl (4 latent channels)" in msg and "the file has 16 latent channels" in msg
    assert "families it fits: sd3, flux1" in msg
