"""`vaelens report` and the memory timeline: the drawings are to scale, the timeline agrees with the memory
model, the page is self-contained, and the CLI keeps its rules (one-line errors, no silent overwrite)."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import pytest

from vaelens.contract import plan_shapes
from vaelens.families import get_family
from vaelens.memory.estimate import estimate_memory
from vaelens.options import PixelRequest
from vaelens.render.report import render_report, report_json
from vaelens.render.svg import contract_states, contract_svg
from vaelens.render.tables import human_bytes, shape_str
from vaelens.render.timeline import memory_timeline, timeline_svg
from vaelens.report import build_report

# family, request: image VAEs with and without moments/tokens, a video VAE, FLUX.2's patched normalisation
CONTRACT_CASES = [
    ("sdxl", PixelRequest(width=1024, height=768)),
    ("flux1", PixelRequest(width=512, height=512)),
    ("sana", PixelRequest(width=1024, height=1024)),
    ("flux2", PixelRequest(width=512, height=256)),
    ("wan21", PixelRequest(width=832, height=480, frames=33)),
    ("ltx-video", PixelRequest(width=512, height=512, frames=25)),
]

_RECT = re.compile(r'<rect x="[^"]+" y="[^"]+" width="([^"]+)" height="([^"]+)"')


def _state_rects(svg: str) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for m in re.finditer(r'<g class="state" data-state="(\w+)">(.*?)</g>', svg, re.S):
        out[m.group(1)] = [(float(w), float(h)) for w, h in _RECT.findall(m.group(2))]
    return out


@pytest.mark.parametrize(("family", "request_"), CONTRACT_CASES)
def test_contract_areas_are_proportional_to_elements(family, request_):
    spec = get_family(family)
    plan = plan_shapes(spec, request_)
    states = contract_states(spec, plan)
    rects = _state_rects(contract_svg(states))
    assert list(rects) == [s.key for s in states]
    density = []
    for s in states:
        assert len(rects[s.key]) == s.frames  # one tile per frame
        density.append(sum(w * h for w, h in rects[s.key]) / s.elements)
    # the coordinates are written with 2 decimals; the smallest tiles carry the rounding
    assert max(density) / min(density) == pytest.approx(1.0, abs=0.03)
    assert [s.elements for s in states][0] == math.prod(plan.pixel_shape)
    assert states[-1].shape == plan.decoded_shape


def test_video_contract_shows_frames_and_time_compression():
    spec = get_family("wan21")
    plan = plan_shapes(spec, PixelRequest(width=832, height=480, frames=33))
    by_key = {s.key: s for s in contract_states(spec, plan)}
    assert by_key["pixels"].frames == 33
    assert by_key["latent"].frames == plan.latent_shape[2] == 9
    assert by_key["moments"].channels == 2 * spec.latent_channels
    assert by_key["tokens"].shape == (1, plan.token_count, plan.token_dim)


def test_image_contract_has_no_moments_without_a_gaussian_encoder():
    spec = get_family("sana")  # AutoencoderDC: the encoder returns the latent itself
    keys = [s.key for s in contract_states(spec, plan_shapes(spec, PixelRequest(width=512, height=512)))]
    assert keys == ["pixels", "latent", "normalised", "tokens", "decoded"]


@pytest.fixture(scope="module")
def sdxl_decode():
    return estimate_memory("sdxl", PixelRequest(width=256, height=256), op="decode")


def test_timeline_steps_are_the_innermost_layers_and_peak_matches(sdxl_decode):
    est = sdxl_decode
    tl = memory_timeline(est, budget_bytes=2**30)
    paths = [r.path for r in est.timeline]
    for s in tl.steps:  # innermost: no other record is nested under a step
        assert not any(p.startswith(s.path + ".") for p in paths)
    assert max(s.peak_bytes for s in tl.steps) <= est.peak_bytes
    peak = tl.steps[tl.peak_index]
    assert peak.path == est.peak_at and peak.peak_bytes == est.peak_bytes
    assert tl.total_bytes == est.total_bytes
    for s in tl.steps:
        assert s.live_bytes <= s.peak_bytes
    svg = timeline_svg(tl)
    assert f"peak {human_bytes(est.peak_bytes)} at {est.peak_at}" in svg
    assert "budget 1.00 GiB" in svg


def test_timeline_bins_keep_the_peak(sdxl_decode):
    full = memory_timeline(sdxl_decode)
    binned = memory_timeline(sdxl_decode, max_steps=10)
    assert len(binned.steps) <= 10 < len(full.steps)
    assert sum(s.layers for s in binned.steps) == len(full.steps) == binned.layers
    assert max(s.peak_bytes for s in binned.steps) == max(s.peak_bytes for s in full.steps)
    assert binned.steps[binned.peak_index].peak_bytes == sdxl_decode.peak_bytes


def test_timeline_draws_the_range_and_the_device_minimum(sdxl_decode):
    """A memory model that gives a range and a device minimum: both are drawn and named in the legend."""
    import dataclasses
    from types import SimpleNamespace

    est = sdxl_decode
    fields = {f.name: getattr(est, f.name) for f in dataclasses.fields(est)}
    low, high = est.peak_bytes - 2**20, est.peak_bytes + 64 * 2**20
    need = est.total_bytes + 300 * 2**20
    ranged = SimpleNamespace(**{**fields, "peak_bytes_low": low, "peak_bytes_high": high, "min_device_bytes": need})
    tl = memory_timeline(ranged)
    assert (tl.peak_low, tl.peak_high, tl.min_device_bytes) == (low, high, need)
    svg = timeline_svg(tl)
    assert f"predicted range of the peak {human_bytes(low)} – {human_bytes(high)}" in svg
    assert f"needs at least {human_bytes(need)} on the device" in svg
    plain = timeline_svg(memory_timeline(SimpleNamespace(**{**fields, "peak_bytes_low": est.peak_bytes,
                                                             "peak_bytes_high": est.peak_bytes,
                                                             "min_device_bytes": 0})))
    assert "predicted range" not in plain and "needs at least" not in plain


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _assert_self_contained(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    assert not any(t == "script" for t, _ in parser.tags)
    for tag, attrs in parser.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:", "#")), (tag, key, value[:60])
    # The only URL is the SVG namespace, which is a name, not a request.
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}
    return parser


@pytest.fixture(scope="module")
def demo_report():
    return build_report("sdxl", PixelRequest(width=256, height=256), vae="demo", budget_bytes=2**28,
                        pipeline="sd15")


def test_report_without_weights_is_self_contained():
    rep = build_report("sdxl", PixelRequest(width=256, height=256))
    html = render_report(rep)
    parser = _assert_self_contained(html)
    assert not [t for t, _ in parser.tags if t == "img"]
    assert html.count('class="timeline"') == 2
    assert shape_str(rep.plan.latent_shape) in html
    assert human_bytes(rep.estimate("decode").peak_bytes) in html
    for name in ("vaelens", "diffusers", "torch"):
        assert f"{name} {rep.versions[name]}" in html
    assert 'id="real-weights"' not in html and 'id="pipeline"' not in html


def test_report_with_demo_weights_pipeline_and_budget(demo_report):
    from vaelens.images import read_for_family, to_pixels
    from vaelens.run import roundtrip
    from vaelens.weights.demo import demo_image_path, load_demo_vae

    rep = demo_report
    html = render_report(rep)
    parser = _assert_self_contained(html)
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 5  # original, round trip, error map, channels, RGB approximation
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    # the same numbers as vaelens.run.roundtrip gives for the same image
    vae = load_demo_vae()
    arrays, _ = read_for_family([demo_image_path()], vae.spec)
    rt = roundtrip(vae, to_pixels(arrays))
    assert rep.real.psnr == pytest.approx(rt.psnr[0], abs=1e-6)
    assert f"{rt.psnr[0]:.2f} dB" in html
    assert "APPROXIMATION" in html.upper() and "Approximation." in html
    assert rep.real.channel_limit > 0 and f"±{rep.real.channel_limit:.3g}" in html
    # budget below the weights: nothing fits, said as such
    assert not any(o.fits for o in rep.budget.ops)
    assert 'id="budget-verdict">does not fit' in html
    # the pipeline section shows each offload mode's peak
    for r in rep.pipeline.offload:
        assert f"offload={r.mode.value}: peak {human_bytes(r.peak_bytes)}" in html
    assert "pipeline sd15 decodes with the sd15 VAE, not sdxl" in html


def test_report_budget_that_needs_tiles_shows_the_plan_and_its_grid():
    rep = build_report("sdxl", PixelRequest(width=256, height=256), budget_bytes=400 * 2**20)
    html = render_report(rep)
    assert not any(o.fits for o in rep.budget.ops)
    plans = rep.tiling
    assert set(plans) == {"encode", "decode"} and all(p.tiled and p.method == "exact" for p in plans.values())
    assert 'id="budget-verdict">fits with exact tiles' in html
    grids = re.findall(r'<svg class="tiles".*?</svg>', html, re.S)
    assert [g.count("<rect") for g in grids] == [plans["encode"].tiles, plans["decode"].tiles]
    for p in plans.values():
        assert p.predicted_peak_bytes <= rep.budget.budget_bytes
        assert human_bytes(p.predicted_peak_bytes) in html
    assert report_json(rep)["tiling"]["decode"]["tiles"] == plans["decode"].tiles


def test_report_json_has_the_key_numbers(demo_report):
    data = report_json(demo_report)
    assert data["decode"]["peak_bytes"] == demo_report.estimate("decode").peak_bytes
    assert data["real_weights"]["psnr_db"] == pytest.approx(demo_report.real.psnr, abs=1e-4)
    assert set(data["pipeline"]) == {"name", "none", "model", "sequential"}


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_report_writes_and_does_not_overwrite(cli, tmp_path):
    out = tmp_path / "r.html"
    res = cli("report", "sdxl", "--size", "256x256", "-o", str(out))
    assert res.code == 0, res.err
    assert out.is_file() and f"wrote {out}" in res.out
    first = out.read_text()
    assert "<svg" in first
    again = cli("report", "sdxl", "--size", "256x256", "-o", str(out))
    assert again.code == 2
    assert again.err.count("\n") == 1 and "--force" in again.err and "exists" in again.err
    assert out.read_text() == first
    forced = cli("report", "sdxl", "--size", "256x256", "-o", str(out), "--force", "--json")
    assert forced.code == 0
    assert forced.json()["output"] == str(out)


def test_cli_report_video_family_draws_frames(cli, tmp_path):
    out = tmp_path / "v.html"
    res = cli("report", "wan21", "--size", "64x64", "--frames", "9", "-o", str(out))
    assert res.code == 0, res.err
    rects = _state_rects(out.read_text())
    assert len(rects["pixels"]) == 9 and len(rects["latent"]) == 3


BAD_INPUTS = [
    (("sdxl", "--size", "100x100"), "not a multiple of 8"),
    (("sdxl", "--size", "256x256", "--image", "x.png"), "--image needs --vae"),
    (("sdxl", "--size", "256x256", "--pipeline", "nope"), "unknown pipeline"),
    (("sdxl", "--size", "256x256", "--vae", "demo", "--image", "missing.png"), "does not exist"),
    (("sdxl", "--size", "256x256", "--budget", "lots"), "budget"),
    (("nofamily",), "nofamily"),
    (("sdxl", "--frames", "9"), "image VAE"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD_INPUTS)
def test_cli_report_bad_input_is_one_line(cli, tmp_path, argv, needle):
    out = tmp_path / "bad.html"
    res = cli("report", *argv, "-o", str(out))
    assert res.code == 2
    assert res.err.startswith("vaelens report: error:") and res.err.count("\n") == 1, res.err
    assert needle in res.err
    assert not out.exists()


def test_cli_report_output_folder_or_other_suffix_is_refused(cli, tmp_path):
    (tmp_path / "dir.html").mkdir()
    res = cli("report", "sdxl", "--size", "256x256", "-o", str(tmp_path / "dir.html"))
    assert res.code == 2 and "is a folder" in res.err
    res = cli("report", "sdxl", "--size", "256x256", "-o", str(tmp_path / "r.txt"))
    assert res.code == 2 and ".html" in res.err and not (tmp_path / "r.txt").exists()


def test_cli_memory_plot(cli, tmp_path):
    from PIL import Image

    out = tmp_path / "mem.png"
    res = cli("memory", "sdxl", "--size", "256x256", "--budget", "1GiB", "--plot", str(out))
    assert res.code == 0, res.err
    assert f"wrote {out}" in res.out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 300
        assert len(set(im.convert("RGB").getdata())) > 50  # a drawing, not a blank canvas
    bad = cli("memory", "sdxl", "--size", "256x256", "--plot", str(tmp_path / "m.xyz"))
    assert bad.code == 2 and "cannot write .xyz" in bad.err


def test_cli_report_with_demo_weights_and_demo_image(cli, tmp_path):
    out = tmp_path / "demo.html"
    res = cli("report", "sdxl", "--size", "256x256", "--vae", "demo", "--image", "demo", "-o", str(out), "--json")
    assert res.code == 0, res.err
    data = res.json()
    assert data["real_weights"]["family"] == "demo" and data["real_weights"]["psnr_db"] > 15
    assert data["real_weights"]["image"].endswith("demo_coffee.png")
    assert f'{data["real_weights"]["psnr_db"]:.2f} dB' in out.read_text()
