"""`vaelens families`: the registry as a table."""

from __future__ import annotations

import argparse

from vaelens.cli.common import add_json, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("families", help="list the VAE families vaelens knows")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.families import FAMILIES
    from vaelens.render.tables import families_json, render_families

    if args.json:
        emit_json(families_json(FAMILIES))
    else:
        print(render_families(FAMILIES))
        print("\nAliases and sources: vaelens families --json. Any diffusers config.json or model folder "
              "works wherever a family name does.")
    return 0
