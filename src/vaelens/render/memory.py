"""Text and JSON for `vaelens trace` and `vaelens memory`.

Trace -> per-layer table grouped by stage; MemoryEstimate(s) -> peak / range / reserved / device table;
VaeBudgetReport -> verdict lines; memory_json / trace_report_json: the `--json` documents.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from vaelens.memory.budget import VaeBudgetReport
from vaelens.memory.estimate import CUDA_CONTEXT_BYTES, MemoryEstimate
from vaelens.options import MAX_BATCH, MAX_SIDE, PixelRequest
from vaelens.render.tables import human_bytes, shape_str, table
from vaelens.trace import LayerRecord, Trace

# Stage of a layer, read from its module path (diffusers names: encoder.down_blocks.0...,
# decoder.mid_block, quant_conv, post_quant_conv, decoder.up_blocks...).
_STAGES = (
    (re.compile(r"(^|\.)down(_?blocks?|sampl)"), "down blocks"),
    (re.compile(r"(^|\.)(mid_?block|block_in|mid)"), "mid block"),
    (re.compile(r"(^|\.)up(_?blocks?|sampl)"), "up blocks"),
    (re.compile(r"^(encoder\.(conv_norm_out|conv_act|conv_out|norm_out|nonlinearity|proj_out)|quant_conv|bn)"),
     "latent distribution"),
    (re.compile(r"^(post_quant_conv|decoder\.(conv_in|proj_in))"), "latent in"),
    (re.compile(r"^encoder\.(conv_in|proj_in|patch)"), "pixels in"),
    (re.compile(r"^decoder\.(conv_norm_out|conv_act|conv_out|norm_out|nonlinearity|proj_out)"), "pixels out"),
)


def stage_of(path: str) -> str:
    """module path -> stage name ('down blocks', 'mid block', 'latent distribution', 'up blocks', ...)."""
    if not path:
        return "whole call"
    for pattern, name in _STAGES:
        if pattern.search(path):
            return name
    head = path.split(".")[0]
    return head


def trace_json(tr: Trace) -> dict[str, Any]:
    """Trace -> JSON: every layer record plus totals."""
    return {
        "op": tr.op.value,
        "module": tr.module_type,
        "input_shapes": [list(s) for s in tr.input_shapes],
        "input_bytes": tr.input_bytes,
        "output_shape": list(tr.output_shape) if tr.output_shape else None,
        "output_bytes": tr.output_bytes,
        "weights_bytes": tr.weights_bytes,
        "operators": len(tr.events),
        "layers": [
            {
                "index": r.index, "path": r.path, "type": r.type, "depth": r.depth, "stage": stage_of(r.path),
                "output_shape": list(r.output_shape) if r.output_shape else None, "dtype": r.dtype,
                "bytes": r.bytes, "live_bytes": r.live_bytes, "operators": r.last_op - r.first_op,
            }
            for r in tr.layers
        ],
    }


def render_trace(tr: Trace, *, depth: int = 2, estimate: MemoryEstimate | None = None) -> str:
    """Trace -> table of layers up to `depth` (1 = encoder/decoder, 2 = blocks, ...) grouped by stage;
    with `estimate` (simulate(tr)) a column with the predicted CUDA peak inside each layer."""
    peaks = {i: m.peak_bytes for i, m in enumerate(estimate.timeline)} if estimate is not None else {}
    rows: list[Sequence[Any]] = []
    current = None
    shown: list[LayerRecord] = [r for r in tr.layers if 1 <= r.depth <= depth]
    # A container whose children are shown (encoder, decoder) is summed up by them: skip it.
    parents = {r.index for r in shown if any(c.depth > r.depth and r.first_op <= c.first_op and c.last_op <= r.last_op
                                            and c.index > r.index for c in shown)}
    shown = [r for r in shown if r.index not in parents]
    for r in shown:
        stage = stage_of(r.path)
        if stage != current:
            rows.append((f"── {stage}",) + ("",) * (6 if peaks else 5))
            current = stage
        rows.append((
            r.path or f"({r.type})", r.type, shape_str(r.output_shape) if r.output_shape else "-",
            r.dtype or "-", human_bytes(r.bytes), human_bytes(r.live_bytes),
        ) + ((human_bytes(peaks[r.index]),) if peaks else ()))
    head = (f"{tr.module_type}.{tr.op.value}: input {', '.join(shape_str(s) for s in tr.input_shapes)} "
            f"-> output {shape_str(tr.output_shape) if tr.output_shape else '-'}; "
            f"{len(tr.layers)} module calls, {len(tr.events)} aten operators (meta device, no memory used)")
    root = next((r for r in tr.layers if r.depth == 0), None)
    if root is not None:
        rows.append(("── whole call",) + ("",) * (6 if peaks else 5))
        rows.append((f"({root.type})", root.type, shape_str(root.output_shape) if root.output_shape else "-",
                     root.dtype or "-", human_bytes(root.bytes), human_bytes(root.live_bytes))
                    + ((human_bytes(peaks[root.index]),) if peaks else ()))
    headers = ("layer", "type", "output shape", "dtype", "output", "live after") + (("peak inside",) if peaks else ())
    body = table(headers, rows, right=(4, 5, 6))
    foot = ("live after: activation bytes alive after the layer (weights and input excluded), 512-byte rounded as "
            "the CUDA caching allocator counts them")
    if peaks:
        foot += (";\npeak inside: predicted CUDA peak (above weights + input) while the layer ran, "
                 "kernel temporaries included")
    return "\n".join([head, "", body, "", foot])


def estimate_json(est: MemoryEstimate, latent_shape: Sequence[int]) -> dict[str, Any]:
    out = est.to_json()
    out["peak_over_latent"] = round(est.peak_bytes / max(1, math.prod(latent_shape) * est.dtype.itemsize), 2)
    return out


def memory_json(
    family: str, plan: Any, estimates: Sequence[MemoryEstimate], *, tiled: bool, sliced: bool,
    measured: dict[str, dict[str, int]] | None = None, budget: VaeBudgetReport | None = None,
) -> dict[str, Any]:
    """`vaelens memory --json`: family, shapes, and per op the estimate (plus measurements, budget)."""
    data: dict[str, Any] = {
        "family": family, "dtype": plan.request.dtype.value, "pixel_shape": list(plan.pixel_shape),
        "latent_shape": list(plan.latent_shape), "weights_bytes": estimates[0].weights_bytes if estimates else 0,
        "tiled": tiled, "sliced": sliced, "used_size": list(plan.used_size), "warnings": list(plan.warnings),
        "cuda_context_bytes": CUDA_CONTEXT_BYTES,
    }
    for est in estimates:
        entry = estimate_json(est, plan.latent_shape)
        got = (measured or {}).get(est.op.value)
        if got:
            entry["measured"] = dict(got)
        data[est.op.value] = entry
    if budget is not None:
        data["budget"] = budget.to_json()
    return data


def trace_report_json(family: str, plan: Any, tr: Trace, est: MemoryEstimate) -> dict[str, Any]:
    """`vaelens trace --json`: the trace's layers with their predicted peaks, and the call's figures."""
    data = {"family": family, "dtype": plan.request.dtype.value, "pixel_shape": list(plan.pixel_shape),
            "latent_shape": list(plan.latent_shape), **trace_json(tr),
            "peak_bytes": est.peak_bytes, "peak_bytes_low": est.peak_bytes_low,
            "peak_bytes_high": est.peak_bytes_high, "reserved_peak_bytes": est.reserved_peak_bytes,
            "min_device_bytes": est.min_device_bytes, "peak_at": est.peak_at,
            "used_size": list(plan.used_size), "warnings": list(plan.warnings)}
    for layer, mem in zip(data["layers"], est.timeline, strict=True):
        layer["peak_bytes"] = mem.peak_bytes
    return data


def _range(e: MemoryEstimate) -> str:
    if e.peak_bytes_low == e.peak_bytes_high:
        return "-"
    return f"{human_bytes(e.peak_bytes_low)} – {human_bytes(e.peak_bytes_high)}"


def render_memory(
    family: str, pixel_shape: Sequence[int], latent_shape: Sequence[int], estimates: Sequence[MemoryEstimate],
    *, measured: dict[str, dict[str, int]] | None = None,
) -> str:
    """Estimates -> table: peak (best, range), reserved, the device memory it needs, where the peak is;
    with `measured` ({op: {"peak_bytes", "reserved_peak_bytes", "min_device_bytes"}}) the GPU's
    numbers beside them."""
    if not estimates:
        return ""
    e0 = estimates[0]
    latent_bytes = math.prod(latent_shape) * e0.dtype.itemsize
    flags = [m for m, on in (("tiled", e0.tiled), ("sliced", e0.sliced)) if on]
    mode = f" ({', '.join(flags)})" if flags else ""
    lines = [
        f"{family}{mode}: pixels {shape_str(pixel_shape)} <-> latent {shape_str(latent_shape)} at {e0.dtype.value}; "
        f"weights {human_bytes(e0.weights_bytes)}",
        "",
    ]
    headers = ["op", "input", "output", "peak", "range (low – high)", "peak ÷ latent", "reserved", "needs on device",
               "peak at"]
    rows = []
    for e in estimates:
        where = f"{e.peak_at} ({e.peak_op.replace('aten.', '')})"
        rows.append([e.op.value, human_bytes(e.input_bytes), human_bytes(e.output_bytes), human_bytes(e.peak_bytes),
                     _range(e), f"{e.peak_bytes / latent_bytes:,.0f}×", human_bytes(e.reserved_peak_bytes),
                     f"≥ {human_bytes(e.min_device_bytes)}", where])
    right = tuple(range(1, len(headers) - 1))
    lines.append(table(headers, rows, right=right))
    if measured:
        lines += ["", "measured on this GPU (random weights, the same call):"]
        mrows = []
        for e in estimates:
            m = measured.get(e.op.value) or {}
            mrows.append([e.op.value] + [
                f"{human_bytes(m[k])} ({pred / m[k] - 1:+.1%})" if m.get(k) else "-"
                for k, pred in (("peak_bytes", e.peak_bytes), ("reserved_peak_bytes", e.reserved_peak_bytes),
                                ("min_device_bytes", e.min_device_bytes))])
        lines.append(table(["op", "peak (pred. error)", "reserved", "smallest cap that ran"], mrows, right=(1, 2, 3)))
    wide = [w for e in estimates for w in e.range_ops]
    lines += [
        "",
        "peak: torch.cuda.max_memory_allocated() during the call minus memory_allocated() before it, predicted",
        "for a CUDA GPU (weights and input already resident; the output counts). No GPU was used.",
        "range: where cuDNN's choice of engine cannot be known from the shapes; budgets use its high end.",
        "reserved: max_memory_reserved() (the allocator's segments, weights' included) on a GPU with memory to spare.",
        "needs on device: the smallest allocator cap (set_per_process_memory_fraction) the call runs under — the",
        f"figure for \"will it fit\"; the CUDA context (about {human_bytes(CUDA_CONTEXT_BYTES)}) comes on top of it.",
    ]
    if wide:
        lines.append("range made wide by: " + "; ".join(dict.fromkeys(wide)))
    return "\n".join(lines)


def _searched(what: str, n: int, shown: str, none: str, extrapolated_from: int, plural: str, limit: int) -> str:
    """One search result: "largest batch 6", a lower bound beyond what was traced, or vaelens' limit."""
    if not n:
        return none
    if extrapolated_from:
        return f"{what} at least {shown} (a lower bound: {plural} above {extrapolated_from} were not traced)"
    return f"{what} {shown}" + (f" (vaelens searches no further than {limit})" if n == limit else "")


def render_budget(report: VaeBudgetReport, request: PixelRequest) -> str:
    """VaeBudgetReport -> one verdict line per op (needs at least X on the device, fits or not, searches)."""
    mode = ", with tiling" if report.tiled else ""
    lines = [f"budget {human_bytes(report.budget_bytes)}{mode} (the smallest device memory each call runs in, "
             f"simulated with the caching allocator under that cap; CUDA context, about "
             f"{human_bytes(CUDA_CONTEXT_BYTES)}, not counted)"]
    for o in report.ops:
        verdict = "fits" if o.fits else "does NOT fit"
        tiled = ("" if o.tiled_fits is None or report.tiled else
                 f"; with --tiled it needs at least {human_bytes(o.tiled_min_device_bytes or 0)} and "
                 f"{'fits' if o.tiled_fits else 'still does not fit'}")
        batch = _searched("largest batch", o.max_batch, str(o.max_batch), "not even batch 1 fits",
                          o.batch_extrapolated_from, "batches", MAX_BATCH)
        side = _searched("largest square", o.max_square, f"{o.max_square}x{o.max_square}", "no square size fits",
                         o.square_extrapolated_from, "sides", MAX_SIDE)
        lines.append(f"  {o.op}: needs at least {human_bytes(o.min_device_bytes)} on the device, {verdict}; {batch} at "
                     f"{request.width}x{request.height}; {side} at batch {request.batch}{tiled}")
    return "\n".join(lines)
