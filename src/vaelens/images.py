"""Image files <-> pixels: reading (PNG, JPEG, WebP; RGBA, grayscale, 16-bit, EXIF orientation),
the family's size rule, and writing.

file -> array [H,W,3] float32 in [0,1] -> pixels [B,3,H,W] float32 in [-1,1] (the range diffusers'
VaeImageProcessor feeds a VAE: 2·x − 1) -> ... -> pixels -> PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaelens.errors import SizeError, VaeLensError
from vaelens.families import FamilySpec, SizeRuleKind


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageInfo:
    """What reading did to a file: its mode and bit depth, alpha, orientation, and the size rule."""

    path: str
    format: str
    mode: str
    bits: int
    size: tuple[int, int]  # (height, width) as stored, after EXIF orientation
    used_size: tuple[int, int]  # (height, width) after the family's size rule
    alpha: str | None = None  # what happened to an alpha channel
    exif_transposed: bool = False
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "mode": self.mode,
            "bits": self.bits,
            "size": list(self.size),
            "used_size": list(self.used_size),
            "alpha": self.alpha,
            "exif_transposed": self.exif_transposed,
            "warnings": list(self.warnings),
        }


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """image file -> (array [H,W,3] float32 in [0,1], ImageInfo).

    Alpha is composited onto white (a transparent pixel reads as paper, not as black); grayscale is
    repeated into three channels; 16-bit grayscale keeps its 16 bits (÷ 65535); EXIF orientation is
    applied (PIL.ImageOps.exif_transpose) so the pixels are what a viewer shows.
    """
    from PIL import ImageOps

    p = Path(path)
    img = open_image(p)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise VaeLensError(
            f"image {str(path)!r} could not be read ({exc}); vaelens reads PNG, JPEG, WebP (and BMP, TIFF)",
            param="image",
        ) from None
    fmt, mode = img.format or p.suffix.lstrip(".").upper(), img.mode
    notes: list[str] = list(_mode_notes(img))
    orientation = int(img.getexif().get(0x0112, 1) or 1)  # EXIF tag 274: Orientation
    exif_done = orientation != 1
    if exif_done:
        img = ImageOps.exif_transpose(img)
        notes.append(f"EXIF orientation {orientation} applied")
    rgb, bits, alpha = _to_rgb(img, mode, notes)
    if _png_bit_depth(p) == 16 and mode not in ("I;16", "I;16B", "I;16L", "I"):
        notes.append("16-bit colour PNG read at 8 bits per channel (Pillow decodes 48/64-bit PNG to 8-bit RGB)")
    h, w = rgb.shape[:2]
    info = ImageInfo(
        path=str(p),
        format=fmt,
        mode=mode,
        bits=bits,
        size=(h, w),
        used_size=(h, w),
        alpha=alpha,
        exif_transposed=exif_done,
        warnings=tuple(notes),
    )
    return rgb.astype(np.float32), info


def _to_rgb(img, mode: str, notes: list[str]) -> tuple[np.ndarray, int, str | None]:
    """A loaded PIL image (its mode before any EXIF transpose) -> (RGB float64 [H,W,3] in [0,1], bits,
    what became of alpha); appends what it did to `notes`."""
    alpha = None
    bits = 8
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        bits = 16 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 8
        arr = np.clip(arr / (65535.0 if bits == 16 else 255.0), 0.0, 1.0)
        rgb = np.repeat(arr[..., None], 3, axis=-1)
        notes.append(f"{bits}-bit grayscale repeated into 3 channels")
    elif mode == "F":
        # A float image holds intensities on the 0-1 scale (as TIFF writers of float data mean it); a
        # min-max stretch would turn a flat 0.5 grey into black, so values are kept and only clipped.
        arr = np.asarray(img, dtype=np.float64)
        outside = int(((arr < 0.0) | (arr > 1.0) | ~np.isfinite(arr)).sum())
        rgb = np.repeat(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)[..., None], 3, axis=-1)
        bits = 32
        notes.append("32-bit float grayscale read as 0-1 intensities, repeated into 3 channels"
                     + (f"; {outside} values outside [0, 1] clipped" if outside else ""))
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info) or "A" in mode:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
        a = rgba[..., 3:4]
        rgb = rgba[..., :3] * a + (1.0 - a)
        alpha = "composited onto white" if float(a.min()) < 1.0 else "opaque alpha channel dropped"
        notes.append("alpha composited onto white" if alpha.startswith("composited") else alpha)
    else:
        if mode in ("L", "1"):
            notes.append("grayscale repeated into 3 channels")
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    return rgb, bits, alpha


def open_image(path: str | Path):
    """image file -> PIL image, opened but not decoded, after vaelens' one size limit.

    The limit is options.MAX_SIDE pixels per side (the same as size=): Pillow's own decompression-bomb
    guard (a pixel count) is replaced by it, so a 14000x14000 photograph is read and a 20000x8 strip
    is refused, both before any pixel is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    from vaelens.options import MAX_SIDE

    p = Path(path)
    if p.is_dir():
        raise VaeLensError(f"image {str(path)!r} is a folder; give image files (or the folder to encode its images)",
            param="image")
    if not p.is_file():
        raise VaeLensError(f"image {str(path)!r} does not exist", param="image")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
        img = Image.open(p)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise VaeLensError(
            f"image {str(path)!r} could not be read ({exc}); vaelens reads PNG, JPEG, WebP (and BMP, TIFF)",
            param="image",
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    w, h = img.size
    if max(w, h) > MAX_SIDE:
        raise SizeError(
            f"image {str(path)!r} is {w}x{h}; vaelens' limit is {MAX_SIDE} pixels per side (as for size=)",
            param="image",
        )
    return img


def _mode_notes(img) -> list[str]:
    """What reading will not keep: the frames after the first, CMYK's ink model."""
    notes = []
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        notes.append(f"{img.format or 'image'} file has {frames} frames; frame 0 used")
    if img.mode == "CMYK":
        icc = " (its ICC profile is not applied)" if img.info.get("icc_profile") else ""
        notes.append(f"CMYK converted to RGB with Pillow's simple formula{icc}; colours may shift")
    return notes


def _png_bit_depth(path: Path) -> int | None:
    """PNG file -> bit depth per sample from its IHDR chunk (byte 24), else None."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def apply_family_size(arr: np.ndarray, spec: FamilySpec, info: ImageInfo | None = None):
    """array [H,W,3] -> (array [H',W',3] centre-cropped to the family's multiple, warning or None).

    A FLOOR family's pipeline floors the size (diffusers VaeImageProcessor / FLUX, Wan); a RAISE
    family's pipeline would refuse it (SD, SDXL check_inputs). For an image file vaelens crops to
    the multiple in both cases, and says so, rather than refusing a photograph.
    """
    m = spec.size_rule.multiple
    h, w = arr.shape[:2]
    nh, nw = h // m * m, w // m * m
    if nh == 0 or nw == 0:
        raise SizeError(f"image {w}x{h} is smaller than {spec.name}'s multiple of {m} pixels per side", param="image")
    warning = None
    if (nh, nw) != (h, w):
        top, left = (h - nh) // 2, (w - nw) // 2
        arr = arr[top : top + nh, left : left + nw]
        rule = (
            "its pipeline floors the same way"
            if spec.size_rule.kind is SizeRuleKind.FLOOR
            else "its pipeline would refuse the size"
        )
        warning = f"{w}x{h} centre-cropped to {nw}x{nh}: {spec.name} needs multiples of {m} ({rule})"
    if info is not None:
        from dataclasses import replace

        info = replace(info, used_size=(nh, nw), warnings=info.warnings + ((warning,) if warning else ()))
    return arr, warning, info


def resize_image(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """array [H,W,3] in [0,1] -> [height,width,3] resampled with Lanczos (PIL, per channel at float precision)."""
    from PIL import Image

    chans = [
        np.asarray(
            Image.fromarray(arr[..., c].astype(np.float32), mode="F").resize((width, height), Image.Resampling.LANCZOS)
        )
        for c in range(arr.shape[2])
    ]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def to_pixels(arrays: list[np.ndarray] | np.ndarray):
    """arrays [H,W,3] in [0,1] (equal sizes) -> pixels tensor [B,3,H,W] float32 in [-1,1]."""
    import torch

    batch = np.stack(list(arrays) if isinstance(arrays, list) else [arrays])
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() * 2.0 - 1.0


def from_pixels(pixels) -> np.ndarray:
    """pixels tensor [B,3,H,W] or [3,H,W] in [-1,1] -> array [B,H,W,3] float32 in [0,1] (clamped)."""
    t = pixels.detach().float().cpu()
    if t.ndim == 3:
        t = t[None]
    if t.ndim == 5:  # [B,3,F,H,W]: frames into the batch
        t = t.permute(0, 2, 1, 3, 4).reshape(-1, t.shape[1], t.shape[3], t.shape[4])
    return ((t.clamp(-1.0, 1.0) + 1.0) / 2.0).permute(0, 2, 3, 1).numpy()


def save_image(arr: np.ndarray, path: str | Path) -> Path:
    """array [H,W,3] in [0,1] -> 8-bit RGB image file (format from the suffix; PNG when none), written
    atomically; NaN is written as 0."""
    from PIL import Image

    p = Path(path)
    if not p.suffix:
        p = p.with_suffix(".png")
    from vaelens.outputs import atomic_write

    pixels = (np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).round().astype(np.uint8)  # NaN: black
    try:
        with atomic_write(p) as tmp:  # a crash leaves the old file or none (vaelens.outputs)
            Image.fromarray(pixels).save(tmp)
    except (ValueError, KeyError, OSError) as exc:  # unknown suffix, a format Pillow cannot write, a folder
        raise VaeLensError(
            f"image {str(p)!r} could not be written ({exc}); write .png, .jpg, .webp, .bmp or .tif",
            param="output",
        ) from None
    return p


def read_for_family(paths: list[str | Path], spec: FamilySpec, *, size: tuple[int, int] | None = None):
    """image files -> (list of arrays [H,W,3] in [0,1], equal sizes, the family's multiple; list of ImageInfo).

    With size=(height, width) every image is first resized (Lanczos) to it; otherwise each is centre-cropped
    to the family's multiple, and images that then differ in size are refused (one tensor per batch).
    """
    arrays, infos = [], []
    for path in paths:
        arr, info = read_image(path)
        if size is not None:
            arr = resize_image(arr, size[0], size[1])
            from dataclasses import replace

            info = replace(info, warnings=info.warnings + (f"resized to {size[1]}x{size[0]} (Lanczos)",))
        arr, _, info = apply_family_size(arr, spec, info)
        arrays.append(arr)
        infos.append(info)
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        listing = ", ".join(f"{Path(i.path).name} {i.used_size[1]}x{i.used_size[0]}" for i in infos)
        raise SizeError(
            f"images differ in size after {spec.name}'s size rule ({listing}); "
            "pass size= to resize them all, or encode them separately",
            param="size",
        )
    return arrays, infos
