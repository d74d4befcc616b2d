"""`vaelens trace MODEL`: one record per layer of encode or decode, run on the meta device."""

from __future__ import annotations

import argparse

from vaelens.cli.common import add_json, add_model, add_size, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="every layer of encode/decode: output shape, bytes, live memory (no GPU)")
    add_model(p)
    add_size(p)
    p.add_argument("--op", choices=("encode", "decode"), default="decode", help="which call (default decode)")
    p.add_argument("--depth", type=int, default=2, metavar="N",
                   help="module depth shown (1: encoder/decoder, 2: blocks, ...; default 2)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.cli.shapes import plan_from_args
    from vaelens.errors import VaeLensError
    from vaelens.memory.estimate import simulate, trace_request
    from vaelens.render.memory import render_trace, trace_report_json

    if args.depth < 1:
        raise VaeLensError(f"--depth {args.depth} must be 1 or more (1: encoder/decoder, 2: blocks, ...)")
    spec, plan = plan_from_args(args)
    tr = trace_request(spec, plan.request, op=args.op)
    if args.json:
        emit_json(trace_report_json(spec.name, plan, tr, simulate(tr, dtype=plan.request.dtype)))
    else:
        print(render_trace(tr, depth=args.depth, estimate=simulate(tr, dtype=plan.request.dtype)))
    return 0
