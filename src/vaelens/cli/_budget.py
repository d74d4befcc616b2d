"""--budget SIZE on the real-weights commands (decode, encode, roundtrip): exact tiles from vaelens.tiling."""

from __future__ import annotations

import argparse
from typing import Any

from vaelens.cli.common import BUDGET_UNITS_HELP


def add_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        metavar="SIZE",
        help="device memory budget, e.g. 4GiB: runs untiled when that fits, else in exact tiles chosen by the "
        "memory model (same result up to float rounding); refuses naming the smallest budget that works "
        f"({BUDGET_UNITS_HELP})",
    )


def enable_budget(args: argparse.Namespace, vae: Any):
    """--budget -> the module's encode/decode budgeted (vaelens.tiling.enable_budgeted_vae); None without it."""
    if getattr(args, "budget", None) is None:
        return None
    from vaelens.tiling import enable_budgeted_vae

    return enable_budgeted_vae(vae.module, args.budget)


def last_plan(state: Any, op: str):
    return next((p for p in reversed(state.plans) if p.op == op), None) if state is not None else None


def with_tiling(data: dict[str, Any], state: Any, op: str) -> dict[str, Any]:
    """JSON + "tiling": the plan block of `op` (null when it ran untiled); unchanged without --budget.
    A round trip also gets "tiling_encode"."""
    if state is None:
        return data
    from vaelens.render.tiling import tiling_json

    out = {**data, "tiling": tiling_json(last_plan(state, op))}
    if op == "roundtrip":
        out["tiling"] = tiling_json(last_plan(state, "decode"))
        out["tiling_encode"] = tiling_json(last_plan(state, "encode"))
    return out


def print_tiling(state: Any, ops: tuple[str, ...]) -> None:
    """One line per op that ran under --budget (untiled, exact tiles, or approximate)."""
    if state is None:
        return
    from vaelens.render.tiling import tiling_line

    for op in ops:
        plan = last_plan(state, op)
        if plan is not None:
            print("  " + tiling_line(plan))
