"""`vaelens report MODEL -o report.html`: one self-contained HTML page — the contract to scale, memory per
layer, the budget and tiling plan, and (with --vae / --pipeline) a real round trip and the pipeline's stages."""

from __future__ import annotations

import argparse

from vaelens.cli._io import add_force, add_quiet, bar_enabled, check_outputs, weights_inputs
from vaelens.cli.common import (
    BUDGET_UNITS_HELP,
    add_device_profile,
    add_json,
    add_model,
    add_size,
    device_profile_from_args,
    emit_json,
)
from vaelens.errors import VaeLensError

EXAMPLES = [
    "vaelens report sdxl --size 1024x1024 -o sdxl.html",
    "vaelens report sdxl --budget 4GiB --vae demo --pipeline sdxl -o sdxl_demo.html",
    "vaelens report wan21 --size 832x480 --frames 81 -o wan21.html",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="one self-contained HTML page: contract to scale, memory timeline, budget, round trip",
        description="Write one HTML file that opens offline in any browser (no scripts, everything inline).",
    )
    add_model(p)
    add_size(p)
    p.add_argument("--budget", metavar="SIZE", help="e.g. 8GiB: the verdict, and the tiling plan that fits "
                   f"({BUDGET_UNITS_HELP})")
    add_device_profile(p)
    p.add_argument("--vae", metavar="WEIGHTS",
                   help="real weights for a round trip (a diffusers folder, .safetensors file, cached repo id, "
                   "or 'demo' for vaelens' demo VAE)")
    p.add_argument("--image", metavar="IMG", help="image for the round trip (default with --vae, or 'demo': the demo "
                   "photograph)")
    p.add_argument("--pipeline", metavar="NAME", help="add a built-in pipeline's stages per offload mode "
                   "(see `vaelens pipeline --list`)")
    p.add_argument("-o", "--out", default="report.html", metavar="FILE", help="an .html file (default: report.html)")
    add_force(p)
    add_quiet(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.cli.shapes import plan_from_args
    from vaelens.progress import progress_bar
    from vaelens.render.report import render_report, report_json, save_report
    from vaelens.report import build_report
    from vaelens.units import human_bytes, parse_bytes

    # Everything that can be refused is refused before any work.
    if args.image is not None and args.vae is None:
        raise VaeLensError("--image needs --vae (the weights that encode it); --vae demo is vaelens' demo VAE")
    image = None
    if args.image is not None:  # a file, or `demo` for the shipped photograph (as encode/roundtrip take it)
        from vaelens.sources import IMAGE_SUFFIXES, expand_inputs

        found = expand_inputs([args.image], suffixes=IMAGE_SUFFIXES)
        if len(found) != 1:
            raise VaeLensError(f"--image {args.image!r} gives {len(found)} images; the report takes one")
        image = found[0]
    inputs = weights_inputs(args) + ([image] if image else [])
    (out,) = check_outputs(args, [args.out], inputs=inputs, kind="html", what="-o")
    budget = parse_bytes(args.budget) if args.budget is not None else None
    spec, plan = plan_from_args(args)
    with progress_bar("report", enabled=bar_enabled(args)) as bar:
        rep = build_report(spec, plan.request, budget_bytes=budget, vae=args.vae, image=image,
                           pipeline=args.pipeline, pipeline_dtype=None if args.dtype == "fp32" else args.dtype,
                           progress=bar, device_profile=device_profile_from_args(args))
    path = save_report(render_report(rep), out, overwrite=args.force)
    if args.json:
        emit_json({"output": str(path), "bytes": path.stat().st_size, **report_json(rep)})
        return 0
    enc, dec = rep.estimate("encode"), rep.estimate("decode")
    frames = f", {plan.frames} frames" if plan.frames is not None else ""
    line = (f"wrote {path} ({human_bytes(path.stat().st_size)}): {spec.name} {plan.used_size[1]}x"
            f"{plan.used_size[0]}{frames}, encode peak {human_bytes(enc.peak_bytes)}, decode peak "
            f"{human_bytes(dec.peak_bytes)}")
    if rep.real is not None:
        line += f", round trip PSNR {rep.real.psnr:.2f} dB"
    print(line)
    if rep.precision is not None:
        from vaelens.render.precision import verdict_lines

        print("\n".join(verdict_lines(rep.precision)))
    return 0
