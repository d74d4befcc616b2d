"""--budget SIZE on the real-weights commands (decode, encode, roundtrip): exact tiles from vaelens.tiling.

The commands pass the bytes to the run engine (vaelens.run), which plans and reports the tiles."""

from __future__ import annotations

import argparse

from vaelens.cli.common import BUDGET_UNITS_HELP


def add_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        metavar="SIZE",
        help="device memory budget, e.g. 4GiB: runs untiled when that fits, else in exact tiles chosen by the "
        "memory model (same result up to float rounding); refuses naming the smallest budget that works "
        f"({BUDGET_UNITS_HELP})",
    )

