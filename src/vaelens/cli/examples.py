"""`vaelens CMD --help`: a description and examples for every command, in one place.

A command module may define its own `EXAMPLES` (a list of command lines) and `DESCRIPTION`; otherwise
the entries below are used. build_parser() calls apply() after each register(). Every example here runs
as written (from any folder: `demo` is the shipped sample photograph and demo VAE); tests/test_help.py
checks that each command has a description and at least two examples.
"""

from __future__ import annotations

import argparse
import textwrap

DESCRIPTIONS: dict[str, str] = {
    "families": "List the VAE families vaelens knows: class, latent channels, spatial and temporal factors, "
    "normalisation, token packing.",
    "shapes": "Pixels -> latent -> tokens -> pixels for a family at a size: every tensor's shape and bytes, the "
    "size rule, the normalisation, the compression. No weights are needed.",
    "explain": "A narrated walk-through of what the VAE does to pixels of this size, step by step.",
    "trace": "Run the real diffusers module on meta tensors (no memory, no weights) and list every layer "
    "with its output shape and bytes.",
    "memory": "Predict the CUDA peak memory of encode and decode (optionally tiled / sliced), and with "
    "--budget the largest batch and size that fit.",
}

EXAMPLES: dict[str, list[str]] = {
    "families": ["vaelens families", "vaelens families --json"],
    "shapes": ["vaelens shapes sdxl --size 1024x1024", "vaelens shapes wan21 --size 832x480 --frames 81 --json"],
    "explain": ["vaelens explain flux1 --size 1024x1024", "vaelens explain wan21 --size 832x480 --frames 81"],
    "trace": ["vaelens trace sd15 --size 512x512 --op decode", "vaelens trace sdxl --size 1024x1024 --depth 2 --json"],
    "memory": ["vaelens memory sdxl --size 1024x1024", "vaelens memory flux1 --size 2048x2048 --tiled --budget 8GiB"],
    "pipeline": ["vaelens pipeline flux1-dev --size 1024x1024", "vaelens pipeline sd15 --budget 8GiB --plot sd15.png"],
    "encode": [
        "vaelens encode demo --vae demo -o coffee.safetensors",
        "vaelens encode photos/ --vae ./sdxl-vae --batch-size 8 -o photos.safetensors",
        "vaelens encode clip.mp4 --vae ./wan-vae -o clip.safetensors",
    ],
    "decode": [
        "vaelens decode coffee.safetensors --vae demo -o coffee_decoded.png",
        "vaelens decode clip.safetensors --vae ./wan-vae -o clip.mp4 --save-frames",
    ],
    "roundtrip": ["vaelens roundtrip -o demo", "vaelens roundtrip 'photos/*.jpg' --vae ./sdxl-vae -o rt --json"],
    "inspect": ["vaelens inspect -o demo", "vaelens inspect coffee.safetensors --vae demo -o coffee"],
    "report": ["vaelens report sdxl -o sdxl.html", "vaelens report sd15 --budget 8GiB --vae demo -o sd15.html"],
    "stats": ["vaelens stats photos/ --vae ./sdxl-vae", "vaelens stats photos/ --vae demo --plot hist.png --json"],
    "cache": ["vaelens cache photos/ --vae ./sdxl-vae -o cache/", "vaelens cache list.txt --vae demo -o c/ --logvar"],
}


def apply(sub: argparse._SubParsersAction, name: str, module: object) -> None:
    """Give the subparser `name` its description (when it has none) and an 'examples:' epilog."""
    parser = sub.choices.get(name)
    if parser is None:
        return
    description = getattr(module, "DESCRIPTION", None) or DESCRIPTIONS.get(name)
    if not parser.description and description:
        parser.description = description
    examples = getattr(module, "EXAMPLES", None) or EXAMPLES.get(name)
    if examples:
        parser.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        if parser.description and "\n" not in parser.description:  # raw formatting: wrap it here
            parser.description = textwrap.fill(parser.description, 100)
