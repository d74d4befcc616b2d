"""Whole-pipeline memory: text encoders, one denoising step, VAE decode — stage by stage.

PipelineRequest -> PipelineEstimate. Every stage is one component call of the pipeline's __call__:

    stage peak = weights resident on the GPU during the call          (offload mode decides)
               + tensors the pipeline holds across the call (carried) (embeddings, latents, inputs)
               + the call's activation peak above weights + input     (vaelens.memory on a meta trace)

Offload modes follow diffusers/accelerate:
  none        every component resident all along
  model       enable_model_cpu_offload: calling a component loads it and offloads its predecessor in
              `model_cpu_offload_seq` (accelerate CpuOffload hooks), so a component called again out
              of order (SD3's negative prompt) finds a later one still resident
  sequential  enable_sequential_cpu_offload: every buffer stays on the GPU, and each module's own
              parameters come in around its forward; from the memory model's per-layer peaks,
              max over layers of (peak + own parameters of the layer and its ancestors)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vaelens.options import Choice, DType, PixelRequest
from vaelens.pipelines.components import (
    ComponentSize,
    build_component,
    component_size,
    own_parameter_bytes,
    stack_weight_peak,
)
from vaelens.pipelines.inputs import CallPlan, denoiser_plan, text_encoder_plan
from vaelens.pipelines.spec import ComponentSpec, Guidance, PipelineSpec, Role


class Offload(Choice):
    """diffusers' offload modes: none | model (enable_model_cpu_offload) | sequential."""

    NONE = "none"
    MODEL = "model"
    SEQUENTIAL = "sequential"


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationPeak:
    """One traced call -> its peak above resident weights + inputs (the output counted), and where."""

    peak_bytes: int
    peak_at: str
    output_bytes: int = 0
    # Sequential offload: (activations, own weights of the running modules) at the moment their sum
    # is largest; None when the memory model gave no per-layer timeline.
    sequential: tuple[int, int] | None = None


# module + CallPlan + dtype -> ActivationPeak. Tests swap in a synthetic one; the default traces the
# call on the meta device and replays it through the memory model (vaelens.memory.simulate).
PeakFn = Callable[[Any, CallPlan, DType], ActivationPeak]
# family name + PixelRequest + tiled -> (decode ActivationPeak, latent shape [B,C,(F',)h,w])
DecodeFn = Callable[[str, PixelRequest, bool], tuple[ActivationPeak, tuple[int, ...]]]


def trace_peak(module: Any, plan: CallPlan, dtype: DType) -> ActivationPeak:
    """module + call plan -> ActivationPeak from vaelens.trace + vaelens.memory (meta, no weights)."""
    from vaelens.memory.estimate import simulate
    from vaelens.trace import trace_module

    tr = trace_module(module, plan.make_tensors(dtype), call=lambda m, tensors: m(**plan.kwargs(tensors)))
    est = simulate(tr, dtype=dtype, device=False)  # the pipeline adds stages itself; no per-call cap search
    seq = stack_weight_peak(est.timeline, own_parameter_bytes(module)) if est.timeline else None
    # the high end of the memory model's range: a pipeline budget that "fits" must never be an OOM
    return ActivationPeak(peak_bytes=est.peak_bytes_high, peak_at=est.peak_at, output_bytes=est.output_bytes,
                          sequential=seq)


def estimate_decode(
    family: str, request: PixelRequest, tiled: bool,
) -> tuple[ActivationPeak, tuple[int, ...]]:
    """VAE family + request -> (decode ActivationPeak, latent shape) from vaelens.memory.estimate_memory."""
    from vaelens.memory.context import MetaContext
    from vaelens.memory.estimate import estimate_memory

    ctx = MetaContext.of(family, request.dtype)  # one meta VAE for the estimate and its parameter sizes
    est = estimate_memory(ctx, request, op="decode", tiled=tiled)
    seq = stack_weight_peak(est.timeline, own_parameter_bytes(ctx.module)) if est.timeline else None
    peak = ActivationPeak(peak_bytes=est.peak_bytes_high, peak_at=est.peak_at, output_bytes=est.output_bytes,
                          sequential=seq)  # high end of the range, as for every budget
    return peak, tuple(est.input_shape)


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineRequest:
    """What to estimate: pipeline, pixels [B,3,(F,)H,W] at dtype, VAE tiling."""

    pipeline: PipelineSpec
    width: int
    height: int
    frames: int | None = None
    batch: int = 1
    dtype: DType = DType.BF16
    vae_tiling: bool = False

    @classmethod
    def of(cls, pipeline: str | PipelineSpec, request: PixelRequest | None = None, *,
           vae_tiling: bool = False) -> PipelineRequest:
        """name | PipelineSpec + PixelRequest (None: the pipeline's default size/frames, bf16) -> PipelineRequest."""
        from vaelens.contract import check_request
        from vaelens.pipelines.spec import PipelineSpec

        if isinstance(pipeline, str):
            from vaelens.pipelines import get_pipeline

            pipeline = get_pipeline(pipeline)
        elif not isinstance(pipeline, PipelineSpec):
            from vaelens.errors import VaeLensError

            raise VaeLensError(f"pipeline {type(pipeline).__name__} is neither a built-in name nor a PipelineSpec "
                               "(estimate_request takes a PipelineRequest)", param="pipeline",
                               value=type(pipeline).__name__)
        check_request(request, caller="estimate_pipeline")
        if request is None:
            height, width = pipeline.default_size
            request = PixelRequest(width=width, height=height, frames=pipeline.default_frames, dtype=DType.BF16)
        return cls(pipeline=pipeline, width=request.width, height=request.height, frames=request.frames,
                   batch=request.batch, dtype=request.dtype, vae_tiling=vae_tiling)

    def pixel_request(self, dtype: DType | None = None) -> PixelRequest:
        return PixelRequest(width=self.width, height=self.height, frames=self.frames, batch=self.batch,
                            dtype=dtype or self.dtype)


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentReport:
    """One model of the pipeline: class, config source, exact size from the meta-built module."""

    name: str
    title: str
    role: Role
    class_name: str
    config_source: str
    params: int
    weights_bytes: int
    largest_leaf_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """One component call of the run (offload-independent part)."""

    label: str  # "text_encoder_2 (T5-XXL encoder)", "transformer ×2 (CFG batch)", "vae decode"
    component: str
    role: Role
    call_batch: int
    activation_bytes: int  # peak above weights + inputs, the output counted (memory model)
    peak_at: str
    carried_bytes: int  # tensors the pipeline holds during the call (inputs, embeddings, latents)
    sequential: tuple[int, int] | None = None  # see ActivationPeak.sequential


@dataclass(frozen=True, slots=True, kw_only=True)
class StageMemory:
    """A stage under one offload mode: what is resident, and the stage's peak."""

    stage: Stage
    resident: tuple[str, ...]  # components whose weights are on the GPU during the call
    weights_bytes: int
    activation_bytes: int  # the call's activations at this mode's peak moment
    peak_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadReport:
    mode: Offload
    stages: tuple[StageMemory, ...]

    @property
    def peak(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.peak_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.peak.peak_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineEstimate:
    """The whole run: components, stages, and per offload mode the stage peaks and the overall peak."""

    request: PipelineRequest
    latent_shape: tuple[int, ...]
    components: tuple[ComponentReport, ...]
    stages: tuple[Stage, ...]
    offload: tuple[OffloadReport, ...]
    used_size: tuple[int, int] = (0, 0)  # (height, width) after the VAE family's size rule
    used_frames: int | None = None  # frames after its frame rule
    warnings: tuple[str, ...] = ()

    def mode(self, mode: Offload | str) -> OffloadReport:
        mode = Offload.parse(mode)
        return next(r for r in self.offload if r.mode is mode)

    def to_json(self) -> dict[str, Any]:
        req = self.request
        spec = req.pipeline
        return {
            "pipeline": spec.name,
            "pipeline_class": spec.pipeline_class,
            "repo": spec.repo,
            "dtype": req.dtype.value,
            "size": [req.height, req.width],  # [H, W], as every size in vaelens' JSON
            "frames": req.frames,
            "used_size": list(self.used_size),
            "used_frames": self.used_frames,
            "batch": req.batch,
            "vae_tiling": req.vae_tiling,
            "guidance": spec.guidance.value,
            "latent_shape": list(self.latent_shape),
            "components": [
                {"name": c.name, "title": c.title, "role": c.role.value, "class": c.class_name,
                 "config_source": c.config_source, "params": c.params, "weights_bytes": c.weights_bytes}
                for c in self.components
            ],
            "stages": [
                {"label": s.label, "component": s.component, "role": s.role.value, "call_batch": s.call_batch,
                 "activation_bytes": s.activation_bytes, "peak_at": s.peak_at,
                 "carried_bytes": s.carried_bytes}
                for s in self.stages
            ],
            "offload": {
                r.mode.value: {
                    "peak_bytes": r.peak_bytes,
                    "peak_stage": r.peak.stage.label,
                    "stages": [{"label": m.stage.label, "resident": list(m.resident),
                                "weights_bytes": m.weights_bytes, "activation_bytes": m.activation_bytes,
                                "peak_bytes": m.peak_bytes}
                               for m in r.stages],
                }
                for r in self.offload
            },
            "warnings": list(self.warnings),
        }


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _kept_bytes(component: ComponentSpec, batch: int, itemsize: int) -> int:
    """Embeddings the pipeline keeps from one text encoder call: [B, kept_tokens, kept_dim] + pooled."""
    call = component.call
    assert call is not None
    return batch * (call.kept_tokens * call.kept_dim + call.pooled_dim) * itemsize


def build_stages(
    req: PipelineRequest, modules: dict[str, Any], *, latent_shape: tuple[int, ...],
    decode: ActivationPeak, peak_fn: PeakFn,
) -> tuple[Stage, ...]:
    """Request + meta-built modules -> the run's stages in order (text calls, denoiser calls, decode)."""
    spec, dtype, B = req.pipeline, req.dtype, req.batch
    item = dtype.itemsize
    stages: list[Stage] = []
    cache: dict[str, ActivationPeak] = {}
    kept = 0
    for enc, negative in spec.text_calls():
        if enc.name not in cache:
            cache[enc.name] = peak_fn(modules[enc.name], text_encoder_plan(enc, batch=B), dtype)
        peak = cache[enc.name]
        plan = text_encoder_plan(enc, batch=B)
        stages.append(Stage(
            label=f"{enc.name}{' (negative)' if negative else ''}", component=enc.name,
            role=Role.TEXT_ENCODER, call_batch=B, activation_bytes=peak.peak_bytes, peak_at=peak.peak_at,
            carried_bytes=kept + plan.input_bytes(dtype), sequential=peak.sequential,
        ))
        kept += _kept_bytes(enc, B, item)
    cfg = spec.guidance
    if cfg is not Guidance.NONE and not spec.encodes_negative:
        kept *= 2  # zero-filled negative embeddings of the same shapes (SDXL)
    latent_bytes = _numel(latent_shape) * item
    den = spec.denoiser
    call_batch = 2 * B if cfg is Guidance.BATCH else B
    plan = denoiser_plan(spec, latent_shape, batch=call_batch)
    peak = peak_fn(modules[den.name], plan, dtype)
    # Held during the call: the scheduler's latents, the call's inputs (the batched copy under CFG
    # batching), and all prompt embeddings; under sequential CFG the first call's output too.
    carried = latent_bytes + plan.input_bytes(dtype) + kept
    calls = [("", 0)] if cfg is not Guidance.SEQUENTIAL else [(" (cond)", 0), (" (uncond)", latent_bytes)]
    for suffix, extra in calls:
        label = f"{den.name}{suffix}" if cfg is not Guidance.BATCH else f"{den.name} (CFG batch ×2)"
        stages.append(Stage(label=f"{label} · 1 step", component=den.name, role=Role.DENOISER,
                            call_batch=call_batch, activation_bytes=peak.peak_bytes, peak_at=peak.peak_at,
                            carried_bytes=carried + extra, sequential=peak.sequential))
    vae_peak = decode
    stages.append(Stage(label="vae decode" + (" (tiled)" if req.vae_tiling else ""), component="vae",
                        role=Role.VAE, call_batch=B, activation_bytes=vae_peak.peak_bytes,
                        peak_at=vae_peak.peak_at, carried_bytes=kept + latent_bytes,
                        sequential=vae_peak.sequential))
    return tuple(stages)


def resident_sets(spec: PipelineSpec, stages: tuple[Stage, ...], mode: Offload) -> list[tuple[str, ...]]:
    """Stages -> the components whose weights are on the GPU during each stage, for one offload mode.

    model: accelerate's CpuOffload hook of component k offloads the component before k in
    model_cpu_offload_seq, then loads k; nothing else moves.
    """
    names = [*(c.name for c in spec.components), "vae"]
    if mode is Offload.NONE:
        return [tuple(names)] * len(stages)
    if mode is Offload.SEQUENTIAL:
        return [(s.component,) for s in stages]
    seq = [n for n in spec.offload_seq if n in names]
    prev = {seq[i]: seq[i - 1] for i in range(1, len(seq))}
    on_gpu: list[str] = []
    out = []
    for s in stages:
        p = prev.get(s.component)
        if p in on_gpu:
            on_gpu.remove(p)
        if s.component not in on_gpu:
            on_gpu.append(s.component)
        out.append(tuple(n for n in names if n in on_gpu))
    return out


def offload_reports(
    spec: PipelineSpec, stages: tuple[Stage, ...], sizes: dict[str, ComponentSize],
) -> tuple[OffloadReport, ...]:
    """Stages + component sizes -> one OffloadReport per mode (none, model, sequential).

    sequential: every component's buffers stay on the GPU (diffusers passes offload_buffers=False when
    the top module has no direct parameters), plus the own parameters of the modules running at the
    worst moment (Stage.sequential); without a per-layer timeline, the largest module's own weights
    added to the activation peak (an upper bound).
    """
    buffers = sum(s.buffer_bytes for s in sizes.values())
    reports = []
    for mode in Offload:
        rows = []
        for stage, resident in zip(stages, resident_sets(spec, stages, mode), strict=True):
            act = stage.activation_bytes
            if mode is Offload.SEQUENTIAL:
                if stage.sequential is not None:
                    act, running = stage.sequential
                else:
                    running = sizes[stage.component].largest_leaf_bytes
                weights = buffers + running
            else:
                weights = sum(sizes[n].weights_bytes for n in resident)
            rows.append(StageMemory(stage=stage, resident=resident, weights_bytes=weights, activation_bytes=act,
                                    peak_bytes=weights + stage.carried_bytes + act))
        reports.append(OffloadReport(mode=mode, stages=tuple(rows)))
    return tuple(reports)


@dataclass(slots=True)
class EstimateCache:
    """Reuse within one session (e.g. a --budget search): meta modules by (component, dtype), call
    peaks by (module size, call plan, dtype). Create one per question; never module-global."""

    modules: dict = field(default_factory=dict)
    peaks: dict = field(default_factory=dict)

    def module(self, spec: ComponentSpec, dtype: DType):
        key = (spec.name, spec.config_source, dtype)
        if key not in self.modules:
            self.modules[key] = build_component(spec, dtype=dtype)
        return self.modules[key]

    def wrap(self, peak_fn: PeakFn) -> PeakFn:
        def cached(module: Any, plan: CallPlan, dtype: DType) -> ActivationPeak:
            key = (type(module).__name__, sum(p.numel() for p in module.parameters()), repr(plan), dtype)
            if key not in self.peaks:
                self.peaks[key] = peak_fn(module, plan, dtype)
            return self.peaks[key]

        return cached


def estimate_pipeline(
    pipeline: str | PipelineSpec, request: PixelRequest | None = None, *,
    vae_tiling: bool = False, peak_fn: PeakFn = trace_peak, decode_fn: DecodeFn = estimate_decode,
    cache: EstimateCache | None = None,
) -> PipelineEstimate:
    """pipeline + pixels [B,3,(F,)H,W] at dtype -> PipelineEstimate: components built on meta, stages
    traced, the peak per offload mode.

    `pipeline` is a built-in name (or alias) or a PipelineSpec; `request` the PixelRequest to estimate,
    or None for the pipeline's default size and frames, batch 1, in bf16 (what its examples run in).
    (estimate_request takes a whole PipelineRequest.)

    >>> est = estimate_pipeline("sd15", PixelRequest(width=256, height=256, dtype="bf16"))
    >>> [s.label for s in est.stages]
    ['text_encoder', 'text_encoder (negative)', 'unet (CFG batch ×2) · 1 step', 'vae decode']
    """
    full = PipelineRequest.of(pipeline, request, vae_tiling=vae_tiling)
    return estimate_request(full, peak_fn=peak_fn, decode_fn=decode_fn, cache=cache)


def estimate_request(
    request: PipelineRequest, *, peak_fn: PeakFn = trace_peak, decode_fn: DecodeFn = estimate_decode,
    cache: EstimateCache | None = None,
) -> PipelineEstimate:
    """PipelineRequest (pipeline, pixels, VAE tiling) -> PipelineEstimate; estimate_pipeline's worker."""
    spec, dtype = request.pipeline, request.dtype
    cache = cache if cache is not None else EstimateCache()
    peak_fn = cache.wrap(peak_fn)
    modules = {c.name: cache.module(c, dtype) for c in spec.components}
    sizes = {name: component_size(m) for name, m in modules.items()}
    vae_dtype = dtype
    warnings = []
    if spec.upcasts_fp16_vae and dtype is DType.FP16:
        vae_dtype = DType.FP32
        warnings.append("the pipeline upcasts the fp16 VAE to fp32 for the decode (force_upcast)")
    from vaelens.contract import plan_shapes
    from vaelens.families import get_family

    # The VAE family's size/frame rule (raise, or floor with a warning) applies to the whole pipeline.
    plan = plan_shapes(get_family(spec.vae_family), request.pixel_request(vae_dtype))
    warnings.extend(plan.warnings)
    vae_peak, latent_shape = decode_fn(spec.vae_family, request.pixel_request(vae_dtype), request.vae_tiling)
    sizes["vae"] = _vae_size(spec.vae_family, vae_dtype)
    stages = build_stages(request, modules, latent_shape=latent_shape, decode=vae_peak, peak_fn=peak_fn)
    components = tuple(
        ComponentReport(name=c.name, title=c.title, role=c.role, class_name=c.class_name,
                        config_source=c.config_source, params=sizes[c.name].params,
                        weights_bytes=sizes[c.name].weights_bytes,
                        largest_leaf_bytes=sizes[c.name].largest_leaf_bytes)
        for c in spec.components
    ) + (_vae_report(spec, sizes["vae"], vae_dtype),)
    warnings.extend(spec.warnings)
    return PipelineEstimate(request=request, latent_shape=latent_shape, components=components, stages=stages,
                            offload=offload_reports(spec, stages, sizes), used_size=tuple(plan.used_size),
                            used_frames=plan.frames, warnings=tuple(warnings))


def _vae_size(family: str, dtype: DType) -> ComponentSize:
    """The registry family's real diffusers VAE, built on meta -> its ComponentSize."""
    from vaelens.build import build_module
    from vaelens.families import get_family

    return component_size(build_module(get_family(family), device="meta", dtype=dtype))


def _vae_report(spec: PipelineSpec, size: ComponentSize, dtype: DType) -> ComponentReport:
    from vaelens.families import get_family

    fam = get_family(spec.vae_family)
    return ComponentReport(name="vae", title=f"VAE ({fam.name})", role=Role.VAE,
                           class_name=fam.diffusers_class, config_source=fam.config_source,
                           params=size.params, weights_bytes=size.weights_bytes,
                           largest_leaf_bytes=size.largest_leaf_bytes)
