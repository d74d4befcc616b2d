"""The issue-16 targets: SDXL decoder plans in bf16 on the meta device, H100 profile (vaelens.tiling).

Each row: the plan fits its budget (predicted device peak <= budget), and its exact host <-> device
traffic, host memory and predicted time over the untiled time stay within the issue's targets. A row with a
host-memory target plans with that target as its `host_budget`: the planner picks the fastest plan within
both budgets (at 4096² / 8 GiB without a host budget it picks a faster plan that keeps 12 GiB on the host,
see test_without_a_host_budget_the_fastest_plan_is_chosen)."""

from __future__ import annotations

import pytest

import vaelens.memory.estimate  # noqa: F401  (imports trace and memory in the order they need)
from vaelens.tiling import plan_tiling

GIB = 2**30

# (output side, budget, transfer_bytes at most, host_bytes at most (None: no target), predicted / untiled at most)
ROWS = [
    pytest.param(1024, "2GiB", 2 * GIB, 2.5 * GIB, 1.3, id="1024-2GiB"),
    pytest.param(2048, "8GiB", 4 * GIB, None, 1.1, id="2048-8GiB"),
    pytest.param(4096, "24GiB", 8 * GIB, None, 1.1, id="4096-24GiB"),
    pytest.param(4096, "8GiB", 56 * GIB, 10 * GIB, 1.3, id="4096-8GiB"),
    pytest.param(4096, "4GiB", 100 * GIB, 16 * GIB, 1.5, id="4096-4GiB"),
]


@pytest.mark.parametrize(("side", "budget", "transfer", "host", "ratio"), ROWS)
def test_sdxl_decoder_targets(side, budget, transfer, host, ratio):
    plan = plan_tiling("sdxl", (1, 4, side // 8, side // 8), "bf16", budget, device_profile="h100",
                       host_budget=None if host is None else int(host))
    assert plan.method == "exact" and plan.tiles > 1
    assert plan.predicted_peak_bytes <= plan.budget_bytes < plan.untiled_peak_bytes
    assert plan.transfer_bytes <= transfer
    if host is not None:
        assert plan.host_bytes <= host
    assert plan.untiled_seconds is not None and plan.predicted_seconds is not None
    assert plan.predicted_seconds / plan.untiled_seconds <= ratio
    assert plan.tile_shape is not None and max(plan.tile_shape) <= -(-side // 2)  # the real tile, not a ceiling


def test_without_a_host_budget_the_fastest_plan_is_chosen():
    free = plan_tiling("sdxl", (1, 4, 512, 512), "bf16", "8GiB", device_profile="h100")
    held = plan_tiling("sdxl", (1, 4, 512, 512), "bf16", "8GiB", device_profile="h100", host_budget=10 * GIB)
    assert free.predicted_seconds <= held.predicted_seconds  # the host limit costs time, never saves it
    assert held.host_bytes <= 10 * GIB < free.host_bytes  # and it is what the limit changed
    assert held.recompute and not free.recompute  # by recomputing maps instead of storing them
