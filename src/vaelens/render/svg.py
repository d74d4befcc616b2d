"""Inline SVG drawings for the HTML report: the contract to scale, and pipeline stages per offload mode.

ShapePlan -> SVG whose box areas are proportional to each state's elements (video: one tile per frame);
PipelineEstimate -> one stacked-bar chart per offload mode on one shared memory axis. Plain SVG, no
script: hovering a shape shows its <title> in any browser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from vaelens.contract import ShapePlan
from vaelens.families import FamilySpec, NormKind, get_family  # noqa: F401 (doctest)
from vaelens.options import PixelRequest  # noqa: F401 (doctest)
from vaelens.render.tables import human_bytes, normalized_shape, shape_str

# One palette for every drawing of the report (colour-blind safe: Okabe–Ito).
COLORS = {
    "pixels": "#0072B2",
    "moments": "#CC79A7",
    "latent": "#D55E00",
    "normalised": "#E69F00",
    "tokens": "#009E73",
    "decoded": "#56B4E9",
    "weights": "#8c8c8c",
    "held": "#E69F00",
    "activations": "#D55E00",
    "budget": "#009E73",
    "peak": "#000000",
}


def esc(text: object) -> str:
    """Text -> safe for SVG/HTML content and attributes."""
    return escape(str(text), quote=True)


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0..top -> tick values at a 1/2/2.5/5 × 10^k step (at most about `count` + 1 ticks).

    >>> nice_ticks(9.3)
    [0.0, 2.0, 4.0, 6.0, 8.0]
    """
    if top <= 0:
        return [0.0]
    raw = top / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(top / step + 1e-9) + 1)]


def byte_axis(top_bytes: float) -> tuple[float, str]:
    """Largest value -> (divisor, unit) so an axis reads in MiB or GiB."""
    return (1024.0**3, "GiB") if top_bytes >= 1024**3 else (1024.0**2, "MiB")


# ------------------------------------------------------------------------------------------- contract


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    """One state of the contract: what it is, its shape, and how to draw it."""

    key: str  # pixels | moments | latent | normalised | tokens | decoded
    name: str
    shape: tuple[int, ...]
    elements: int
    bytes: int
    frames: int  # tiles drawn (1 for images)
    grid: tuple[int, int]  # (rows, cols) of one frame's spatial grid, for the aspect ratio
    channels: int
    arrow: str  # the step that leads to the next state ("" for the last)
    note: str = ""


def contract_states(spec: FamilySpec, plan: ShapePlan) -> list[State]:
    """ShapePlan -> the states pixels → (moments) → latent → normalised → (tokens) → decoded, in order.

    >>> from vaelens.contract import shapes
    >>> [(s.key, s.frames) for s in contract_states(get_family("wan21"), shapes("wan21", PixelRequest(
    ...     width=64, height=64, frames=9)))][:3]
    [('pixels', 9), ('moments', 3), ('latent', 3)]
    """
    item = plan.itemsize
    f = spec.spatial_factor
    video = len(plan.latent_shape) == 5

    def frames_grid(shape: Sequence[int]) -> tuple[int, tuple[int, int]]:
        return (shape[2], (shape[3], shape[4])) if len(shape) == 5 else (1, (shape[2], shape[3]))

    def state(key: str, name: str, shape: Sequence[int], arrow: str, note: str = "") -> State:
        n, grid = frames_grid(shape)
        return State(key=key, name=name, shape=tuple(shape), elements=math.prod(shape),
                     bytes=math.prod(shape) * item, frames=n, grid=grid, channels=shape[1], arrow=arrow, note=note)

    t = f" ÷{spec.temporal.factor} time" if spec.temporal else ""
    states = [state("pixels", "pixels", plan.pixel_shape, f"encoder ÷{f} space{t}", "RGB in [-1, 1]")]
    latent = plan.latent_shape
    # diffusers names every VAE whose encoder returns a DiagonalGaussianDistribution AutoencoderKL*.
    if spec.diffusers_class.startswith("AutoencoderKL"):
        moments = (latent[0], 2 * latent[1], *latent[2:])
        states.append(state("moments", "moments", moments, "sample or mode", "mean and log-variance, 2C channels"))
    norm = spec.normalization
    nshape = normalized_shape(spec, plan)
    step = "normalise" if norm.kind is not NormKind.NONE else "no normalisation"
    if norm.kind is NormKind.BATCHNORM_PATCHED:
        step = "patchify 2×2 + BatchNorm"
    states.append(state("latent", "latent (raw z)", latent, step, f"{spec.latent_channels} learned channels"))
    after_norm = "denormalise → decoder" if plan.token_count is None else "pack patches"
    states.append(state("normalised", "normalised latent", nshape, after_norm, "what the denoiser sees"))
    if plan.token_count is not None:
        patch = plan.token_patch or ()
        dims = latent[2:]
        grid_dims = [n // p for n, p in zip(dims[len(dims) - len(patch):], patch, strict=True)]
        rows, cols = grid_dims[-2], grid_dims[-1]
        frames = plan.token_count // (rows * cols)
        tokens = (plan.request.batch, plan.token_count, plan.token_dim or 0)
        states.append(State(
            key="tokens", name="tokens", shape=tokens, elements=math.prod(tokens), bytes=math.prod(tokens) * item,
            frames=frames if video else 1, grid=(rows, cols), channels=plan.token_dim or 0,
            arrow="unpack → denormalise → decoder",
            note=f"N = {plan.token_count:,} tokens of D = {plan.token_dim} ({'×'.join(map(str, patch))} patches)"))
    states.append(state("decoded", "decoded pixels", plan.decoded_shape, ""))
    return states


def _tile_layout(frames: int, aspect: float) -> tuple[int, int]:
    """frames + frame aspect (w/h) -> (rows, cols) of a tiling that is roughly square overall."""
    cols = max(1, min(frames, round(math.sqrt(frames / max(aspect, 1e-6)))))
    return math.ceil(frames / cols), cols


def contract_svg(states: Sequence[State], *, largest: float = 210.0) -> str:
    """States -> SVG: each state a box (video: one tile per frame) whose area ∝ its elements per batch
    item; the biggest state's area is largest² px². Labels: name, shape, elements, bytes."""
    top = max(s.elements for s in states)
    px_per_element = largest * largest / top
    col_w, gap, label_h = 150.0, 46.0, 78.0
    boxes = [_box(s, px_per_element) for s in states]
    draw_h = max(b[7] for b in boxes)
    widths = [max(col_w, b[6] + 8) for b in boxes]
    total_w = sum(widths) + gap * (len(boxes) - 1)
    height = draw_h + label_h + 20
    out = [f'<svg class="contract" viewBox="0 0 {total_w:.0f} {height:.0f}" width="{total_w:.0f}" '
           f'role="img" aria-label="the contract drawn to scale" xmlns="http://www.w3.org/2000/svg">']
    x = 0.0
    mid = 10 + draw_h / 2
    for i, (s, tw, th, _rows, tc, pad, w, h) in enumerate(boxes):
        cx = x + widths[i] / 2
        out += _state_tiles(s, cx - w / 2, mid - h / 2, tw, th, tc, pad)
        out += _state_labels(s, cx, 10 + draw_h + 18)
        if s.arrow and i + 1 < len(boxes):
            out += _arrow(s.arrow, x + widths[i] + 2, x + widths[i] + gap - 4, mid)
        x += widths[i] + gap
    out.insert(1, '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
                  'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>')
    out.append("</svg>")
    return "\n".join(out)


def _box(s: State, px_per_element: float) -> tuple:
    """A state -> (state, tile width, tile height, tile rows, tile columns, padding, width, height)."""
    area = s.elements * px_per_element
    rows, cols = s.grid
    aspect = cols / max(rows, 1)
    tile_area = area / s.frames
    th = math.sqrt(tile_area / aspect)
    tw = tile_area / th
    tr, tc = _tile_layout(s.frames, aspect)
    pad = 1.5 if s.frames > 1 else 0.0
    w, h = tc * tw + (tc - 1) * pad, tr * th + (tr - 1) * pad
    return (s, tw, th, tr, tc, pad, w, h)


def _state_tiles(s: State, left: float, top_y: float, tw: float, th: float, tc: int, pad: float) -> list[str]:
    """A state's group: its hover title and one tile per frame."""
    color = COLORS[s.key]
    title = (f"{s.name} {shape_str(s.shape)}: {s.elements:,} elements, {human_bytes(s.bytes)}"
             + (f"; {s.frames} frames" if s.frames > 1 else ""))
    out = [f'<g class="state" data-state="{s.key}"><title>{esc(title)}</title>']
    for k in range(s.frames):
        r, c = divmod(k, tc)
        out.append(f'<rect x="{left + c * (tw + pad):.2f}" y="{top_y + r * (th + pad):.2f}" '
                   f'width="{max(tw, 0.6):.2f}" height="{max(th, 0.6):.2f}" fill="{color}" '
                   f'fill-opacity="0.85" stroke="{color}" stroke-width="0.5"/>')
    out.append("</g>")
    return out


def _state_labels(s: State, cx: float, ly: float) -> list[str]:
    """The lines under a state: name (bold), shape, elements, bytes, and frames for video."""
    lines = [(s.name, "b"), (shape_str(s.shape), ""), (f"{s.elements:,} elements", ""),
             (human_bytes(s.bytes), "")]
    if s.frames > 1:
        lines.append((f"{s.frames} {'latent ' if s.key in ('latent', 'moments', 'normalised') else ''}frames"
                      if s.key != "tokens" else f"{s.frames} token frames", ""))
    out = []
    for j, (text, cls) in enumerate(lines):
        weight = ' font-weight="bold"' if cls == "b" else ""
        out.append(f'<text x="{cx:.1f}" y="{ly + 14 * j:.1f}" text-anchor="middle" font-size="11"{weight}>'
                   f"{esc(text)}</text>")
    return out


def _arrow(text: str, x0: float, x1: float, mid: float) -> list[str]:
    """The arrow from one state to the next, its words stacked above it."""
    out = [f'<line x1="{x0:.1f}" y1="{mid:.1f}" x2="{x1:.1f}" y2="{mid:.1f}" stroke="#444" '
           f'stroke-width="1.2" marker-end="url(#arrow)"/>']
    words = text.split(" ")
    for j, word in enumerate(words):
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{mid - 6 - 11 * (len(words) - 1 - j):.1f}" '
                   f'text-anchor="middle" font-size="9" fill="#444">{esc(word)}</text>')
    return out


# ------------------------------------------------------------------------------------------ pipelines


def pipeline_svg(est, *, budget_bytes: int | None = None) -> str:
    """PipelineEstimate -> SVG: per offload mode, one stacked bar per stage (weights resident, tensors held,
    the call's activations), all modes on one memory axis; each mode's peak stage marked."""
    label_w, bar_w, row_h, head_h = 230.0, 520.0, 20.0, 24.0
    top = max([m.peak_bytes for r in est.offload for m in r.stages] + [budget_bytes or 0]) * 1.05
    div, unit = byte_axis(top)
    scale = bar_w / top
    n_rows = sum(len(r.stages) for r in est.offload)
    height = n_rows * row_h + len(est.offload) * (head_h + 10) + 60
    width = label_w + bar_w + 110
    out = [f'<svg class="pipeline" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" role="img" '
           f'aria-label="pipeline memory per stage and offload mode" xmlns="http://www.w3.org/2000/svg">']
    budget_at = len(out)  # the budget line goes under the bars and labels, drawn once the axis is known
    halo = 'stroke="white" stroke-width="3" paint-order="stroke"'  # labels stay legible over the budget line
    y = 10.0
    for report in est.offload:
        out.append(f'<text x="0" y="{y + 15:.1f}" font-size="12" font-weight="bold" {halo}>'
                   f'offload={report.mode.value}: '
                   f'peak {esc(human_bytes(report.peak_bytes))} at {esc(report.peak.stage.label)}</text>')
        y += head_h
        for m in report.stages:
            parts = (("weights", m.weights_bytes), ("held", m.stage.carried_bytes), ("activations", m.activation_bytes))
            out.append(f'<text x="{label_w - 6:.0f}" y="{y + 14:.1f}" text-anchor="end" font-size="10">'
                       f"{esc(m.stage.label)}</text>")
            x = label_w
            for key, nbytes in parts:
                w = nbytes * scale
                if w > 0:
                    out.append(f'<rect x="{x:.2f}" y="{y + 3:.1f}" width="{w:.2f}" height="{row_h - 6:.1f}" '
                               f'fill="{COLORS[key]}"><title>{esc(m.stage.label)}: {key} '
                               f"{esc(human_bytes(nbytes))}</title></rect>")
                x += w
            mark = " ◀ peak" if m is report.peak else ""
            out.append(f'<text x="{label_w + m.peak_bytes * scale + 4:.1f}" y="{y + 14:.1f}" font-size="10" {halo}>'
                       f"{esc(human_bytes(m.peak_bytes))}{mark}</text>")
            y += row_h
        y += 10
    axis_y = y
    out.append(f'<line x1="{label_w}" y1="{axis_y:.1f}" x2="{label_w + bar_w}" y2="{axis_y:.1f}" stroke="#444"/>')
    for t in nice_ticks(top / div):
        tx = label_w + t * div * scale
        out.append(f'<line x1="{tx:.1f}" y1="{axis_y:.1f}" x2="{tx:.1f}" y2="{axis_y + 4:.1f}" stroke="#444"/>')
        out.append(f'<text x="{tx:.1f}" y="{axis_y + 16:.1f}" text-anchor="middle" font-size="10">{t:g}</text>')
    out.append(f'<text x="{label_w + bar_w / 2:.0f}" y="{axis_y + 32:.1f}" text-anchor="middle" font-size="10">'
               f"GPU memory ({unit})</text>")
    if budget_bytes:
        bx = label_w + budget_bytes * scale
        out.insert(budget_at, f'<line x1="{bx:.1f}" y1="10" x2="{bx:.1f}" y2="{axis_y:.1f}" '
                   f'stroke="{COLORS["budget"]}" stroke-width="1.5" stroke-dasharray="5 3"/>')
        out.append(f'<text x="{bx + 3:.1f}" y="{axis_y - 4:.1f}" font-size="10" fill="{COLORS["budget"]}">'
                   f"budget {esc(human_bytes(budget_bytes))}</text>")
    lx = label_w
    for key, name in (("weights", "weights resident"), ("held", "tensors held"), ("activations", "activations")):
        out.append(f'<rect x="{lx:.0f}" y="{axis_y + 40:.1f}" width="10" height="10" fill="{COLORS[key]}"/>')
        out.append(f'<text x="{lx + 14:.0f}" y="{axis_y + 49:.1f}" font-size="10">{name}</text>')
        lx += 130
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- tiling


def tile_grid_svg(size: tuple[int, int], tile: tuple[int, int], *, label: str, largest: float = 300.0) -> str:
    """(H, W) of the full-size image + tile (h, w) -> SVG of the image split into the plan's tiles
    (vaelens.tiling.grid.splits: the tiles the executor computes), to scale."""
    from vaelens.tiling.grid import splits

    height, width = size
    k = largest / max(height, width)
    w, h = width * k, height * k
    rows, cols = splits(height, tile[0]), splits(width, tile[1])
    th, tw = max(b - a for a, b in rows), max(b - a for a, b in cols)
    text = f"{label} of ≤{tw}×{th} px over {width}×{height} px"
    out = [f'<svg class="tiles" viewBox="0 0 {max(w, 6.2 * len(text)) + 2:.0f} {h + 22:.0f}" '
           f'width="{max(w, 6.2 * len(text)) + 2:.0f}" role="img" aria-label="{esc(text)}" '
           'xmlns="http://www.w3.org/2000/svg">',
           f'<text x="1" y="12" font-size="11">{esc(text)}</text>']
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            shade = COLORS["decoded"] if (i + j) % 2 else COLORS["pixels"]
            out.append(f'<rect x="{1 + c0 * k:.2f}" y="{18 + r0 * k:.2f}" width="{(c1 - c0) * k:.2f}" '
                       f'height="{(r1 - r0) * k:.2f}" fill="{shade}" fill-opacity="0.75" stroke="#fff" '
                       f'stroke-width="1"><title>tile rows {r0}–{r1}, columns {c0}–{c1}</title></rect>')
    out.append("</svg>")
    return "\n".join(out)
