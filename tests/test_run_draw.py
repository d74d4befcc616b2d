"""The run engine returns data and the render level draws (issue 18 item 6): roundtrip_files and
inspect_files write no figure; draw_roundtrip / draw_inspection write exactly the files the items name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vaelens.render.codec import draw_roundtrip
from vaelens.render.latents import draw_inspection
from vaelens.run import inspect_files, roundtrip_files


def test_roundtrip_files_returns_data_and_draw_roundtrip_writes_its_files(tmp_path):
    run = roundtrip_files("demo", tmp_path / "rt", vae="demo")
    item = run.items[0]
    assert set(item.files) == {"reconstruction", "error_map", "comparison"}
    assert not any(Path(p).exists() for p in item.files.values())  # nothing drawn by the engine
    h, w = item.pixel_shape[-2:]
    assert item.image.shape == (h, w, 3) and 0 <= item.image.min() <= item.image.max() <= 1
    assert draw_roundtrip(run) is run
    recon = np.asarray(Image.open(item.files["reconstruction"]))
    assert recon.shape[:2] == (h, w)
    assert all(Path(p).stat().st_size > 0 for p in item.files.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt_compare.png", "rt_error.png", "rt_recon.png"]


def test_inspect_files_returns_data_and_draw_inspection_writes_its_files(tmp_path):
    run = inspect_files("demo", tmp_path / "in", vae="demo")
    item = run.items[0]
    assert item.grid is None and not any(Path(p).exists() for p in item.files.values())
    drawn = draw_inspection(run)
    done = drawn.items[0]
    assert done.files == item.files and set(done.files) == {"channels", "rgb_approximation"}
    assert done.grid.path == done.files["channels"] and done.grid.panels == item.inspection.raw.shape[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in_channels.png", "in_rgb_approx.png"]
