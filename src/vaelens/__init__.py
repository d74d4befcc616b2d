"""vaelens: what a diffusion model's VAE does to an image, and what it costs in memory.

The public API is imported lazily (`vaelens.shapes` loads only the shape math; `vaelens.trace_module`
loads torch and diffusers), so `import vaelens` stays cheap.
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


def __getattr__(name: str) -> Any:
    """A public name loads its module on first use; a submodule (vaelens.codec, vaelens.latents, …) too."""
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
