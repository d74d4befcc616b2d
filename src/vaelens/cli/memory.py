"""`vaelens memory MODEL`: predicted CUDA memory of encode and decode (peak, range, reserved, the device
memory it needs), without a GPU; --measure / --measure-cap check it on one."""

from __future__ import annotations

import argparse

from vaelens.cli.common import add_json, add_model, add_size, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="predicted GPU memory peak of encode/decode (allocator-level, no GPU)")
    add_model(p)
    add_size(p)
    p.add_argument("--op", choices=("encode", "decode", "both"), default="both", help="default both")
    p.add_argument("--tiled", action="store_true", help="predict diffusers' enable_tiling()")
    p.add_argument("--sliced", action="store_true", help="predict diffusers' enable_slicing() (batch > 1)")
    p.add_argument("--budget", metavar="SIZE", help="e.g. 8GiB: does it fit, largest batch / square size that fit")
    p.add_argument("--measure", action="store_true",
                   help="also run the real module (random weights) on CUDA: allocated and reserved peak beside "
                        "the predictions")
    p.add_argument("--measure-cap", action="store_true",
                   help="with --measure: also bisect the smallest memory-fraction cap the call runs under")
    p.add_argument("--plot", metavar="FILE", help="write the memory timeline per layer as an image (e.g. out.png)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.cli.shapes import plan_from_args
    from vaelens.memory.estimate import estimate_memory
    from vaelens.render.memory import memory_json, render_memory

    spec, plan = plan_from_args(args)
    request = plan.request
    ops = ("encode", "decode") if args.op == "both" else (args.op,)
    budget = None
    if args.budget is not None:  # validate before any work
        from vaelens.options import parse_bytes

        budget = parse_bytes(args.budget)
    if args.plot:  # refuse a path matplotlib cannot write before any work
        from vaelens.render.timeline import check_plot_path

        check_plot_path(args.plot)
    measured: dict[str, dict[str, int]] = {}
    if args.measure_cap and not args.measure:
        from vaelens.errors import VaeLensError

        raise VaeLensError("--measure-cap is a part of --measure; add --measure")
    if args.measure:
        from vaelens.memory.measure import measure_call, require_cuda

        require_cuda()  # one line, before any work
    from vaelens.memory.estimate import TraceCache

    cache = TraceCache()
    estimates = [estimate_memory(spec, request, op=op, tiled=args.tiled, sliced=args.sliced, cache=cache)
                 for op in ops]
    if args.measure:
        for est in estimates:
            shape = plan.pixel_shape if est.op.value == "encode" else plan.latent_shape
            measured[est.op.value] = measure_call(
                spec.diffusers_config(), tuple(shape), request.dtype, op=est.op, tiled=args.tiled, sliced=args.sliced,
                cap_search=args.measure_cap).to_json()
    report = tiling = None
    if budget is not None:
        from vaelens.memory.budget import check_vae_budget

        report = check_vae_budget(spec, request, budget, ops=ops, step=spec.size_rule.multiple, tiled=args.tiled,
                                  sliced=args.sliced, cache=cache)
        from vaelens.tiling.plan import plan_ops  # the exact tiling that fits (vaelens.tiling)

        tiling = plan_ops(spec, {op: plan.latent_shape if op == "decode" else plan.pixel_shape for op in ops},
                          request.dtype, budget)
    plot = None
    if args.plot:
        from vaelens.render.timeline import plot_memory_timeline

        plot = str(plot_memory_timeline(estimates, args.plot, budget_bytes=budget, title=f"{spec.name} "
                                        f"{plan.used_size[1]}x{plan.used_size[0]} {request.dtype.value}"))
    if args.json:
        data = memory_json(spec.name, plan, estimates, tiled=args.tiled, sliced=args.sliced, measured=measured,
                           budget=report)
        if report is not None:
            from vaelens.render.tiling import plans_json

            data["tiling"] = plans_json(tiling)
        if plot:
            data["plot"] = plot
        emit_json(data)
        return 0
    print(render_memory(spec.name, plan.pixel_shape, plan.latent_shape, estimates, measured=measured or None))
    if report is not None:
        from dataclasses import replace

        from vaelens.render.memory import render_budget

        print()
        # name the size the estimates ran at (a floor family's size rule may have changed it)
        print(render_budget(report, replace(request, height=plan.used_size[0], width=plan.used_size[1])))
        if any(isinstance(t, str) or t.tiled for t in tiling.values()):
            from vaelens.render.tiling import render_plans

            print()
            print(render_plans(tiling))
    if plot:
        print(f"\nwrote {plot}")
    return 0
