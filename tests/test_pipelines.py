"""Whole-pipeline memory: exact sizes from meta-built components, stage/offload logic, budgets, CLI."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vaelens.options import DType
from vaelens.pipelines import (
    PIPELINES,
    Offload,
    PipelineRequest,
    get_pipeline,
    pipeline_names,
)
from vaelens.pipelines.budget import check_pipeline_budget
from vaelens.pipelines.components import build_component, component_size
from vaelens.pipelines.estimate import ActivationPeak, estimate_request, resident_sets
from vaelens.pipelines.inputs import denoiser_plan, module_call, text_encoder_plan
from vaelens.pipelines.spec import ComponentSpec, DenoiserKind, Guidance, Library, Role, TextEncoderCall
from vaelens.render.pipeline import fix_label
from vaelens.units import parse_bytes

# (pipeline, component, published parameter count, where it is published). Within 1%.
PUBLISHED = [
    ("flux1-dev", "transformer", 11.9e9, "issue 5 / FLUX.1 [dev] transformer ≈11.9 B"),
    ("sdxl", "unet", 2.567e9, "SDXL base UNet 2.567 B (SDXL report: 2.6 B)"),
    ("flux1-dev", "text_encoder_2", 4.762e9, "T5-XXL encoder 4.762 B (issue 5)"),
    ("sd3-medium", "text_encoder_3", 4.762e9, "T5-XXL encoder 4.762 B"),
    ("wan21-t2v-14b", "transformer", 14.3e9,
     "wan2.1_t2v_14B_bf16.safetensors: 28.6 GB at 2 bytes/param (Comfy-Org/Wan_2.1_ComfyUI_repackaged)"),
    ("sd15", "unet", 860e6, "stable-diffusion-v1-5 model card: 860M UNet"),
    ("sd15", "text_encoder", 123e6, "stable-diffusion-v1-5 model card: 123M text encoder"),
    ("sd35-large", "transformer", 8.1e9, "stable-diffusion-3.5-large model card: 8.1 billion parameters"),
    ("sana", "transformer", 1.6e9, "Sana_1600M: 1600M parameters"),
    ("sana", "text_encoder", 2.61e9, "google/gemma-2-2b: 2.61B params"),
    ("qwen-image", "text_encoder", 8.29e9, "Qwen/Qwen2.5-VL-7B-Instruct: 8.29B params"),
]


@pytest.mark.parametrize(("pipe", "component", "published", "source"), PUBLISHED)
def test_parameter_counts_match_published_sizes(pipe, component, published, source):
    spec = get_pipeline(pipe)
    comp = next(c for c in spec.components if c.name == component)
    module = build_component(comp, dtype="bf16")
    size = component_size(module)
    assert abs(size.params - published) / published < 0.01, (size.params, source)
    # bf16: 2 bytes per element; 4 for what the library keeps in fp32 (Wan's norms); int64 index buffers
    count: dict = {}
    for t in (*module.parameters(), *module.buffers()):
        count[t.dtype] = count.get(t.dtype, 0) + t.numel()
    assert set(count) <= {torch.bfloat16, torch.float32, torch.int64}
    assert count[torch.bfloat16] > 0.99 * size.params
    assert size.weights_bytes == 2 * count[torch.bfloat16] + 4 * count.get(torch.float32, 0) + 8 * count.get(
        torch.int64, 0)


def test_catalog_names_and_lookup():
    assert pipeline_names() == ["sd15", "sdxl", "sd3-medium", "sd35-large", "flux1-dev", "flux1-schnell",
                                "qwen-image", "sana", "wan21-t2v-1.3b", "wan21-t2v-14b", "ltx-video",
                                "cogvideox-5b", "hunyuanvideo"]
    assert get_pipeline("flux-dev").name == "flux1-dev"
    with pytest.raises(ValueError, match="built-in: sd15, sdxl"):
        get_pipeline("flux3")


def test_every_component_cites_its_config():
    for spec in PIPELINES:
        for comp in spec.components:
            assert comp.config_source.endswith("/config.json"), comp
            assert comp.config_source.startswith(spec.repo), comp
            if comp.role is Role.TEXT_ENCODER:
                assert comp.call is not None
                assert comp.call.source.startswith("diffusers/src/diffusers/pipelines/")


def test_keep_fp32_follows_from_pretrained_rules():
    wan = get_pipeline("wan21-t2v-1.3b")
    small = dataclasses.replace(wan.denoiser, config={**wan.denoiser.config, "num_layers": 1})
    m = build_component(small, dtype="bf16")
    kept = {n for n, p in m.named_parameters() if p.dtype == torch.float32}
    assert "scale_shift_table" in kept and any(".norm2." in n for n in kept)
    assert any(p.dtype == torch.bfloat16 for p in m.parameters())
    t5 = dataclasses.replace(get_pipeline("flux1-dev").text_encoders[1], config={
        **get_pipeline("flux1-dev").text_encoders[1].config, "num_layers": 2, "d_model": 64, "d_ff": 128,
        "num_heads": 4, "d_kv": 16, "vocab_size": 100})
    fp16 = build_component(t5, dtype="fp16")
    assert {n for n, p in fp16.named_parameters() if p.dtype == torch.float32} == {
        f"encoder.block.{i}.layer.1.DenseReluDense.wo.weight" for i in range(2)}
    assert all(p.dtype == torch.bfloat16 for p in build_component(t5, dtype="bf16").parameters())


# Small variants of every denoiser kind: one block each, so the real module runs on meta fast.
SMALL = {
    "sd15": {"block_out_channels": [32, 64, 64, 64], "attention_head_dim": 4, "norm_num_groups": 8,
             "layers_per_block": 1},
    "sdxl": {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4], "norm_num_groups": 8,
             "transformer_layers_per_block": [1, 1, 1], "layers_per_block": 1},
    "sd3-medium": {"num_layers": 1}, "flux1-dev": {"num_layers": 1, "num_single_layers": 1},
    "qwen-image": {"num_layers": 1}, "sana": {"num_layers": 1}, "wan21-t2v-1.3b": {"num_layers": 1},
    "ltx-video": {"num_layers": 1}, "cogvideox-5b": {"num_layers": 1},
    "hunyuanvideo": {"num_layers": 1, "num_single_layers": 1, "num_refiner_layers": 1},
}
LATENT = {"sd15": (1, 4, 32, 32), "sdxl": (1, 4, 32, 32), "sd3-medium": (1, 16, 32, 32),
          "flux1-dev": (1, 16, 32, 32), "qwen-image": (1, 16, 1, 32, 32), "sana": (1, 32, 8, 8),
          "wan21-t2v-1.3b": (1, 16, 3, 16, 16), "ltx-video": (1, 128, 2, 4, 4),
          "cogvideox-5b": (1, 16, 3, 16, 16), "hunyuanvideo": (1, 16, 3, 16, 16)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_denoiser_plan_runs_the_real_module_and_returns_the_latent_shape(name):
    spec = get_pipeline(name)
    small = dataclasses.replace(spec.denoiser, config={**spec.denoiser.config, **SMALL[name]})
    spec = dataclasses.replace(spec, denoiser=small)
    module = build_component(small, dtype="bf16")
    latent = LATENT[name]
    plan = denoiser_plan(spec, latent, batch=2)
    with torch.inference_mode():
        out = module_call(module, plan)(*plan.make_tensors(DType.BF16))[0]
    if spec.denoiser_kind in (DenoiserKind.FLUX, DenoiserKind.QWEN):
        h, w = latent[-2:]
        assert tuple(out.shape) == (2, h // 2 * (w // 2), latent[1] * 4)  # packed 2×2 tokens
    elif spec.denoiser_kind is DenoiserKind.LTX:
        assert tuple(out.shape) == (2, math.prod(latent[2:]), latent[1])
    elif spec.denoiser_kind is DenoiserKind.COGVIDEOX:
        assert tuple(out.shape) == (2, latent[2], latent[1], *latent[3:])  # [B, F, C, h, w]
    else:
        assert tuple(out.shape) == (2, *latent[1:])


def test_text_encoder_plan_matches_the_pipeline_call():
    qwen = get_pipeline("qwen-image").text_encoders[0]
    plan = text_encoder_plan(qwen, batch=2)
    assert [t.shape for t in plan.tensors] == [(2, 1058), (3, 2, 1058)]  # ids, M-RoPE positions
    assert dict(plan.constants) == {"output_hidden_states": True}
    t5 = get_pipeline("flux1-dev").text_encoders[1]
    assert [t.shape for t in text_encoder_plan(t5, batch=1).tensors] == [(1, 512)]


# ── stage and offload logic with small synthetic components ─────────────────────────────────────

def _tiny_clip(name: str, proj: bool, hidden: int, pooled: int) -> ComponentSpec:
    return ComponentSpec(
        name=name, title=name, role=Role.TEXT_ENCODER, library=Library.TRANSFORMERS,
        class_name="CLIPTextModelWithProjection" if proj else "CLIPTextModel", config_class="CLIPTextConfig",
        config={"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_attention_heads": 2,
                "num_hidden_layers": 1, "max_position_embeddings": 8, "vocab_size": 50, "bos_token_id": 0,
                "eos_token_id": 2, "pad_token_id": 1,
                "projection_dim": pooled},
        config_source="synthetic/config.json",
        call=TextEncoderCall(tokens=8, kept_tokens=8, kept_dim=hidden, pooled_dim=pooled),
    )


def _tiny_pipeline(guidance: Guidance, encodes_negative: bool):
    """Three text encoders, a one-block SD3 transformer, the registry's sd3 VAE."""
    sd3 = get_pipeline("sd3-medium")
    encs = (_tiny_clip("text_encoder", True, 16, 8), _tiny_clip("text_encoder_2", True, 32, 8),
            _tiny_clip("text_encoder_3", False, 64, 0))
    small = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "caption_projection_dim": 16,
             "joint_attention_dim": 64, "pooled_projection_dim": 16}
    den = dataclasses.replace(sd3.denoiser, config={**sd3.denoiser.config, **small})
    return dataclasses.replace(sd3, name="tiny", text_encoders=encs, denoiser=den, guidance=guidance,
                               encodes_negative=encodes_negative)


ACT = {"text_encoder": 1000, "text_encoder_2": 2000, "text_encoder_3": 3000, "transformer": 50_000}


def _fake_peak(module, plan, dtype):
    """Synthetic activation peaks keyed by the module's size (so each component is recognisable)."""
    n = sum(p.numel() for p in module.parameters())
    return ActivationPeak(peak_bytes=n % 997 + 10, peak_at=f"n{n}")


def _fake_decode(family, request, tiled):
    latent = (request.batch, 16, request.height // 8, request.width // 8)
    peak = (request.width * request.height) // (4 if tiled else 1)
    return ActivationPeak(peak_bytes=peak, peak_at="dec"), latent


def _estimate(guidance=Guidance.BATCH, negative=True, **kw):
    spec = _tiny_pipeline(guidance, negative)
    req = PipelineRequest(pipeline=spec, width=64, height=64, dtype=DType.BF16, **kw)
    return estimate_request(req, peak_fn=_fake_peak, decode_fn=_fake_decode)


def test_stage_order_follows_encode_prompt_and_guidance():
    labels = [s.label for s in _estimate().stages]
    assert labels == ["text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder (negative)",
                      "text_encoder_2 (negative)", "text_encoder_3 (negative)",
                      "transformer (CFG batch ×2) · 1 step", "vae decode"]
    seq = _estimate(Guidance.SEQUENTIAL)
    den = [s for s in seq.stages if s.role is Role.DENOISER]
    assert [s.call_batch for s in den] == [1, 1]
    latent_bytes = math.prod(seq.latent_shape) * 2
    assert den[1].carried_bytes - den[0].carried_bytes == latent_bytes  # the cond output waits
    none = _estimate(Guidance.NONE)
    assert [s.label for s in none.stages][-2:] == ["transformer · 1 step", "vae decode"]
    assert [s.call_batch for s in _estimate().stages if s.role is Role.DENOISER] == [2]


def test_offload_none_model_sequential_peaks_from_sizes():
    est = _estimate()
    sizes = {c.name: c for c in est.components}
    all_w = sum(c.weights_bytes for c in est.components)
    none = est.mode("none")
    for m in none.stages:
        assert m.weights_bytes == all_w
        assert m.peak_bytes == all_w + m.stage.carried_bytes + m.stage.activation_bytes
    model = est.mode("model")
    # accelerate hooks: TE1 has no predecessor, so its negative call finds TE3 still resident.
    assert [m.resident for m in model.stages] == [
        ("text_encoder",), ("text_encoder_2",), ("text_encoder_3",), ("text_encoder", "text_encoder_3"),
        ("text_encoder_2", "text_encoder_3"), ("text_encoder_3",), ("transformer",), ("vae",)]
    neg2 = model.stages[4]
    assert neg2.weights_bytes == sizes["text_encoder_2"].weights_bytes + sizes["text_encoder_3"].weights_bytes
    seq = est.mode("sequential")
    # buffers stay on the GPU (diffusers: offload_buffers=False); without a per-layer timeline the
    # running weights are bounded by the component's largest module.
    from vaelens.build import build_module
    from vaelens.families import get_family

    modules = [build_component(c, dtype="bf16") for c in est.request.pipeline.components]
    modules.append(build_module(get_family("sd3"), dtype="bf16"))
    buffers = sum(b.numel() * b.element_size() for m in modules for b in m.buffers())
    for m in seq.stages:
        assert m.weights_bytes == buffers + sizes[m.stage.component].largest_leaf_bytes
    for r in est.offload:
        assert r.peak_bytes == max(m.peak_bytes for m in r.stages)
        assert r.peak.peak_bytes == r.peak_bytes
    assert none.peak_bytes >= model.peak_bytes >= seq.peak_bytes


def test_stack_weight_peak_is_the_max_over_layers_of_activation_plus_running_weights():
    from vaelens.pipelines.components import stack_weight_peak

    Layer = dataclasses.make_dataclass("Layer", ["path", "peak_bytes_high"])
    own = {"": 5, "a": 100, "a.b": 1000, "c": 10}
    timeline = [Layer("a.b", 50), Layer("a", 900), Layer("c", 1500), Layer("", 1600)]
    # a.b: 50 + 1000 + 100 + 5 = 1155; a: 900 + 100 + 5 = 1005; c: 1500 + 10 + 5 = 1515; root: 1605
    assert stack_weight_peak(timeline, own) == (1600, 5)
    timeline[0] = Layer("a.b", 600)  # 600 + 1105 = 1705 now beats the root
    assert stack_weight_peak(timeline, own) == (600, 1105)


def test_resident_sets_model_offload_chain():
    spec = get_pipeline("flux1-dev")
    est = _estimate()  # stages of the tiny SD3 layout; reuse only their component names
    assert resident_sets(spec, est.stages[:0], Offload.MODEL) == []
    stages = [dataclasses.replace(est.stages[0], component=c) for c in
              ("text_encoder", "text_encoder_2", "transformer", "vae")]
    assert resident_sets(spec, tuple(stages), Offload.MODEL) == [
        ("text_encoder",), ("text_encoder_2",), ("transformer",), ("vae",)]


def test_vae_tiling_changes_only_the_decode_stage():
    plain, tiled = _estimate(), _estimate(vae_tiling=True)
    assert plain.stages[-1].activation_bytes == 4 * tiled.stages[-1].activation_bytes
    assert [s.activation_bytes for s in plain.stages[:-1]] == [s.activation_bytes for s in tiled.stages[:-1]]


def test_json_has_components_stages_and_peaks():
    data = _estimate().to_json()
    assert {c["name"] for c in data["components"]} == {"text_encoder", "text_encoder_2", "text_encoder_3",
                                                        "transformer", "vae"}
    assert all(c["params"] > 0 and c["weights_bytes"] > 0 for c in data["components"])
    for mode in ("none", "model", "sequential"):
        peaks = [s["peak_bytes"] for s in data["offload"][mode]["stages"]]
        assert data["offload"][mode]["peak_bytes"] == max(peaks)


# ── budgets ───────────────────────────────────────────────────────────────────────────────────

def test_parse_bytes():
    assert parse_bytes("24GiB") == 24 * 1024**3
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("512 MiB") == 512 * 1024**2
    with pytest.raises(ValueError, match="budget '24 bananas'"):
        parse_bytes("24 bananas")


def test_budget_fits_per_mode_and_suggests_changes():
    est = _estimate()
    none, model = est.mode("none").peak_bytes, est.mode("model").peak_bytes
    rep = check_pipeline_budget(est, (none + model) // 2, mode="none",
                                estimate=lambda r, cache=None: estimate_request(r, peak_fn=_fake_peak,
                                                                                  decode_fn=_fake_decode, cache=cache))
    assert dict((m.value, ok) for m, ok, _ in rep.fits) == {"none": False, "model": True, "sequential": True}
    changes = {fix_label(f): f for f in rep.fixes}
    assert changes["--offload model"].fits and changes["--offload sequential"].fits
    assert "--vae-tiling" in changes
    fit = check_pipeline_budget(est, none, mode="none")
    assert fit.fixes == ()


class _AreaEstimate:
    """Stand-in estimate whose peak is W·H bytes in every mode (monotonic in size, known answer)."""

    def __init__(self, request, cache=None):
        self.request = request

    def mode(self, mode):
        return dataclasses.make_dataclass("P", ["peak_bytes"])(self.request.width * self.request.height)


def test_budget_size_search_finds_the_largest_size_that_fits():
    est = _estimate()
    big = dataclasses.replace(est, request=dataclasses.replace(est.request, width=512, height=512))
    budget = max(r.peak_bytes for r in est.offload) * 0 + 320 * 320  # below every mode's peak
    rep = check_pipeline_budget(big, budget, mode="none", estimate=_AreaEstimate)
    assert [fix_label(f) for f in rep.fixes if f.size is not None] == ["--size 320x320"]
    wide = dataclasses.replace(est, request=dataclasses.replace(est.request, width=1024, height=512))
    rep = check_pipeline_budget(wide, 640 * 320, mode="none", estimate=_AreaEstimate)
    assert [fix_label(f) for f in rep.fixes if f.size is not None] == ["--size 640x320"]


# ── end to end with the real tracer and memory model ────────────────────────────────────────────

def test_real_trace_estimate_sd15_small():
    est = estimate_request(PipelineRequest(pipeline=get_pipeline("sd15"), width=256, height=256))
    assert est.latent_shape == (1, 4, 32, 32)
    den = next(s for s in est.stages if s.role is Role.DENOISER)
    # The step's output alone (noise prediction [2,4,32,32] bf16) is a lower bound of its peak.
    assert den.activation_bytes >= 2 * 4 * 32 * 32 * 2
    dec = est.stages[-1]
    assert dec.activation_bytes >= 3 * 256 * 256 * 2  # decoded pixels are part of the decode peak
    assert est.mode("none").peak.stage.label == "vae decode"


# ── CLI ───────────────────────────────────────────────────────────────────────────────────────

def test_cli_list_and_unknown(cli):
    res = cli("pipeline", "--list")
    assert res.code == 0
    assert all(name in res.out for name in pipeline_names())
    bad = cli("pipeline", "flux3")
    assert bad.code == 2 and "built-in: sd15" in bad.err and bad.out == ""
    bad = cli("pipeline", "sdxl", "--frames", "9")
    assert bad.code == 2 and "makes images" in bad.err


def test_cli_json_and_plot(cli, tmp_path):
    png = tmp_path / "new" / "mem.png"  # a folder that does not exist yet is made, as for every other output
    res = cli("pipeline", "sd15", "--size", "256x256", "--offload", "model", "--json", "--plot", str(png))
    assert res.code == 0, res.err
    data = res.json()
    assert data["pipeline"] == "sd15" and data["dtype"] == "bf16"
    assert data["peak_bytes"] == data["offload"]["model"]["peak_bytes"]
    assert [c["name"] for c in data["components"]] == ["text_encoder", "unet", "vae"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_format_refused_before_estimating(cli):
    bad = cli("pipeline", "sd15", "--plot", "mem.txt")
    assert bad.code == 2 and bad.out == "" and bad.err.count("\n") == 1
    assert "argument --plot: plot 'mem.txt': matplotlib cannot write .txt; use one of:" in bad.err
    assert "png" in bad.err


def test_plot_without_suffix_is_written_as_png(tmp_path):
    from vaelens.render.pipeline import plot_pipeline

    out = plot_pipeline(_estimate(), tmp_path / "timeline", mode=Offload.NONE)
    assert out == tmp_path / "timeline.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_header_shows_the_floored_size_that_was_estimated():
    from vaelens.render.pipeline import render_pipeline

    spec = dataclasses.replace(_tiny_pipeline(Guidance.BATCH, True), vae_family="flux1")  # floors to 16
    est = estimate_request(PipelineRequest(pipeline=spec, width=72, height=64, dtype=DType.BF16),
                            peak_fn=_fake_peak, decode_fn=_fake_decode)
    assert est.used_size == (64, 64)
    text = render_pipeline(est, Offload.NONE)
    assert text.splitlines()[1].startswith("64x64, batch 1") and "width 72 → 64" in text


def test_rendered_report_golden(golden):
    from vaelens.render.pipeline import render_pipeline

    est = _estimate()
    rep = check_pipeline_budget(est, est.mode("model").peak_bytes - 1, mode="model", estimate=_AreaEstimate)
    golden("pipeline_tiny.txt", render_pipeline(est, Offload.MODEL, rep) + "\n")


def test_real_inputs_run_on_cpu():
    """make_tensors off meta gives values a real call accepts (ids in range, positions, timesteps)."""
    from vaelens.pipelines.components import _construct

    torch.manual_seed(0)
    spec = _tiny_pipeline(Guidance.BATCH, True)
    enc = spec.text_encoders[1]
    plan = text_encoder_plan(enc, batch=2)
    with torch.inference_mode():
        out = module_call(_construct(enc).eval(), plan)(*plan.make_tensors(DType.FP32, device="cpu"))
    assert out.last_hidden_state.shape == (2, 8, 32) and torch.isfinite(out.last_hidden_state).all()
    plan = denoiser_plan(spec, (1, 16, 8, 8), batch=2)
    with torch.inference_mode():
        noise = module_call(_construct(spec.denoiser).eval(), plan)(*plan.make_tensors(DType.FP32, device="cpu"))[0]
    assert noise.shape == (2, 16, 8, 8) and torch.isfinite(noise).all()


def test_stage_benchmark_quick_mode_runs(capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_stages.py"
    spec = importlib.util.spec_from_file_location("pipeline_stages", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["stage"] for r in rows] == ["text_encoder", "unet"]
    assert all(r["predicted"] > 0 for r in rows)
