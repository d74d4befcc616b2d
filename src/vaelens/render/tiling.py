"""Text and JSON for tiling plans (vaelens.tiling): `memory --budget` and the real-weights commands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vaelens.render.tables import human_bytes, shape_str
from vaelens.tiling.plan import NoTiling


def tiling_json(plan: Any) -> dict[str, Any] | None:
    """TilingPlan | None -> the `tiling` JSON block ({tiles, tile_shape, halo, predicted_peak_bytes,
    budget_bytes, host_bytes, exact, method, …}); null when the call ran untiled."""
    return None if plan is None else plan.to_json()


def tiling_line(plan: Any, counts: Any = None) -> str:
    """TilingPlan (+ the run's RunCounts) -> one line for encode/decode/roundtrip output: the method, the
    tiles, the predicted peak against the budget, the predicted time on the plan's device profile, and
    what the run copied beside what the plan said it would."""
    budget = human_bytes(plan.budget_bytes)
    if not plan.tiled:
        return f"{plan.op}: untiled (predicted peak {human_bytes(plan.predicted_peak_bytes)} fits the {budget} budget)"
    h, w = plan.tile_shape or (0, 0)
    kind = "exact tiles" if plan.exact else "APPROXIMATE tiles (diffusers enable_tiling(); seams possible)"
    line = (f"{plan.op}: {kind}, {plan.tiles} of {w}x{h} px, predicted peak "
            f"{human_bytes(plan.predicted_peak_bytes)} <= {budget} (untiled needs "
            f"{human_bytes(plan.untiled_peak_bytes)})")
    if plan.predicted_seconds is not None:
        line += f"; predicted {plan.predicted_seconds:.3g} s on the {plan.device_profile} profile"
    if counts is not None:
        line += (f"; copied {human_bytes(counts.transfer_bytes)} host<->device (plan "
                 f"{human_bytes(plan.transfer_bytes)}), host peak {human_bytes(counts.host_peak_bytes)} (plan "
                 f"{human_bytes(plan.host_bytes)})")
    return line


def _tiles(n: int) -> str:
    """3 -> '3 tiles'; 1 -> '1 tile' (a plan that only spills runs one tile: the whole map)."""
    return f"{n} tile" if n == 1 else f"{n} tiles"


def render_plan(plan: Any) -> str:
    """TilingPlan -> a few lines: method, tiles, predicted peak vs budget, host memory and traffic."""
    head = (f"{plan.op} {shape_str(plan.input_shape)} -> {shape_str(plan.output_shape)} at {plan.dtype.value}, "
            f"budget {human_bytes(plan.budget_bytes)}: ")
    if not plan.tiled:
        return head + (f"runs untiled (needs {human_bytes(plan.predicted_peak_bytes)}: weights + input + peak)")
    h, w = plan.tile_shape or (0, 0)
    lines = [head + ("exact tiles" if plan.exact else "APPROXIMATE tiles")]
    if plan.exact:
        lines.append(f"  {_tiles(plan.tiles)} of {w}x{h} px at full resolution; every operation tiles its own map in "
                     f"the same proportion (halo {plan.halo} px per convolution, GroupNorm statistics merged over "
                     "tiles in float64); full-size maps stay on the device while they fit, the one used farthest "
                     "ahead goes to host memory when they do not")
    else:
        lines.append(f"  {plan.approximate_reason}")
        lines.append(f"  {_tiles(plan.tiles)} of {w}x{h} px")
    lines.append(f"  predicted device peak {human_bytes(plan.predicted_peak_bytes)} (weights "
                 f"{human_bytes(plan.weights_bytes)} + input {human_bytes(plan.input_bytes)} + largest step: "
                 f"{plan.peak_step}); untiled needs {human_bytes(plan.untiled_peak_bytes)}")
    if plan.exact:
        lines.append(f"  host memory for spilled maps {human_bytes(plan.host_bytes)}; host<->device copies "
                     f"{human_bytes(plan.transfer_bytes)}; extra compute +{plan.extra_compute:.3%}")
    if plan.predicted_seconds is not None:
        untiled = (f"untiled {plan.untiled_seconds:.3g} s" if plan.untiled_seconds is not None
                   else "untiled does not fit the device")
        lines.append(f"  predicted time on the {plan.device_profile} profile {plan.predicted_seconds:.3g} s "
                     f"({untiled})")
    return "\n".join(lines)


def render_plans(plans: Mapping[str, Any]) -> str:
    """{op: TilingPlan | NoTiling} -> the `memory --budget` tiling section."""
    out = ["tiling that fits the budget (vaelens.decode/encode(..., budget=…), --budget on decode/encode/roundtrip):"]
    for op, plan in plans.items():
        if isinstance(plan, NoTiling):
            out.append(f"  {op} does not fit at any tile size: {plan.message}")
        else:
            out.extend("  " + line for line in render_plan(plan).splitlines())
    return "\n".join(out)


def plans_json(plans: Mapping[str, Any]) -> dict[str, Any]:
    """{op: TilingPlan | NoTiling} -> {op: tiling block | null | {"error": message}}."""
    return {op: {"error": p.message} if isinstance(p, NoTiling) else tiling_json(p) for op, p in plans.items()}
