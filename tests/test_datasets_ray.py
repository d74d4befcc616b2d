"""The Ray Data engine on a local two-CPU cluster: same manifest and statistics as the local engine,
identical tensors, and resume."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from test_datasets import all_latents, make_images  # noqa: E402
from vaelens.datasets import CacheOptions, EncodeSettings, cache_dataset, make_bucketing  # noqa: E402
from vaelens.weights.demo import load_demo_vae  # noqa: E402


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_engine_equals_local_engine(tmp_path, local_cluster):
    vae = load_demo_vae(device="cpu")
    data = tmp_path / "data"
    make_images(data, 7)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    bucketing = make_bucketing(vae.spec, resolution=32, step=8)
    settings = EncodeSettings(threads=1)

    def opts(engine):
        return CacheOptions(bucketing=bucketing, batch_size=3, workers=0 if engine == "local" else 2, shard_size=4,
                            stats=True, engine=engine)

    local = cache_dataset(data, vae, tmp_path / "local", options=opts("local"), encode=settings)
    # resume on Ray: a cache with the first files already finished encodes only the rest
    partial = tmp_path / "ray"
    make_images(tmp_path / "first", 3)
    cache_dataset(tmp_path / "first", vae, partial, options=opts("local"), encode=settings)
    remote = cache_dataset(data, vae, partial, options=opts("ray"), encode=settings)
    assert (remote.encoded, remote.reused) == (4, 3)
    assert remote.skipped == local.skipped and [s["source"] for s in remote.skipped] == ["broken.jpg"]
    got, want = all_latents(partial), all_latents(tmp_path / "local")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert remote.stats == local.stats
