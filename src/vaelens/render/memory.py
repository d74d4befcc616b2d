"""Text and JSON for `vaelens trace` and `vaelens memory`.

Trace -> per-layer table grouped by stage; MemoryEstimate(s) -> weights / input / output / peak table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from vaelens.memory.estimate import MemoryEstimate
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


def render_memory(
    family: str, pixel_shape: Sequence[int], latent_shape: Sequence[int], estimates: Sequence[MemoryEstimate],
    *, measured: dict[str, int] | None = None,
) -> str:
    """Estimates -> table: weights, input, output, peak, peak ÷ latent bytes, where the peak is."""
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
    headers = ["op", "input", "output", "peak", "peak ÷ latent", "weights+input+peak", "peak at"]
    if measured:
        headers[4:4] = ["measured", "error"]
    rows = []
    for e in estimates:
        where = f"{e.peak_at} ({e.peak_op.replace('aten.', '')})"
        row = [e.op.value, human_bytes(e.input_bytes), human_bytes(e.output_bytes), human_bytes(e.peak_bytes),
               f"{e.peak_bytes / latent_bytes:,.0f}×", human_bytes(e.total_bytes), where]
        if measured:
            m = measured.get(e.op.value)
            row[4:4] = [human_bytes(m) if m else "-", f"{e.peak_bytes / m - 1:+.2%}" if m else "-"]
        rows.append(row)
    right = tuple(range(1, len(headers) - 1))
    lines.append(table(headers, rows, right=right))
    lines += [
        "",
        "peak: torch.cuda.max_memory_allocated() during the call minus memory_allocated() before it, predicted",
        "for a CUDA GPU (weights and input already resident; the output counts). No GPU was used.",
    ]
    return "\n".join(lines)
