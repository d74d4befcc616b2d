"""The public Python API: one signature per verb (model first, then a PixelRequest), lazy names and
submodules, sorted __all__ with no name that is also a submodule, and the JSON vocabulary."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest
import torch

import vaelens
from tiny_models import tiny_kl
from vaelens import PixelRequest
from vaelens.build import build_module
from vaelens.options import DType


def test_all_is_sorted_and_no_public_name_is_a_submodule():
    assert vaelens.__all__ == sorted(vaelens.__all__)
    submodules = {m.name for m in pkgutil.iter_modules(vaelens.__path__)}
    assert "run" in submodules and not set(vaelens.__all__) & submodules
    for name in vaelens.__all__:
        assert getattr(vaelens, name) is not None


def test_submodules_load_on_first_use_after_a_bare_import():
    code = "import vaelens; print(vaelens.run.encode.__name__, vaelens.latents.LatentMetadata.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["encode", "LatentMetadata"]
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        vaelens.no_such_thing  # noqa: B018


def test_every_verb_takes_the_model_then_one_request():
    req = PixelRequest(width=64, height=32, dtype=DType.BF16)
    plan = vaelens.shapes("sdxl", req)
    assert plan.used_size == (32, 64)  # (H, W)
    text = vaelens.explain_family("sdxl", req)
    assert "64x32" in text
    est = vaelens.estimate_memory("sdxl", req, op="decode")
    assert est.output_shape == (1, 3, 32, 64)


def test_estimate_memory_takes_a_module_with_real_weights_and_leaves_it_alone():
    torch.manual_seed(0)
    real = build_module(tiny_kl(), device="cpu")
    meta = build_module(tiny_kl(), device="meta")
    req = PixelRequest(width=32, height=32)
    before = {k: v.clone() for k, v in real.state_dict().items()}
    got = vaelens.estimate_memory(real, req, op="decode")
    assert got.peak_bytes == vaelens.estimate_memory(meta, req, op="decode").peak_bytes > 0
    assert all(p.device.type == "cpu" for p in real.parameters())
    assert all(torch.equal(before[k], v) for k, v in real.state_dict().items())


def test_estimate_pipeline_takes_a_name_and_defaults_to_the_pipelines_size():
    from vaelens.pipelines import PipelineRequest, get_pipeline

    full = PipelineRequest.of("flux1-dev")
    spec = get_pipeline("flux1-dev")
    assert (full.height, full.width) == spec.default_size and full.dtype is DType.BF16
    asked = PipelineRequest.of(spec, PixelRequest(width=512, height=256, batch=2), vae_tiling=True)
    assert (asked.width, asked.height, asked.batch, asked.vae_tiling) == (512, 256, 2, True)
    with pytest.raises(vaelens.VaeLensError, match="unknown pipeline 'flux9'"):
        PipelineRequest.of("flux9")


def test_pipeline_json_sizes_are_height_first_and_warnings_is_the_word():
    from vaelens.pipelines import PipelineRequest, get_pipeline
    from vaelens.pipelines.estimate import ActivationPeak, estimate_request
    from vaelens.render.pipeline import pipeline_list_json

    def peak(module, plan, dtype):
        return ActivationPeak(peak_bytes=1, peak_at="x")

    def decode(family, request, tiled):
        return ActivationPeak(peak_bytes=1, peak_at="d"), (1, 16, request.height // 8, request.width // 8)

    spec = get_pipeline("flux1-dev")
    est = estimate_request(PipelineRequest(pipeline=spec, width=1000, height=512), peak_fn=peak, decode_fn=decode)
    data = est.to_json()
    assert data["size"] == [512, 1000] and data["used_size"] == [512, 992]
    assert data["warnings"] and "notes" not in data
    listed = next(p for p in pipeline_list_json([spec]) if p["name"] == "flux1-dev")
    assert listed["default_size"] == list(spec.default_size) == [1024, 1024]


def test_families_json_default_size_is_height_first():
    from vaelens.families import get_family
    from vaelens.render.tables import families_json

    wan = get_family("wan21")
    (data,) = families_json([wan])
    assert data["default_size"] == [480, 832] and wan.default_size == (480, 832)


def _cli_json(capsys, argv: list[str]):
    import json

    from vaelens.cli import main

    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_one_normalisation_shape_in_shapes_families_encode_and_the_latent_file(tmp_path, capsys):
    from vaelens.families import get_family
    from vaelens.latents import load_latents
    from vaelens.normalization import normalization_to_json

    keys = list(normalization_to_json(get_family("sdxl").normalization))
    assert keys == ["kind", "formula", "scale", "shift", "mean", "std", "stats_from", "patch", "eps", "source"]
    assert list(_cli_json(capsys, ["shapes", "sdxl"])["normalization"]) == keys
    fam = next(f for f in _cli_json(capsys, ["families"]) if f["name"] == "flux2")
    assert list(fam["normalization"]) == keys
    enc = _cli_json(capsys, ["encode", "demo", "--vae", "demo", "-o", str(tmp_path / "z.safetensors")])
    assert list(enc["normalization"]) == keys
    stored = load_latents(tmp_path / "z.safetensors").metadata["normalization"]
    assert stored == enc["normalization"]


def test_latent_files_of_0_1_without_formula_and_eps_still_load(tmp_path):
    from vaelens.latents import LatentMetadata, load_latents, save_latents

    old = {"kind": "affine", "scale": 0.5, "shift": 0.1, "mean": None, "std": None, "stats_from": None,
           "patch": None, "source": "x"}  # what 0.1 wrote
    save_latents(tmp_path / "old.safetensors", torch.zeros(1, 4, 2, 2),
                 metadata={"family": "sdxl", "normalized": True, "normalization": old, "pixel_shape": [1, 3, 16, 16]})
    info = load_latents(tmp_path / "old.safetensors").info
    assert (info.normalization.scale, info.normalization.shift, info.normalization.eps) == (0.5, 0.1, 0.0)
    assert info.normalized is True and info.pixel_shape == (1, 3, 16, 16)
    assert LatentMetadata.from_json(info.to_json()) == info


def test_encode_decode_and_roundtrip_report_their_steps_in_one_shape(tmp_path, capsys):
    enc = _cli_json(capsys, ["encode", "demo", "--vae", "demo", "-o", str(tmp_path / "z.safetensors")])
    dec = _cli_json(capsys, ["decode", str(tmp_path / "z.safetensors"), "--vae", "demo", "-o", str(tmp_path / "d.png")])
    rt = _cli_json(capsys, ["roundtrip", "-o", str(tmp_path / "rt")])
    shapes = {name: sorted(step) for name, step in
              (("encode", enc["encode"]), ("decode", dec["decode"]), ("rt encode", rt["encode"]),
               ("rt decode", rt["decode"]))}
    assert len({tuple(v) for v in shapes.values()}) == 1, shapes
    assert enc["encode"]["calls"] == 1 and rt["decode"]["op"] == "decode"


def test_public_names_are_discoverable_from_a_notebook():
    """dir(vaelens) and help(vaelens) show every public name before any is loaded, each with its contract
    (issue 18 item 8)."""
    import pydoc
    import subprocess
    import sys

    script = ("import vaelens, sys; d = dir(vaelens); "
              "print(all(n in d for n in vaelens.__all__), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "False"], out.stderr  # listed, and listing loads nothing heavy
    listing = {line.split()[0]: line for line in vaelens.__doc__.splitlines() if line.startswith("    ")}
    for name in (n for n in vaelens.__all__ if n != "__version__"):
        assert name in listing, f"{name} is public but not listed in vaelens' docstring"
        obj = getattr(vaelens, name)
        assert obj.__doc__, f"{name} has no docstring"
        if callable(obj) and not isinstance(obj, type):
            assert "->" in listing[name], f"{name}'s line in vaelens' docstring gives no contract"
    assert set(listing) <= set(vaelens.__all__), "the docstring lists a name that is not public"
    text = pydoc.render_doc(vaelens, renderer=pydoc.plaintext)
    for name in ("shapes", "estimate_memory", "plan_tiling", "PixelRequest"):
        assert f"{name}(" in text
