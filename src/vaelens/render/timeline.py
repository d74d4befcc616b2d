"""The memory timeline of one encode or decode, layer by layer: as inline SVG (report) and as PNG (CLI).

MemoryEstimate -> MemoryTimeline: the innermost module calls in the order they run, each with the
activation bytes alive after it and the peak while it ran (kernel temporaries and the layer's inputs
included), on top of the weights + input band; the peak's layer; the predicted range (when the memory
model gives one); the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vaelens.memory.estimate import MemoryEstimate
from vaelens.render.memory import stage_of
from vaelens.render.svg import COLORS, byte_axis, esc, nice_ticks
from vaelens.render.tables import human_bytes

MAX_STEPS = 600  # more innermost layers than this (video decodes) are drawn in bins, each the max of its layers


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineStep:
    """One innermost layer (or a bin of consecutive ones): bytes above weights + input."""

    path: str
    type: str
    stage: str
    live_bytes: int  # activations alive after it
    peak_bytes: int  # peak while it ran
    layers: int = 1  # layers in this bin


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryTimeline:
    """op's memory over time: steps on top of the resident weights + input, its peak, range and budget."""

    op: str
    steps: tuple[TimelineStep, ...]
    weights_bytes: int
    input_bytes: int
    peak_bytes: int
    peak_at: str
    peak_op: str
    peak_index: int  # the step holding the peak
    peak_low: int | None = None  # the memory model's range, when it gives one
    peak_high: int | None = None
    budget_bytes: int | None = None
    layers: int = 0  # innermost layers before binning
    min_device_bytes: int | None = None  # smallest device memory that runs the call (when the model says)

    @property
    def base_bytes(self) -> int:
        return self.weights_bytes + self.input_bytes

    @property
    def total_bytes(self) -> int:
        return self.base_bytes + self.peak_bytes


def memory_timeline(est: MemoryEstimate, *, budget_bytes: int | None = None, max_steps: int = MAX_STEPS
                    ) -> MemoryTimeline:
    """MemoryEstimate (with its per-layer timeline) -> MemoryTimeline of its innermost layers.

    A layer is innermost when the next record is not nested in it (records are in call order, parents
    before children). The step marked as the peak holds est.peak_at (or lies inside it).
    """
    records = est.timeline
    leaves = [r for i, r in enumerate(records)
              if r.depth > 0 and not (i + 1 < len(records) and records[i + 1].depth > r.depth)]
    steps = [TimelineStep(path=r.path, type=r.type, stage=stage_of(r.path), live_bytes=r.live_bytes,
                          peak_bytes=r.peak_bytes) for r in leaves]
    n_layers = len(steps)
    if len(steps) > max_steps:
        size = -(-len(steps) // max_steps)
        binned = []
        for k in range(0, len(steps), size):
            group = steps[k:k + size]
            top = max(group, key=lambda s: s.peak_bytes)
            binned.append(TimelineStep(path=top.path, type=top.type, stage=top.stage,
                                       live_bytes=max(s.live_bytes for s in group), peak_bytes=top.peak_bytes,
                                       layers=len(group)))
        steps = binned
    inside = [i for i, s in enumerate(steps)
              if est.peak_at and (s.path == est.peak_at or s.path.startswith(est.peak_at + "."))]
    candidates = inside or list(range(len(steps)))
    peak_index = max(candidates, key=lambda i: steps[i].peak_bytes) if steps else -1
    low, high = getattr(est, "peak_bytes_low", None), getattr(est, "peak_bytes_high", None)
    min_device = getattr(est, "min_device_bytes", 0) or None
    return MemoryTimeline(
        op=est.op.value, steps=tuple(steps), weights_bytes=est.weights_bytes, input_bytes=est.input_bytes,
        peak_bytes=est.peak_bytes, peak_at=est.peak_at, peak_op=est.peak_op.replace("aten.", ""),
        peak_index=peak_index, peak_low=low, peak_high=high, budget_bytes=budget_bytes, layers=n_layers,
        min_device_bytes=min_device,
    )


def _stage_spans(steps: Sequence[TimelineStep]) -> list[tuple[str, int, int]]:
    """steps -> [(stage, first index, end index)] of consecutive runs."""
    spans: list[tuple[str, int, int]] = []
    for i, s in enumerate(steps):
        if spans and spans[-1][0] == s.stage:
            spans[-1] = (s.stage, spans[-1][1], i + 1)
        else:
            spans.append((s.stage, i, i + 1))
    return spans


def shared_top(timelines: Sequence[MemoryTimeline]) -> float:
    """Several timelines -> one axis maximum in bytes, so they share a scale and a unit (MiB or GiB)."""
    return max(_top(t) for t in timelines)


def _top(tl: MemoryTimeline) -> float:
    return max(tl.base_bytes + max(tl.peak_high or 0, tl.peak_bytes), tl.budget_bytes or 0,
               tl.min_device_bytes or 0) * 1.12


@dataclass(frozen=True, slots=True, kw_only=True)
class _Frame:
    """Where a timeline's plot area lies in the SVG: left edge, width, top padding, height, the byte
    value at its top, and the width of one step."""

    left: float
    pw: float
    top_pad: float
    ph: float
    top: float
    dx: float

    def y(self, v: float) -> float:
        return self.top_pad + self.ph * (1 - v / self.top)


def timeline_svg(tl: MemoryTimeline, *, width: float = 960.0, height: float = 300.0, top: float | None = None) -> str:
    """MemoryTimeline -> inline SVG: weights + input band, per-layer live and peak bars, the peak's layer,
    the predicted range, the budget line; stage names under the axis. Hover a bar for its layer. `top`:
    the axis maximum in bytes, to draw several timelines on one scale and unit (default: this one's own)."""
    ranged = tl.peak_low is not None and tl.peak_high is not None and tl.peak_high > tl.peak_low
    second = ranged or bool(tl.min_device_bytes)  # a second legend row for the range and the device minimum
    height += 16 if second else 0
    left, right, top_pad, bottom = 64.0, 16.0, 34.0, 54.0 + (16 if second else 0)
    pw, ph = width - left - right, height - top_pad - bottom
    f = _Frame(left=left, pw=pw, top_pad=top_pad, ph=ph, top=top if top is not None else _top(tl),
               dx=pw / max(len(tl.steps), 1))
    out = [f'<svg class="timeline" data-op="{tl.op}" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
           f'role="img" aria-label="{tl.op} memory timeline" xmlns="http://www.w3.org/2000/svg">']
    out += _axis_and_bars(tl, f)
    out += _stage_names(tl, f)
    out += _range_and_lines(tl, f, ranged)
    if tl.peak_index >= 0:
        out += _peak_label(tl, f)
    out += _legend(tl, left, height, ranged, second)
    out.append("</svg>")
    return "\n".join(out)


def _axis_and_bars(tl: MemoryTimeline, f: _Frame) -> list[str]:
    """The byte axis, the weights + input band and each step's live and peak bars."""
    left, pw, top_pad, ph, y = f.left, f.pw, f.top_pad, f.ph, f.y
    div, unit = byte_axis(f.top)
    out = []
    for t in nice_ticks(f.top / div):
        ty = y(t * div)
        out.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{left + pw}" y2="{ty:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{ty + 3:.1f}" text-anchor="end" font-size="10">{t:g}</text>')
    out.append(f'<text x="14" y="{top_pad + ph / 2:.0f}" font-size="10" text-anchor="middle" '
               f'transform="rotate(-90 14 {top_pad + ph / 2:.0f})">GPU memory ({unit})</text>')
    base_y = y(tl.base_bytes)
    out.append(f'<rect x="{left}" y="{base_y:.2f}" width="{pw:.1f}" height="{y(0) - base_y:.2f}" '
               f'fill="{COLORS["weights"]}" fill-opacity="0.55"><title>weights {esc(human_bytes(tl.weights_bytes))} '
               f"+ input {esc(human_bytes(tl.input_bytes))}, resident all along</title></rect>")
    dx = f.dx
    for i, s in enumerate(tl.steps):
        x = left + i * dx
        what = f"{s.path} ({s.type})" + (f" and {s.layers - 1} more layers" if s.layers > 1 else "")
        title = (f"{what}: live after {human_bytes(s.live_bytes)}, peak inside {human_bytes(s.peak_bytes)}")
        py, ly = y(tl.base_bytes + s.peak_bytes), y(tl.base_bytes + s.live_bytes)
        out.append(f'<g><title>{esc(title)}</title>'
                   f'<rect x="{x:.2f}" y="{py:.2f}" width="{max(dx, 0.5):.2f}" height="{max(base_y - py, 0):.2f}" '
                   f'fill="{COLORS["activations"]}" fill-opacity="0.30"/>'
                   f'<rect x="{x:.2f}" y="{ly:.2f}" width="{max(dx, 0.5):.2f}" height="{max(base_y - ly, 0):.2f}" '
                   f'fill="{COLORS["activations"]}" fill-opacity="0.85"/></g>')
    return out


def _stage_names(tl: MemoryTimeline, f: _Frame) -> list[str]:
    """Stage boundaries and the names that fit under the axis, then the axis line and its caption."""
    left, pw, top_pad, dx, y = f.left, f.pw, f.top_pad, f.dx, f.y
    out = []
    last_right = 0.0
    for stage, a, b in _stage_spans(tl.steps):
        sx = left + a * dx
        out.append(f'<line x1="{sx:.1f}" y1="{top_pad}" x2="{sx:.1f}" y2="{y(0) + 6:.1f}" stroke="#999" '
                   'stroke-dasharray="2 2"/>')
        text_w = 5.8 * len(stage)  # 10 px DejaVu Sans, roughly
        cx = min(max(left + (a + b) / 2 * dx, left + text_w / 2), left + pw - text_w / 2)
        if (b - a) * dx > text_w * 0.6 and cx - text_w / 2 > last_right + 4:
            last_right = cx + text_w / 2
            out.append(f'<text x="{cx:.1f}" y="{y(0) + 16:.1f}" text-anchor="middle" '
                       f'font-size="10">{esc(stage)}</text>')
    out.append(f'<line x1="{left}" y1="{y(0):.1f}" x2="{left + pw}" y2="{y(0):.1f}" stroke="#444"/>')
    out.append(f'<text x="{left + pw / 2:.0f}" y="{y(0) + 30:.0f}" text-anchor="middle" font-size="10">'
               f"innermost layers in the order they run ({tl.layers}"
               f"{', binned' if tl.layers > len(tl.steps) else ''})</text>")
    return out


def _range_and_lines(tl: MemoryTimeline, f: _Frame, ranged: bool) -> list[str]:
    """The predicted range of the peak, the device minimum and the budget line."""
    left, pw, y = f.left, f.pw, f.y
    out = []
    if ranged:
        ry = y(tl.base_bytes + tl.peak_high)
        out.append(f'<rect x="{left}" y="{ry:.2f}" width="{pw:.1f}" height="{y(tl.base_bytes + tl.peak_low) - ry:.2f}"'
                   f' fill="{COLORS["peak"]}" fill-opacity="0.10"><title>predicted range of the peak: '
                   f"{esc(human_bytes(tl.peak_low))} – {esc(human_bytes(tl.peak_high))} above weights + input"
                   "</title></rect>")
    if tl.min_device_bytes:
        my = y(tl.min_device_bytes)
        out.append(f'<line x1="{left}" y1="{my:.1f}" x2="{left + pw}" y2="{my:.1f}" stroke="{COLORS["peak"]}" '
                   'stroke-width="1" stroke-dasharray="2 3"/>')
    if tl.budget_bytes:
        by = y(tl.budget_bytes)
        out.append(f'<line x1="{left}" y1="{by:.1f}" x2="{left + pw}" y2="{by:.1f}" stroke="{COLORS["budget"]}" '
                   'stroke-width="1.6" stroke-dasharray="6 3"/>')
        out.append(f'<text x="{left + 4}" y="{by - 4:.1f}" font-size="10" fill="{COLORS["budget"]}">'
                   f"budget {esc(human_bytes(tl.budget_bytes))}</text>")
    return out


def _peak_label(tl: MemoryTimeline, f: _Frame) -> list[str]:
    """The peak's dot and its label, kept inside the plot and off the horizontal lines."""
    left, pw, y = f.left, f.pw, f.y
    px = left + (tl.peak_index + 0.5) * f.dx
    py = y(tl.total_bytes)
    label = (f"peak {human_bytes(tl.peak_bytes)} at {tl.peak_at} ({tl.peak_op}); "
             f"with weights + input {human_bytes(tl.total_bytes)}")
    anchor = "end" if px > left + pw / 2 else "start"
    text_w = 6.8 * len(label)  # bold 11 px DejaVu Sans, roughly; keeps the label inside the plot
    tx = max(px - 6, left + text_w) if anchor == "end" else min(px + 6, left + pw - text_w)
    ty = py - 6
    for line_bytes in (tl.min_device_bytes, tl.budget_bytes):  # keep the label off the horizontal lines
        if line_bytes and abs(ty - 4 - y(line_bytes)) < 9:
            ty = y(line_bytes) - 4 if y(line_bytes) < py else y(line_bytes) + 13
    return [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{COLORS["peak"]}"/>',
            f'<text class="peak-label" x="{tx:.1f}" y="{max(ty, 12):.1f}" text-anchor="{anchor}" '
            f'font-size="11" font-weight="bold">{esc(label)}</text>']


def _legend(tl: MemoryTimeline, left: float, height: float, ranged: bool, second: bool) -> list[str]:
    """One legend row, and a second for the range and the device minimum when drawn."""
    rows = [[("weights", 0.55, f"weights + input {human_bytes(tl.base_bytes)}"),
             ("activations", 0.85, "live activations after each layer"),
             ("activations", 0.30, "peak inside the layer (kernel temporaries, inputs)")], []]
    if ranged:
        rows[1].append(("peak", 0.10, f"predicted range of the peak {human_bytes(tl.peak_low or 0)} – "
                                      f"{human_bytes(tl.peak_high or 0)} above weights + input"))
    if tl.min_device_bytes:
        rows[1].append(("line", 1.0, f"needs at least {human_bytes(tl.min_device_bytes)} on the device"))
    out = []
    for r, row in enumerate(rows):
        lx, ly = left, height - 12 - 16 * (len(rows) - 1 - r if second else 0)
        for key, alpha, name in row:
            swatch = (f'<line x1="{lx:.0f}" y1="{ly + 5:.0f}" x2="{lx + 10:.0f}" y2="{ly + 5:.0f}" stroke="black" '
                      'stroke-dasharray="2 2"/>' if key == "line" else
                      f'<rect x="{lx:.0f}" y="{ly:.0f}" width="10" height="10" fill="{COLORS[key]}" '
                      f'fill-opacity="{alpha}"/>')
            out.append(f'{swatch}<text x="{lx + 14:.0f}" y="{ly + 9:.0f}" font-size="10">{esc(name)}</text>')
            lx += 14 + 6.2 * len(name) + 18
    return out


def plot_memory_timeline(estimates: Sequence[MemoryEstimate], path: str | Path, *, title: str,
                         budget_bytes: int | None = None, force: bool = False) -> Path:
    """MemoryEstimates (encode, decode) -> a figure file (PNG, SVG, PDF…: by the suffix), one panel each: the
    same picture as timeline_svg. Written through vaelens.outputs (an existing file needs force=True)."""
    from vaelens.render.figures import _plt, check_figure_path, save_figure

    check_figure_path(path, force=force)
    timelines = [memory_timeline(e, budget_bytes=budget_bytes) for e in estimates]
    plt = _plt()
    top = max(_top(t) for t in timelines)
    div, unit = byte_axis(top)
    fig, axes = plt.subplots(1, len(timelines), figsize=(6.5 * len(timelines), 4.2), squeeze=False,
                             layout="constrained")
    for ax, tl in zip(axes[0], timelines, strict=True):
        xs = range(len(tl.steps))
        base = tl.base_bytes / div
        ax.axhspan(0, base, color=COLORS["weights"], alpha=0.55, lw=0,
                   label=f"weights + input {human_bytes(tl.base_bytes)}")
        ax.bar(xs, [s.peak_bytes / div for s in tl.steps], bottom=base, width=1.0, color=COLORS["activations"],
               alpha=0.30, lw=0, label="peak inside the layer (temporaries, inputs)")
        ax.bar(xs, [s.live_bytes / div for s in tl.steps], bottom=base, width=1.0, color=COLORS["activations"],
               alpha=0.85, lw=0, label="live activations after each layer")
        if tl.peak_low is not None and tl.peak_high is not None and tl.peak_high > tl.peak_low:
            ax.axhspan(base + tl.peak_low / div, base + tl.peak_high / div, color="black", alpha=0.10, lw=0,
                       label=f"predicted range {human_bytes(tl.peak_low)} – {human_bytes(tl.peak_high)}")
        if tl.min_device_bytes:
            ax.axhline(tl.min_device_bytes / div, color="black", ls=":", lw=1,
                       label=f"needs at least {human_bytes(tl.min_device_bytes)} on the device")
        if tl.budget_bytes:
            ax.axhline(tl.budget_bytes / div, color=COLORS["budget"], ls="--", lw=1.5,
                       label=f"budget {human_bytes(tl.budget_bytes)}")
        if tl.peak_index >= 0:
            py = tl.total_bytes / div
            ax.plot([tl.peak_index], [py], "o", color="black", ms=4)
            ax.annotate(f"peak {human_bytes(tl.peak_bytes)} at {tl.peak_at}\n"
                        f"with weights + input {human_bytes(tl.total_bytes)}", (tl.peak_index, py),
                        xytext=(0, 6), textcoords="offset points", fontsize=7,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
                        ha="right" if tl.peak_index > len(tl.steps) / 2 else "left", va="bottom")
        for _stage, a, _b in _stage_spans(tl.steps)[1:]:
            ax.axvline(a - 0.5, color="#999", lw=0.6, ls=":")
        ax.set_ylim(0, top / div)
        ax.set_xlim(-0.5, len(tl.steps) - 0.5)
        ax.set_title(f"{tl.op}", fontsize=9)
        ax.set_xlabel(f"innermost layers in the order they run ({tl.layers})", fontsize=8)
        ax.set_ylabel(f"GPU memory ({unit})", fontsize=8)
        ax.legend(fontsize=6.5, loc="upper left")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=110, force=force)
