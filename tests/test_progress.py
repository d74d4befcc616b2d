"""Progress on stderr: drawn with rate and ETA on a terminal, never with --quiet, --json or a pipe."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import tiny_kl
from vaelens.cli import main
from vaelens.progress import progress_bar, wanted


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_wanted_only_on_a_terminal_and_not_quiet():
    assert wanted(stream=FakeTTY()) and not wanted(stream=io.StringIO())
    assert not wanted(quiet=True, stream=FakeTTY())


def test_the_bar_shows_stage_count_rate_and_eta(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    with progress_bar("encode with demo", total=3, unit="image") as bar:
        for i in range(3):
            bar.stage(f"image {i + 1}")
            bar.advance(1)
    text = tty.getvalue()
    assert "encode with demo" in text and "3/3" in text and "ETA" in text and "image/s" in text


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("progress")
    torch.manual_seed(0)
    AutoencoderKL.from_config(tiny_kl(force_upcast=False)).eval().save_pretrained(root / "vae")
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{name}.png")
    return root


@pytest.mark.parametrize(("extra", "tty", "drawn"), [((), True, True), (("--quiet",), True, False),
                                                     (("--json",), True, False), ((), False, False)])
def test_encode_progress_is_on_only_for_a_terminal(files, tmp_path, monkeypatch, capsys, extra, tty, drawn):
    err = FakeTTY() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    code = main(["encode", str(files / "*.png"), "--vae", str(files / "vae"), "--batch-size", "1",
                 "-o", str(tmp_path / "z.safetensors"), *extra])
    capsys.readouterr()
    assert code == 0
    assert ("encode with" in err.getvalue()) is drawn, err.getvalue()


def test_pipeline_names_each_traced_call(monkeypatch):
    import argparse

    import vaelens.pipelines.estimate as estimate
    from vaelens.cli.pipeline import _progress

    monkeypatch.setattr(estimate, "trace_peak", lambda module, plan, dtype: "peak")
    monkeypatch.setattr(estimate, "estimate_decode", lambda *a, **k: ("decode", None))
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    with _progress(argparse.Namespace(quiet=False, json=False), "sd15") as hooks:
        assert hooks["peak_fn"](torch.nn.Linear(1, 1), None, None) == "peak"
        assert hooks["decode_fn"]("sd15", None, False) == ("decode", None)
    assert "pipeline sd15" in tty.getvalue(), tty.getvalue()
    assert "tracing" in tty.getvalue(), tty.getvalue()


@pytest.mark.parametrize("extra", [[], ["--json"], ["--quiet"]])
def test_memory_budget_names_its_stages_on_a_terminal_only(monkeypatch, capsys, extra):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main(["memory", "taesd", "--size", "64x64", "--op", "decode", "--budget", "80GiB", *extra]) == 0
    drawn = not extra
    assert ("memory taesd" in tty.getvalue()) is drawn, tty.getvalue()
    assert capsys.readouterr().out  # the report itself still goes to stdout
