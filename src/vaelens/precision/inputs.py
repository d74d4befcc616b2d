"""Images and clips -> the pixels a VAE module takes, one item per file. The one place `precision` reads
files (through vaelens.images and vaelens.video, as they are).

image file -> pixels [1,3,H,W] in [-1,1] ([1,3,1,H,W] for a video VAE: a one-frame clip)
video file -> pixels [1,3,F,H,W] (video VAEs only; F floored to the family's frame rule)
pixels tensor [B,3,(F,)H,W] -> B items as given
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelens.errors import VaeLensError


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One input: its name, pixels [1,3,(F,)H,W] float32 in [-1,1], and what reading it did."""

    name: str
    pixels: Any
    warnings: tuple[str, ...] = ()


def _video_module(vae: Any) -> bool:
    return bool(vae.spec.is_video or vae.spec.video_module)


def _read_clip(path: Path, vae: Any, size: tuple[int, int] | None) -> Item:
    import numpy as np

    from vaelens.images import apply_family_size, resize_image, to_pixels
    from vaelens.video import frames_for_family, read_video

    if vae.spec.temporal is None:
        raise VaeLensError(
            f"images= holds the video {path.name!r}, but {vae.family} is an image VAE; give images, or a video VAE",
            param="images", value=str(path),
        )
    frames, info = read_video(path)
    frames, note = frames_for_family(frames, vae.spec)
    notes = list(info.warnings) + ([note] if note else [])
    if size is not None:
        frames = np.stack([resize_image(f, size[0], size[1]) for f in frames])
        notes.append(f"resized to {size[1]}x{size[0]} (Lanczos)")
    cropped = [apply_family_size(f, vae.spec)[0] for f in frames]
    pixels = to_pixels(cropped).permute(1, 0, 2, 3).unsqueeze(0)  # [F,3,H,W] -> [1,3,F,H,W]
    return Item(name=path.name, pixels=pixels, warnings=tuple(notes))


def read_items(vae: Any, images: Sequence[Any], *, size: tuple[int, int] | None = None) -> list[Item]:
    """LoadedVae + image/video paths (or pixel tensors) -> Items, each at the family's size rule
    (`size` (H, W): every input resized to it first)."""
    import torch

    from vaelens.images import read_for_family, to_pixels
    from vaelens.sources import is_video_file

    if isinstance(images, (str, Path, torch.Tensor)):
        images = [images]
    if not images:
        raise VaeLensError("images= is empty: give at least one image file (or a clip for a video VAE)",
                           param="images", value=[])
    items: list[Item] = []
    for src in images:
        if isinstance(src, torch.Tensor):
            if src.ndim not in (4, 5) or src.shape[1] != 3 or not src.is_floating_point():
                raise VaeLensError(f"images= tensor {list(src.shape)} ({src.dtype}) is not float pixels "
                                   "[B, 3, (F,) H, W] in [-1, 1]", param="images", value=list(src.shape))
            for i in range(src.shape[0]):
                px = src[i : i + 1].float()
                if _video_module(vae) and px.ndim == 4:
                    px = px.unsqueeze(2)
                items.append(Item(name=f"tensor[{i}]", pixels=px))
            continue
        path = Path(src)
        if not path.is_file():
            raise VaeLensError(f"images= {str(src)!r} is not a file", param="images", value=str(src))
        if is_video_file(path):
            items.append(_read_clip(path, vae, size))
            continue
        arrays, infos = read_for_family([path], vae.spec, size=size)
        pixels = to_pixels(arrays)
        if _video_module(vae):
            pixels = pixels.unsqueeze(2)
        items.append(Item(name=path.name, pixels=pixels, warnings=tuple(infos[0].warnings)))
    return items
