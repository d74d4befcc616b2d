"""PipelineEstimate -> text (tables and a timeline chart) and a matplotlib figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaelens.pipelines.budget import Fix, PipelineBudgetReport
from vaelens.pipelines.estimate import Offload, OffloadReport, PipelineEstimate
from vaelens.pipelines.spec import Guidance, PipelineSpec
from vaelens.render.tables import human_bytes, shape_str, table

BAR = 48  # characters of the widest timeline bar
_CFG = {
    Guidance.BATCH: "batched (denoiser runs at 2×batch)",
    Guidance.SEQUENTIAL: "two denoiser calls per step",
    Guidance.NONE: "none (one denoiser call per step)",
}


def _params(n: int) -> str:
    if n >= 1e8:
        return f"{n / 1e9:.3f} B"
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


def render_components(est: PipelineEstimate) -> str:
    rows = [(c.name, c.class_name, _params(c.params), human_bytes(c.weights_bytes), c.config_source)
            for c in est.components]
    total = sum(c.weights_bytes for c in est.components)
    rows.append(("all", "", _params(sum(c.params for c in est.components)), human_bytes(total), ""))
    return table(("component", "class", "params", "weights", "config"), rows, right=(2, 3))


def render_stages(report: OffloadReport) -> str:
    peak = report.peak
    everything = max(len(m.resident) for m in report.stages)
    rows = []
    for m in report.stages:
        s = m.stage
        resident = f"all {everything}" if report.mode is Offload.NONE else ", ".join(m.resident) or "-"
        if report.mode is Offload.SEQUENTIAL:
            resident = f"buffers + running {s.component} modules"
        rows.append((
            ("▶ " if m is peak else "  ") + s.label, resident,
            human_bytes(m.weights_bytes), human_bytes(s.carried_bytes), human_bytes(m.activation_bytes),
            human_bytes(m.peak_bytes), s.peak_at or "-",
        ))
    headers = ("stage", "weights resident", "weights", "held", "activations", "peak", "activation peak at")
    return table(headers, rows, right=(2, 3, 4, 5))


def render_timeline(report: OffloadReport, *, budget_bytes: int | None = None) -> str:
    """One bar per stage: █ resident weights, ▒ tensors held across the call, ░ the call's activations."""
    top = max([m.peak_bytes for m in report.stages] + [budget_bytes or 0])
    scale = (BAR - 1) / max(top, 1)  # one character left for the activations of the tallest bar
    width = max(len(m.stage.label) for m in report.stages)
    lines = [f"memory across the run, offload={report.mode.value}  (█ weights  ▒ held  ░ activations)"]
    for m in report.stages:
        w = round(m.weights_bytes * scale)
        c = round((m.weights_bytes + m.stage.carried_bytes) * scale) - w
        a = max(round(m.peak_bytes * scale) - w - c, 1 if m.activation_bytes else 0)
        bar = "█" * w + "▒" * c + "░" * a
        mark = "  ◀ peak" if m is report.peak else ""
        lines.append(f"{m.stage.label.ljust(width)} │{bar.ljust(BAR)}│ {human_bytes(m.peak_bytes)}{mark}")
    if budget_bytes:
        pos = min(BAR, round(budget_bytes * scale))
        pad = " " * width + " │" + " " * max(pos - 1, 0)
        lines.append(pad + "┆" + f" budget {human_bytes(budget_bytes)}")
    return "\n".join(lines)


def render_summary(est: PipelineEstimate) -> str:
    rows = [(r.mode.value, human_bytes(r.peak_bytes), r.peak.stage.label) for r in est.offload]
    return table(("offload", "peak", "set by"), rows, right=(1,))


def fix_label(fix: Fix) -> str:
    """Fix -> the `vaelens pipeline` option that makes the change: '--offload model', '--size 768x768'."""
    if fix.offload is not None:
        return f"--offload {fix.offload.value}"
    if fix.vae_tiling:
        return "--vae-tiling"
    if fix.dtype is not None:
        return f"--dtype {fix.dtype.value}"
    if fix.size is not None:
        return f"--size {fix.size[1]}x{fix.size[0]}"
    return "(no change)"


def budget_json(rep: PipelineBudgetReport) -> dict[str, Any]:
    """`budget` in `vaelens pipeline --json`: fits per mode, and each change tried (its option, its peak)."""
    return {
        "budget_bytes": rep.budget_bytes,
        "fits": {m.value: ok for m, ok, _ in rep.fits},
        "fixes": [
            {"change": fix_label(f), "offload": f.mode.value, "peak_bytes": f.peak_bytes, "fits": f.fits}
            for f in rep.fixes
        ],
    }


def pipeline_json(est: PipelineEstimate, mode: Offload, budget: PipelineBudgetReport | None = None,
                  plot: str | None = None) -> dict[str, Any]:
    """`vaelens pipeline --json`: the estimate, the mode shown with its peak, the budget and plot when asked."""
    data = est.to_json()
    data["offload_shown"] = mode.value
    data["peak_bytes"] = est.mode(mode).peak_bytes
    data["peak_stage"] = est.mode(mode).peak.stage.label
    if budget is not None:
        data["budget"] = budget_json(budget)
    if plot:
        data["plot"] = plot
    return data


def _default_size(spec: PipelineSpec) -> str:
    height, width = spec.default_size
    return f"{width}x{height}" + (f"x{spec.default_frames}f" if spec.default_frames else "")


def render_pipeline_list(specs: Sequence[PipelineSpec]) -> str:
    """`vaelens pipeline --list`: one row per built-in pipeline."""
    rows = [(s.name, s.pipeline_class, " + ".join(e.title for e in s.text_encoders), s.denoiser.class_name,
             s.vae_family, _default_size(s), s.guidance.value) for s in specs]
    return table(("pipeline", "class", "text encoders", "denoiser", "vae", "default", "CFG"), rows)


def pipeline_list_json(specs: Sequence[PipelineSpec]) -> list[dict[str, Any]]:
    """`vaelens pipeline --list --json`; default_size is [H, W] like every size in vaelens' JSON."""
    return [{"name": s.name, "class": s.pipeline_class, "repo": s.repo, "vae_family": s.vae_family,
             "components": [{"name": c.name, "class": c.class_name} for c in s.components],
             "default_size": list(s.default_size), "default_frames": s.default_frames,
             "guidance": s.guidance.value} for s in specs]


def render_pipeline_budget(rep: PipelineBudgetReport) -> str:
    verdicts = (f"{m.value} {'fits' if ok else 'does not fit'} ({human_bytes(p)})" for m, ok, p in rep.fits)
    lines = [f"budget {human_bytes(rep.budget_bytes)}: " + ", ".join(verdicts)]
    if rep.fixes:
        lines.append(f"with --offload {rep.mode.value} it does not fit; single changes:")
        for f in rep.fixes:
            verdict = "fits" if f.fits else "still over"
            lines.append(f"  {fix_label(f):<22} peak {human_bytes(f.peak_bytes):>11}  {verdict}")
        if not any(f.size is not None for f in rep.fixes):
            lines.extend(f"  no smaller size of the same aspect fits under --offload {rep.mode.value}: {w}"
                         for w in rep.warnings)
    return "\n".join(lines)


def _used_size(est: PipelineEstimate) -> str:
    """'WxH, F frames' after the VAE family's size and frame rules (a floored 1000x1000 is 992x992)."""
    req = est.request
    h, w = est.used_size if all(est.used_size) else (req.height, req.width)
    frames = est.used_frames if est.used_frames is not None else req.frames
    return f"{w}x{h}" + (f", {frames} frame{'s' if frames != 1 else ''}" if frames else "")


def render_pipeline(est: PipelineEstimate, mode: Offload, budget: PipelineBudgetReport | None = None) -> str:
    """The human report of `vaelens pipeline`."""
    req, spec = est.request, est.request.pipeline
    head = [
        f"{spec.title} ({spec.pipeline_class}, {spec.repo})",
        f"{_used_size(est)}, batch {req.batch}, {req.dtype.value}; "
        f"latent {shape_str(est.latent_shape)}; CFG: {_CFG[spec.guidance]}"
        + ("; VAE tiling" if req.vae_tiling else ""),
    ]
    report = est.mode(mode)
    parts = ["\n".join(head), render_components(est), render_stages(report),
             render_timeline(report, budget_bytes=budget.budget_bytes if budget else None),
             render_summary(est)]
    if budget is not None:
        parts.append(render_pipeline_budget(budget))
    notes = [*est.warnings,
             "peak = resident weights + tensors held by the pipeline + the call's activation peak "
             "(memory model on a meta trace); the CUDA context is not included"]
    parts.append("\n".join(f"note: {n}" for n in notes))
    return "\n\n".join(parts)


def plot_pipeline(
    est: PipelineEstimate, path: str | Path, *, mode: Offload, budget_bytes: int | None = None, force: bool = False,
) -> Path:
    """Stacked bars (weights / held / activations) per stage for `mode`, and every mode's peaks as steps, written
    to a figure file through vaelens.outputs (an existing file needs force=True)."""
    from vaelens.render.figures import _plt, check_figure_path, save_figure

    check_figure_path(path, force=force)
    plt = _plt()

    gib = 1024**3
    report = est.mode(mode)
    labels = [m.stage.label.replace(" · 1 step", "\n1 step") for m in report.stages]
    x = list(range(len(labels)))
    w = [m.weights_bytes / gib for m in report.stages]
    c = [m.stage.carried_bytes / gib for m in report.stages]
    a = [m.activation_bytes / gib for m in report.stages]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(labels)) + 2.5, 4.5))
    ax.bar(x, w, color="#4c72b0", label="weights resident")
    ax.bar(x, c, bottom=w, color="#dd8452", label="tensors held")
    ax.bar(x, a, bottom=[i + j for i, j in zip(w, c, strict=True)], color="#c44e52",
           label="activations (call peak)")
    for r, style in zip(est.offload, ("-", "--", ":"), strict=True):
        ax.step(x, [m.peak_bytes / gib for m in r.stages], where="mid", linestyle=style, color="black",
                alpha=0.6, label=f"peak, offload={r.mode.value}")
    if budget_bytes:
        ax.axhline(budget_bytes / gib, color="green", linewidth=1.2,
                   label=f"budget {human_bytes(budget_bytes)}")
    peak = report.peak
    i = report.stages.index(peak)
    ax.annotate(f"peak {human_bytes(peak.peak_bytes)}", (i, peak.peak_bytes / gib), ha="center", va="bottom")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("GPU memory (GiB)")
    req = est.request
    ax.set_title(f"{req.pipeline.name} {_used_size(est)} {req.dtype.value}, offload={mode.value}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_figure(fig, path, dpi=120, force=force)
