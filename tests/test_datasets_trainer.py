"""Issue 21: the latent cache as a trainer uses it — each defect's regression test (named for it), and
captions, flips, the sampler, several resolutions, the compact index. Demo VAE, tiny generated images."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_datasets import make_images
from vaelens.datasets import (
    BucketSampler,
    CacheOptions,
    EncodeSettings,
    LatentPosterior,
    cache_dataset,
    make_bucketing,
    open_cache,
    verify_cache,
)
from vaelens.errors import VaeLensError
from vaelens.weights.demo import load_demo_vae

SETTINGS = EncodeSettings(threads=1)


@pytest.fixture(scope="module")
def vae():
    return load_demo_vae(device="cpu")


@pytest.fixture(scope="module")
def bucketing(vae):
    return make_bucketing(vae.spec, resolution=32, step=8)


def options(bucketing, **kw):
    return CacheOptions(bucketing=bucketing, **{"batch_size": 3, "workers": 0, "shard_size": 4, **kw})


def latents(out, **kw) -> dict[str, torch.Tensor]:
    ds = open_cache(out, normalized=False, **kw)
    return {ds[i]["source"]: ds[i]["latent"] for i in range(len(ds))}


def shards(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("*.safetensors"))


# ------------------------------------------------------------------------------------------ defects


def test_issue21_1_truncated_shard(tmp_path, vae, bucketing):
    data = tmp_path / "data"
    make_images(data, 9)
    out = tmp_path / "out"
    cache_dataset(data, vae, out, options=options(bucketing), encode=SETTINGS)
    want = latents(out)
    victim = shards(out)[0]
    in_victim = len(json.loads(__import__("safetensors").safe_open(str(victim), "pt").metadata()["records"]))
    victim.write_bytes(victim.read_bytes()[:-64])  # a copy cut short inside the tensor data
    with pytest.raises(VaeLensError, match="truncated or damaged"):
        open_cache(out)
    again = cache_dataset(data, vae, out, options=options(bucketing), encode=SETTINGS)
    assert (again.encoded, again.reused) == (in_victim, 9 - in_victim)
    assert not victim.exists()  # the broken shard is gone, its samples are in a new one
    got = latents(out)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_issue21_2_open_verifies_shards_and_verify_hashes(tmp_path, vae, bucketing, cli):
    data = tmp_path / "data"
    make_images(data, 9)
    out = tmp_path / "out"
    cache_dataset(data, vae, out, options=options(bucketing), encode=SETTINGS)
    shards(out)[1].unlink()
    with pytest.raises(VaeLensError, match=r"is missing.*rerun `vaelens cache`"):
        open_cache(out)
    r = cli("stats", str(out))
    assert r.code == 2 and "rerun `vaelens cache`" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1
    cache_dataset(data, vae, out, options=options(bucketing), encode=SETTINGS)  # repairs
    assert len(open_cache(out)) == 9
    assert cli("cache", "--verify", str(out)).code == 0
    # a flipped bit inside a tensor: size and header are fine, only the hash sees it
    victim = shards(out)[0]
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x10
    victim.write_bytes(bytes(raw))
    open_cache(out)  # the cheap check on open passes (size and header are intact) ...
    r = cli("cache", "--verify", str(out), "--json")
    assert r.code == 1 and r.json()["bad"][0]["shard"] == f"shards/{victim.name}"  # ... the hash does not
    r = cli("cache", str(data), "--vae", "demo", "-o", str(out), "--resolution", "32", "--bucket-step", "8",
            "--batch-size", "3", "--shard-size", "4", "--workers", "0", "--threads", "1", "--verify", "--json")
    assert r.code == 0 and r.json()["encoded"] >= 1, r.err
    assert verify_cache(out).ok


def test_issue21_3_normalized_posterior_is_in_latent_space(tmp_path, vae, bucketing):
    data = tmp_path / "data"
    make_images(data, 4)
    out = tmp_path / "out"
    cache_dataset(data, vae, out, options=options(bucketing, logvar=True), encode=SETTINGS)
    raw, norm = open_cache(out, normalized=False)[0], open_cache(out)[0]
    scale = vae.spec.normalization.scale
    # logvar of a scaled latent is logvar + 2·log(scale): the old reader returned it raw
    torch.testing.assert_close(norm["posterior"].logvar, raw["posterior"].logvar + 2 * math.log(scale))
    torch.testing.assert_close(norm["posterior"].mean, norm["latent"])
    # sampling in the normalised space == normalising a raw sample drawn with the same noise
    a = norm["posterior"].sample(torch.Generator().manual_seed(7))
    b = raw["posterior"].sample(torch.Generator().manual_seed(7)) * scale
    torch.testing.assert_close(a, b)
    with pytest.raises(VaeLensError, match="posterior"):
        open_cache(out, posterior="logvar")


def test_open_cache_and_stats_take_posterior_mode_or_sample(tmp_path, vae, bucketing):
    from vaelens.datasets import stats_of_cache
    from vaelens.options import Posterior

    data = tmp_path / "data"
    make_images(data, 3)
    mode_only, both = tmp_path / "mode", tmp_path / "both"
    cache_dataset(data, vae, mode_only, options=options(bucketing), encode=SETTINGS)
    cache_dataset(data, vae, both, options=options(bucketing, logvar=True),
                  encode=EncodeSettings(threads=1, posterior="sample", seed=3))
    mode, sample = latents(both), latents(both, posterior=Posterior.SAMPLE)
    assert mode.keys() == sample.keys()
    for k in mode:  # the stored sample is a draw of the posterior, not its mode
        assert not torch.allclose(mode[k], sample[k])
    first = open_cache(both, normalized=False, posterior="MODE")[0]  # the words in any case, as every Choice
    torch.testing.assert_close(first["latent"], mode[first["source"]])
    torch.testing.assert_close(first["posterior"].mean, first["latent"])  # the mode is the posterior's mean
    with pytest.raises(VaeLensError, match="posterior='sample'") as err:
        open_cache(mode_only, posterior="sample")
    assert (err.value.param, err.value.value, err.value.choices) == ("posterior", "sample", ("mode",))
    with pytest.raises(VaeLensError) as err:
        open_cache(both, posterior="mean")  # the stored tensor's name is not a posterior choice
    assert err.value.param == "posterior" and err.value.choices == ("mode", "sample")
    a, b = stats_of_cache(both), stats_of_cache(both, posterior="sample")
    assert (a.posterior, b.posterior, a.stored_dtype) == ("mode", "sample", "fp16")
    assert a.stats.mean != b.stats.mean and a.to_json()["posterior"] == "mode"


def test_issue21_3_posterior_per_channel_and_patched_normalisations():
    from vaelens.families.spec import Normalization, NormKind
    from vaelens.normalization import normalize

    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, 8, generator=g) - 2
    post = LatentPosterior(mean=mean, logvar=logvar)
    for norm in (
        Normalization(kind=NormKind.PER_CHANNEL, mean=(0.1, -0.2, 0.3, 0.0), std=(2.0, 0.5, 1.5, 3.0), scale=0.7),
        Normalization(kind=NormKind.AFFINE, shift=0.0609, scale=1.5305),
        Normalization(kind=NormKind.BATCHNORM_PATCHED, mean=tuple(np.linspace(-1, 1, 16)),
                      std=tuple(np.linspace(0.5, 2, 16)), patch=(2, 2)),
    ):
        n = post.normalized(norm)
        x = n.sample(torch.Generator().manual_seed(3))
        eps = torch.randn(n.mean.shape, generator=torch.Generator().manual_seed(3))
        # the same draw, made in raw space with the noise laid out as the normalised tensor is
        raw_eps = eps if norm.kind is not NormKind.BATCHNORM_PATCHED else None
        if raw_eps is not None:
            want = normalize((mean + torch.exp(0.5 * logvar) * raw_eps)[None], norm)[0]
            torch.testing.assert_close(x, want)
        # variance check that holds for every kind: n(mean ± std) spans ±std_n
        plus = normalize((mean + torch.exp(0.5 * logvar))[None], norm)[0]
        torch.testing.assert_close(plus - n.mean, torch.exp(0.5 * n.logvar).abs(), rtol=1e-5, atol=1e-5)


def test_issue21_4_every_file_is_encoded_or_listed(tmp_path, vae, bucketing):
    from PIL import Image

    data = tmp_path / "data"
    make_images(data, 2)
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    frames[0].save(data / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / "noext", format="PNG")
    (data / "README").write_text("not an image")
    (data / "notes.md").write_text("hello")
    (data / "img000.txt").write_text("a caption")  # a sidecar: used, not skipped
    os.symlink(data / "gone.png", data / "dangling.png")
    os.symlink(data / "self.png", data / "self.png")  # a symlink loop
    (data / "sub").mkdir()
    os.symlink(data, data / "sub" / "up")  # a folder loop
    report = cache_dataset(data, vae, tmp_path / "out", options=options(bucketing), encode=SETTINGS)
    reasons = {s["source"]: s["reason"] for s in report.skipped}
    assert report.encoded == 4  # img000, img001, anim.gif (frame 0), noext
    assert set(reasons) == {"README", "notes.md", "dangling.png", "self.png", "sub/up"}
    assert "dangling symlink" in reasons["dangling.png"] and "loop" in reasons["self.png"]
    assert "loop" in reasons["sub/up"] and "not an image" in reasons["README"]
    index = [json.loads(x) for x in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    gif = next(r for r in index if r["source"] == "anim.gif")
    assert any("frame 0 used" in w for w in gif["warnings"])
    assert {r["source"] for r in index} == {"img000.png", "img001.png", "anim.gif", "noext", *reasons}


def test_issue21_5_extreme_resizes_warned_and_filtered(tmp_path, vae):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for name, (w, h) in {"tiny.png": (4, 4), "pano.png": (400, 8), "ok.png": (40, 32)}.items():
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(data / name)
    b = make_bucketing(vae.spec, resolution=32, step=8)
    report = cache_dataset(data, vae, tmp_path / "a", options=options(b), encode=SETTINGS)
    warned = {w["source"]: w["warning"] for w in report.warnings}
    assert set(warned) == {"tiny.png", "pano.png"}
    assert "upscaled" in warned["tiny.png"] and "crop keeps" in warned["pano.png"]
    b = make_bucketing(vae.spec, resolution=32, step=8, upscale=False, max_aspect=4.0)
    report = cache_dataset(data, vae, tmp_path / "b", options=options(b), encode=SETTINGS)
    reasons = {s["source"]: s["reason"] for s in report.skipped}
    assert "upscale=False" in reasons["tiny.png"] and "max_aspect=4" in reasons["pano.png"]
    assert report.encoded == 1
    b = make_bucketing(vae.spec, resolution=32, step=8, min_size=16)
    report = cache_dataset(data, vae, tmp_path / "c", options=options(b), encode=SETTINGS)
    assert {s["source"] for s in report.skipped} == {"tiny.png", "pano.png"}


def test_issue21_6_checks_come_before_the_model_and_leave_no_out(tmp_path, cli, monkeypatch):
    import vaelens.cli._dataargs as dataargs
    from vaelens.datasets.store import exclusive

    def no_model(args):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr("vaelens.cli.cache.load_data_vae", no_model)
    monkeypatch.setattr(dataargs, "load_data_vae", no_model)
    out = tmp_path / "out"
    for data, words in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "holds no images")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        r = cli("cache", str(data), "-o", str(out))
        assert r.code == 2 and words in r.err and not out.exists(), r.err
    data = tmp_path / "data"
    make_images(data, 2)
    out.mkdir()
    with exclusive(out):
        r = cli("cache", str(data), "-o", str(out))
    assert r.code == 2 and "another vaelens cache run" in r.err
    t0 = time.perf_counter()
    r = cli("cache", str(data), "-o", str(tmp_path / "o2"), "--engine", "ray", "--address", "127.0.0.1:9")
    assert r.code == 2 and "--address" in r.err and len(r.err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 <= 15 and not (tmp_path / "o2").exists()


def test_issue21_6_ctrl_c_writes_cache_json(tmp_path, vae, bucketing, monkeypatch):
    import vaelens.datasets.cache as cache_mod

    data = tmp_path / "data"
    make_images(data, 9)
    calls = []
    real = cache_mod._write_batch

    def interrupt_on_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(cache_mod, "_write_batch", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        cache_dataset(data, vae, tmp_path / "out", options=options(bucketing), encode=SETTINGS)
    summary = json.loads((tmp_path / "out" / "cache.json").read_text())
    done = summary["report"]["encoded"]
    assert summary["complete"] is False and done > 0
    assert len(open_cache(tmp_path / "out")) == done  # every finished sample is readable
    assert summary["report"]["skipped"][0]["reason"] == "not encoded (run interrupted)"


# ------------------------------------------------------------------------------------------ features


def test_captions_from_sidecars_and_from_a_metadata_file(tmp_path, vae, bucketing):
    data = tmp_path / "data"
    make_images(data, 3)
    (data / "img000.txt").write_text("a red square\n")
    (data / "img001.json").write_text(json.dumps({"caption": "from json"}))
    report = cache_dataset(data, vae, tmp_path / "a", options=options(bucketing), encode=SETTINGS)
    assert report.captions == 2 and report.skipped == ()
    got = {it["source"]: it["caption"] for it in open_cache(tmp_path / "a")}
    assert got == {"img000.png": "a red square", "img001.png": "from json", "img002.png": ""}
    meta = tmp_path / "meta.csv"
    meta.write_text("file_name,prompt\nimg000.png,first\nimg002.png,\"third, with a comma\"\n")
    report = cache_dataset(data, vae, tmp_path / "b", options=options(bucketing, captions=str(meta),
                                                                       caption_column="prompt"), encode=SETTINGS)
    got = {it["source"]: it["caption"] for it in open_cache(tmp_path / "b")}
    assert got == {"img000.png": "first", "img001.png": "", "img002.png": "third, with a comma"}
    # a caption edit re-encodes nothing
    (data / "img000.txt").write_text("edited")
    again = cache_dataset(data, vae, tmp_path / "a", options=options(bucketing), encode=SETTINGS)
    assert again.encoded == 0 and open_cache(tmp_path / "a")[0]["caption"] == "edited"


def test_flip_equals_encoding_the_flipped_image_not_flipping_the_latent(tmp_path, vae, bucketing):
    from PIL import Image

    data, mirrored = tmp_path / "data", tmp_path / "mirrored"
    make_images(data, 5)
    mirrored.mkdir()
    for p in sorted(data.iterdir()):
        Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored / p.name)
    cache_dataset(data, vae, tmp_path / "a", options=options(bucketing, flip=True), encode=SETTINGS)
    cache_dataset(mirrored, vae, tmp_path / "b", options=options(bucketing), encode=SETTINGS)
    ds, want = open_cache(tmp_path / "a", normalized=False), latents(tmp_path / "b")
    for i, it in enumerate(ds):
        torch.testing.assert_close(it["latent_flipped"], want[it["source"]], rtol=1e-5, atol=1e-5)
        off = (it["latent"].flip(-1) - it["latent_flipped"]).norm() / it["latent_flipped"].norm()
        assert off > 0.01  # flipping the latent is not the same thing
        (top, left), (top_f, left_f) = it["crop_top_left"], it["crop_top_left_flipped"]
        assert top == top_f and left + left_f == ds.index.pair("resized_size", i)[1] - it["target_size"][1]


def test_sampler_reshuffles_per_epoch_and_splits_two_ranks_without_overlap(tmp_path, vae, bucketing):
    data = tmp_path / "data"
    make_images(data, 23)
    cache_dataset(data, vae, tmp_path / "out", options=options(bucketing), encode=SETTINGS)
    ds = open_cache(tmp_path / "out")
    buckets = [tuple(ds[i]["target_size"]) for i in range(len(ds))]
    ranks = [BucketSampler(ds, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    epochs = []
    for epoch in range(2):
        per_rank = []
        for s in ranks:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])  # equal steps on every rank
        seen = [i for batches in per_rank for b in batches for i in b]
        assert len(seen) == len(set(seen))  # no sample on two ranks
        assert all(len({buckets[i] for i in b}) == 1 for batches in per_rank for b in batches)
        epochs.append(per_rank)
    assert epochs[0] != epochs[1]  # a new order each epoch ...
    ranks[0].set_epoch(0)
    assert list(ranks[0]) == epochs[0][0]  # ... and the same order for the same (seed, epoch)
    # a DataLoader with two workers: every batch of the sampler once
    loader = torch.utils.data.DataLoader(ds, batch_sampler=ranks[1], num_workers=2)
    assert sum(len(b["latent"]) for b in loader) == sum(len(b) for b in ranks[1])


def test_several_resolutions_in_one_cache_chosen_at_read_time(tmp_path, vae):
    data = tmp_path / "data"
    make_images(data, 4)
    both = (make_bucketing(vae.spec, resolution=32, step=8), make_bucketing(vae.spec, resolution=48, step=8))
    report = cache_dataset(data, vae, tmp_path / "out", options=options(both), encode=SETTINGS)
    assert report.encoded == 8
    small, large = open_cache(tmp_path / "out", resolution=32), open_cache(tmp_path / "out", resolution=48)
    assert len(small) == len(large) == 4 and len(open_cache(tmp_path / "out")) == 8
    for a, b in zip(small, large, strict=True):
        assert a["source"] == b["source"] and a["resolution"] == 32 and b["resolution"] == 48
        assert a["latent"].numel() < b["latent"].numel()
    with pytest.raises(VaeLensError, match="resolution=64"):
        open_cache(tmp_path / "out", resolution=64)
    assert cache_dataset(data, vae, tmp_path / "out", options=options(both), encode=SETTINGS).encoded == 0


def test_compact_index_holds_a_million_items_in_little_memory(tmp_path):
    from vaelens.datasets.index import CompactIndex

    n = 200_000
    path = tmp_path / "index.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"key": f"{i:032x}", "source": f"train/{i:07d}.jpg", "shard": f"shards/s{i // 256}",
                                "shard_bytes": 1000, "original_size": [768, 1024], "resized_size": [768, 1024],
                                "crop_top_left": [0, 0], "bucket": [768, 1024], "frames": None,
                                "caption": None, "tensors": {"mean": f"{i:032x}/mean"}}) + "\n")
    ix = CompactIndex.read(path)
    per_item = ix.nbytes / n
    print(f"compact index: {per_item:.1f} bytes/item ({ix.nbytes / 2**20:.1f} MiB for {n} items)")
    assert len(ix) == n and ix.key(n - 1) == f"{n - 1:032x}" and ix.sources[7] == "train/0000007.jpg"
    assert ix.shard_of(300) == "shards/s1" and ix.pair("bucket", 5) == (768, 1024)
    assert per_item < 150  # a million items: < 150 MB (the dict records took ~2.8 KB each)
