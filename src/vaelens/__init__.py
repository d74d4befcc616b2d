"""vaelens: what a diffusion model's VAE does to an image, and what it costs in memory.

The public API is imported lazily (`vaelens.shapes` loads only the shape math; `vaelens.trace`
loads torch and diffusers), so `import vaelens` stays cheap.
"""

from importlib import import_module
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import DType, PixelRequest

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "build_module": "vaelens.build",
    "estimate_memory": "vaelens.memory",
    "estimate_pipeline": "vaelens.pipelines",
    "explain_family": "vaelens.narrate",
    "get_family": "vaelens.families",
    "family_names": "vaelens.families",
    "load_vae": "vaelens.weights",
    "plan_shapes": "vaelens.contract",
    "resolve_model": "vaelens.contract",
    "shapes": "vaelens.contract",
    "trace": "vaelens.trace",
}

__all__ = [
    "DType",
    "PixelRequest",
    "VaeLensError",
    "__version__",
    "build_module",
    "estimate_memory",
    "estimate_pipeline",
    "explain_family",
    "family_names",
    "get_family",
    "load_vae",
    "plan_shapes",
    "resolve_model",
    "shapes",
    "trace",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        # `vaelens.trace` names both a module and its function: the function wins at this level
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vaelens' has no attribute {name!r}")
