"""Counted, not just predicted: a tiled run copies exactly the bytes its plan says (vaelens.tiling).

On CPU the executor keeps "host" and "device" apart all the same: a spilled buffer's data lives in a
separate host copy and the device-side tensors point at a storage with no memory behind it, so every
byte the schedule moves is a real copy the run counts (residency.Residency.h2d_bytes / d2h_bytes)."""

from __future__ import annotations

import pytest
import torch

import vaelens.memory.estimate  # noqa: F401  (imports trace and memory in the order they need)
from test_tiling import CASES, _untiled, module
from vaelens.errors import BudgetError
from vaelens.tiling import plan_tiling
from vaelens.tiling.api import run_plan
from vaelens.tiling.execute import RunCounts


def _least_budget(m, shape, op: str) -> int:
    with pytest.raises(BudgetError) as err:
        plan_tiling(m, shape, budget=1, op=op, device_profile="h100")
    return err.value.needed_bytes


def _counted(m, plan, op: str, x) -> tuple[torch.Tensor, RunCounts]:
    from vaelens.build import decoded_pixels, encoded_latent

    counts: list[RunCounts] = []
    with torch.inference_mode():
        out = run_plan(m, plan, getattr(m, op), x, counts=counts)
    return (decoded_pixels(out) if op == "decode" else encoded_latent(out)), counts[0]


# (family, op, where the budget sits between the least that works (0) and the untiled need (1))
RUNS = [("kl", "decode", 0.0), ("kl", "encode", 0.0), ("kl-sd3", "decode", 0.0),
        ("wan21", "decode", 0.0), ("taesd", "decode", 0.0)]


@pytest.mark.parametrize(("name", "op", "where"), RUNS)
def test_measured_transfer_equals_the_plan_and_the_pixels_are_exact(name, op, where):
    m = module(name)
    pixels, latent = CASES[name]
    x = torch.rand(pixels if op == "encode" else latent, generator=torch.Generator().manual_seed(7)) * 2 - 1
    shape = tuple(x.shape)
    least = _least_budget(m, shape, op)
    untiled = plan_tiling(m, shape, budget=least, op=op, device_profile="h100").untiled_peak_bytes
    budget = int(least + where * (untiled - least))
    plan = plan_tiling(m, shape, budget=budget, op=op, device_profile="h100")
    assert plan.method == "exact" and plan.predicted_peak_bytes <= budget
    out, counts = _counted(m, plan, op, x)
    assert plan.transfer_bytes > 0  # the budget makes the schedule spill: there is traffic to count
    assert abs(counts.transfer_bytes - plan.transfer_bytes) <= 0.01 * plan.transfer_bytes, (counts, plan.transfer_bytes)
    assert counts.host_peak_bytes <= plan.host_bytes * 1.01
    torch.testing.assert_close(out, _untiled(m, op, x), rtol=1e-4, atol=1e-5)


def test_a_budget_that_fits_everything_moves_nothing():
    m = module("kl")
    z = torch.randn(CASES["kl"][1], generator=torch.Generator().manual_seed(8))
    plan = plan_tiling(m, tuple(z.shape), budget="80GiB", tile=4, device_profile="h100")
    assert plan.tiles > 1 and plan.transfer_bytes == 0 and plan.host_bytes == 0
    out, counts = _counted(m, plan, "decode", z)
    assert counts.transfer_bytes == 0 and counts.host_peak_bytes == 0
    torch.testing.assert_close(out, _untiled(m, "decode", z), rtol=1e-4, atol=1e-5)
