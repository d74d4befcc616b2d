"""Report -> one self-contained HTML page: inline CSS and SVG, images as data: URIs, no script, no
network at view time. Sections: summary, the contract to scale, memory timelines, budget and tiling,
real weights (with a VAE), precision (with a VAE and an image), the pipeline (with --pipeline), sources and versions.
"""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vaelens.render.svg import contract_states, contract_svg, esc, pipeline_svg, tile_grid_svg
from vaelens.render.tables import human_bytes, norm_formula, shape_str
from vaelens.render.timeline import memory_timeline, shared_top, timeline_svg
from vaelens.report import RealWeights, Report
from vaelens.tiling.plan import NoTiling, TilingMethod

DISPLAY_SIDE = 768  # images wider or taller than this are shown downscaled (the metrics use full size)

CSS = """
:root { color-scheme: light; --ink: #1b1b1b; --muted: #5b5b5b; --rule: #dcdcdc; --card: #f6f6f4; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Roboto, sans-serif; color: var(--ink);
       margin: 0; background: #fff; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid var(--rule);
     padding-bottom: 4px; } h3 { font-size: 16px; margin: 20px 0 6px; }
p, li { max-width: 80ch; } .muted { color: var(--muted); } code { font: 13px/1.4 "DejaVu Sans Mono", monospace; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 10px; margin: 16px 0; }
.card { background: var(--card); border-radius: 6px; padding: 10px 12px; }
.card .k { font-size: 12px; color: var(--muted); } .card .v { font-size: 19px; font-weight: 600; }
.fig, .tbl { overflow-x: auto; margin: 10px 0; } .fig svg { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid var(--rule); vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ok { color: #006d3c; font-weight: 600; } .bad { color: #b00020; font-weight: 600; }
.note { background: #fff8e1; border-left: 4px solid #E69F00; padding: 6px 10px; margin: 8px 0; }
.approx { background: #fdecea; border-left: 4px solid #D55E00; padding: 6px 10px; }
.imgs { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 8px 0; } figure img { max-width: min(100%, 640px); height: auto; border: 1px solid var(--rule); }
figcaption { font-size: 13px; color: var(--muted); max-width: 60ch; }
pre { font: 12px/1.45 "DejaVu Sans Mono", monospace; background: var(--card); padding: 8px 10px;
      white-space: pre-wrap; }
footer { margin-top: 40px; font-size: 13px; color: var(--muted); }
"""


def png_bytes(rgb01: np.ndarray) -> bytes:
    """[H,W,3] in [0,1] -> PNG bytes, downscaled (Lanczos) when a side passes DISPLAY_SIDE."""
    from PIL import Image

    img = Image.fromarray((np.clip(rgb01, 0, 1) * 255).round().astype(np.uint8))
    if max(img.size) > DISPLAY_SIDE:
        k = DISPLAY_SIDE / max(img.size)
        img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _ssim_text(r: RealWeights, *, label: bool = True) -> str:
    """'SSIM 0.8123' | 'SSIM n/a (reason)' for an image thinner than SSIM's window."""
    text = f"{r.ssim:.4f}" if r.ssim is not None else f"n/a ({r.ssim_reason or 'not computed'})"
    return f"SSIM {text}" if label else text


def real_weights_pngs(r: RealWeights) -> dict[str, bytes]:
    """RealWeights -> PNG bytes: original, reconstruction, error map, channel grid, RGB approximation."""
    from vaelens.render.figures import plot_channel_grid, plot_error_map, plot_rgb_approximation

    title = f"{r.family}: {Path(r.image).name}  PSNR {r.psnr:.2f} dB  {_ssim_text(r)}"
    out = {"original": png_bytes(r.original), "reconstruction": png_bytes(r.reconstruction)}
    c, h, w = r.channels.shape
    with tempfile.TemporaryDirectory(prefix="vaelens-report-") as tmp:
        out["error"] = plot_error_map(r.error, Path(tmp, "error.png"), title=title).read_bytes()
        grid = plot_channel_grid(r.channels, Path(tmp, "channels.png"), units="raw latent value z (VAE units)",
                                 title=f"{r.family} raw latent z: {c} channels ({w}x{h}), one shared symmetric scale")
        out["channels"] = Path(grid.path).read_bytes()
        if r.rgb is not None and r.rgb_r2 is not None:
            out["rgb"] = plot_rgb_approximation(r.rgb, r.rgb_decoded, Path(tmp, "rgb.png"), r2=r.rgb_r2).read_bytes()
    return out


def data_uri(png: bytes) -> str:
    """PNG bytes -> data: URI (the report never links a file)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class Html(str):
    """A table cell that is HTML already (not escaped again)."""


def module_path(path: str) -> Html:
    """'decoder.up_blocks.2.conv' -> HTML that may wrap after each dot (<wbr>; the text is unchanged)."""
    return Html(esc(path).replace(".", ".<wbr>"))


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Sequence[int] = ()) -> str:
    def cell(c: object) -> str:
        return c if isinstance(c, Html) else esc(c)

    head = "".join(f'<th{" class=n" if i in numeric else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{cell(c)}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f'<div class="tbl"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _card(key: str, value: str, ident: str) -> str:
    return f'<div class="card"><div class="k">{esc(key)}</div><div class="v" id="{ident}">{esc(value)}</div></div>'


def _size(rep: Report) -> str:
    h, w = rep.plan.used_size
    frames = f", {rep.plan.frames} frames" if rep.plan.frames is not None else ""
    return f"{w}×{h}{frames}"


def _summary(rep: Report) -> str:
    plan, enc, dec = rep.plan, rep.estimate("encode"), rep.estimate("decode")
    cards = [
        _card("pixels", shape_str(plan.pixel_shape), "pixel-shape"),
        _card("latent", shape_str(plan.latent_shape), "latent-shape"),
        _card("compression (elements)", f"{plan.compression:.1f}×", "compression"),
        _card("weights", human_bytes(enc.weights_bytes), "weights"),
        _card("encode peak", human_bytes(enc.peak_bytes), "encode-peak"),
        _card("decode peak", human_bytes(dec.peak_bytes), "decode-peak"),
    ]
    if rep.budget is not None:
        cards.append(_card(f"budget {human_bytes(rep.budget.budget_bytes)}", _verdict(rep), "verdict"))
    if rep.real is not None:
        cards.append(_card(f"round trip PSNR / SSIM ({rep.real.family})",
                           f"{rep.real.psnr:.2f} dB / {_ssim_text(rep.real, label=False)}", "psnr"))
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in rep.warnings)
    return f'<div class="cards">{"".join(cards)}</div>{notes}'


def _contract(rep: Report) -> str:
    states = contract_states(rep.spec, rep.plan)
    rows = [(s.name, shape_str(s.shape), f"{s.elements:,}", human_bytes(s.bytes), s.note) for s in states]
    video = (" Video: every frame is a tile, so the time axis's compression is visible as fewer tiles."
             if rep.plan.frames is not None else "")
    return (
        "<p>Each state is drawn as a box whose <b>area is proportional to its elements</b> (per batch item; gaps "
        f"between tiles are not counted).{video} Hover a box for its numbers.</p>"
        f'<div class="fig">{contract_svg(states)}</div>'
        + _table(("state", "shape [B, C, (F,) H, W] / [B, N, D]", "elements",
                  f"bytes at {rep.plan.request.dtype.value}", "what it is"), rows, numeric=(2, 3))
        + f"<p>Normalisation: <code>{esc(norm_formula(rep.spec))}</code>. "
        + ("Tokens: none — this family's denoiser works on the latent grid." if rep.plan.token_count is None else
           f"Tokens: {rep.plan.token_count:,} of width {rep.plan.token_dim}.") + "</p>"
    )


def _memory(rep: Report) -> str:
    parts = ["<p>Predicted for a CUDA GPU, without one: every aten operator of the real diffusers module, traced "
             "on the meta device and replayed through a model of PyTorch's caching allocator with per-operator "
             "kernel temporaries. Bars are the innermost layers in the order they run, on top of the weights and "
             "input that stay resident. <b>peak</b> = <code>max_memory_allocated()</code> during the call minus "
             "<code>memory_allocated()</code> before it.</p>"]
    timelines = [memory_timeline(est, budget_bytes=rep.budget_bytes) for est in rep.estimates]
    top = shared_top(timelines) if timelines else None  # encode and decode on one scale, in one unit
    for est, tl in zip(rep.estimates, timelines, strict=True):
        parts.append(f"<h3>{esc(tl.op)}: {esc(shape_str(est.input_shape))} → "
                     f"{esc(shape_str(est.output_shape or ()))}</h3>")
        parts.append(f'<div class="fig">{timeline_svg(tl, top=top)}</div>')
    # The range, reserved bytes and device minimum come from the memory model when it has them.
    device = any(getattr(e, "min_device_bytes", 0) for e in rep.estimates)
    rows, wide = [], []
    for e in rep.estimates:
        low, high = getattr(e, "peak_bytes_low", None), getattr(e, "peak_bytes_high", None)
        wide_range = low is not None and high is not None and high > low
        rng = f"{human_bytes(low)} – {human_bytes(high)}" if wide_range else "-"
        row = [e.op.value, human_bytes(e.peak_bytes), rng, human_bytes(e.total_bytes)]
        if device:
            row += [human_bytes(getattr(e, "reserved_peak_bytes", 0)), human_bytes(getattr(e, "min_device_bytes", 0))]
        rows.append((*row, module_path(f"{e.peak_at} ({e.peak_op.replace('aten.', '')})")))
        wide += [f"{e.op.value}: {r}" for r in getattr(e, "range_ops", ())]
    headers = ["op", "peak", "predicted range", "weights + input + peak"]
    headers += ["reserved peak", "needs on the device"] if device else []
    parts.append(_table((*headers, "peak at"), rows, numeric=tuple(range(1, len(headers)))))
    if wide:
        parts.append("<p>Operators that make the range wide (a choice the model cannot know):</p><ul>"
                     + "".join(f"<li><code>{esc(w)}</code></li>" for w in wide) + "</ul>")
    if device:
        from vaelens.memory import estimate as memory_estimate

        context = getattr(memory_estimate, "CUDA_CONTEXT_BYTES", 0)
        parts.append(f"<p class=muted>needs on the device: the smallest device memory under which the call runs "
                     f"without an out-of-memory error (the caching allocator's segments, its cache release and retry "
                     f"modelled). The CUDA context, about {human_bytes(context)}, comes on top.</p>")
    return "".join(parts)


def _verdict(rep: Report) -> str:
    """'fits' | 'fits with exact tiles' | 'fits with approximate tiles' | 'does not fit'."""
    if all(o.fits for o in rep.budget.ops):
        return "fits"
    plans = list(rep.tiling.values())
    if plans and not any(isinstance(p, NoTiling) for p in plans):
        approximate = any(p.method is TilingMethod.APPROXIMATE for p in plans)
        return f"fits with {'approximate' if approximate else 'exact'} tiles"
    return "does not fit"


def _budget(rep: Report) -> str:
    b = rep.budget
    rows = []
    for o in b.ops:
        tiled = "-" if o.tiled_min_device_bytes is None else (
            f"{human_bytes(o.tiled_min_device_bytes)}, {'fits' if o.tiled_fits else 'does not fit'}")
        rows.append((o.op, human_bytes(o.min_device_bytes), "fits" if o.fits else "does NOT fit", o.max_batch or "none",
                     f"{o.max_square}×{o.max_square}" if o.max_square else "none", tiled))
    word = _verdict(rep)
    more = {"fits": "", "does not fit": ", not even in tiles"}.get(word, "; untiled it does not")
    cls = "bad" if word == "does not fit" else "ok"
    verdict = (f'<p>Budget {esc(human_bytes(b.budget_bytes))}: <span class="{cls}" '
               f'id="budget-verdict">{esc(word)}</span>{more} (weights + input + peak must fit; the CUDA context is '
               "not counted).</p>")
    out = verdict + _table(("op", "needs", "verdict", "largest batch", f"largest square at batch "
                            f"{rep.plan.request.batch}", "with diffusers enable_tiling()"), rows, numeric=(1,))
    if rep.tiling and any(isinstance(p, NoTiling) or p.tiled for p in rep.tiling.values()):
        none_fits = any(isinstance(p, NoTiling) for p in rep.tiling.values())
        out += (f"<h3>{'Tiling plans' if none_fits else 'Tiling plan that fits'} (vaelens.tiling)</h3>"
                + _tiling(rep))
    return out


def _tiling(rep: Report) -> str:
    """op -> TilingPlan | NoTiling: a table, each plan's text, and the tile grid over the full-size image."""
    from vaelens.render.tiling import render_plan

    rows, texts, grids = [], [], []
    # plans that fit first, then the ops for which none does
    for op, p in sorted(rep.tiling.items(), key=lambda item: isinstance(item[1], NoTiling)):
        if isinstance(p, NoTiling):
            rows.append((op, "none fits", "-", "-", "-", "-"))
            texts.append(p.message)
            continue
        h, w = p.tile_shape or (0, 0)
        rows.append((op, p.method.value, p.tiles if p.tiled else 1, f"{w}×{h}" if p.tiled and p.tile_shape else "-",
                     human_bytes(p.predicted_peak_bytes), human_bytes(p.untiled_peak_bytes)))
        texts.append(render_plan(p))
        if p.tiled and p.tile_shape:
            full = p.output_shape if op == "decode" else p.input_shape
            label = f"{op}: {p.tiles} {p.method.value} tiles"
            grids.append(tile_grid_svg((full[-2], full[-1]), p.tile_shape, label=label))
    return (_table(("op", "method", "tiles", "tile (px)", "predicted device peak", "untiled needs"), rows,
                   numeric=(2, 4, 5))
            + '<div class="imgs">' + "".join(f'<div class="fig">{g}</div>' for g in grids) + "</div>"
            + "".join(f"<pre>{esc(t)}</pre>" for t in texts))


def _real(rep: Report) -> str:
    r = rep.real
    assert r is not None
    h, w = r.image_size
    pngs = real_weights_pngs(r)

    def fig(key: str, caption: str, alt: str) -> str:
        if key not in pngs:
            return ""
        return (f'<figure><img src="{data_uri(pngs[key])}" alt="{esc(alt)}">'
                f"<figcaption>{caption}</figcaption></figure>")

    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in r.warnings)
    rgb = ""
    if "rgb" in pngs:
        rgb = ('<h3>RGB projection — an approximation</h3><p class="approx"><b>Approximation.</b> A least-squares '
               f"linear map from the {r.latent_shape[1]} latent channels to RGB, fitted to this decoder's own output "
               f"(R² = {r.rgb_r2:.3f}). The channels are learned features, not colours; this only shows how much "
               "colour a linear read-out can recover.</p>"
               + fig("rgb", "linear latent→RGB fit (left), decoder output it was fitted to (right)",
                     "RGB approximation"))
    return (
        f"<p>Weights <code>{esc(r.source)}</code> ({esc(r.family)}, {esc(r.detection)}); image "
        f"<code>{esc(Path(r.image).name)}</code> at {w}×{h}: pixels {esc(shape_str(r.pixel_shape))} → latent "
        f"{esc(shape_str(r.latent_shape))} → pixels, in {r.seconds:.2f} s on this machine.</p>{notes}"
        f'<p>PSNR <b id="real-psnr">{r.psnr:.2f} dB</b>, '
        f'SSIM <b id="real-ssim">{esc(_ssim_text(r, label=False))}</b>, mean |error| '
        f"{r.error.mean():.4f}, max {r.error.max():.4f} (0–1 scale).</p>"
        '<div class="imgs">'
        + fig("original", "original (what the encoder saw)", "original image")
        + fig("reconstruction", "round trip: encode → normalise → denormalise → decode", "reconstruction")
        + "</div>"
        + fig("error", "|original − round trip|, mean over RGB", "error map")
        + f"<h3>Latent channels</h3><p>The raw latent z, one heat-map per channel, all on <b>one diverging scale</b> "
          f"±{r.channel_limit:.3g} in latent units (white = 0), so a quiet channel looks quiet.</p>"
        + fig("channels", "raw latent channels, shared symmetric scale", "latent channel heat-maps")
        + rgb
    )


def _pipeline(rep: Report) -> str:
    est = rep.pipeline
    req = est.request
    h, w = est.used_size if all(est.used_size) else (req.height, req.width)
    frames = f", {est.used_frames} frames" if est.used_frames else ""
    rows = [(r.mode.value, human_bytes(r.peak_bytes), r.peak.stage.label) for r in est.offload]
    notes = "".join(f"<li>{esc(n)}</li>" for n in est.warnings)
    budget = rep.budget.budget_bytes if rep.budget is not None else None
    return (
        f"<p>{esc(req.pipeline.title)} (<code>{esc(req.pipeline.pipeline_class)}</code>, "
        f"{esc(req.pipeline.repo)}) at {w}×{h}{frames}, batch {req.batch}, {req.dtype.value}: every stage is one "
        "component call; its peak = weights resident (the offload mode decides) + tensors the pipeline holds + "
        "the call's activation peak.</p>"
        f'<div class="fig">{pipeline_svg(est, budget_bytes=budget)}</div>'
        + _table(("offload", "peak", "set by"), rows, numeric=(1,))
        + (f"<ul class=muted>{notes}</ul>" if notes else "")
    )


def _sources(rep: Report) -> str:
    s = rep.spec
    rows = [("diffusers class and config", f"{s.diffusers_class}: {s.config_source}"),
            ("normalisation", f"{norm_formula(s)} — {s.normalization.source or '-'}"),
            ("size rule", f"{s.size_rule.kind.value} to a multiple of {s.size_rule.multiple} — "
                          f"{s.size_rule.source or '-'}")]
    if s.temporal is not None:
        rows.append(("frames", f"÷{s.temporal.factor}, {s.temporal.rule.value} — {s.temporal.source or '-'}"))
    if s.tokens is not None:
        rows.append(("tokens", f"patch {'×'.join(map(str, s.tokens.patch))} — {s.tokens.source or '-'}"))
    rows += [(k, v) for k, v in s.sources.items()]
    rows.append(("memory", "vaelens.memory: meta-device trace of the diffusers module, allocator model "
                           "(vaelens/memory/allocator.py) and per-operator rules (vaelens/memory/rules.py)"))
    if rep.pipeline is not None:
        rows += [(f"pipeline: {c.name}", f"{c.class_name}: {c.config_source}") for c in rep.pipeline.components]
    if rep.real is not None:
        rows.append(("weights", f"{rep.real.source} ({rep.real.detection})"))
    vers = ", ".join(f"{k} {v}" for k, v in rep.versions.items())
    return (_table(("constant", "value and source"), rows)
            + f'<p id="versions">Made with {esc(vers)}. Nothing here was measured on a GPU.</p>')


def render_report(rep: Report) -> str:
    """Report -> the HTML page (a str; no file is touched)."""
    spec, plan = rep.spec, rep.plan
    title = f"vaelens report: {spec.name} at {_size(rep)}, {plan.request.dtype.value}"
    sections = [("summary", "Summary", _summary(rep)),
                ("contract", "The contract, drawn to scale", _contract(rep)),
                ("memory", "Memory, layer by layer", _memory(rep))]
    if rep.budget is not None:
        sections.append(("budget", "Budget", _budget(rep)))
    if rep.real is not None:
        sections.append(("real-weights", "Real weights: what the VAE loses", _real(rep)))
    if rep.precision is not None:
        from vaelens.render.precision import report_section

        sections.append(("precision", "Precision: fp16 and bf16", report_section(rep.precision)))
    if rep.pipeline is not None:
        sections.append(("pipeline", f"Pipeline {rep.pipeline.request.pipeline.name}: stages per offload mode",
                         _pipeline(rep)))
    sections.append(("sources", "Sources and versions", _sources(rep)))
    nav = " · ".join(f'<a href="#{i}">{esc(t.split(":")[0])}</a>' for i, t, _ in sections)
    body = "".join(f'<section id="{i}"><h2>{esc(t)}</h2>{html}</section>' for i, t, html in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # The page loads nothing: no scripts, no fonts, no remote images (an empty icon stops the
        # browser asking for /favicon.ico).
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1><p class=\"muted\">{esc(spec.title)} — <code>{esc(spec.diffusers_class)}</code>, "
        f"batch {plan.request.batch}. {nav}</p>{body}"
        f"<footer>vaelens {esc(rep.versions.get('vaelens', ''))} · one self-contained file: no network needed to "
        "view it.</footer></main></body></html>\n"
    )


def report_json(rep: Any) -> dict[str, Any]:
    """Report -> the JSON of `vaelens report --json` (the page's data, without the arrays)."""
    from vaelens.render.memory import estimate_json
    from vaelens.render.tiling import plans_json

    data: dict[str, Any] = {
        "family": rep.spec.name, "dtype": rep.plan.request.dtype.value, **rep.plan.to_json(),
        "weights_bytes": rep.estimates[0].weights_bytes if rep.estimates else None,
        **{e.op.value: estimate_json(e, rep.plan.latent_shape) for e in rep.estimates},
        "budget": rep.budget.to_json() if rep.budget is not None else None,
        "tiling": plans_json(rep.tiling) if rep.tiling else None,
        "real_weights": rep.real.to_json() if rep.real else None,
        "pipeline": None, "precision": None, "versions": rep.versions, "warnings": list(rep.warnings),
    }
    if rep.precision is not None:
        from vaelens.render.precision import precision_json

        data["precision"] = precision_json(rep.precision)
    if rep.pipeline is not None:
        data["pipeline"] = {"name": rep.pipeline.request.pipeline.name,
                            **{r.mode.value: r.peak_bytes for r in rep.pipeline.offload}}
    return data


def save_report(html: str, path: str | Path, *, overwrite: bool = False) -> Path:
    """HTML -> file at path, atomically (vaelens.outputs); an existing file is kept unless overwrite=True."""
    from vaelens.outputs import check_output, write_text

    return write_text(check_output(path, force=overwrite, kind="html"), html)
