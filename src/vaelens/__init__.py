"""vaelens: what a diffusion model's VAE does to an image, and what it costs in memory."""

from vaelens.errors import VaeLensError
from vaelens.options import DType, PixelRequest

__version__ = "0.1.0"

from vaelens.pipelines import estimate_pipeline  # noqa: E402 — whole-pipeline memory (light import)
from vaelens.weights import load_vae  # noqa: E402 — after __version__, which weights' callers read

__all__ = sorted(["DType", "PixelRequest", "VaeLensError", "__version__", "estimate_pipeline", "load_vae"])
