"""vaelens.memory: hand-counted peaks, replay of a real H100 operator record, budgets, CLI, benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaelens.memory.budget import check_vae_budget, largest_fitting
from vaelens.memory.estimate import estimate_memory, simulate
from vaelens.options import DType, PixelRequest
from vaelens.trace import trace_module
from vaelens.units import parse_bytes

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "memory"
MEASUREMENTS = ROOT.parent / "shared" / "measurements"

TINY_KL = {
    "_class_name": "AutoencoderKL",
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
}


def test_hand_counted_peak_of_three_layers():
    """conv(3->8) -> SiLU -> conv(8->8), 16x16 fp32, CPU tensors; every activation is 8192 bytes.

    conv 3->8: fewer than 8 input channels, cuDNN's direct kernel: no temporaries -> 8192 live.
    silu: +8192 -> 16384. Then conv 1's output dies; conv 8->8 runs with 8192 live, allocates its
    8192 output and NHWC copies of input (8192), output (8192) and weight (8*8*9*4 = 2304 -> 2560),
    plus a 512-byte workspace: 8192 + 8192 + 8192 + 8192 + 2560 + 512 = 35840.
    """
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 8, 3, padding=1))
    est = simulate(trace_module(m, torch.randn(1, 3, 16, 16), op="forward"))
    assert est.peak_bytes == 35840
    assert est.peak_at == "2"
    assert est.peak_op == "aten.conv2d.default"


def test_replay_of_h100_operator_record_taesd():
    """tests/data/memory: a copy of shared/measurements/ops/ops-taesd-decode-bf16-1x3x512x512.json.

    Every operator's `before` and `after` (allocator bytes above base) equals the simulation's, and
    the per-operator temporaries match the rules to the byte; the whole-call peak too.
    """
    rec = json.loads((DATA / "ops-taesd-decode-bf16-1x3x512x512.json").read_text())
    cfg = json.loads((DATA / "taesd.json").read_text())
    from vaelens.build import build_module
    from vaelens.memory.allocator import CachingAllocator
    from vaelens.memory.rules import transient

    module = build_module(cfg, dtype=DType.BF16)
    tr = trace_module(module, [torch.empty(1, 4, 64, 64, device="meta", dtype=torch.bfloat16)], op="decode")
    assert [e.name for e in tr.events] == [o["op"] for o in rec["ops"]]
    alloc = CachingAllocator()
    base = rec["base"]
    for ev, o in zip(tr.events, rec["ops"], strict=True):
        for sid in ev.frees_before:
            alloc.free(sid)
        assert alloc.allocated == o["before"] - base, ev
        for sid, n in ev.allocs:
            alloc.malloc(sid, n)
        assert alloc.allocated == o["after"] - base, ev
        assert transient(ev) == o["peak_during"] - o["after"], ev
    assert simulate(tr).peak_bytes == rec["peak_above_base"]


def test_estimate_for_config_dict_and_module_agree():
    req = PixelRequest(width=64, height=48, dtype=DType.BF16)
    a = estimate_memory(TINY_KL, req, op="decode")
    from vaelens.build import build_module

    b = estimate_memory(build_module(TINY_KL, dtype=DType.BF16), req, op="decode")
    assert a.peak_bytes == b.peak_bytes > a.output_bytes == 3 * 48 * 64 * 2
    assert a.input_shape == (1, 4, 24, 32)
    assert a.weights_bytes == sum(p.numel() * 2 for p in build_module(TINY_KL).parameters())


def test_peak_scales_with_batch_and_dtype():
    one = estimate_memory(TINY_KL, PixelRequest(width=64, height=64, dtype=DType.FP32), op="decode")
    half = estimate_memory(TINY_KL, PixelRequest(width=64, height=64, dtype=DType.BF16), op="decode")
    four = estimate_memory(TINY_KL, PixelRequest(width=64, height=64, batch=4, dtype=DType.FP32), op="decode")
    assert abs(one.peak_bytes / half.peak_bytes - 2) < 0.05
    assert abs(four.peak_bytes / one.peak_bytes - 4) < 0.05


def test_tiled_and_sliced_follow_diffusers():
    big = PixelRequest(width=128, height=128, batch=2, dtype=DType.BF16)  # 4x the config's 32-px tiles
    plain = estimate_memory(TINY_KL, big, op="decode")
    tiled = estimate_memory(TINY_KL, big, op="decode", tiled=True)
    sliced = estimate_memory(TINY_KL, big, op="decode", sliced=True)
    assert tiled.output_shape == plain.output_shape == sliced.output_shape == (2, 3, 128, 128)
    assert tiled.peak_bytes < plain.peak_bytes
    assert sliced.peak_bytes < plain.peak_bytes
    small = PixelRequest(width=32, height=32, dtype=DType.BF16)  # one tile: diffusers does not tile
    assert estimate_memory(TINY_KL, small, op="decode", tiled=True).peak_bytes == \
        estimate_memory(TINY_KL, small, op="decode").peak_bytes


def test_largest_fitting_is_exact_on_monotone_functions():
    for limit in (0, 1, 2, 7, 100, 4096):
        assert largest_fitting(lambda n, limit=limit: n <= limit, 1, 4096) == limit


def test_budget_search_with_known_costs():
    """A fake estimator with total = 1000 * batch * W * H: every answer follows by arithmetic."""
    from types import SimpleNamespace

    def fake(model, req, *, op, tiled=False, sliced=False):
        per = 250 if tiled else 1000
        need = per * req.batch * req.width * req.height
        return SimpleNamespace(min_device_bytes=need, total_bytes_high=need)

    req = PixelRequest(width=64, height=64, batch=2)
    rep = check_vae_budget("x", req, 20_000_000, ops=("decode",), step=8, estimate=fake)
    o = rep.ops[0]
    assert o.min_device_bytes == 8_192_000 and o.fits
    assert o.max_batch == 20_000_000 // (1000 * 64 * 64)  # 4
    side = max(k * 8 for k in range(1, 200) if 1000 * 2 * (k * 8) ** 2 <= 20_000_000)
    assert o.max_square == side == 96
    assert o.tiled_min_device_bytes is None  # it fits untiled: the tiled alternative is not traced
    rep = check_vae_budget("x", req, 5_000_000, ops=("decode",), step=8, estimate=fake)
    assert not rep.ops[0].fits and rep.ops[0].max_batch == 1 and rep.ops[0].tiled_fits
    rep = check_vae_budget("x", req, 5_000_000, ops=("decode",), step=8, tiled=True, estimate=fake)
    assert rep.tiled and rep.ops[0].fits and rep.ops[0].max_batch == 5_000_000 // (250 * 64 * 64)  # 4


def test_budget_real_model_is_consistent():
    req = PixelRequest(width=64, height=64, dtype=DType.BF16)
    budget = estimate_memory(TINY_KL, PixelRequest(width=64, height=64, batch=3, dtype=DType.BF16),
                             op="decode").min_device_bytes
    o = check_vae_budget(TINY_KL, req, budget, ops=("decode",), step=8).ops[0]
    need = [estimate_memory(TINY_KL, PixelRequest(width=64, height=64, batch=n, dtype=DType.BF16),
                            op="decode").min_device_bytes for n in (o.max_batch, o.max_batch + 1)]
    assert o.max_batch >= 3 and need[0] <= budget < need[1]  # segments are 2-20 MiB: batch 4 may need no more
    assert o.fits


def test_parse_bytes():
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("24 GB") == 24 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    from vaelens.errors import VaeLensError

    with pytest.raises(VaeLensError, match="8GiB"):
        parse_bytes("lots")


def test_cli_memory_json_and_errors(cli, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**TINY_KL}))
    r = cli("memory", str(cfg), "--width", "64", "--height", "48", "--batch", "2", "--dtype", "bf16", "--json")
    assert r.code == 0, r.err
    d = r.json()
    for key in ("family", "dtype", "pixel_shape", "latent_shape", "weights_bytes"):
        assert key in d
    assert d["pixel_shape"] == [2, 3, 48, 64] and d["latent_shape"] == [2, 4, 24, 32]
    assert d["encode"]["peak_bytes"] > 0 and d["decode"]["peak_bytes"] > d["decode"]["output_bytes"]
    assert d["decode"]["peak_at"]
    r = cli("memory", str(cfg), "--size", "64x64", "--budget", "1MiB")
    assert r.code == 0 and "not even batch 1 fits" in r.out
    r = cli("memory", str(cfg), "--size", "64x64", "--budget", "256MiB")
    assert r.code == 0 and "largest batch" in r.out
    assert cli("memory", str(cfg), "--size", "64x64", "--budget", "lots").code == 2
    if not torch.cuda.is_available():
        r = cli("memory", str(cfg), "--size", "64x64", "--measure")
        assert r.code == 2 and "CUDA" in r.err


def test_cli_memory_registry_family(cli):
    r = cli("memory", "sdxl", "--size", "512x512", "--dtype", "bf16")
    assert r.code == 0, r.err
    assert "peak ÷ latent" in r.out and "decoder.up_blocks" in r.out


@pytest.mark.skipif(not (MEASUREMENTS / "h100.jsonl").exists(), reason="shared measurements not present")
def test_memory_accuracy_quick_mode_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_accuracy.py"), "--quick", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    assert data["summary"]["rows"] == 4
    assert data["summary"]["max_error"] <= 0.05


def test_trace_speed_quick_mode_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trace_speed.py"), "--quick", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    assert data["trace_predict_seconds"] > 0 and data["peak_bytes"] > 0


def test_matmul_rule_copies_only_unfoldable_operands():
    """[2,3,4,5] @ [2,3,5,6]: contiguous and last-two-transposed operands fold to bmm as views; a
    permuted batch dim, or a broadcast batch, is copied at the expanded size (2*3*4*5*4 = 480 B)."""
    from vaelens.memory.rules import transient

    class M(torch.nn.Module):
        def forward(self, a, b, c, d):
            return [a @ b, a @ c.transpose(-1, -2), a.transpose(0, 1).contiguous().transpose(0, 1) @ b,
                    d.expand(2, 3, 4, 5) @ b]

    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 6)
    c, d = torch.randn(2, 3, 6, 5), torch.randn(1, 3, 4, 5)
    tr = trace_module(M(), [a, b, c, d], op="forward")
    temps = [transient(e) for e in tr.events if e.name == "aten.matmul.default"]
    assert temps == [0, 0, 512, 512]  # 480 bytes rounded to the allocator's 512


def test_memory_and_trace_tables_golden(cli, golden):
    """The printed tables for SDXL at 512² bf16 (rerun pytest with --update-golden after a deliberate change)."""
    r = cli("memory", "sdxl", "--size", "512x512", "--dtype", "bf16", "--budget", "4GiB")
    assert r.code == 0, r.err
    golden("memory_sdxl_512_bf16.out", r.out)
    r = cli("trace", "sdxl", "--size", "512x512", "--dtype", "bf16", "--op", "encode")
    assert r.code == 0, r.err
    golden("trace_sdxl_512_bf16_encode.out", r.out)


def test_caching_allocator_rounding_split_and_merge():
    """Hand-checked against c10/cuda/CUDACachingAllocator.cpp's rules."""
    from vaelens.memory.allocator import CachingAllocator

    mib = 2**20
    a = CachingAllocator()
    assert a.malloc("tiny", 100) == 512 and a.reserved == 2 * mib  # small pool, 2 MiB segment
    a.malloc("big", 12 * mib)  # >= 10 MiB: its own 12 MiB segment
    a.free("big")
    assert a.malloc("reuse", 11 * mib + 512 * 1024) == 12 * mib  # rest 0.5 MiB <= 1 MiB: whole block
    a.free("reuse")
    assert a.malloc("split", 10 * mib) == 10 * mib  # rest 2 MiB > 1 MiB: split
    a.malloc("rest", 2 * mib)  # takes the split-off tail
    assert a.reserved == 14 * mib
    a.free("split")
    a.free("rest")  # tail merges back with its neighbour: one 12 MiB block again
    assert a.malloc("again", 12 * mib) == 12 * mib and a.reserved == 14 * mib
    assert a.allocated == 512 + 12 * mib
    assert a.malloc("mid", 3 * mib) == 3 * mib and a.reserved == 34 * mib  # 1-10 MiB: 20 MiB segment


def test_replay_of_h100_operator_record_sd_decode_bf16():
    """tests/data/memory: shared/measurements/ops/ops-sd-kl-f8c4-decode-bf16-1x3x512x512.json.

    Weights, a warm-up call, then the measured call through the caching allocator: every operator's
    before/after equals the record, including the output block the allocator hands out whole
    (1.5 MiB asked, a cached 2 MiB block given), and the peak is exact."""
    from vaelens.build import build_module
    from vaelens.memory.allocator import CachingAllocator
    from vaelens.memory.simulate import _call, compile_trace

    rec = json.loads((DATA / "ops-sd-kl-f8c4-decode-bf16-1x3x512x512.json").read_text())
    module = build_module(json.loads((DATA / "sd-kl-f8c4.json").read_text()), dtype=DType.BF16)
    tr = trace_module(module, [torch.empty(1, 4, 64, 64, device="meta", dtype=torch.bfloat16)], op="decode")
    alloc = CachingAllocator()
    for i, n in enumerate(tr.resident_sizes):
        alloc.malloc(("resident", i), n)
    _call(compile_trace(tr), alloc, "best")
    base = alloc.allocated
    keys: dict[int, object] = {}
    for ev, o in zip(tr.events, rec["ops"], strict=True):
        for sid in ev.frees_before:
            alloc.free(keys.pop(sid))
        assert alloc.allocated - base == o["before"] - rec["base"], ev
        for sid, n in ev.allocs:
            keys[sid] = k = object()
            alloc.malloc(k, n)
        assert alloc.allocated - base == o["after"] - rec["base"], ev
    assert simulate(tr).peak_bytes == rec["peak_above_base"]


def test_estimate_call_hand_counted_conv():
    """Conv2d(8, 8, 3) on [1, 8, 16, 16] fp32: output 8192 B; NHWC input 8192 + output 8192 + weight
    8*8*9*4 = 2304 -> 2560, + 512 workspace = 19456 B of temporaries: peak 27648 B."""
    from vaelens.memory.estimate import estimate_call

    est = estimate_call(torch.nn.Conv2d(8, 8, 3, padding=1), torch.randn(1, 8, 16, 16))
    assert est.peak_bytes == 8192 + 19456
    assert est.peak_bytes_low <= est.peak_bytes <= est.peak_bytes_high
    assert est.output_shape == (1, 8, 16, 16)


def test_meta_context_builds_once_and_reuses_shapes_traces_and_estimates(monkeypatch):
    import vaelens.build
    from vaelens.memory.context import MetaContext

    built = []
    real = vaelens.build.build_module
    monkeypatch.setattr(vaelens.build, "build_module", lambda *a, **k: built.append(1) or real(*a, **k))
    ctx = MetaContext.of(TINY_KL, "bf16")
    req = PixelRequest(width=64, height=64, dtype=DType.BF16)
    a = estimate_memory(ctx, req, op="decode")
    b = estimate_memory(ctx, req, op="decode")
    assert a is b and ctx.hits >= 1 and len(ctx._traces) == 1
    c = estimate_memory(ctx, PixelRequest(width=64, height=64, batch=2, dtype=DType.BF16), op="decode")
    report = check_vae_budget(ctx, req, 256 * 2**20, ops=("decode",))
    assert len(built) == 1  # one meta module for every estimate and the budget search
    assert c.peak_bytes > a.peak_bytes and report.ops[0].fits
    assert MetaContext.of(ctx, DType.BF16) is ctx and MetaContext.of(ctx, "fp32").dtype is DType.FP32
    assert estimate_memory(TINY_KL, req, op="decode").peak_bytes == a.peak_bytes  # no context: the same answer


def test_memory_json_has_every_figure(cli, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_KL))
    r = cli("memory", str(cfg), "--size", "64x64", "--dtype", "bf16", "--json", "--budget", "256MiB")
    assert r.code == 0, r.err
    d = r.json()
    from vaelens.memory.estimate import ALLOCATOR_SLACK

    for op in ("encode", "decode"):
        e = d[op]
        for key in ("peak_bytes", "peak_bytes_low", "peak_bytes_high", "reserved_peak_bytes", "min_device_bytes",
                    "peak_at"):
            assert key in e, key
        assert e["peak_bytes_low"] <= e["peak_bytes"] <= e["peak_bytes_high"]
        # the cap must hold what is allocated at the peak (blocks live in segments)
        assert e["min_device_bytes"] >= e["base_bytes"] + e["peak_bytes_high"] - ALLOCATOR_SLACK
        assert d["budget"][op]["min_device_bytes"] == e["min_device_bytes"]
    assert d["cuda_context_bytes"] > 0


def test_measure_cap_bisection_and_no_gpu_message():
    from vaelens.errors import VaeLensError
    from vaelens.memory.measure import bisect_cap, measure_call

    mib = 2**20
    tried = []

    def runs(cap):
        tried.append(cap)
        return cap >= 301 * mib

    assert bisect_cap(runs, 100 * mib, 1000 * mib) == 302 * mib  # 2 MiB steps: the first multiple above
    assert all(c % (2 * mib) == 0 for c in tried) and len(tried) <= 10
    if not torch.cuda.is_available():
        with pytest.raises(VaeLensError, match="measure=True needs a CUDA GPU"):
            measure_call(TINY_KL, (1, 3, 32, 32), DType.FP32, op="encode")


@pytest.mark.parametrize("op", ["encode", "decode"])
def test_sliced_batches_built_from_two_traces_equal_the_traced_ones(op):
    """enable_slicing(): batch n built from the traces of batches 2 and 3 (the repeated per-sample call
    replayed) gives the same allocated peak, reserved peak and min_device_bytes as tracing batch n."""
    from vaelens.memory.estimate import trace_request
    from vaelens.memory.simulate import compile_trace, extend_repeated, min_device_bytes, run

    def tr(n):
        return trace_request(TINY_KL, PixelRequest(width=64, height=48, batch=n, dtype=DType.BF16), op=op,
                             sliced=True)

    two, three = tr(2), tr(3)
    for n in (3, 5):
        built, traced = extend_repeated(two, three, n), compile_trace(tr(n))
        assert built is not None and len(built.steps) == len(traced.steps)
        for mode in ("best", "high"):
            a, b = run(built, mode=mode), run(traced, mode=mode)
            assert (a.base, a.peak, a.reserved_peak) == (b.base, b.peak, b.reserved_peak)
        assert min_device_bytes(built) == min_device_bytes(traced)
    unsliced = trace_request(TINY_KL, PixelRequest(width=32, height=32, batch=3, dtype=DType.BF16), op=op)
    assert extend_repeated(two, unsliced, 4) is None  # not two batches of the same sliced call
