"""Arguments shared by commands (model, size, frames, batch, dtype, --json) and output helpers."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import DType, parse_size


def add_model(parser: argparse.ArgumentParser) -> None:
    from vaelens.cli.flags import feeds

    feeds(parser.add_argument(
        "model",
        metavar="MODEL",
        help="family name (see `vaelens families`), or a diffusers config.json / model folder",
    ), "family")


def add_size(parser: argparse.ArgumentParser, *, video: bool = True) -> None:
    g = parser.add_argument_group("size")
    g.add_argument("--size", metavar="WxH", help="pixel size, width first (default: the family's)")
    g.add_argument("--width", type=int, metavar="W", help="pixel width (with --height; or use --size)")
    g.add_argument("--height", type=int, metavar="H", help="pixel height (with --width; or use --size)")
    if video:
        g.add_argument("--frames", type=int, metavar="N", help="video frames (default: the family's)")
    g.add_argument("--batch", type=int, default=1, metavar="B", help="batch size (default 1)")
    g.add_argument("--dtype", default="fp32", metavar="D", help="fp32 | fp16 | bf16 (default fp32)")


# Said in every --budget help: which spelling means which unit (vaelens.units).
BUDGET_UNITS_HELP = "GB = 10^9 bytes, GiB = 2^30 bytes; a bare 8G is refused as ambiguous; at most 1 PiB"


def add_device_profile(parser: argparse.ArgumentParser) -> None:
    """--device-profile NAME: the profile (vaelens.tiling.profiles) a --budget's tiling plan is timed on."""
    from vaelens.tiling.profiles import profile_names

    parser.add_argument(
        "--device-profile", type=str.lower, choices=("auto", *profile_names()), default="auto", metavar="NAME",
        help="with --budget: the device the tiling plan minimises predicted time for: "
        f"{', '.join(profile_names())}, or auto (default: the device the call runs on; the GPU of this machine "
        "when planning without weights, else cpu)")


def device_profile_from_args(args: argparse.Namespace) -> str | None:
    """--device-profile -> the library's device_profile= (None: auto, detected)."""
    name = getattr(args, "device_profile", "auto")
    return None if name in (None, "auto") else name


def add_spill_dir(parser: argparse.ArgumentParser) -> None:
    """--spill-dir DIR: where a --budget run's spilled host copies go as memory-mapped files."""
    parser.add_argument(
        "--spill-dir", metavar="DIR",
        help="with --budget: keep the maps the plan spills off the device in memory-mapped files in DIR (an "
        "existing, writable folder; removed after the run) instead of RAM")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def size_from_args(args: argparse.Namespace) -> tuple[int, int] | None:
    """--size WxH | --width/--height -> (height, width), or None for the family's default."""
    if args.size is not None:
        if args.width is not None or args.height is not None:
            raise VaeLensError("give either --size WxH or --width/--height, not both")
        return parse_size(args.size)
    if (args.width is None) != (args.height is None):
        given, missing = ("--width", "--height") if args.width is not None else ("--height", "--width")
        value = args.width if args.width is not None else args.height
        raise VaeLensError(f"{given} {value} without {missing}: give both, or --size WxH")
    if args.width is None:
        return None
    return parse_size(f"{args.width}x{args.height}")


def check_plot(args: argparse.Namespace) -> None:
    """--plot FILE checked before any work (a figure suffix, not an existing file without --force, not an
    input, a writable folder); nothing without --plot."""
    if getattr(args, "plot", None):
        from vaelens.render.figures import check_figure_path

        check_figure_path(args.plot, force=bool(getattr(args, "force", False)))


def dtype_from_args(args: argparse.Namespace) -> DType:
    return DType.parse(args.dtype)


_SCALAR_LIST = re.compile(r"\[\s*([^\[\]{}]*?)\s*\]", re.S)


def _json_safe(data: Any) -> Any:
    """NaN and ±Infinity are not JSON: they become null (commands that can produce them say why)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(v) for v in data]
    return data


def to_json(data: Any) -> str:
    """Indented JSON (always valid: non-finite numbers are null) with lists of scalars kept on one line."""
    text = json.dumps(_json_safe(data), indent=2, ensure_ascii=False, allow_nan=False)
    return _SCALAR_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",\n")) + "]"
                            if '"' not in m.group(1) or len(m.group(1)) < 400 else m.group(0), text)


def emit_json(data: Any) -> None:
    sys.stdout.write(to_json(data))
    sys.stdout.write("\n")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
