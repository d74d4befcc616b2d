"""Issue 20 for datasets: safe outputs of `stats --plot` and `cache -o`, numbers checked at parse time, a
dead worker ends the run, and the confusing edges (16-bit grey, CMYK notes, a killed first run, a dataset
where nothing reads). Demo VAE, tiny generated images."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from test_datasets import make_images
from vaelens.datasets import CacheOptions, EncodeSettings, cache_dataset, make_bucketing
from vaelens.errors import VaeLensError
from vaelens.weights.demo import load_demo_vae

SETTINGS = EncodeSettings(threads=1)
FAST = ("--vae", "demo", "--size", "32x32", "--workers", "0", "--threads", "1", "-q")


@pytest.fixture(scope="module")
def vae():
    return load_demo_vae(device="cpu")


def test_issue20_2_stats_plot_never_replaces_an_input_or_an_existing_file(tmp_path, cli, monkeypatch):
    data = tmp_path / "data"
    make_images(data, 2)
    photo = data / "img000.png"
    before = photo.read_bytes()
    r = cli("stats", str(data), *FAST, "--plot", str(photo), "--force")
    assert r.code == 2 and "one of the inputs" in r.err and photo.read_bytes() == before
    existing = tmp_path / "hist.png"
    existing.write_bytes(b"mine")
    r = cli("stats", str(data), *FAST, "--plot", str(existing))
    assert r.code == 2 and "--force" in r.err and existing.read_bytes() == b"mine"
    assert cli("stats", str(data), *FAST, "--plot", str(existing), "--force").code == 0
    assert existing.read_bytes()[:4] == b"\x89PNG"


def test_issue20_5_plot_paths_fail_before_the_work(tmp_path, cli, monkeypatch):
    data = tmp_path / "data"
    make_images(data, 2)

    def no_work(*a, **kw):
        raise AssertionError("the dataset was encoded before the output was checked")

    monkeypatch.setattr("vaelens.datasets.stats.compute_stats", no_work)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad, words in (("/proc/x.png", "cannot be written"), (str(tmp_path / "x.txt"), "must end in"),
                       (str(blocker / "x.png"), "is a file")):
        r = cli("stats", str(data), *FAST, "--plot", bad)
        assert r.code == 2 and words in r.err and "Traceback" not in r.err, r.err


def test_issue20_3_cache_refuses_a_foreign_folder_and_an_output_inside_the_input(tmp_path, cli):
    data = tmp_path / "data"
    make_images(data, 2)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "cache.json").write_text('{"my": "settings"}')
    (foreign / "index.jsonl").write_text("mine\n")
    r = cli("cache", str(data), *FAST, "-o", str(foreign))
    assert r.code == 2 and "not a vaelens cache" in r.err and "--force" in r.err
    assert (foreign / "cache.json").read_text() == '{"my": "settings"}'
    r = cli("cache", str(data), *FAST, "-o", str(data / "cache"))
    assert r.code == 2 and "inside data" in r.err and not (data / "cache").exists()
    r = cli("cache", str(data), *FAST, "-o", str(data))
    assert r.code == 2 and "inside data" in r.err
    assert cli("cache", str(data), *FAST, "-o", str(foreign), "--force").code == 0


@pytest.mark.parametrize("flag,value,words", [
    ("--resolution", "100000", "16384"),
    ("--resolution", "0", "1..16384"),
    ("--workers", "-1", "0..256"),
    ("--threads", "0", "1..1024"),
    ("--shard-size", "0", "1 or more"),
    ("--batch-size", "0", "1..4096"),
    ("--max-aspect", "0.5", "at least 1"),
])
def test_issue20_4_numbers_are_checked_at_parse_time_in_flag_words(tmp_path, cli, monkeypatch, flag, value, words):
    def no_model(args):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr("vaelens.cli.cache.load_data_vae", no_model)
    data = tmp_path / "data"
    make_images(data, 1)
    r = cli("cache", str(data), "-o", str(tmp_path / "out"), flag, value)
    assert r.code == 2 and flag in r.err and words in r.err and not (tmp_path / "out").exists(), r.err


def test_frames_on_an_image_vae_is_refused_before_loading(tmp_path, cli, monkeypatch):
    def no_model(args):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr("vaelens.cli.cache.load_data_vae", no_model)
    data = tmp_path / "data"
    make_images(data, 1)
    r = cli("cache", str(data), "-o", str(tmp_path / "out"), "--frames", "5")
    assert r.code == 2 and "--frames 5" in r.err and "image VAE" in r.err


def _die(batch):
    os._exit(9)  # what the kernel's OOM killer leaves: a worker gone without a word


def test_issue20_4_a_dead_worker_ends_the_run_with_an_error_not_a_hang(tmp_path, vae, monkeypatch):
    data = tmp_path / "data"
    make_images(data, 4)
    monkeypatch.setattr("vaelens.datasets.local.decode_batch", _die)
    result: dict[str, BaseException] = {}

    def run():
        try:
            cache_dataset(data, vae, tmp_path / "out", options=CacheOptions(
                bucketing=make_bucketing(vae.spec, size=(32, 32)), workers=1), encode=SETTINGS)
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the run hung after its worker died"
    assert isinstance(result.get("error"), VaeLensError) and "worker process died" in str(result["error"])


def test_16bit_grey_is_not_quantised_and_cmyk_is_noted(tmp_path, vae):
    from PIL import Image

    from vaelens.datasets.items import scan_item
    from vaelens.datasets.pixels import decode_image

    data = tmp_path / "data"
    data.mkdir()
    ramp = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 3 + 1000).astype(np.uint16)  # steps of 3/65535
    Image.fromarray(ramp).save(data / "grey16.png")
    Image.new("CMYK", (32, 32), (10, 200, 30, 0)).save(data / "cmyk.jpg")
    b = make_bucketing(vae.spec)
    scan = scan_item(data / "grey16.png", data)
    pixels = decode_image(str(data / "grey16.png"), b.place(*scan.size))
    assert pixels.dtype == np.uint16 and len(np.unique(pixels[..., 0])) == 32 * 32  # 8 bits would merge them
    np.testing.assert_array_equal(pixels[..., 0], ramp)
    assert any("16 bits" in w for w in scan.warnings)
    assert any("CMYK" in w for w in scan_item(data / "cmyk.jpg", data).warnings)
    report = cache_dataset(data, vae, tmp_path / "out", options=CacheOptions(bucketing=b, workers=0),
                           encode=SETTINGS)
    assert report.encoded == 2 and {w["source"] for w in report.warnings} == {"grey16.png", "cmyk.jpg"}


def test_a_killed_first_run_is_resumable_and_an_unreadable_dataset_leaves_a_result(tmp_path, cli, vae):
    from vaelens.datasets.store import MARKER

    data = tmp_path / "data"
    make_images(data, 2)
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)  # what a run killed before its first shard leaves
    (out / MARKER).write_text("{}")
    (out / ".lock").write_text("")
    r = cli("cache", str(data), *FAST, "-o", str(out), "--json")
    assert r.code == 0 and r.json()["encoded"] == 2, r.err
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.png", "b.jpg"):
        (bad / name).write_bytes(b"not an image at all")
    r = cli("cache", str(bad), *FAST, "-o", str(tmp_path / "out2"), "--json")
    assert r.code == 1 and r.json()["encoded"] == 0 and len(r.json()["skipped"]) == 2
    summary = json.loads((tmp_path / "out2" / "cache.json").read_text())
    assert summary["complete"] and len(summary["report"]["skipped"]) == 2


def test_stats_prints_the_diffusers_config_and_says_when_the_histogram_cuts_tails(tmp_path, cli):
    from vaelens.datasets.moments import Moments
    from vaelens.render.datasets import tail_counts

    data = tmp_path / "data"
    make_images(data, 3)
    r = cli("stats", str(data), *FAST, "--json")
    doc = r.json()
    cfg = doc["implied_normalization"]["diffusers_config"]
    assert cfg["scaling_factor"] == pytest.approx(1 / doc["stats"]["overall"]["std"])
    text = cli("stats", str(data), *FAST).out
    assert f'"scaling_factor": {round(cfg["scaling_factor"], 6)}' in text
    m = Moments(2, hist_range=4.0, hist_bins=64)
    x = np.random.default_rng(0).normal(0, 3, (1, 2, 50, 50))
    m.add(x)
    cut = tail_counts(m.result())
    assert cut["below"] == int((x < -4).sum()) and cut["above"] == int((x >= 4).sum()) and cut["outside"] > 0


def test_issue20_11_cache_shards_and_json_honour_the_umask(tmp_path, cli):
    data, out = tmp_path / "data", tmp_path / "cache"
    make_images(data, 2)
    old = os.umask(0o022)
    try:
        assert cli("cache", str(data), *FAST, "-o", str(out)).code == 0
    finally:
        os.umask(old)
    written = [*out.glob("shards/*.safetensors"), out / "cache.json"]
    assert len(written) >= 2
    for path in written:  # safetensors' save_file makes its temp file 0600; the published file is 0644
        assert path.stat().st_mode & 0o777 == 0o644, path
