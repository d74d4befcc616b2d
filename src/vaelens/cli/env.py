"""`vaelens env`: the versions and devices a bug report needs (Python, torch, CUDA, cuDNN, diffusers,
the NVIDIA driver, each GPU and its memory)."""

from __future__ import annotations

import argparse

from vaelens.cli.common import add_json, emit_json

EXAMPLES = ["vaelens env", "vaelens env --json"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="versions and devices for a bug report (Python, torch, CUDA, cuDNN, GPUs)",
                       description="Print what a bug report needs: Python, torch, CUDA and cuDNN, diffusers, the "
                                   "NVIDIA driver, and every CUDA device with its memory. Nothing is allocated.")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.envinfo import environment

    env = environment()
    if args.json:
        emit_json(env.to_json())
    else:
        from vaelens.render.env import render_environment

        print(render_environment(env))
    return 0
