"""`vaelens pipeline NAME`: whole-pipeline memory — text encoders, one denoising step, VAE decode."""

from __future__ import annotations

import argparse
import contextlib

from vaelens.cli._io import add_force, add_quiet, bar_enabled
from vaelens.cli.common import (
    BUDGET_UNITS_HELP,
    add_json,
    add_size,
    check_plot,
    dtype_from_args,
    emit_json,
    size_from_args,
)
from vaelens.errors import VaeLensError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline", help="GPU memory of a whole diffusion pipeline, stage by stage, per offload mode",
        description="Text encoders, one denoising step and the VAE decode of a built-in diffusers "
        "pipeline: weights resident, tensors held, activation peaks, the overall peak.",
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="built-in pipeline (see --list)")
    p.add_argument("--list", action="store_true", help="list the built-in pipelines and exit")
    add_size(p)
    p.set_defaults(dtype="bf16")  # pipelines run in half precision; fp32 is asked for explicitly
    helps = {"dtype": "fp32 | fp16 | bf16 (default bf16)", "size": "pixel size, width first (default: the pipeline's)",
             "frames": "video frames (default: the pipeline's)"}
    for action in p._actions:
        if action.dest in helps:
            action.help = helps[action.dest]
    p.add_argument("--offload", default="none", metavar="MODE",
                   help="none | model | sequential: the mode the stage table shows (all three are estimated)")
    p.add_argument("--vae-tiling", action="store_true", help="decode with the VAE's enable_tiling()")
    p.add_argument("--budget", metavar="BYTES",
                   help="e.g. 24GiB: does it fit per offload mode, and what would make it fit "
                   f"({BUDGET_UNITS_HELP})")
    p.add_argument("--plot", metavar="FILE", help="write the memory timeline as an image (matplotlib)")
    add_force(p)
    add_quiet(p)
    add_json(p)
    p.set_defaults(func=run)


def request_from_args(args: argparse.Namespace):
    """CLI args -> (PipelineSpec, PixelRequest): the pipeline's default size/frames where not given."""
    from vaelens.options import PixelRequest
    from vaelens.pipelines import get_pipeline

    spec = get_pipeline(args.name)
    size = size_from_args(args)
    height, width = size if size else spec.default_size
    frames = args.frames
    if frames is not None and not spec.is_video:
        raise VaeLensError(f"--frames {frames}: {spec.name} makes images; leave --frames out")
    if frames is None:
        frames = spec.default_frames
    return spec, PixelRequest(width=width, height=height, frames=frames, batch=args.batch, dtype=dtype_from_args(args))


def _list(args: argparse.Namespace) -> int:
    from vaelens.pipelines import PIPELINES
    from vaelens.render.pipeline import pipeline_list_json, render_pipeline_list

    if args.json:
        emit_json(pipeline_list_json(PIPELINES))
    else:
        print(render_pipeline_list(PIPELINES))
    return 0


@contextlib.contextmanager
def _progress(args: argparse.Namespace, spec):
    """-> estimate_pipeline's peak_fn / decode_fn wrapped to name each traced call on a progress line."""
    from vaelens.pipelines.estimate import estimate_decode, trace_peak
    from vaelens.progress import progress_bar

    name = getattr(spec, "name", spec)
    with progress_bar(f"pipeline {name}", enabled=bar_enabled(args), unit="trace") as bar:

        def peak_fn(module, plan, dtype):
            bar.stage(f"tracing {type(module).__name__} on meta")
            out = trace_peak(module, plan, dtype)
            bar.advance(1)
            return out

        def decode_fn(*a, **k):
            bar.stage("tracing the VAE decode on meta")
            out = estimate_decode(*a, **k)
            bar.advance(1)
            return out

        yield {"peak_fn": peak_fn, "decode_fn": decode_fn}


def run(args: argparse.Namespace) -> int:
    from vaelens.pipelines import Offload, pipeline_names

    if args.list:
        return _list(args)
    if not args.name:
        raise VaeLensError(f"give a pipeline NAME or --list; built-in: {', '.join(pipeline_names())}")
    from vaelens.pipelines.budget import check_pipeline_budget
    from vaelens.pipelines.estimate import EstimateCache, estimate_pipeline
    from vaelens.render.pipeline import pipeline_json, plot_pipeline, render_pipeline
    from vaelens.units import parse_bytes

    mode = Offload.parse(args.offload)
    check_plot(args)
    budget_bytes = parse_bytes(args.budget) if args.budget else None
    spec, request = request_from_args(args)
    cache = EstimateCache()
    with _progress(args, spec) as hooks:
        est = estimate_pipeline(spec, request, vae_tiling=args.vae_tiling, cache=cache, **hooks)
        budget = check_pipeline_budget(est, budget_bytes, mode=mode, cache=cache) if budget_bytes else None
    plot = None
    if args.plot:
        plot = str(plot_pipeline(est, args.plot, mode=mode, budget_bytes=budget_bytes, force=args.force))
    if args.json:
        emit_json(pipeline_json(est, mode, budget, plot))
    else:
        print(render_pipeline(est, mode, budget))
        if plot:
            print(f"\nwrote {plot}")
    return 0
