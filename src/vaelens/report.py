"""Everything one report page shows, gathered from the library: MODEL + PixelRequest (+ budget, real
weights and an image, a pipeline) -> Report. The page itself is vaelens.render.report.

Report = the ShapePlan, encode and decode MemoryEstimates (per-layer timelines), the VAE budget and the
tiling plan that fits, a real-weights round trip (arrays: images, error map, raw latent channels, the
RGB approximation), a pipeline estimate, the versions that made the numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaelens.contract import ShapePlan, plan_shapes, resolve_model
from vaelens.errors import VaeLensError
from vaelens.families import FamilySpec
from vaelens.memory.estimate import MemoryEstimate
from vaelens.options import DType, PixelRequest
from vaelens.progress import ProgressFn


@dataclass(frozen=True, slots=True, kw_only=True)
class RealWeights:
    """pixels [1,3,H,W] -> latent -> pixels with real weights: metrics, and the arrays to draw."""

    family: str
    source: str
    detection: str
    image: str
    pixel_shape: tuple[int, ...]
    latent_shape: tuple[int, ...]
    psnr: float
    ssim: float | None  # None where the image is thinner than SSIM's window (ssim_reason)
    original: np.ndarray  # [H,W,3] in [0,1]
    reconstruction: np.ndarray  # [H,W,3] in [0,1]
    error: np.ndarray  # [H,W] mean |original − reconstruction| over RGB
    channels: np.ndarray  # raw latent z [C,h,w] (frame 0 of a video latent), VAE units
    rgb: np.ndarray | None = None  # linear latent→RGB fit [h,w,3]: an approximation
    rgb_decoded: np.ndarray | None = None  # the decoder output it was fitted to [H,W,3]
    rgb_r2: float | None = None
    seconds: float = 0.0
    ssim_reason: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the VAE saw."""
        return self.original.shape[0], self.original.shape[1]

    @property
    def channel_limit(self) -> float:
        """max |z| over the finite values: the channel heat-maps share the scale ±this."""
        finite = self.channels[np.isfinite(self.channels)]
        return float(np.abs(finite).max()) if finite.size else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family, "source": self.source, "detection": self.detection, "image": self.image,
            "image_size": list(self.image_size), "pixel_shape": list(self.pixel_shape),
            "latent_shape": list(self.latent_shape), "psnr_db": round(self.psnr, 4),
            "ssim": None if self.ssim is None else round(self.ssim, 5),
            "ssim_reason": self.ssim_reason,
            "mean_abs_error": round(float(self.error.mean()), 6), "max_abs_error": round(float(self.error.max()), 6),
            "channel_scale": [-self.channel_limit, self.channel_limit], "rgb_approximation_r2": self.rgb_r2,
            "seconds": round(self.seconds, 3), "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One report: the contract, memory per op, budget and tiling, real weights, pipeline, versions."""

    spec: FamilySpec
    plan: ShapePlan
    estimates: tuple[MemoryEstimate, ...]  # encode, decode
    budget_bytes: int | None = None
    budget: Any = None  # vaelens.memory.budget's report for the VAE (fits, largest batch / square)
    tiling: dict[str, Any] = field(default_factory=dict)  # op -> vaelens.tiling TilingPlan | NoTiling (none fits)
    real: RealWeights | None = None
    pipeline: Any = None  # vaelens.pipelines.PipelineEstimate
    precision: Any = None  # vaelens.precision.PrecisionReport (with vae= and image=)
    versions: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def estimate(self, op: str) -> MemoryEstimate:
        return next(e for e in self.estimates if e.op.value == op)


def versions() -> dict[str, str]:
    """-> versions of vaelens, diffusers, torch (and Python) that made the numbers."""
    import platform

    import diffusers
    import torch

    from vaelens import __version__

    return {"vaelens": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def real_weights(vae: str | Path, image: str | Path | None = None) -> RealWeights:
    """weights ('demo': vaelens' demo VAE) + image (default: the demo photograph) -> RealWeights: the round
    trip scored (PSNR/SSIM, error map), the raw latent's channels, and the linear RGB approximation."""
    from vaelens.images import from_pixels, read_for_family, to_pixels
    from vaelens.latents import project_with_decoder
    from vaelens.normalization import denormalize
    from vaelens.run import roundtrip
    from vaelens.weights.demo import demo_image_path
    from vaelens.weights.load import load_vae

    loaded = load_vae(vae)  # 'demo': the shipped demo VAE, unless a file or folder of that name exists
    path = Path(image) if image is not None else demo_image_path()
    t0 = time.perf_counter()
    arrays, infos = read_for_family([path], loaded.spec)
    pixels = to_pixels(arrays)
    rt = roundtrip(loaded, pixels)
    raw = denormalize(rt.latent, loaded.spec.normalization, module=loaded.module).float().cpu()
    warnings = [*infos[0].warnings, *loaded.warnings]
    channels = raw[0].numpy()
    if channels.ndim == 4:  # a video VAE's latent of one image: [C, 1, h, w]
        channels = channels[:, 0]
    rgb = decoded = r2 = None
    if raw.ndim == 4:
        proj, approx, dec = project_with_decoder(loaded, raw)
        rgb, decoded, r2 = approx[0], dec[0], proj.r2
    else:
        warnings.append("the RGB approximation is fitted on image latents [B, C, h, w]; skipped for this latent")
    return RealWeights(
        family=loaded.family, source=str(vae), detection=loaded.detection, image=str(path),
        pixel_shape=tuple(pixels.shape), latent_shape=tuple(rt.latent.shape), psnr=rt.psnr[0], ssim=rt.ssim[0],
        ssim_reason=rt.ssim_reason,
        original=from_pixels(pixels)[0], reconstruction=rt.reconstruction[0], error=rt.error[0],
        channels=channels, rgb=rgb, rgb_decoded=decoded, rgb_r2=r2, seconds=time.perf_counter() - t0,
        warnings=tuple(warnings),
    )


def precision_report(vae: str | Path, image: str | Path) -> Any:
    """weights ('demo': the demo VAE) + image -> vaelens.precision.PrecisionReport at the image's own size."""
    from vaelens.precision import measure_precision
    from vaelens.weights.load import load_vae

    loaded = load_vae(vae)
    return measure_precision(loaded, [image])


def build_report(
    model: str | FamilySpec, request: PixelRequest, *, budget_bytes: int | str | None = None,
    vae: str | Path | None = None, image: str | Path | None = None, pipeline: str | None = None,
    pipeline_dtype: DType | str | None = None, progress: ProgressFn | None = None, device_profile: Any = None,
) -> Report:
    """MODEL + PixelRequest -> Report: the contract, encode and decode memory per layer; with
    `budget_bytes` the verdict and the tiling plan that fits (vaelens.tiling; timed on `device_profile`,
    default this machine's GPU, else cpu); with `vae` (weights, or
    'demo') a round trip of `image`; with `pipeline` (a built-in name) its stages per offload mode, at
    `pipeline_dtype` (default bf16, as pipelines run); with both `vae` and `image` the fp16/bf16 analysis
    of vaelens.precision on that image. `progress(done, total, what)` is called per step.
    """
    from vaelens.memory.context import MetaContext
    from vaelens.memory.estimate import estimate_memory

    if image is not None and vae is None:
        raise VaeLensError("image= needs vae= (the weights that encode it); vae='demo' is vaelens' demo VAE",
                           param="image", value=image)
    if budget_bytes is not None:
        from vaelens.units import budget_bytes as as_bytes

        budget_bytes = as_bytes(budget_bytes, param="budget_bytes")
    if device_profile is not None:
        from vaelens.tiling.profiles import get_profile

        if budget_bytes is None:
            raise VaeLensError(f"device_profile={device_profile!r} times the tiling plan of a budget; give "
                               "budget_bytes= too", param="device_profile", value=device_profile)
        get_profile(device_profile)  # an unknown name is refused before any tracing
    total = 2 + (budget_bytes is not None) + (vae is not None) + (pipeline is not None) + (image is not None)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, what)
        done += 1

    spec = resolve_model(model)
    plan = plan_shapes(spec, request)
    pipe_spec = None
    if pipeline is not None:  # an unknown name is refused before any tracing
        from vaelens.pipelines import get_pipeline

        pipe_spec = get_pipeline(pipeline)
    ctx = MetaContext.of(spec, request.dtype).add_plan(plan)  # one meta module for estimates, budget and tiles
    estimates = []
    for op in ("encode", "decode"):
        step(f"tracing {op}")
        estimates.append(estimate_memory(ctx, request, op=op))
    warnings = list(plan.warnings)
    budget = None
    tiling: dict[str, Any] = {}
    if budget_bytes is not None:
        step("checking the budget")
        budget, tiling = _budget_and_tiling(ctx, plan, budget_bytes, device_profile)
    real = None
    if vae is not None:
        step("round trip with real weights")
        real = real_weights(vae, image)
        if real.family != spec.name:
            warnings.append(f"the round trip uses the {real.family} weights; the shapes and memory are "
                            f"{spec.name}'s")
    precision = None
    if vae is not None and image is not None:
        step("precision: fp16 and bf16 emulated")
        precision = precision_report(vae, image)
    pipe = None
    if pipe_spec is not None:
        step(f"estimating pipeline {pipe_spec.name}")
        pipe = _pipeline(pipe_spec, plan, pipeline_dtype)
        if pipe_spec.vae_family != spec.name:
            warnings.append(f"pipeline {pipe_spec.name} decodes with the {pipe_spec.vae_family} VAE, not {spec.name}")
    if progress is not None:
        progress(total, total, "done")
    return Report(spec=spec, plan=plan, estimates=tuple(estimates), budget_bytes=budget_bytes, budget=budget,
                  tiling=tiling, real=real, pipeline=pipe, precision=precision, versions=versions(),
                  warnings=tuple(warnings))


def _budget_and_tiling(ctx: Any, plan: Any, budget_bytes: int,
                       device_profile: Any = None) -> tuple[Any, dict[str, Any]]:
    """MetaContext + ShapePlan -> (the VAE budget verdict, {op: TilingPlan | NoTiling}) at plan's request,
    the tiling timed on `device_profile`."""
    from vaelens.memory.budget import check_vae_budget
    from vaelens.tiling.plan import plan_ops

    request = plan.request
    budget = check_vae_budget(ctx, request, budget_bytes, step=ctx.spec.size_rule.multiple)
    tiling = plan_ops(ctx.spec, {"encode": plan.pixel_shape, "decode": plan.latent_shape}, request.dtype,
                      budget_bytes, context=ctx, device_profile=device_profile)
    return budget, tiling


def _pipeline(pipe_spec: Any, plan: Any, pipeline_dtype: DType | str | None) -> Any:
    """The built-in pipeline's stages at the plan's size (its frames for a video pipeline asked for frames)."""
    from vaelens.pipelines.estimate import PipelineRequest, estimate_request

    request = plan.request
    h, w = plan.used_size
    frames = plan.frames if pipe_spec.is_video and request.frames is not None else pipe_spec.default_frames
    return estimate_request(PipelineRequest(
        pipeline=pipe_spec, width=w, height=h, frames=frames, batch=request.batch,
        dtype=DType.parse(pipeline_dtype or DType.BF16)))
