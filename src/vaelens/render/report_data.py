"""What the HTML report shows, gathered from the library: MODEL + request (+ budget, weights, image,
pipeline) -> Report. No HTML here (vaelens.render.report draws it); pictures that need real weights are
PNG bytes, ready to inline.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaelens.contract import ShapePlan, plan_shapes, resolve_model
from vaelens.errors import VaeLensError
from vaelens.families import FamilySpec
from vaelens.memory.estimate import MemoryEstimate
from vaelens.options import PixelRequest
from vaelens.progress import ProgressFn
from vaelens.render.timeline import MemoryTimeline, memory_timeline

DISPLAY_SIDE = 768  # images wider or taller than this are shown downscaled (the metrics use full size)


@dataclass(frozen=True, slots=True, kw_only=True)
class RealWeights:
    """A round trip with real weights: metrics, and the pictures as PNG bytes."""

    family: str
    source: str
    detection: str
    image: str
    image_size: tuple[int, int]  # (width, height) the VAE saw
    pixel_shape: tuple[int, ...]
    latent_shape: tuple[int, ...]
    psnr: float
    ssim: float
    mean_abs_error: float
    max_abs_error: float
    channel_limit: float  # the channel heat-maps share the scale ±channel_limit (raw latent units)
    rgb_r2: float | None
    seconds: float
    pngs: dict[str, bytes] = field(default_factory=dict)  # original, reconstruction, error, channels, rgb
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family, "source": self.source, "detection": self.detection, "image": self.image,
            "image_size": list(self.image_size), "pixel_shape": list(self.pixel_shape),
            "latent_shape": list(self.latent_shape), "psnr_db": round(self.psnr, 4), "ssim": round(self.ssim, 5),
            "mean_abs_error": round(self.mean_abs_error, 6), "max_abs_error": round(self.max_abs_error, 6),
            "channel_scale": [-self.channel_limit, self.channel_limit], "rgb_approximation_r2": self.rgb_r2,
            "seconds": round(self.seconds, 3), "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """Everything one report page shows."""

    spec: FamilySpec
    plan: ShapePlan
    estimates: tuple[MemoryEstimate, ...]  # encode, decode
    timelines: tuple[MemoryTimeline, ...]
    budget: Any = None  # vaelens.memory.budget.BudgetReport
    tiling: dict[str, Any] = field(default_factory=dict)  # op -> vaelens.tiling.TilingPlan | why none fits
    real: RealWeights | None = None
    pipeline: Any = None  # vaelens.pipelines.PipelineEstimate
    versions: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def estimate(self, op: str) -> MemoryEstimate:
        return next(e for e in self.estimates if e.op.value == op)

    def to_json(self) -> dict[str, Any]:
        from vaelens.render.memory import estimate_json
        from vaelens.render.tiling import plans_json

        data: dict[str, Any] = {
            "family": self.spec.name, "dtype": self.plan.request.dtype.value, **self.plan.to_json(),
            "weights_bytes": self.estimates[0].weights_bytes if self.estimates else None,
            **{e.op.value: estimate_json(e, self.plan.latent_shape) for e in self.estimates},
            "budget": self.budget.to_json() if self.budget is not None else None,
            "tiling": plans_json(self.tiling) if self.tiling else None,
            "real_weights": self.real.to_json() if self.real else None,
            "pipeline": None, "versions": self.versions, "notes": list(self.notes),
        }
        if self.pipeline is not None:
            data["pipeline"] = {"name": self.pipeline.request.pipeline.name,
                                **{r.mode.value: r.peak_bytes for r in self.pipeline.offload}}
        return data


def versions() -> dict[str, str]:
    """-> versions of vaelens, diffusers, torch (and Python) that made the numbers."""
    import platform

    import diffusers
    import torch

    from vaelens import __version__

    return {"vaelens": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def _png(arr01: np.ndarray) -> bytes:
    """[H,W,3] in [0,1] -> PNG bytes, downscaled (Lanczos) when a side passes DISPLAY_SIDE."""
    from PIL import Image

    img = Image.fromarray((np.clip(arr01, 0, 1) * 255).round().astype(np.uint8))
    if max(img.size) > DISPLAY_SIDE:
        k = DISPLAY_SIDE / max(img.size)
        img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def real_weights(vae_source: str | Path, image: str | Path | None = None) -> RealWeights:
    """weights ('demo' = vaelens' demo VAE) + image (default: the demo sample) -> RealWeights: round trip,
    error map, PSNR/SSIM, raw latent channels on one diverging scale, and the labelled RGB approximation."""
    import time

    from vaelens.codec import roundtrip
    from vaelens.images import from_pixels, read_for_family, to_pixels
    from vaelens.latents import project_with_decoder
    from vaelens.normalization import denormalize
    from vaelens.render.figures import plot_channel_grid, plot_error_map, plot_rgb_approximation
    from vaelens.weights.demo import demo_image_path, demo_weights_path
    from vaelens.weights.load import load_vae

    # 'demo' is the shipped demo VAE unless a file or folder of that name exists (as --vae demo elsewhere)
    source = demo_weights_path() if str(vae_source) == "demo" and not Path("demo").exists() else vae_source
    vae = load_vae(source)
    path = Path(image) if image is not None else demo_image_path()
    t0 = time.perf_counter()
    arrays, infos = read_for_family([path], vae.spec)
    pixels = to_pixels(arrays)
    rt = roundtrip(vae, pixels)
    raw = denormalize(rt.latent, vae.spec.normalization, module=vae.module).float().cpu()
    notes = list(infos[0].notes)
    item = raw[0]
    if item.ndim == 4:  # a video VAE's latent of one image: [C, 1, h, w]
        item = item[:, 0]
    title = f"{vae.family}: {path.name}  PSNR {rt.psnr[0]:.2f} dB  SSIM {rt.ssim[0]:.4f}"
    pngs = {"original": _png(from_pixels(pixels)[0]), "reconstruction": _png(rt.reconstruction[0])}
    r2 = None
    with tempfile.TemporaryDirectory(prefix="vaelens-report-") as tmp:
        pngs["error"] = plot_error_map(rt.error[0], Path(tmp, "error.png"), title=title).read_bytes()
        grid = plot_channel_grid(item, Path(tmp, "channels.png"), units="raw latent value z (VAE units)",
                                   title=f"{vae.family} raw latent z: {item.shape[0]} channels "
                                   f"({item.shape[2]}x{item.shape[1]}), one shared symmetric scale")
        pngs["channels"] = Path(grid.path).read_bytes()
        if raw.ndim == 4:
            proj, approx, decoded = project_with_decoder(vae, raw)
            r2 = proj.r2
            pngs["rgb"] = plot_rgb_approximation(approx[0], decoded[0], Path(tmp, "rgb.png"), r2=r2).read_bytes()
        else:
            notes.append("RGB approximation skipped: it is fitted on image latents [B, C, h, w]")
    h, w = arrays[0].shape[:2]
    return RealWeights(
        family=vae.family, source=str(vae_source), detection=vae.detection, image=str(path), image_size=(w, h),
        pixel_shape=tuple(pixels.shape), latent_shape=tuple(rt.latent.shape), psnr=rt.psnr[0], ssim=rt.ssim[0],
        mean_abs_error=float(rt.error[0].mean()), max_abs_error=float(rt.error[0].max()),
        channel_limit=grid.vmax, rgb_r2=r2, seconds=time.perf_counter() - t0, pngs=pngs,
        notes=tuple(notes) + tuple(vae.warnings),
    )


def build_report(
    model: str | FamilySpec, request: PixelRequest, *, budget_bytes: int | None = None,
    vae: str | Path | None = None, image: str | Path | None = None, pipeline: str | None = None,
    pipeline_dtype: str | None = None, progress: ProgressFn | None = None,
) -> Report:
    """MODEL + PixelRequest -> Report: the contract, encode and decode memory per layer, the budget
    verdict and tiling plan (vaelens.tiling); with `vae` (weights, or 'demo') a round trip of `image`;
    with `pipeline` (a built-in name) its stages per offload mode. `progress(done, total, what)` is
    called before each step."""
    from vaelens.memory.estimate import estimate_memory

    total = 2 + (budget_bytes is not None) + (vae is not None) + (pipeline is not None)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, what)
        done += 1
    if image is not None and vae is None:
        raise VaeLensError("image= needs vae= (the weights that encode it); vae='demo' is vaelens' demo VAE")
    spec = resolve_model(model)
    plan = plan_shapes(spec, request)
    pipe_spec = None
    if pipeline is not None:  # validate the name before any tracing
        from vaelens.pipelines import get_pipeline

        pipe_spec = get_pipeline(pipeline)
    estimates, timelines = [], []
    for op in ("encode", "decode"):
        step(f"tracing {op}")
        est = estimate_memory(spec, request, op=op)
        estimates.append(est)
        timelines.append(memory_timeline(est, budget_bytes=budget_bytes))
    notes = list(plan.warnings)
    budget = None
    tiling: dict[str, Any] = {}
    if budget_bytes is not None:
        try:  # the memory package's VAE budget (named check_budget before the pipelines' budget split)
            from vaelens.memory.budget import check_vae_budget as check_budget
        except ImportError:
            from vaelens.memory.budget import check_budget
        from vaelens.tiling.plan import plan_ops

        step("checking the budget")
        budget = check_budget(spec, request, budget_bytes, step=spec.size_rule.multiple)
        tiling = plan_ops(spec, {"encode": plan.pixel_shape, "decode": plan.latent_shape}, request.dtype,
                          budget_bytes)
    real = None
    if vae is not None:
        step("round trip with real weights")
        real = real_weights(vae, image)
    pipe = None
    if pipe_spec is not None:
        from vaelens.options import DType
        from vaelens.pipelines import PipelineRequest, estimate_pipeline

        step(f"estimating pipeline {pipe_spec.name}")
        h, w = plan.used_size
        frames = plan.frames if pipe_spec.is_video and request.frames is not None else pipe_spec.default_frames
        pipe = estimate_pipeline(PipelineRequest(
            pipeline=pipe_spec, width=w, height=h, frames=frames, batch=request.batch,
            dtype=DType.parse(pipeline_dtype or "bf16")))
        if pipe_spec.vae_family != spec.name:
            notes.append(f"pipeline {pipe_spec.name} decodes with the {pipe_spec.vae_family} VAE, not {spec.name}")
    if progress is not None:
        progress(total, total, "done")
    return Report(spec=spec, plan=plan, estimates=tuple(estimates), timelines=tuple(timelines), budget=budget,
                  tiling=tiling, real=real, pipeline=pipe, versions=versions(), notes=tuple(notes))
