"""`vaelens pipeline NAME`: whole-pipeline memory — text encoders, one denoising step, VAE decode."""

from __future__ import annotations

import argparse

from vaelens.cli.common import add_json, add_size, dtype_from_args, emit_json, size_from_args
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
                   help="e.g. 24GiB: does it fit per offload mode, and what would make it fit")
    p.add_argument("--plot", metavar="FILE", help="write the memory timeline as an image (matplotlib)")
    add_json(p)
    p.set_defaults(func=run)


def _list() -> str:
    from vaelens.pipelines import PIPELINES
    from vaelens.render.tables import table

    rows = []
    for s in PIPELINES:
        frames = f"x{s.default_frames}f" if s.default_frames else ""
        size = f"{s.default_size[0]}x{s.default_size[1]}{frames}"
        encs = " + ".join(e.title for e in s.text_encoders)
        rows.append((s.name, s.pipeline_class, encs, s.denoiser.class_name, s.vae_family, size,
                     s.guidance.value))
    return table(("pipeline", "class", "text encoders", "denoiser", "vae", "default", "CFG"), rows)


def request_from_args(args: argparse.Namespace):
    """CLI args -> PipelineRequest (the pipeline's default size/frames where not given)."""
    from vaelens.pipelines import PipelineRequest, get_pipeline

    spec = get_pipeline(args.name)
    size = size_from_args(args)
    width, height = size if size else spec.default_size
    frames = args.frames
    if frames is not None and not spec.is_video:
        raise VaeLensError(f"--frames {frames}: {spec.name} makes images; leave --frames out")
    if frames is None:
        frames = spec.default_frames
    return PipelineRequest(pipeline=spec, width=width, height=height, frames=frames, batch=args.batch,
                           dtype=dtype_from_args(args), vae_tiling=args.vae_tiling)


def run(args: argparse.Namespace) -> int:
    from vaelens.pipelines import Offload, pipeline_names

    if args.list:
        if args.json:
            from vaelens.pipelines import PIPELINES

            emit_json([{"name": s.name, "class": s.pipeline_class, "repo": s.repo, "vae_family": s.vae_family,
                        "components": [{"name": c.name, "class": c.class_name} for c in s.components],
                        "default_size": list(s.default_size), "default_frames": s.default_frames,
                        "guidance": s.guidance.value} for s in PIPELINES])
        else:
            print(_list())
        return 0
    if not args.name:
        raise VaeLensError(f"give a pipeline NAME or --list; built-in: {', '.join(pipeline_names())}")
    from vaelens.options import parse_bytes
    from vaelens.pipelines.budget import check_budget
    from vaelens.pipelines.estimate import EstimateCache, estimate_pipeline
    from vaelens.render.pipeline import plot_pipeline, render_pipeline

    mode = Offload.parse(args.offload)
    if args.plot:  # refuse a format matplotlib cannot write before the estimate, not after it
        from pathlib import Path

        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        suffix = Path(args.plot).suffix.lower().lstrip(".")
        if suffix and suffix not in formats:
            raise VaeLensError(f"--plot {args.plot!r}: matplotlib cannot write .{suffix}; use one of: "
                               f"{', '.join(sorted(formats))}")
    budget_bytes = parse_bytes(args.budget) if args.budget else None
    request = request_from_args(args)
    cache = EstimateCache()
    est = estimate_pipeline(request, cache=cache)
    budget = check_budget(est, budget_bytes, mode=mode, cache=cache) if budget_bytes else None
    plot = str(plot_pipeline(est, args.plot, mode=mode, budget_bytes=budget_bytes)) if args.plot else None
    if args.json:
        data = est.to_json()
        data["offload_shown"] = mode.value
        data["peak_bytes"] = est.mode(mode).peak_bytes
        data["peak_stage"] = est.mode(mode).peak.stage.label
        if budget is not None:
            data["budget"] = budget.to_json()
        if plot:
            data["plot"] = plot
        emit_json(data)
    else:
        print(render_pipeline(est, mode, budget))
        if plot:
            print(f"\nwrote {plot}")
    return 0
