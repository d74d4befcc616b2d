"""Whole datasets: streaming statistics, the latent cache (resume after SIGKILL, edits, corrupt files,
NaN retry), the reader, and the two commands. Demo VAE, tiny generated images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelens.datasets import (
    CacheOptions,
    EncodeSettings,
    Moments,
    cache_dataset,
    compute_stats,
    make_bucketing,
    open_cache,
)
from vaelens.weights.demo import load_demo_vae

SIZES = [(40, 32), (32, 40), (32, 32), (48, 32)]  # (width, height)


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
        arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        p = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def vae():
    return load_demo_vae(device="cpu")


@pytest.fixture(scope="module")
def bucketing(vae):
    return make_bucketing(vae.spec, resolution=32, step=8)


def options(bucketing, **kw):
    return CacheOptions(bucketing=bucketing, **{"batch_size": 3, "workers": 0, "shard_size": 4, **kw})


SETTINGS = EncodeSettings(threads=1)


def all_latents(out) -> dict[str, torch.Tensor]:
    ds = open_cache(out, normalized=False)
    return {ds[i]["source"]: ds[i]["latent"] for i in range(len(ds))}


# ------------------------------------------------------------------------------------------ moments


def test_moments_merge_equals_one_pass_numpy():
    rng = np.random.default_rng(1)
    parts = [rng.normal(rng.normal(0, 3, (1, 5, 1, 1)), 2.0, (b, 5, 6, 7)) for b in (1, 4, 2, 3)]
    parts[1][:, 2] += 0.5 * parts[1][:, 0]  # a correlated channel pair
    a = Moments(5)
    for p in parts[:2]:
        a.add(p)
    b = Moments(5)
    for p in parts[2:]:
        b.add(p)
    merged = Moments.from_arrays(a.to_arrays()).merge(b).result()
    x = np.moveaxis(np.concatenate(parts), 1, -1).reshape(-1, 5)
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.std, x.std(0), rtol=1e-12)
    np.testing.assert_allclose(merged.min, x.min(0))
    np.testing.assert_allclose(merged.max, x.max(0))
    np.testing.assert_allclose(merged.correlation, np.corrcoef(x, rowvar=False), rtol=1e-10, atol=1e-12)
    assert merged.overall_std == pytest.approx(x.std(), rel=1e-12)
    assert merged.overall_mean == pytest.approx(x.mean(), rel=1e-12)
    for k, p in enumerate(merged.percentiles):
        exact = np.percentile(x, p, axis=0)
        assert np.all(np.abs(np.asarray([r[k] for r in merged.channel_percentiles]) - exact) <= merged.bin_width)
    assert merged.samples == 10 and merged.nonfinite == 0


def test_moments_skip_nonfinite_positions():
    x = np.zeros((1, 2, 2, 2))
    x[0, 1, 0, 0] = np.nan
    m = Moments(2).add(x)
    assert m.nonfinite == 1 and m.count == 3


# -------------------------------------------------------------------------------------------- stats


def test_compute_stats_matches_numpy_over_independent_encodes(tmp_path, vae, bucketing):
    from vaelens import encode
    from vaelens.datasets.pixels import decode_image
    from vaelens.images import to_pixels

    paths = make_images(tmp_path / "data", 7)
    report = compute_stats(tmp_path / "data", vae, bucketing=bucketing, encode=SETTINGS, batch_size=3, workers=0)
    rows = []
    for p in paths:  # one image at a time through vaelens' plain encode
        from PIL import Image

        w, h = Image.open(p).size
        arr = decode_image(str(p), bucketing.place(h, w)).astype(np.float32) / 255.0
        z = encode(vae, to_pixels([arr]), normalized=False).latent
        rows.append(np.moveaxis(z.double().numpy(), 1, -1).reshape(-1, z.shape[1]))
    x = np.concatenate(rows)
    s = report.stats
    assert s.samples == 7 and s.positions == len(x)
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s.std, x.std(0), rtol=1e-4)
    np.testing.assert_allclose(s.correlation, np.corrcoef(x, rowvar=False), atol=1e-4)
    implied = report.implied
    assert implied.form == "scale" and implied.configured == {"scale": vae.spec.normalization.scale}
    assert implied.implied["scale"]["scale"] == pytest.approx(1 / x.std(), rel=1e-4)
    assert implied.difference["scale_over_configured"] == pytest.approx(
        (1 / x.std()) / vae.spec.normalization.scale, rel=1e-4
    )


def test_implied_per_channel_form_against_configured():
    from vaelens.datasets.implied import implied_normalization
    from vaelens.families import get_family

    wan = get_family("wan21")
    rng = np.random.default_rng(0)
    mean, std = np.asarray(wan.normalization.mean), np.asarray(wan.normalization.std)
    z = rng.normal(0, 1, (2, 16, 1, 30, 30)) * (1.1 * std)[None, :, None, None, None] + mean[None, :, None, None, None]
    stats = Moments(16).add(z).result()
    im = implied_normalization(stats, wan.normalization, family="wan21")
    assert im.form == "per_channel"
    ratio = np.asarray(im.difference["std_over_configured"])
    assert np.all(np.abs(ratio - 1.1) < 0.05)


# -------------------------------------------------------------------------------------------- cache


def test_cache_roundtrip_reader_and_corrupt_files(tmp_path, vae, bucketing):
    data = tmp_path / "data"
    make_images(data, 6)
    (data / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (data / "img000.png").read_bytes()
    (data / "truncated.png").write_bytes(good[: len(good) // 2])  # header fine, pixel data cut
    report = cache_dataset(data, vae, tmp_path / "out", options=options(bucketing, logvar=True), encode=SETTINGS)
    assert report.encoded == 6 and report.complete
    reasons = {s["source"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"garbage.png", "truncated.png"}
    index = [json.loads(x) for x in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert [r["source"] for r in index] == sorted(p.name for p in data.iterdir())
    assert {r["source"] for r in index if "error" in r} == set(reasons)
    ds = open_cache(tmp_path / "out")
    raw = open_cache(tmp_path / "out", normalized=False)
    item = ds[0]
    assert torch.allclose(item["latent"], raw[0]["latent"] * vae.spec.normalization.scale)
    assert item["posterior"].logvar.shape == item["latent"].shape
    for b in ds.batches(2, shuffle=True, seed=3):  # one bucket (one shape) per batch
        assert len({tuple(ds[i]["latent"].shape) for i in b}) == 1
    loader = torch.utils.data.DataLoader(ds, batch_sampler=ds.batches(2), collate_fn=lambda xs: xs)
    assert sum(len(b) for b in loader) == len(ds) == 6
    bucket = item["target_size"]  # (H, W) of the bucket, the latent is that ÷ 4 (the demo is f4)
    assert tuple(item["latent"].shape[1:]) == (bucket[0] // 4, bucket[1] // 4)


def test_edited_image_is_reencoded_and_nothing_else(tmp_path, vae, bucketing):
    from PIL import Image

    data = tmp_path / "data"
    paths = make_images(data, 5)
    out = tmp_path / "out"
    first = cache_dataset(data, vae, out, options=options(bucketing), encode=SETTINGS)
    before = all_latents(out)
    arr = np.asarray(Image.open(paths[2])).copy()
    arr[:8] = 255 - arr[:8]
    Image.fromarray(arr).save(paths[2])
    again = cache_dataset(data, vae, out, options=options(bucketing), encode=SETTINGS)
    after = all_latents(out)
    assert (first.encoded, again.encoded, again.reused) == (5, 1, 4)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {paths[2].name}
    other = cache_dataset(data, vae, out, options=options(bucketing, latent_dtype="fp32"), encode=SETTINGS)
    assert other.encoded == 5  # a changed setting is a new key for every file


def test_nan_latent_is_retried_in_fp32_and_reported(tmp_path, vae, bucketing, monkeypatch):
    from vaelens.run import steps

    data = tmp_path / "data"
    make_images(data, 4)
    original = steps._moments_fn  # the run engine's batch function, which the dataset encoder calls

    def poisoned(module, x, items):
        out = original(module, x, items)
        if x.dtype != torch.float32:  # low precision overflows on the second sample
            out = out.clone()
            out[1, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(steps, "_moments_fn", poisoned)
    opts = options(make_bucketing(vae.spec, size=(32, 32)), batch_size=4)  # one batch of 4
    report = cache_dataset(data, vae, tmp_path / "out", options=opts, encode=EncodeSettings(dtype="bf16", threads=1))
    assert report.encoded == 4
    [nan] = report.nonfinite
    assert nan["written"] and "redone in fp32" in nan["action"]
    rec = {r["source"]: r for r in map(json.loads, (tmp_path / "out" / "index.jsonl").read_text().splitlines())}
    assert rec[nan["source"]]["encode_dtype"] == "fp32"
    assert sum(r["encode_dtype"] == "bf16" for r in rec.values()) == 3
    summary = json.loads((tmp_path / "out" / "cache.json").read_text())
    assert summary["report"]["nonfinite"] == [nan]

    def hopeless(module, x, items):
        out = original(module, x, items).clone()
        out[0] = float("inf")
        return out

    monkeypatch.setattr(steps, "_moments_fn", hopeless)
    bad = cache_dataset(data, vae, tmp_path / "out2", options=opts, encode=EncodeSettings(dtype="bf16", threads=1))
    assert bad.encoded == 3 and not bad.nonfinite[0]["written"]
    assert "and again in fp32" in bad.nonfinite[0]["action"]
    assert {s["source"] for s in bad.skipped} == {bad.nonfinite[0]["source"]}
    assert len(open_cache(tmp_path / "out2")) == 3


def test_batch_encoder_is_the_run_engines_step(vae):
    """The dataset encoder's mean/logvar are vaelens.run.moments_step's, and its seeded sample is what
    vaelens.run.encode_step draws with the per-sample seeds; the model in vae is left as it was."""
    from vaelens.datasets.encoder import BatchEncoder, sample_seed
    from vaelens.run import encode_step, moments_step

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    keys = ["a", "b", "c"]
    settings = EncodeSettings(threads=1, posterior="sample", seed=7)
    dtype_before = next(vae.module.parameters()).dtype
    enc = BatchEncoder(vae, settings).encode(pixels, keys)
    assert next(vae.module.parameters()).dtype == dtype_before
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    mean, logvar, _ = moments_step(vae, x)
    assert enc.retried == () and enc.failed == {} and enc.report.items == 3
    torch.testing.assert_close(torch.stack(enc.mean), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack(enc.logvar), logvar, rtol=1e-5, atol=1e-5)
    seeds = [sample_seed(k, settings.seed) for k in keys]
    sample, _ = encode_step(vae, x, posterior="sample", seeds=seeds)
    torch.testing.assert_close(torch.stack(enc.sample), sample, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sample, mean)  # the sample is not the mean
    other, _ = encode_step(vae, x[1:2], posterior="sample", seeds=seeds[1:2])
    torch.testing.assert_close(enc.sample[1], other[0], rtol=1e-5, atol=1e-5)  # not the batch's


CHILD = textwrap.dedent(
    """
    import sys, time
    from vaelens.datasets import CacheOptions, EncodeSettings, cache_dataset, make_bucketing
    from vaelens.weights.demo import load_demo_vae

    vae = load_demo_vae(device="cpu")
    calls = []

    def progress(done, total, what):
        if what == "encoding" and done:
            calls.append(done)
            if len(calls) == 4:  # mid-run, with samples encoded but not yet in a shard
                print("KILL ME", done, flush=True)
                time.sleep(120)

    opts = CacheOptions(bucketing=make_bucketing(vae.spec, resolution=32, step=8), batch_size=3, workers=0,
                        shard_size=4)
    cache_dataset(sys.argv[1], vae, sys.argv[2], options=opts, encode=EncodeSettings(threads=1), progress=progress)
    print("FINISHED", flush=True)
    """
)


def test_resume_after_sigkill_encodes_only_what_is_missing(tmp_path, vae, bucketing):
    from vaelens.datasets.store import read_manifest

    data = tmp_path / "data"
    make_images(data, 14)
    out = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    child = subprocess.Popen([sys.executable, str(script), str(data), str(out)], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        line = child.stdout.readline()
        assert line.startswith("KILL ME")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL
    finished = read_manifest(out)
    assert 0 < len(finished) < 14 and not (out / "cache.json").exists()
    resumed = cache_dataset(data, vae, out, options=options(bucketing), encode=SETTINGS)
    assert resumed.reused == len(finished)
    assert resumed.encoded == 14 - len(finished)
    reference = cache_dataset(data, vae, tmp_path / "clean", options=options(bucketing), encode=SETTINGS)
    assert reference.encoded == 14
    got, want = all_latents(out), all_latents(tmp_path / "clean")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)  # bit-identical: the same planned batches


def test_torn_manifest_and_orphan_shard_are_recovered(tmp_path, vae, bucketing):
    from vaelens.datasets.store import read_manifest

    data = tmp_path / "data"
    make_images(data, 5)
    out = tmp_path / "out"
    cache_dataset(data, vae, out, options=options(bucketing, shard_size=1), encode=SETTINGS)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    # a kill between a shard's rename and its manifest lines, then another in the middle of a line
    (out / "manifest.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    assert len(read_manifest(out)) == 5
    again = cache_dataset(data, vae, out, options=options(bucketing, shard_size=1), encode=SETTINGS)
    assert again.encoded == 0 and again.reused == 5


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_cache_and_stats(tmp_path, cli):
    data = tmp_path / "data"
    make_images(data, 4)
    out = tmp_path / "out"
    r = cli("cache", str(data), "--vae", "demo", "-o", str(out), "--size", "32x32", "--workers", "0", "--stats",
            "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["encoded"] == 4 and doc["buckets"] == {"32x32": 4} and doc["stats"]["samples"] == 4
    r = cli("stats", str(out), "--json")
    assert r.code == 0 and r.json()["stats"]["samples"] == 4
    png = tmp_path / "hist.png"
    r = cli("stats", str(data), "--size", "32x32", "--workers", "0", "--plot", str(png))
    assert r.code == 0 and png.is_file() and "implied / configured" in r.out
    r = cli("cache", str(data), "-o", str(out), "--size", "30x32")
    assert r.code == 2 and "multiple of 4" in r.err and "Traceback" not in r.err


def test_video_clip_decodes_with_pyav(tmp_path, vae):
    av = pytest.importorskip("av")
    from vaelens.datasets.items import scan_item
    from vaelens.datasets.pixels import decode_clip

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(6):
            img = np.full((48, 64, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    scan = scan_item(path, tmp_path)
    assert scan.error is None and scan.size == (48, 64) and scan.kind == "video"
    clip = decode_clip(str(path), make_bucketing(vae.spec, size=(24, 32)).place(48, 64), 5)
    assert clip.shape == (5, 24, 32, 3)
    assert clip[4].mean() > clip[0].mean() + 100  # frames in order, each decoded


def write_clip(path: Path, frames: int, width: int = 32, height: int = 24) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.full((height, width, 3), 30 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_clips_cache_through_a_video_vae(tmp_path):
    pytest.importorskip("av")
    from diffusers import AutoencoderKLWan

    from vaelens.weights.load import load_vae

    torch.manual_seed(0)
    AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[], temperal_downsample=[True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval().save_pretrained(tmp_path / "wan")
    wan = load_vae(tmp_path / "wan", device="cpu")
    data = tmp_path / "data"
    data.mkdir()
    write_clip(data / "long.mp4", 7)
    write_clip(data / "short.mp4", 3)
    make_images(data, 1)
    opts = CacheOptions(bucketing=make_bucketing(wan.spec, size=(16, 16)), frames=5, workers=0, batch_size=2)
    report = cache_dataset(data, wan, tmp_path / "out", options=opts, encode=SETTINGS)
    assert report.encoded == 2  # the first 5 frames of the 7-frame clip, and the image (one frame)
    assert [s["source"] for s in report.skipped] == ["short.mp4"]
    ds = open_cache(tmp_path / "out", normalized=False)
    by = {ds[i]["source"]: ds[i]["latent"] for i in range(len(ds))}
    t = wan.spec.temporal.factor
    assert by["long.mp4"].shape[1] == (5 - 1) // t + 1 and by["img000.png"].shape[1] == 1


def test_cache_statistics_equal_one_numpy_pass_over_the_stored_latents(tmp_path, vae, bucketing):
    data = tmp_path / "data"
    make_images(data, 9)
    report = cache_dataset(data, vae, tmp_path / "out", options=options(bucketing, stats=True), encode=SETTINGS)
    stored = all_latents(tmp_path / "out").values()
    x = np.concatenate([np.moveaxis(z.double().numpy(), 0, -1).reshape(-1, z.shape[0]) for z in stored])
    per = report.stats["per_channel"]
    np.testing.assert_allclose([c["mean"] for c in per], x.mean(0), rtol=1e-9)
    np.testing.assert_allclose([c["std"] for c in per], x.std(0), rtol=1e-9)
    np.testing.assert_allclose(report.stats["correlation"], np.corrcoef(x, rowvar=False), rtol=1e-9, atol=1e-12)
    assert report.stats["overall"]["std"] == pytest.approx(x.std(), rel=1e-9)


def test_ctrl_c_flushes_every_finished_sample(tmp_path):
    from vaelens.datasets.store import read_manifest

    data = tmp_path / "data"
    make_images(data, 14)
    out = tmp_path / "interrupted"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    child = subprocess.Popen([sys.executable, str(script), str(data), str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        done = int(child.stdout.readline().split()[-1])
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert "KeyboardInterrupt" in err
    assert len(read_manifest(out)) == done  # samples encoded but not yet in a full shard were written


def test_a_second_run_on_the_same_cache_is_refused_while_one_holds_it(tmp_path, vae, bucketing):
    from vaelens.datasets.store import exclusive
    from vaelens.errors import VaeLensError

    data = tmp_path / "data"
    make_images(data, 2)
    out = tmp_path / "out"
    out.mkdir()
    with exclusive(out), pytest.raises(VaeLensError, match="another vaelens cache run"):
        cache_dataset(data, vae, out, options=options(bucketing), encode=SETTINGS)
    assert cache_dataset(data, vae, out, options=options(bucketing), encode=SETTINGS).encoded == 2
