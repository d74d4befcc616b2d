"""The built-in demo VAE: a tiny diffusers AutoencoderKL that vaelens trained itself (scripts/train_demo.py).

pixels [B,3,H,W] in [-1,1] -> latent [B,4,H/4,W/4] -> pixels. Stable Diffusion's VAE design (KL
bottleneck, 4 latent channels, ResNet blocks, one attention block in the middle) at a width small enough
to ship (~0.7 M parameters, stored in fp16) and to train in minutes on a CPU. It is f4, not SD's f8: an
f8 model this small, trained this briefly, blurs a photograph beyond recognition. It is trained on
public-domain / CC0 photographs shipped with scikit-image; the coffee and cat photographs are held out,
and the shipped sample image (data/demo_coffee.png) is the held-out coffee, so the default round-trip
shows reconstruction of an image the model never saw.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

# The demo's architecture. A real diffusers AutoencoderKL config; only the widths are small.
DEMO_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 256,
    # Replaced by the training script with 1/std of the trained latents (the latent-diffusion rule).
    "scaling_factor": 1.0,
    "force_upcast": False,
}

# Sources of the training data (scikit-image's bundled sample data; licences from skimage.data docstrings).
TRAIN_IMAGES: tuple[str, ...] = ("astronaut", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
HELDOUT_IMAGES: tuple[str, ...] = ("coffee", "chelsea")
IMAGE_LICENSES: dict[str, str] = {
    "astronaut": "NASA, public domain (skimage.data.astronaut)",
    "rocket": "SpaceX, released into the public domain (skimage.data.rocket)",
    "hubble_deep_field": "NASA, public domain (skimage.data.hubble_deep_field)",
    "retina": "Mikael Häggström, CC0 1.0 (skimage.data.retina)",
    "immunohistochemistry": "CMMI, no known copyright restrictions (skimage.data.immunohistochemistry)",
    "coffee": "Rachel Michetti, CC0 (skimage.data.coffee)",
    "chelsea": "Stefan van der Walt, CC0 (skimage.data.chelsea)",
}

WEIGHTS_NAME = "demo_vae.safetensors"
SAMPLE_NAME = "demo_coffee.png"
REPORT_NAME = "demo_vae.json"


def data_path(name: str) -> Path:
    """A file shipped in vaelens/data/ -> its path on disk."""
    return Path(str(resources.files("vaelens") / "data" / name))


def demo_weights_path() -> Path:
    """-> path of the shipped demo weights (safetensors; the config is in its metadata)."""
    return data_path(WEIGHTS_NAME)


def demo_image_path() -> Path:
    """-> path of the shipped held-out sample image (the coffee photograph at half size)."""
    return data_path(SAMPLE_NAME)


def demo_report() -> dict[str, Any]:
    """-> the training report written by scripts/train_demo.py (steps, seed, PSNR trained/untrained)."""
    path = data_path(REPORT_NAME)
    return json.loads(path.read_text()) if path.is_file() else {}


def load_demo_vae(*, device: str | None = None, dtype: Any = "fp32"):
    """-> LoadedVae of the shipped demo model (see vaelens.weights.load_vae)."""
    from vaelens.weights.load import load_vae

    return load_vae(demo_weights_path(), device=device, dtype=dtype)
