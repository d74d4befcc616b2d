"""PrecisionReport -> verdict lines, the text report (block table, memory table, the fix), strict JSON, and
the plot of max |x| per layer against the fp16 limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaelens.precision import FP16_MAX, FP16_TINY, DTypeResult, PrecisionReport
from vaelens.render.tables import human_bytes, shape_str, table


def _num(x: float) -> str:
    """1.9e5 / 65504 / 3.21 / 0.0123: short, exact enough to compare with a limit."""
    if not math.isfinite(x):
        return "inf" if x > 0 else "nan"
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.2g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    return f"{x:.4g}"


def _sizes(rep: PrecisionReport) -> str:
    """'at 512x512' (W x H as the CLI writes it) when every input has one size, else 'at their own sizes'."""
    sizes = {s[-2:] for s in rep.input_shapes}
    if len(sizes) != 1:
        return "at their own sizes"
    h, w = next(iter(sizes))
    frames = {s[2] for s in rep.input_shapes if len(s) == 5}
    clip = f", {frames.pop()} frames" if len(frames) == 1 and max(frames) > 1 else ""
    return f"at {w}x{h}{clip}"


def _of(n: int, total: int) -> str:
    return "the image" if total == 1 else f"{n} of {total} images"


def verdict(rep: PrecisionReport, res: DTypeResult) -> str:
    """One dtype -> 'fp16: overflows at LAYER (max 1.9e5 > 65504) on 2 of 3 images at 2048x2048' or
    'bf16: safe, PSNR 47.3 dB vs fp32'."""
    name = res.dtype.value
    if res.first is None and not res.failing:
        ssim = f", SSIM {res.ssim_min:.4f}" if res.ssim_min is not None and math.isfinite(res.ssim_min) else ""
        return f"{name}: safe, PSNR {_db(res.psnr_db)} vs fp32{ssim} {_sizes(rep)}"
    where = res.first.layer or f"{rep.cls}'s own code" if res.first else "an unknown layer"
    count = _of(len(res.failing), res.images)
    if res.first is not None and res.first.nan_only:
        return f"{name}: NaN at {where} ({res.first.function}, no value above the range) on {count} {_sizes(rep)}"
    limit = "65504" if name == "fp16" else "3.4e38"
    peak = f"max {_num(res.first.max_abs)} > {limit}" if res.first else "inf/NaN"
    return f"{name}: overflows at {where} ({peak}) on {count} {_sizes(rep)}"


def _db(value: float | None) -> str:
    return "inf dB (identical)" if value is not None and math.isinf(value) else f"{value:.1f} dB"


def _peak(p: Any) -> str:
    if p.peak_bytes_low == p.peak_bytes_high == p.peak_bytes:
        return human_bytes(p.peak_bytes)
    return f"{human_bytes(p.peak_bytes)} ({human_bytes(p.peak_bytes_low)}–{human_bytes(p.peak_bytes_high)})"


def fix_line(rep: PrecisionReport) -> str | None:
    """-> 'fix (fp16): keep A … B (n blocks) in fp32: peak X vs Y all-fp32 (force_upcast), Z all-bf16', the
    reason no block set works, or None when nothing overflows."""
    fix = rep.upcast
    if fix is None:
        return None
    if not fix.blocks or not fix.verified:
        return f"fix ({fix.dtype.value}): {fix.note}; or use bf16"
    span = fix.blocks[0] if len(fix.blocks) == 1 else f"{fix.blocks[0]} … {fix.blocks[-1]}"
    text = f"fix ({fix.dtype.value}): keep {span} ({len(fix.blocks)} block{'s' * (len(fix.blocks) > 1)}) in fp32"
    mixed, fp32, bf16 = (rep.prices.get(k) for k in (f"{fix.dtype.value}+upcast", "fp32", "bf16"))
    if mixed and fp32 and bf16:
        text += (f": peak {human_bytes(mixed.peak_bytes)} vs {human_bytes(fp32.peak_bytes)} all-fp32 (force_upcast), "
                 f"{human_bytes(bf16.peak_bytes)} all-bf16")
        if mixed.peak_bytes >= fp32.peak_bytes:  # the fp32 blocks hold the peak, and the casts add to it
            text += "; no saving over all-fp32 at the peak"
    if rep.bf16 is not None and not rep.bf16.overflow and fix.dtype.value == "fp16":
        text += "; bf16 needs no upcast here"
    return text


def verdict_lines(rep: PrecisionReport) -> list[str]:
    """Every verdict: the fp32 failure alone, or fp16, bf16 and the fix."""
    if rep.fp32_failure is not None:
        f = rep.fp32_failure
        return [f"fp32: the VAE itself produces inf/NaN at {f.layer or rep.cls} ({f.function}) on "
                f"{_of(len(rep.fp32_failing) or 1, len(rep.images))} {_sizes(rep)}: half precision cannot be "
                "judged (check the weights)"]
    lines = [verdict(rep, r) for r in (rep.fp16, rep.bf16) if r is not None]
    fix = fix_line(rep)
    return lines + ([fix] if fix else [])


def _block_rows(rep: PrecisionReport) -> list[list[str]]:
    by_name = {r.name: r for r in rep.layers}
    first = rep.fp16.first.layer if rep.fp16 and rep.fp16.first else None
    fix = set(rep.upcast.blocks) if rep.upcast else set()
    rows = []
    for name in rep.blocks:
        r = by_name.get(name)
        if r is None:
            continue
        marks = []
        if first and (first == name or first.startswith(name + ".")):
            marks.append(f"fp16 overflow: {first[len(name) + 1:] or 'here'}")
        if name in fix:
            marks.append("upcast")
        rows.append([name, r.type, _num(r.max_abs), _num(r.p9999_abs), f"{100 * r.underflow_fraction:.3f}%",
                     f"{r.headroom_fp16:.3g}x" if math.isfinite(r.headroom_fp16) else "-", "; ".join(marks)])
    return rows


def render_precision(rep: PrecisionReport) -> str:
    """PrecisionReport -> text: what ran, the verdicts, |x| per block, memory per choice, the fix."""
    shapes = ", ".join(dict.fromkeys(shape_str(s) for s in rep.input_shapes))
    out = [f"{rep.family} ({rep.cls}) {rep.op.value} on {len(rep.images)} image{'s' * (len(rep.images) > 1)} "
           f"{shapes}: {', '.join(rep.images)}", ""]
    out += verdict_lines(rep)
    out += ["", f"|x| per block in fp32 (every layer in --json; fp16 max {FP16_MAX:g}, smallest normal "
                f"{FP16_TINY:.2g}):"]
    out.append(table(["block", "type", "max |x|", "p99.99 |x|", "underflow", "fp16 headroom", "note"],
                     _block_rows(rep), right=(2, 3, 4, 5)))
    if rep.prices:
        out += ["", "memory (vaelens.memory prediction for CUDA, batch 1; peak with its range):"]
        labels = {"fp32": "fp32 (force_upcast)", "fp16": "fp16", "bf16": "bf16", "fp16+upcast": "fp16 + upcast blocks",
                  "bf16+upcast": "bf16 + upcast blocks"}
        rows = [[labels.get(k, k), human_bytes(p.weights_bytes), _peak(p), p.peak_op] for k, p in rep.prices.items()]
        out.append(table(["precision", "weights", "peak", "at"], rows, right=(1, 2)))
    if rep.upcast is not None and rep.upcast.snippet:
        out += ["", "apply it in diffusers:", rep.upcast.snippet]
    for w in rep.warnings:
        out.append(f"note: {w}")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ JSON


def _float(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _dtype_json(res: DTypeResult | None) -> dict[str, Any] | None:
    if res is None:
        return None
    data: dict[str, Any] = {
        "overflow": res.overflow or bool(res.failing),
        "first_overflow": res.first.layer if res.first else None,
        "first_overflow_function": res.first.function if res.first else None,
        "first_overflow_max_abs": _float(res.first.max_abs) if res.first else None,
        "nan_only": res.first.nan_only if res.first else False,
        "images_overflowing": list(res.failing),
        "psnr_db": _float(res.psnr_db),
        "ssim": _float(res.ssim_min),
        "psnr_db_per_image": [_float(p) for p in res.psnr],
        "ssim_per_image": [_float(s) for s in res.ssim],
    }
    if res.psnr_db is None:
        data["null_reason"] = "the output holds inf/NaN on " + ", ".join(res.failing)
    elif math.isinf(res.psnr_db):
        data["null_reason"] = "the output equals fp32's exactly (PSNR infinite)"
    return data


def precision_json(rep: PrecisionReport) -> dict[str, Any]:
    """PrecisionReport -> the strict JSON of `vaelens precision --json` (no NaN/inf: null with a reason)."""
    prices = {k: p.to_json() for k, p in rep.prices.items()}
    fix = rep.upcast
    data: dict[str, Any] = {
        "family": rep.family,
        "class": rep.cls,
        "source": rep.source,
        "op": rep.op.value,
        "images": list(rep.images),
        "input_shapes": [list(s) for s in rep.input_shapes],
        "fp32_nonfinite": None if rep.fp32_failure is None else {
            "layer": rep.fp32_failure.layer, "function": rep.fp32_failure.function,
            "images": list(rep.fp32_failing)},
        "fp16": _dtype_json(rep.fp16),
        "bf16": _dtype_json(rep.bf16),
        "verdicts": verdict_lines(rep),
        "upcast": None if fix is not None and not fix.verified else list(fix.blocks) if fix else [],
        "upcast_dtype": fix.dtype.value if fix else None,
        "upcast_after": fix.after if fix else None,
        "upcast_verified": fix.verified if fix else None,
        "upcast_note": fix.note if fix else None,
        "upcast_snippet": fix.snippet if fix and fix.snippet else None,
        "upcast_peak_bytes": next((p["peak_bytes"] for k, p in prices.items() if k.endswith("+upcast")), None),
        "fp32_peak_bytes": prices.get("fp32", {}).get("peak_bytes"),
        "fp16_peak_bytes": prices.get("fp16", {}).get("peak_bytes"),
        "bf16_peak_bytes": prices.get("bf16", {}).get("peak_bytes"),
        "memory": prices,
        "blocks": list(rep.blocks),
        "layers": [
            {"name": r.name, "type": r.type, "max_abs": _float(r.max_abs), "p9999_abs": _float(r.p9999_abs),
             "underflow_fraction": _float(r.underflow_fraction, 4), "headroom_fp16": _float(r.headroom_fp16, 4),
             "headroom_bf16": _float(r.headroom_bf16, 4)}
            for r in rep.layers
        ],
        "warnings": list(rep.warnings),
    }
    return data


# ------------------------------------------------------------------------------------------------ plot


def plot_precision(rep: PrecisionReport, path: str | Path, *, title: str | None = None) -> Path:
    """PrecisionReport -> figure: max |x| and p99.99 |x| per layer (call order) on a log axis, the fp16 limit
    drawn, the blocks shaded alternately, the first fp16 overflow and the upcast blocks marked."""
    from vaelens.render.figures import _plt

    plt = _plt()
    layers = [r for r in rep.layers if r.max_abs > 0]
    xs = range(len(layers))
    fig, ax = plt.subplots(figsize=(min(16, 4 + 0.06 * len(layers)), 4.8), layout="constrained")
    ax.semilogy(list(xs), [r.max_abs for r in layers], ".-", lw=0.8, ms=3, label="max |x| (fp32)")
    ax.semilogy(list(xs), [max(r.p9999_abs, 1e-12) for r in layers], ".", ms=2, alpha=0.6, label="p99.99 |x|")
    ax.axhline(FP16_MAX, color="crimson", ls="--", lw=1, label="fp16 max 65504")
    _shade_blocks(ax, rep, layers)
    first = rep.fp16.first.layer if rep.fp16 and rep.fp16.first else None
    idx = next((i for i, r in enumerate(layers) if r.name == first), None)
    if idx is not None:
        ax.axvline(idx, color="crimson", lw=1, alpha=0.6)
        right = idx > len(layers) / 2
        ax.annotate(f"fp16 overflow: {first}", (idx, FP16_MAX), fontsize=7, color="crimson",
                    xytext=(-4 if right else 4, 6), textcoords="offset points", ha="right" if right else "left")
    ax.set_xlabel("layer (in the order their outputs are produced)")
    ax.set_ylabel("|x|")
    ax.set_xlim(-0.5, max(0.5, len(layers) - 0.5))
    top = max([FP16_MAX * 4] + [r.max_abs * 2 for r in layers])
    ax.set_ylim(bottom=None, top=top)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or f"{rep.family} ({rep.cls}) {rep.op.value}: " + "; ".join(verdict_lines(rep)[:2]), fontsize=8)
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _shade_blocks(ax: Any, rep: PrecisionReport, layers: Sequence[Any]) -> None:
    """Alternate grey bands per block, the upcast blocks in green, labelled under the axis when few."""
    fix = set(rep.upcast.blocks) if rep.upcast else set()
    names = [r.name for r in layers]
    for k, block in enumerate(rep.blocks):
        inside = [i for i, n in enumerate(names) if n == block or n.startswith(block + ".")]
        if not inside:
            continue
        color = "tab:green" if block in fix else ("0.85" if k % 2 else None)
        if color:
            ax.axvspan(inside[0] - 0.5, inside[-1] + 0.5, color=color, alpha=0.25 if block in fix else 0.5, lw=0)


# ---------------------------------------------------------------------------------------------- HTML


def report_section(rep: PrecisionReport) -> str:
    """PrecisionReport -> the HTML of the report's Precision section: verdicts, |x| per block, the plot,
    memory per choice, the diffusers snippet."""
    import tempfile

    from vaelens.render.report import _table, data_uri, module_path
    from vaelens.render.svg import esc

    def cls(line: str) -> str:
        return "ok" if ": safe" in line else "bad"

    verdicts = "".join(f'<li class="{cls(v)}">{esc(v)}</li>' for v in verdict_lines(rep))
    intro = (f"<p>The VAE run on <code>{esc(', '.join(rep.images))}</code> ({esc(rep.op.value)}) in fp32, then "
             "with every operation's output (and every weight) rounded to fp16 and to bf16 — what GPU kernels that "
             "accumulate in fp32 and store half precision produce. fp16's largest value is 65504; bf16 has fp32's "
             "range with 8 bits of mantissa.</p>")
    rows = [[module_path(r[0]), *r[1:]] for r in _block_rows(rep)]
    table_html = _table(("block", "type", "max |x|", "p99.99 |x|", "underflow", "fp16 headroom", "note"),
                        rows, numeric=(2, 3, 4, 5))
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_precision(rep, Path(tmp) / "precision.png").read_bytes()
    plot = (f'<figure><img src="{data_uri(png)}" alt="max |x| per layer against the fp16 limit">'
            "<figcaption>max |x| per layer in fp32 (data-flow order), log scale; dashed: fp16's 65504; green: "
            "the upcast blocks</figcaption></figure>")
    memory = ""
    if rep.prices:
        memory = _table(("precision", "weights", "peak (predicted, CUDA)", "at"),
                        [[k, human_bytes(p.weights_bytes), _peak(p), p.peak_op] for k, p in rep.prices.items()],
                        numeric=(1, 2))
    fix = ""
    if rep.upcast is not None and rep.upcast.snippet:
        fix = f"<h3>Apply the upcast in diffusers</h3><pre>{esc(rep.upcast.snippet)}</pre>"
    return (intro + f'<ul id="precision-verdicts">{verdicts}</ul>' + table_html + plot + memory + fix
            )
