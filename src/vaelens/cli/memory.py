"""`vaelens memory MODEL`: predicted CUDA memory of encode and decode (peak, range, reserved, the device
memory it needs), without a GPU; --measure / --measure-cap check it on one."""

from __future__ import annotations

import argparse

from vaelens.cli._io import add_force, add_quiet, bar_enabled
from vaelens.cli.common import (
    BUDGET_UNITS_HELP,
    add_device_profile,
    add_json,
    add_model,
    add_size,
    check_plot,
    device_profile_from_args,
    emit_json,
)
from vaelens.progress import progress_bar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="predicted GPU memory peak of encode/decode (allocator-level, no GPU)")
    add_model(p)
    add_size(p)
    p.add_argument("--op", choices=("encode", "decode", "both"), default="both", help="default both")
    p.add_argument("--tiled", action="store_true", help="predict diffusers' enable_tiling()")
    p.add_argument("--sliced", action="store_true", help="predict diffusers' enable_slicing() (batch > 1)")
    p.add_argument("--budget", metavar="SIZE", help="e.g. 8GiB: does it fit, largest batch / square size that fit "
                   f"({BUDGET_UNITS_HELP})")
    add_device_profile(p)
    p.add_argument("--measure", action="store_true",
                   help="also run the real module (random weights) on CUDA: allocated and reserved peak beside "
                        "the predictions")
    p.add_argument("--measure-cap", action="store_true",
                   help="with --measure: also bisect the smallest memory-fraction cap the call runs under")
    p.add_argument("--plot", metavar="FILE", help="write the memory timeline per layer as an image (e.g. out.png)")
    add_force(p)
    add_json(p)
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelens.cli.shapes import plan_from_args
    from vaelens.memory.context import MetaContext
    from vaelens.memory.estimate import estimate_memory

    spec, plan = plan_from_args(args)
    request = plan.request
    ops = ("encode", "decode") if args.op == "both" else (args.op,)
    budget = _check_args(args)
    with progress_bar(f"memory {spec.name}", enabled=bar_enabled(args), unit="stage") as bar:
        ctx = MetaContext.of(spec, request.dtype).add_plan(plan)  # one meta module, the size planned once
        estimates = []
        for op in ops:
            bar.stage(f"estimate {op}")
            estimates.append(estimate_memory(ctx, request, op=op, tiled=args.tiled, sliced=args.sliced))
            bar.advance(1)
        measured = _measure(args, spec, plan, estimates)
        report, tiling = _budget(args, spec, plan, ops, budget, ctx, bar) if budget is not None else (None, None)
    plot = _plot(args, spec, plan, estimates, budget)
    if args.json:
        _emit(args, spec, plan, estimates, measured, report, tiling, plot)
    else:
        _print(spec, plan, estimates, measured, report, tiling, plot)
    return 0


def _check_args(args: argparse.Namespace) -> int | None:
    """Refuse bad arguments before any work -> the --budget in bytes (None without one)."""
    budget = None
    if args.budget is not None:
        from vaelens.units import parse_bytes

        budget = parse_bytes(args.budget)
    check_plot(args)
    if args.measure_cap and not args.measure:
        from vaelens.errors import VaeLensError

        raise VaeLensError("--measure-cap is a part of --measure; add --measure")
    if args.measure:
        from vaelens.memory.measure import require_cuda

        require_cuda()  # one line, before any work
    return budget


def _measure(args: argparse.Namespace, spec, plan, estimates) -> dict[str, dict[str, int]]:
    """--measure: each estimated call run for real on CUDA -> {op: measured peaks}."""
    measured: dict[str, dict[str, int]] = {}
    if not args.measure:
        return measured
    from vaelens.memory.measure import measure_call

    for est in estimates:
        shape = plan.pixel_shape if est.op.value == "encode" else plan.latent_shape
        measured[est.op.value] = measure_call(
            spec.diffusers_config(), tuple(shape), plan.request.dtype, op=est.op, tiled=args.tiled,
            sliced=args.sliced, cap_search=args.measure_cap).to_json()
    return measured


def _budget(args: argparse.Namespace, spec, plan, ops, budget: int, ctx, bar):
    """--budget: the budget report and the exact tiling that fits (vaelens.tiling), one bar stage each."""
    from vaelens.memory.budget import check_vae_budget
    from vaelens.tiling.plan import plan_ops

    bar.stage("budget search")
    report = check_vae_budget(ctx, plan.request, budget, ops=ops, step=spec.size_rule.multiple, tiled=args.tiled,
                              sliced=args.sliced)
    bar.advance(1)
    bar.stage("tiling plan")
    tiling = plan_ops(spec, {op: plan.latent_shape if op == "decode" else plan.pixel_shape for op in ops},
                      plan.request.dtype, budget, context=ctx, device_profile=device_profile_from_args(args))
    bar.advance(1)
    return report, tiling


def _plot(args: argparse.Namespace, spec, plan, estimates, budget: int | None) -> str | None:
    """--plot: the memory timeline per layer written as an image -> its path (None without --plot)."""
    if not args.plot:
        return None
    from vaelens.render.timeline import plot_memory_timeline

    return str(plot_memory_timeline(estimates, args.plot, budget_bytes=budget, force=args.force, title=f"{spec.name} "
                                    f"{plan.used_size[1]}x{plan.used_size[0]} {plan.request.dtype.value}"))


def _emit(args: argparse.Namespace, spec, plan, estimates, measured, report, tiling, plot) -> None:
    from vaelens.render.memory import memory_json

    data = memory_json(spec.name, plan, estimates, tiled=args.tiled, sliced=args.sliced, measured=measured,
                       budget=report)
    if report is not None:
        from vaelens.render.tiling import plans_json

        data["tiling"] = plans_json(tiling)
    if plot:
        data["plot"] = plot
    emit_json(data)


def _print(spec, plan, estimates, measured, report, tiling, plot) -> None:
    from vaelens.render.memory import render_memory

    print(render_memory(spec.name, plan.pixel_shape, plan.latent_shape, estimates, measured=measured or None))
    if report is not None:
        from dataclasses import replace

        from vaelens.render.memory import render_budget
        from vaelens.tiling.plan import NoTiling

        print()
        # name the size the estimates ran at (a floor family's size rule may have changed it)
        print(render_budget(report, replace(plan.request, height=plan.used_size[0], width=plan.used_size[1])))
        if any(isinstance(t, NoTiling) or t.tiled for t in tiling.values()):
            from vaelens.render.tiling import render_plans

            print()
            print(render_plans(tiling))
    if plot:
        print(f"\nwrote {plot}")
