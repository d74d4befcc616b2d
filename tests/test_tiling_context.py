"""The tiling plan on a shared MetaContext (issue 18 items 3-5): one meta module for estimates, budget and
tiles; refusals as data (NoTiling) rather than strings; the method an enum that JSON writes as its word."""

from __future__ import annotations

import json

import pytest
import torch

from test_memory import TINY_KL
from vaelens.errors import BudgetError
from vaelens.memory.context import MetaContext
from vaelens.memory.estimate import estimate_memory
from vaelens.options import DType, PixelRequest
from vaelens.tiling.plan import NoTiling, TilingMethod, plan_ops, plan_tiling
from vaelens.trace.records import Op

REQ = PixelRequest(width=64, height=64, dtype=DType.FP32)


@pytest.fixture
def builds(monkeypatch):
    """-> a list that grows by one each time a meta module is built from a config."""
    import vaelens.build

    built: list[int] = []
    real = vaelens.build.build_module
    monkeypatch.setattr(vaelens.build, "build_module", lambda *a, **k: built.append(1) or real(*a, **k))
    return built


def test_plan_ops_on_a_context_builds_no_second_module_and_reuses_the_estimate(builds):
    ctx = MetaContext.of(TINY_KL, "fp32")
    est = estimate_memory(ctx, REQ, op="decode")
    traces = dict(ctx._traces)
    shapes = {"encode": ctx.input_shape(REQ, Op.ENCODE), "decode": ctx.input_shape(REQ, Op.DECODE)}
    plans = plan_ops(TINY_KL, shapes, "fp32", "8GiB", context=ctx)
    assert len(builds) == 1  # the context's module only: plan_ops built none of its own
    assert all(p.method is TilingMethod.UNTILED for p in plans.values())
    assert plans["decode"].untiled_peak_bytes >= est.peak_bytes_high  # weights + input + the same peak
    decode_key = next(k for k in traces if k[0].value == "decode")
    assert ctx._traces[decode_key][0] is not traces[decode_key][0]  # the time model asked for every event's detail
    assert ctx._estimates  # and the estimate it read was the context's (same key, made once)
    assert ctx.hits >= 1


def test_plan_on_a_context_answers_as_without_one():
    shape = (1, 4, 16, 16)
    alone = plan_tiling(TINY_KL, shape, "fp32", "8GiB", device_profile="h100")
    shared = plan_tiling(TINY_KL, shape, "fp32", "8GiB", device_profile="h100",
                         context=MetaContext.of(TINY_KL, "fp32"))
    assert alone == shared


def test_plan_ops_refusal_is_data_with_the_smallest_budget():
    ctx = MetaContext.of(TINY_KL, "fp32")
    plans = plan_ops(TINY_KL, {"decode": ctx.input_shape(REQ, Op.DECODE)}, "fp32", 1024, context=ctx)
    refusal = plans["decode"]
    assert isinstance(refusal, NoTiling) and refusal.budget_bytes == 1024
    with pytest.raises(BudgetError) as err:
        plan_tiling(TINY_KL, ctx.input_shape(REQ, Op.DECODE), "fp32", 1024, context=ctx)
    assert refusal.needed_bytes == err.value.needed_bytes > 1024 and refusal.message == str(err.value)


def test_tiling_method_is_an_enum_json_writes_as_its_word():
    plan = plan_tiling(TINY_KL, (1, 4, 16, 16), "fp32", "8GiB", tile=16, device_profile="h100")
    assert plan.method is TilingMethod.EXACT and f"{plan.method}" == str(plan.method) == "exact"
    assert json.loads(json.dumps(plan.to_json()))["method"] == "exact"
    assert TilingMethod.parse("Approximate") is TilingMethod.APPROXIMATE


def test_context_never_changes_a_module_already_on_meta():
    """A meta module given to the context is copied: the planner's switches and the dtype touch the copy."""
    from vaelens.build import build_module

    module = build_module(TINY_KL, device="meta", dtype=DType.FP32)
    module.enable_tiling()
    ctx = MetaContext.of(module, "bf16")
    assert ctx.module is not module and next(ctx.module.parameters()).dtype is torch.bfloat16
    plan_tiling(module, (1, 4, 16, 16), "bf16", "8GiB", tile=16, device_profile="h100", context=ctx)
    assert module.use_tiling and next(module.parameters()).dtype is torch.float32
