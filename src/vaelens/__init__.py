"""vaelens: what a diffusion model's VAE does to an image, and what it costs in memory.

Public names (each one's own docstring opens with its full shape contract):

  Describe
    shapes               MODEL + PixelRequest -> ShapePlan: pixels -> latent -> tokens -> decoded shapes
    plan_shapes          FamilySpec + PixelRequest -> ShapePlan (the family already resolved)
    explain_family       MODEL + PixelRequest -> narrated text of pixels -> latent -> tokens
    default_request      MODEL -> its default PixelRequest (size, frames), fields overridable
    resolve_model        'sdxl' | alias | config.json | model folder -> FamilySpec
    get_family           'sdxl' | alias -> FamilySpec (unknown names raise with suggestions)
    family_names         () -> the registry's canonical family names
    build_module         FamilySpec | config dict -> diffusers VAE module (meta: no storage)
  Predict (meta device, no GPU)
    trace_module         nn.Module + inputs -> Trace (one record per module call and aten operator)
    estimate_memory      MODEL + PixelRequest -> MemoryEstimate of encode or decode (peak, range, device need)
    estimate_pipeline    pipeline + PixelRequest -> PipelineEstimate (stages, peak per offload mode)
    plan_tiling          input [B,C,(F,)h,w] + dtype + budget -> TilingPlan (exact tiles that fit)
    TilingPlan           how an encode/decode runs inside a budget (untiled, exact tiles, approximate)
  Run (real weights)
    load_vae             folder | file | repo id -> LoadedVae (module, family, dtype)
    encode               pixels [B,3,(F,)H,W] in [-1,1] -> Encoded(latent [B,C,(F',)h,w], raw or normalized=)
    decode               latent [B,C,(F',)h,w] (raw or normalized=) -> Decoded(pixels [B,3,(F,)H,W] in [-1,1])
    measure_precision    VAE + images -> PrecisionReport: fp16/bf16 first overflow, PSNR, the priced upcast
    enable_budgeted_vae  VAE module + budget -> its encode/decode run in exact tiles when needed
    disable_budgeted_vae VAE module -> its own encode/decode again
    open_cache           cache folder -> CacheDataset of latents, posteriors, flips, captions (shards checked)
    BucketSampler        CacheDataset -> batches within one bucket, reshuffled per epoch, split across ranks
    LatentPosterior      (mean, logvar) [B,C,h,w] in one normalisation -> .sample(generator)
  Options and errors
    PixelRequest         pixels [batch, 3, (frames,) height, width] at dtype: the one request object
    DType                fp32 | fp16 | bf16
    VaeLensError         bad input: message + param, value, choices, needed_bytes

The names are imported lazily (`vaelens.shapes` loads only the shape math; `vaelens.trace_module` loads
torch and diffusers), so `import vaelens` stays cheap; dir(vaelens) and help(vaelens) list them all.
"""

from importlib import import_module
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import DType, PixelRequest

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "BucketSampler": "vaelens.datasets.sampler",
    "LatentPosterior": "vaelens.datasets.posterior",
    "build_module": "vaelens.build",
    "decode": "vaelens.run.verbs",
    "disable_budgeted_vae": "vaelens.tiling.api",
    "enable_budgeted_vae": "vaelens.tiling.api",
    "encode": "vaelens.run.verbs",
    "default_request": "vaelens.contract",
    "estimate_memory": "vaelens.memory.estimate",
    "estimate_pipeline": "vaelens.pipelines",
    "explain_family": "vaelens.render.narrate",
    "get_family": "vaelens.families",
    "family_names": "vaelens.families",
    "load_vae": "vaelens.weights.load",
    "measure_precision": "vaelens.precision",
    "open_cache": "vaelens.datasets.reader",
    "plan_shapes": "vaelens.contract",
    "plan_tiling": "vaelens.tiling.plan",
    "TilingPlan": "vaelens.tiling.plan",
    "resolve_model": "vaelens.contract",
    "shapes": "vaelens.contract",
    "trace_module": "vaelens.trace.tracer",
}

__all__ = [
    "BucketSampler",
    "DType",
    "LatentPosterior",
    "PixelRequest",
    "TilingPlan",
    "VaeLensError",
    "__version__",
    "build_module",
    "decode",
    "default_request",
    "disable_budgeted_vae",
    "enable_budgeted_vae",
    "encode",
    "estimate_memory",
    "estimate_pipeline",
    "explain_family",
    "family_names",
    "get_family",
    "load_vae",
    "measure_precision",
    "open_cache",
    "plan_shapes",
    "plan_tiling",
    "resolve_model",
    "shapes",
    "trace_module",
]


def __dir__() -> list[str]:
    """The public names (loaded or not) and the module's own attributes: what a notebook completes."""
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    """A public name loads its module on first use; a submodule (vaelens.run, vaelens.latents, …) too."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'vaelens' has no attribute {name!r}")
