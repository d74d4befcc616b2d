"""Aspect-ratio buckets with the family's size rule, and decoding one file to the pixels of its bucket.

(height, width) -> Bucketing.place -> bucket (bh, bw), both multiples of the family's size multiple:
scale to cover the bucket, centre-crop -> Placement (resized size, crop top/left). Sizes are (H, W), as
everywhere in vaelens' Python API
-> decode_image / decode_clip -> uint8 array [bh,bw,3] / [F,bh,bw,3] (RGB, alpha composited onto white,
EXIF orientation applied, as vaelens.images.read_image reads a file).

Filters (not part of a cache key: they decide which files are used, never a latent's value): upscale=False
skips images smaller than their bucket, min_size skips images whose shorter side is smaller, max_aspect
skips images longer than R:1. A placement that upscales more than UPSCALE_WARN×, downscales more than
DOWNSCALE_WARN×, or whose crop keeps less than KEEP_WARN of the resized image carries a warning.

16-bit grayscale (and 32-bit float) images stay 16-bit: decode_image returns uint16 for them (uint8
otherwise), as vaelens.images.read_image keeps their 16 bits.

Three modes: "native" keeps each image's size, centre-cropped to the multiple (one bucket per size);
"fixed" resizes everything to one WxH; "area" picks, per image, the bucket of about resolution² pixels
whose aspect ratio is nearest (kohya sd-scripts' make_bucket_resolutions: widths in steps, height
= area / width floored to the step, both orientations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaelens.errors import SizeError, VaeLensError
from vaelens.families import FamilySpec
from vaelens.options import Choice


class BucketMode(Choice):
    """How images reach their buckets (see the module docstring)."""

    NATIVE = "native"
    FIXED = "fixed"
    AREA = "area"


# Warning thresholds: a linear upscale beyond 2× invents detail the VAE will encode as blur; a downscale
# beyond 8× (a 8192-px photo into a 1024 bucket) throws away most of the pixels read; a crop keeping less
# than half of the resized image loses the subject (a 12000x200 panorama in a square bucket keeps 1.7%).
UPSCALE_WARN = 2.0
DOWNSCALE_WARN = 8.0
KEEP_WARN = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """How one image reaches its bucket: the size it is resized to, and the crop taken from it."""

    original_size: tuple[int, int]  # (height, width) as displayed
    resized_size: tuple[int, int]  # (height, width) after resizing (= original in native mode)
    crop_top_left: tuple[int, int]  # (top, left) in the resized image, as SDXL's crops_coords_top_left
    bucket: tuple[int, int]  # (height, width) encoded
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Bucketing:
    """The bucket rule of one cache run (part of every key: a different rule re-encodes)."""

    mode: BucketMode
    multiple: int  # the family's size multiple (every bucket side is one)
    size: tuple[int, int] | None = None  # fixed mode (height, width)
    resolution: int | None = None  # area mode: buckets of about resolution² pixels
    step: int | None = None
    min_side: int | None = None
    max_side: int | None = None
    buckets: tuple[tuple[int, int], ...] = ()  # (height, width) each
    upscale: bool = True  # False: images smaller than their bucket are skipped
    min_size: int | None = None  # images whose shorter side is below this are skipped
    max_aspect: float | None = None  # images longer than max_aspect:1 are skipped

    def filters_json(self) -> dict[str, Any]:
        return {"upscale": self.upscale, "min_size": self.min_size, "max_aspect": self.max_aspect}

    def to_json(self) -> dict[str, Any]:
        """The fields that decide a latent's pixels (the cache key's part; the filters are not in it)."""
        return {
            "mode": BucketMode.parse(self.mode).value,
            "multiple": self.multiple,
            "size": list(self.size) if self.size else None,
            "resolution": self.resolution,
            "step": self.step,
            "min_side": self.min_side,
            "max_side": self.max_side,
            "buckets": [list(b) for b in self.buckets],
        }

    def place(self, height: int, width: int) -> Placement:
        """(height, width) -> Placement in this rule's bucket (SizeError when smaller than one multiple or
        left out by a filter; the message is the reason the file is skipped)."""
        if self.min_size is not None and min(height, width) < self.min_size:
            raise SizeError(f"image {width}x{height}: shorter side below min_size={self.min_size}", param="min_size",
                            value=self.min_size)
        aspect = max(height, width) / max(1, min(height, width))
        if self.max_aspect is not None and aspect > self.max_aspect:
            raise SizeError(f"image {width}x{height}: aspect {aspect:.2f}:1 above max_aspect={self.max_aspect:g}",
                            param="max_aspect", value=self.max_aspect)
        p = self._place(height, width)
        scale = p.resized_size[0] / height
        if scale > 1.0 and not self.upscale:
            raise SizeError(f"image {width}x{height} is smaller than its bucket {p.bucket[1]}x{p.bucket[0]} "
                            f"(upscale={scale:.2f}×; upscale=False)", param="upscale", value=False)
        warnings = []
        if scale > UPSCALE_WARN:
            warnings.append(f"upscaled {scale:.1f}× (above {UPSCALE_WARN:g}×) from {width}x{height} "
                            f"into bucket {p.bucket[1]}x{p.bucket[0]}")
        elif scale < 1.0 / DOWNSCALE_WARN:
            warnings.append(f"downscaled {1 / scale:.1f}× (above {DOWNSCALE_WARN:g}×) from {width}x{height}")
        keep = p.bucket[0] * p.bucket[1] / (p.resized_size[0] * p.resized_size[1])
        if keep < KEEP_WARN:
            warnings.append(f"the crop keeps {keep:.1%} of the image (below {KEEP_WARN:.0%}): aspect "
                            f"{width / height:.2f} in a {p.bucket[1] / p.bucket[0]:.2f} bucket")
        return Placement(original_size=p.original_size, resized_size=p.resized_size,
                         crop_top_left=p.crop_top_left, bucket=p.bucket, warnings=tuple(warnings))

    def _place(self, height: int, width: int) -> Placement:
        m = self.multiple
        if self.mode == BucketMode.NATIVE:
            bh, bw = height // m * m, width // m * m
            if bw == 0 or bh == 0:
                raise SizeError(f"image {width}x{height} is smaller than the multiple of {m} pixels per side",
                                param="width" if bw == 0 else "height", value=width if bw == 0 else height)
            return Placement(
                original_size=(height, width),
                resized_size=(height, width),
                crop_top_left=((height - bh) // 2, (width - bw) // 2),
                bucket=(bh, bw),
            )
        if self.mode == BucketMode.FIXED:
            assert self.size is not None
            bh, bw = self.size
        else:
            ratio = math.log(width / height)
            bh, bw = min(self.buckets, key=lambda b: (abs(math.log(b[1] / b[0]) - ratio), -b[0] * b[1]))
        scale = max(bw / width, bh / height)
        rh, rw = max(bh, round(height * scale)), max(bw, round(width * scale))
        return Placement(
            original_size=(height, width),
            resized_size=(rh, rw),
            crop_top_left=((rh - bh) // 2, (rw - bw) // 2),
            bucket=(bh, bw),
        )


def make_bucketing(
    spec: FamilySpec,
    *,
    size: tuple[int, int] | None = None,
    resolution: int | None = None,
    step: int | None = None,
    upscale: bool = True,
    min_size: int | None = None,
    max_aspect: float | None = None,
) -> Bucketing:
    """The family's size rule + (size=(height, width) | resolution=R [, step]) | neither -> Bucketing.

    >>> from vaelens.families import get_family
    >>> b = make_bucketing(get_family("sdxl"), resolution=1024)
    >>> b.place(900, 1600).bucket
    (768, 1344)
    """
    from vaelens.options import MAX_SIDE

    filters = {"upscale": bool(upscale), "min_size": min_size, "max_aspect": max_aspect}
    if min_size is not None and not 1 <= min_size <= MAX_SIDE:
        raise SizeError(f"min_size {min_size} must be 1..{MAX_SIDE}", param="min_size", value=min_size)
    if max_aspect is not None and not max_aspect >= 1.0:
        raise SizeError(f"max_aspect {max_aspect} must be at least 1 (a ratio long:short side)",
                        param="max_aspect", value=max_aspect)
    if resolution is not None and not 1 <= resolution <= MAX_SIDE:
        raise SizeError(f"resolution {resolution} must be 1..{MAX_SIDE} pixels (vaelens' limit per side)",
                        param="resolution", value=resolution)
    m = spec.size_rule.multiple
    if spec.size_rule.raise_multiple:
        m = math.lcm(m, spec.size_rule.raise_multiple)
    if size is not None and resolution is not None:
        raise VaeLensError(f"size={size} and resolution={resolution}: give one (fixed size or area buckets)",
                           param="resolution", value=resolution)
    if size is not None:
        h, w = size
        if w % m or h % m or w <= 0 or h <= 0:
            raise SizeError(f"size {w}x{h} is not a multiple of {m} for {spec.name}; choose sides divisible by {m}",
                            param="size", value=size)
        return Bucketing(mode=BucketMode.FIXED, multiple=m, size=(h, w), buckets=((h, w),), **filters)
    if resolution is None:
        if step is not None:
            raise VaeLensError(f"step={step} applies to area buckets; give resolution= too", param="step", value=step)
        return Bucketing(mode=BucketMode.NATIVE, multiple=m, **filters)
    step = step if step is not None else max(m, 64 if resolution >= 256 else m)
    if step <= 0 or step % m:
        raise SizeError(f"step {step} is not a positive multiple of {spec.name}'s {m}", param="step", value=step)
    if resolution < step:
        raise SizeError(f"resolution {resolution} is smaller than the bucket step {step}", param="resolution",
                        value=resolution)
    area = resolution * resolution
    min_side = max(step, (resolution // 2) // step * step)
    max_side = resolution * 2 // step * step
    found: set[tuple[int, int]] = set()
    for w in range(min_side, max_side + 1, step):
        h = min(max_side, area // w // step * step)
        if h >= min_side:
            found.update({(w, h), (h, w)})
    return Bucketing(
        mode=BucketMode.AREA,
        multiple=m,
        resolution=resolution,
        step=step,
        min_side=min_side,
        max_side=max_side,
        buckets=tuple(sorted(found)),
        **filters,
    )


# ---------------------------------------------------------------------------------------- decoding


_DEEP = ("I;16", "I;16B", "I;16L", "I", "F")


def _rgb_array(img) -> np.ndarray:
    """PIL image -> [H,W,3]: uint8, or uint16 for 16-bit grayscale and float images (their 16 bits kept);
    alpha composited onto white (as vaelens.images.read_image reads a file)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if img.mode in _DEEP:
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":  # 0-1 intensities, clipped (vaelens.images._to_rgb)
            a = np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 65535.0
        elif not (img.mode.startswith("I;16") or a.max(initial=0) > 255):
            a = a * 257.0  # an 8-bit image in a 32-bit container
        g = np.clip(np.round(a), 0, 65535).astype(np.uint16)
        return np.repeat(g[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"))


def _place_pil(img, placement: Placement) -> np.ndarray:
    """PIL image (displayed orientation) -> [bh,bw,3] (uint8, or uint16 for 16-bit images) resized
    (Lanczos) and cropped per placement."""
    from PIL import Image

    rh, rw = placement.resized_size
    if img.size != (rw, rh):
        if img.mode in _DEEP:  # resized as float, so the 16 bits survive the filter
            deep = Image.fromarray(_rgb_array(img)[..., 0].astype(np.float32) / 65535.0, mode="F")
            img = deep.resize((rw, rh), Image.Resampling.LANCZOS, reducing_gap=3.0)
        else:
            if img.mode not in ("RGB", "RGBA", "L", "LA"):
                img = Image.fromarray(_rgb_array(img))
            img = img.resize((rw, rh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    arr = _rgb_array(img)
    top, left = placement.crop_top_left
    bh, bw = placement.bucket
    return np.ascontiguousarray(arr[top : top + bh, left : left + bw])


def decode_image(path: str, placement: Placement) -> np.ndarray:
    """image file -> [bh,bw,3] in the placement's bucket, uint8 (uint16 for 16-bit grayscale); raises on
    a corrupt file. Opened by vaelens.images.open_image (its size limit)."""
    from PIL import ImageOps

    from vaelens.images import open_image

    with open_image(path) as img:
        rh, rw = placement.resized_size
        h, w = placement.original_size
        if img.format == "JPEG" and (rw, rh) != (w, h):
            # DCT-domain downscaling: decode at 1/2, 1/4, 1/8 when the result stays ≥ 2× the target
            # (Pillow's draft; what Image.thumbnail does), then Lanczos. Same quality, a fraction of the work.
            swap = int(img.getexif().get(0x0112, 1) or 1) in (5, 6, 7, 8)
            img.draft("RGB", (2 * rh, 2 * rw) if swap else (2 * rw, 2 * rh))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _place_pil(img, placement)


def stack_pixels(arrays: list[np.ndarray]) -> np.ndarray:
    """[H,W,3] / [F,H,W,3] arrays of one bucket -> one batch array: uint8, or uint16 when any is 16-bit
    (8-bit values ×257, the same [0, 1] value)."""
    if any(a.dtype == np.uint16 for a in arrays):
        arrays = [a.astype(np.uint16) * 257 if a.dtype == np.uint8 else a for a in arrays]
    return np.stack(arrays)


def decode_clip(path: str, placement: Placement, frames: int) -> np.ndarray:
    """video file -> uint8 [F,bh,bw,3]: its first `frames` frames, each placed like an image (PyAV)."""
    from vaelens.datasets.items import import_av

    av = import_av()
    out = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            out.append(_place_pil(frame.to_image(), placement))
            if len(out) == frames:
                break
    if len(out) < frames:
        raise VaeLensError(f"clip has {len(out)} frames; frames={frames} were asked for", param="frames", value=frames)
    return np.stack(out)
