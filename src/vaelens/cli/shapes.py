"""`vaelens shapes MODEL`: pixels -> latent -> tokens -> decoded, with elements and bytes."""

from __future__ import annotations

import argparse

from vaelens.cli.common import add_json, add_model, add_size, dtype_from_args, emit_json, size_from_args, warn


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shapes", help="shape of every state from pixels to latent to tokens and back")
    add_model(p)
    add_size(p)
    add_json(p)
    p.set_defaults(func=run)


def plan_from_args(args: argparse.Namespace):
    """CLI args -> (spec, ShapePlan); the family's rules warn on stderr when they change the size."""
    from vaelens.contract import default_request, plan_shapes, resolve_model

    spec = resolve_model(args.model)
    size = size_from_args(args)
    height, width = size if size else (None, None)
    request = default_request(
        spec, width=width, height=height, frames=getattr(args, "frames", None), batch=args.batch,
        dtype=dtype_from_args(args),
    )
    plan = plan_shapes(spec, request)
    for note in plan.warnings:
        warn(note)
    return spec, plan


def run(args: argparse.Namespace) -> int:
    from vaelens.render.tables import render_shapes, shapes_json

    spec, plan = plan_from_args(args)
    if args.json:
        emit_json(shapes_json(spec, plan))
    else:
        print(render_shapes(spec, plan))
    return 0
