"""`vaelens validate [MODEL…]`: every prediction checked on this machine's GPU — peaks, the device minimum, a
budgeted tiled decode, cache throughput, precision — as a table with pass/fail per row and a JSONL file.

Exit codes: 0 every judged row passes, 1 a row missed its tolerance, 2 bad input or no CUDA GPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelens.cli._io import add_quiet, bar_enabled
from vaelens.cli.common import add_json, emit_json

DESCRIPTION = ("Check vaelens' predictions on your own GPU in one command: encode/decode peaks (allocated and "
               "reserved) at three sizes and two dtypes for SDXL's and FLUX.1's architectures and Wan 2.1, the "
               "smallest memory cap that still runs (bisection in fresh processes), a budgeted exact tiled "
               "decode, vaelens cache throughput, and precision emulation vs real fp16/bf16. Random weights "
               "from the real diffusers classes; nothing is downloaded. Exit 0: all pass, 1: a row missed its "
               "tolerance, 2: bad input or no CUDA GPU. --dry-run lists the cases and predictions anywhere.")
EXAMPLES = ["vaelens validate --dry-run --quick", "vaelens validate --quick -o validate-out",
            "vaelens validate sdxl --device cuda:1 --json"]
JSONL_NAME = "validate.jsonl"
TABLE_NAME = "validate.txt"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check every prediction on this GPU: table, pass/fail, JSONL")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="families to validate (default: sdxl flux1 wan21); a diffusers config.json works too")
    p.add_argument("--device", default="cuda", metavar="DEV", help="cuda or cuda:N (default cuda)")
    p.add_argument("--quick", action="store_true", help="one size per model, one bisection case (about 2 minutes)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would run and the predictions; needs no GPU, measures nothing")
    p.add_argument("--only", action="append", metavar="SECTION",
                   choices=("peak", "device_min", "tiling", "throughput", "precision"),
                   help="run only this section (repeatable): peak, device_min, tiling, throughput, precision")
    p.add_argument("-o", "--output", metavar="DIR",
                   help=f"write {JSONL_NAME} (one row per line, measurement-file format), {TABLE_NAME} and each "
                        "family's config.json into DIR")
    p.add_argument("--force", action="store_true", help="replace files already in DIR")
    add_json(p)
    add_quiet(p)
    p.set_defaults(func=run)


def _outputs(args: argparse.Namespace, families: list[str]) -> list[Path]:
    """-o DIR -> the paths to write, checked before any work (no overwrite without --force)."""
    if not args.output:
        return []
    from vaelens.outputs import prepare_outputs

    folder = Path(args.output)
    names = [JSONL_NAME, TABLE_NAME] + [f"{f}.json" for f in families]
    return prepare_outputs([folder / n for n in names], force=args.force, what="output")


def run(args: argparse.Namespace) -> int:
    from vaelens.contract import resolve_model
    from vaelens.progress import progress_bar
    from vaelens.render.validate import render_validation, validation_json
    from vaelens.validate import DEFAULT_MODELS, validate

    if not args.dry_run:  # one line, before anything is resolved, created or built
        from vaelens.memory.measure import require_cuda
        from vaelens.validate.run import NO_CUDA

        require_cuda("validate", args.device, instead=NO_CUDA)
    specs = [resolve_model(m) for m in (args.models or DEFAULT_MODELS)]
    paths = _outputs(args, sorted({s.name for s in specs}))
    with progress_bar("validate", enabled=bar_enabled(args), unit="case") as bar:
        report = validate(specs, device=args.device, quick=args.quick, dry_run=args.dry_run, sections=args.only,
                          progress=bar)
    text = render_validation(report)
    if paths:
        _write(paths, report, text, specs)
    if args.json:
        emit_json(validation_json(report) | ({"written": [str(p) for p in paths]} if paths else {}))
    else:
        print(text, end="")
        for p in paths:
            print(f"wrote {p}")
    return 0 if report.dry_run else report.exit_code


def _write(paths: list[Path], report, text: str, specs) -> None:
    import json

    from vaelens.outputs import write_text
    from vaelens.render.validate import validation_jsonl

    jsonl, table, *configs = paths
    write_text(jsonl, validation_jsonl(report))
    write_text(table, text)
    by_name = {s.name: s for s in specs}
    for path in configs:
        write_text(path, json.dumps(by_name[path.stem].diffusers_config(), indent=2) + "\n")
