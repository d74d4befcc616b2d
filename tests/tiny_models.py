"""Tiny real diffusers VAE configs that tests build in milliseconds (one place, one meaning)."""

from __future__ import annotations

from typing import Any

# AutoencoderKL, 2 blocks (f = 2), 4 latent channels.
TINY_KL: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 4,
    "sample_size": 32,
    "scaling_factor": 0.5,
}


def tiny_kl(**overrides: Any) -> dict[str, Any]:
    """TINY_KL with some keys changed (a fresh dict each call)."""
    return {**TINY_KL, **overrides}
