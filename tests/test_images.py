"""Image reading: formats, alpha, grayscale, 16-bit, EXIF orientation; the family size rule; pixel range."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vaelens.errors import SizeError, VaeLensError
from vaelens.families import get_family
from vaelens.images import apply_family_size, from_pixels, read_for_family, read_image, save_image, to_pixels

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("fmt,suffix,tol", [("PNG", ".png", 0), ("WEBP", ".webp", 0), ("JPEG", ".jpg", 40)])
def test_formats_read_as_rgb_in_unit_range(tmp_path, fmt, suffix, tol):
    rgb = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    rgb[:] = rgb.mean(axis=(0, 1), keepdims=True).astype(np.uint8) if fmt == "JPEG" else rgb  # JPEG: flat colour
    path = tmp_path / f"img{suffix}"
    Image.fromarray(rgb).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    arr, info = read_image(path)
    assert arr.shape == (24, 40, 3) and arr.dtype == np.float32
    assert info.size == (24, 40) and info.format == fmt  # (height, width)
    assert np.abs(arr * 255 - rgb).max() <= tol + 1e-3


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200  # red 200
    rgba[..., 3] = 51  # alpha 0.2
    rgba[:4, :, 3] = 0  # top half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr, info = read_image(tmp_path / "a.png")
    assert info.alpha == "composited onto white"
    np.testing.assert_allclose(arr[:4], 1.0)  # transparent reads as white paper
    expected = np.array([200 / 255 * 0.2 + 0.8, 0.8, 0.8])
    np.testing.assert_allclose(arr[6, 6], expected, atol=1e-6)


def test_grayscale_8_and_16_bit(tmp_path):
    g8 = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(g8, "L").save(tmp_path / "g8.png")
    arr, info = read_image(tmp_path / "g8.png")
    np.testing.assert_allclose(arr[..., 1], g8 / 255, atol=1e-6)
    assert np.all(arr[..., 0] == arr[..., 2])
    g16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    arr, info = read_image(tmp_path / "g16.png")
    assert info.bits == 16
    # 16-bit precision is kept: 7/65535 is not a multiple of 1/255
    np.testing.assert_allclose(arr[..., 0], g16 / 65535, atol=1e-7)


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, :5] = 255  # left stripe white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(img).save(tmp_path / "o.jpg", exif=exif, quality=95)
    arr, info = read_image(tmp_path / "o.jpg")
    assert info.exif_transposed and arr.shape[:2] == (20, 10)
    assert arr[:5].mean() > 0.9 and arr[6:].mean() < 0.1  # the left stripe is now on top


def test_family_size_rule_crops_centre_and_says_so():
    arr = RNG.random((100, 70, 3), dtype=np.float32)
    out, warning, _ = apply_family_size(arr, get_family("sdxl"))
    assert out.shape == (96, 64, 3)
    np.testing.assert_array_equal(out, arr[2:98, 3:67])
    assert "70x100 centre-cropped to 64x96" in warning and "refuse" in warning
    flux_out, flux_warning, _ = apply_family_size(arr, get_family("flux1"))
    assert flux_out.shape[:2] == (96, 64) and "floors" in flux_warning
    ok, none, _ = apply_family_size(arr[:96, :64], get_family("sdxl"))
    assert none is None and ok.shape == (96, 64, 3)
    with pytest.raises(SizeError):
        apply_family_size(arr[:5], get_family("sdxl"))


def test_batch_of_different_sizes_is_refused(tmp_path):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((24, 16, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(SizeError, match="differ in size"):
        read_for_family([tmp_path / "a.png", tmp_path / "b.png"], get_family("sdxl"))
    arrays, infos = read_for_family([tmp_path / "a.png", tmp_path / "b.png"], get_family("sdxl"), size=(32, 32))
    assert [a.shape for a in arrays] == [(32, 32, 3)] * 2


def test_pixel_range_and_roundtrip_through_png(tmp_path):
    arr = RNG.random((8, 8, 3), dtype=np.float32)
    px = to_pixels([arr])
    assert tuple(px.shape) == (1, 3, 8, 8) and float(px.min()) >= -1 and float(px.max()) <= 1
    back = from_pixels(px)[0]
    np.testing.assert_allclose(back, arr, atol=1e-6)
    path = save_image(back, tmp_path / "x")
    assert path.suffix == ".png"
    again, _ = read_image(path)
    assert np.abs(again - arr).max() <= 0.5 / 255 + 1e-6


def test_unreadable_image(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(VaeLensError, match="could not be read"):
        read_image(tmp_path / "x.png")
    with pytest.raises(VaeLensError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_16_bit_colour_png_is_flagged(tmp_path):
    import struct
    import zlib

    a = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000 + 7).astype(np.uint16)
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(4))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "rgb16.png").write_bytes(png)
    arr, info = read_image(tmp_path / "rgb16.png")
    assert any("16-bit colour PNG read at 8 bits" in n for n in info.warnings)
    np.testing.assert_allclose(arr * 255, (a >> 8).astype(np.float32), atol=1e-3)  # Pillow keeps the high byte


@pytest.mark.parametrize("name", ["out.xyz", "out.h5"])
def test_saving_to_a_format_pillow_cannot_write_is_one_error(tmp_path, name):
    with pytest.raises(VaeLensError, match=r"could not be written .*write \.png, \.jpg"):
        save_image(np.zeros((4, 4, 3), np.float32), tmp_path / name)
