"""`vaelens explain MODEL`: a narrated walk-through of pixels -> latent -> tokens -> pixels."""

from __future__ import annotations

import argparse

from vaelens.cli.common import add_json, add_model, add_size, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="narrated walk-through of what the VAE does, step by step")
    add_model(p)
    add_size(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.cli.shapes import plan_from_args
    from vaelens.render.narrate import explain
    from vaelens.render.tables import shapes_json

    spec, plan = plan_from_args(args)
    text = explain(spec, plan)
    if args.json:
        emit_json({**shapes_json(spec, plan), "text": text})
    else:
        print(text)
    return 0
