"""Regression tests of issue 20 for the predict half: --plot through the safe-output path and checked before
any work (items 2, 5), one basis for pipeline verdicts (9), errors at the library boundary (10)."""

from __future__ import annotations

import os

import pytest

from vaelens.errors import SizeError, VaeLensError
from vaelens.options import PixelRequest


@pytest.fixture
def no_work(monkeypatch):
    """Any estimate run fails the test: the refusals below must come before the work."""
    import vaelens.memory.estimate as estimate
    import vaelens.pipelines.estimate as pipeline_estimate

    def boom(*_a, **_k):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(estimate, "estimate_memory", boom)
    monkeypatch.setattr(pipeline_estimate, "estimate_pipeline", boom)


def _one_line(res, *needles):
    assert res.code == 2, (res.code, res.out, res.err)
    assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1, res.err
    for needle in needles:
        assert needle in res.err, res.err


@pytest.mark.parametrize("command", [("memory", "sdxl", "--size", "64x64"), ("pipeline", "sd15")])
def test_issue20_2_plot_never_overwrites_without_force(cli, tmp_path, command, no_work):
    photo = tmp_path / "img00.png"
    photo.write_bytes(b"a user's photograph")
    _one_line(cli(*command, "--plot", str(photo)), "already exists; pass --force", str(photo))
    assert photo.read_bytes() == b"a user's photograph"


def test_issue20_2_memory_plot_with_force_replaces_atomically(cli, tmp_path):
    out = tmp_path / "mem.png"
    out.write_bytes(b"old")
    res = cli("memory", "sdxl", "--size", "64x64", "--op", "decode", "--plot", str(out), "--force")
    assert res.code == 0, res.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mem.png"]  # no temporary file left beside it


@pytest.mark.parametrize("command", [("memory", "sdxl", "--size", "64x64"), ("pipeline", "sd15")])
@pytest.mark.parametrize("where", ["/proc/x.png", "{file}/x.png", "{tmp}/x.txt", "{tmp}"])
def test_issue20_5_plot_paths_checked_before_the_work(cli, tmp_path, command, where, no_work):
    if where.startswith("/proc") and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    (tmp_path / "file").write_text("a file, not a folder")
    _one_line(cli(*command, "--plot", where.format(file=tmp_path / "file", tmp=tmp_path)), "argument --plot")


@pytest.mark.parametrize(("call", "param"), [
    (lambda: __import__("vaelens").shapes("sdxl", (512, 512)), "request"),
    (lambda: __import__("vaelens").shapes(512), "model"),
    (lambda: PixelRequest(width="512", height=512), "width"),
    (lambda: PixelRequest(width=512.5, height=512), "width"),
    (lambda: PixelRequest(width=512, height=512, batch=2.5), "batch"),
    (lambda: PixelRequest(width=512, height=512, frames="9"), "frames"),
    (lambda: PixelRequest(width=512, height=None), "height"),
    (lambda: PixelRequest(width=512, height=512, dtype="fp8"), "dtype"),
])
def test_issue20_10_bad_input_is_a_vaelens_error_at_the_boundary(call, param):
    with pytest.raises(VaeLensError) as exc:
        call()
    assert exc.value.param == param


def test_issue20_10_whole_floats_are_counts():
    req = PixelRequest(width=512.0, height=256, batch=2.0)
    assert (req.width, req.batch) == (512, 2) and isinstance(req.width, int)
    with pytest.raises(SizeError, match="width True"):
        PixelRequest(width=True, height=8)


def test_issue20_9_pipeline_sequential_offload_on_the_high_end():
    """Sequential offload was priced from the best estimate while none/model used the high end, so a budget
    could 'fit' sequentially below the call's own high end. Every mode now stands on the high end: the
    sequential activation + loaded weights is at least the call's high-end peak (the whole-call layer has
    no weights of its own), and each layer's high end is at least its best estimate."""
    from vaelens.memory.estimate import estimate_memory
    from vaelens.pipelines.estimate import estimate_decode

    peak, _ = estimate_decode("sd15", PixelRequest(width=128, height=128), False)
    act, weights = peak.sequential
    assert act + weights >= peak.peak_bytes  # peak_bytes is the high end (pipelines/estimate.py)
    est = estimate_memory("sd15", PixelRequest(width=128, height=128), op="decode")
    assert peak.peak_bytes == est.peak_bytes_high > est.peak_bytes
    assert all(layer.peak_bytes_high >= layer.peak_bytes for layer in est.timeline)
    assert max(layer.peak_bytes_high for layer in est.timeline) == est.peak_bytes_high


def test_issue20_edges_report_memory_charts_share_one_unit_and_scale():
    import re

    from vaelens.render.report import render_report
    from vaelens.report import build_report

    html = render_report(build_report("sdxl", PixelRequest(width=256, height=256)))
    timelines = re.findall(r'<svg class="timeline".*?</svg>', html, re.S)
    assert len(timelines) == 2
    units = [re.search(r"GPU memory \((\w+)\)", svg).group(1) for svg in timelines]
    ticks = [re.findall(r'text-anchor="end" font-size="10">([\d.]+)</text>', svg) for svg in timelines]
    assert units[0] == units[1] and ticks[0] == ticks[1]  # encode and decode on one axis


def test_issue20_edges_pipeline_budget_line_under_the_labels():
    from vaelens.pipelines import estimate_pipeline
    from vaelens.render.svg import pipeline_svg

    est = estimate_pipeline("sd15", PixelRequest(width=256, height=256, dtype="bf16"))
    svg = pipeline_svg(est, budget_bytes=est.offload[0].peak_bytes // 2)
    budget_line = svg.index('stroke-dasharray="5 3"')
    first_label = svg.index("<text")
    assert budget_line < first_label  # drawn first: every label paints over it
    assert 'paint-order="stroke"' in svg


def test_issue20_12_budget_entries_take_bytes_or_a_size_and_refuse_the_absurd(no_work):
    from vaelens.errors import BudgetError
    from vaelens.memory.budget import check_vae_budget
    from vaelens.report import build_report

    req = PixelRequest(width=64, height=64)
    for call in (lambda b: check_vae_budget("sdxl", req, b), lambda b: build_report("sdxl", req, budget_bytes=b)):
        for bad in ("1e30GiB", 2**60, 0, "8G"):
            with pytest.raises(BudgetError):
                call(bad)
