"""Reading a latent cache in training code: `open_cache(OUT)` -> a PyTorch Dataset of latents.

cache folder -> (every shard checked: exists, size and header as the manifest recorded) -> CacheDataset:
item i -> {"latent": [C,(F,)h,w] float32 (normalised as the family's pipeline does, unless
normalized=False), "source", "key", "caption" (str, "" when none), "original_size" (H, W),
"crop_top_left" (top, left), "target_size" (H, W) — the three SDXL micro-conditioning inputs —
"resolution", and when stored: "posterior" (LatentPosterior: mean and logvar in the same space as
"latent"), "latent_flipped", "crop_top_left_flipped", "posterior_flipped"}.
The index is held as columns (index.CompactIndex); `BucketSampler` (sampler.py) batches it.
Shards are opened lazily with safetensors' safe_open (memory-mapped) in each worker process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaelens.datasets.index import CompactIndex
from vaelens.datasets.posterior import LatentPosterior
from vaelens.datasets.store import REPAIR, check_shard, read_summary, shard_header
from vaelens.errors import VaeLensError
from vaelens.options import Posterior


def normalization_record(vae) -> dict[str, Any]:
    """LoadedVae -> its normalisation with statistics resolved to numbers (checkpoint buffers included),
    so a cache can be normalised without the VAE."""
    from vaelens.families.spec import NormKind
    from vaelens.normalization import _stats, describe

    norm = vae.spec.normalization
    rec: dict[str, Any] = {
        "kind": norm.kind.value,
        "formula": describe(norm),
        "scale": norm.scale,
        "shift": norm.shift,
        "mean": None,
        "std": None,
        "patch": list(norm.patch) if norm.patch else None,
    }
    if norm.kind in (NormKind.PER_CHANNEL, NormKind.BATCHNORM_PATCHED):
        mean, std = _stats(norm, vae.module)
        rec["mean"] = [float(v) for v in mean.detach().double().cpu()]
        rec["std"] = [float(v) for v in std.detach().double().cpu()]
    return rec


def _normalization(rec: dict[str, Any]):
    from vaelens.families.spec import Normalization, NormKind

    return Normalization(
        kind=NormKind(rec["kind"]),
        scale=float(rec.get("scale", 1.0)),
        shift=float(rec.get("shift", 0.0)),
        mean=tuple(rec["mean"]) if rec.get("mean") is not None else None,
        std=tuple(rec["std"]) if rec.get("std") is not None else None,
        patch=tuple(rec["patch"]) if rec.get("patch") else None,
    )


def _torch_dataset_base():
    from torch.utils.data import Dataset

    return Dataset


# Which stored tensor holds each posterior choice: the mode of a KL VAE's posterior is its mean (the cache
# stores it under "mean", datasets/cache.py), a seeded sample under "sample".
TENSOR_OF = {Posterior.MODE: "mean", Posterior.SAMPLE: "sample"}


def stored_posteriors(tensors) -> tuple[str, ...]:
    """A cache's stored tensor names -> the posterior choices it can serve ("mode", "sample")."""
    return tuple(p.value for p, name in TENSOR_OF.items() if name in tensors)


class CacheDataset(_torch_dataset_base()):  # type: ignore[misc]
    """A finished latent cache as a map-style torch Dataset (see the module docstring)."""

    def __init__(self, out: str | Path, *, posterior: Posterior | str = Posterior.MODE, normalized: bool = True,
                 resolution: int | None = None, verify: bool = True) -> None:
        self.out = Path(out)
        self.summary = read_summary(out)
        stored = self.summary["tensors"]
        posterior = Posterior.parse(posterior)
        if TENSOR_OF[posterior] not in stored:
            raise VaeLensError(
                f"posterior={posterior.value!r}: {str(out)!r} stores no such latent (the cache was written "
                f"with posterior {', '.join(stored_posteriors(stored)) or 'none'})", param="posterior",
                value=posterior.value, choices=stored_posteriors(stored))
        resolutions = self.summary.get("resolutions") or []
        if resolution is not None and resolution not in resolutions:
            raise VaeLensError(f"resolution={resolution} is not in {str(out)!r}; it holds: "
                               f"{', '.join(map(str, resolutions)) or 'one bucketing without a resolution'}",
                               param="resolution", value=resolution, choices=tuple(resolutions))
        self.posterior = posterior
        self.latent = TENSOR_OF[posterior]  # the stored tensor's name
        self.normalized = normalized
        self.index = CompactIndex.read(self.out / "index.jsonl", resolution=resolution)
        self.skipped = self.index.skipped
        self._logvar = "logvar" in stored
        self._flip = "flip_mean" in stored
        self._norm = _normalization(self.summary["normalization"]) if normalized else None
        self._handles: dict[str, Any] = {}
        if verify:
            self.verify()

    def verify(self) -> None:
        """Every shard the index names: exists, its size is what its header and the manifest say, its
        header holds each item's tensors (headers only; `verify_cache` hashes the bytes). Raises
        VaeLensError naming the first broken shard and how to repair it."""
        import numpy as np

        order = np.argsort(self.index.shard, kind="stable")
        bounds = np.searchsorted(self.index.shard[order], np.arange(len(self.index.shards) + 1))
        for n, rel in enumerate(self.index.shards):
            members = self.index.keys[order[bounds[n] : bounds[n + 1]]]
            problem = check_shard(self.out, rel)
            if problem is None and self.index.shard_bytes.get(rel) not in (None, (self.out / rel).stat().st_size):
                problem = f"{rel} is {(self.out / rel).stat().st_size} bytes; the manifest recorded " \
                          f"{self.index.shard_bytes[rel]}"
            if problem is None:
                header, _ = shard_header(self.out / rel)
                lacking = [k.decode() for k in members if f"{k.decode()}/{self.latent}" not in header]
                if lacking:
                    problem = f"{rel} lacks the tensors of {len(lacking)} samples (e.g. {lacking[0]})"
            if problem is not None:
                raise VaeLensError(f"cache {str(self.out)!r}: {problem}; {len(members)} samples are in it: {REPAIR}",
                                   param="out", value=str(self.out))

    @property
    def resolutions(self) -> list[int]:
        return list(self.summary.get("resolutions") or [])

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handles
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _tensor(self, i: int, what: str):
        from safetensors import safe_open

        shard = self.index.shard_of(i)
        f = self._handles.get(shard)
        if f is None:
            f = self._handles[shard] = safe_open(str(self.out / shard), framework="pt")
        return f.get_tensor(f"{self.index.key(i)}/{what}").float()

    def _latent(self, i: int, prefix: str) -> tuple[Any, LatentPosterior | None]:
        z = self._tensor(i, prefix + self.latent)
        post = None
        if self._logvar:
            post = LatentPosterior(mean=self._tensor(i, prefix + "mean"), logvar=self._tensor(i, prefix + "logvar"))
        if self._norm is not None:
            from vaelens.normalization import normalize

            z = normalize(z[None], self._norm)[0]
            post = post.normalized(self._norm) if post is not None else None
        return z, post

    def __getitem__(self, i: int) -> dict[str, Any]:
        ix = self.index
        z, post = self._latent(i, "")
        top, left = ix.pair("crop_top_left", i)
        item: dict[str, Any] = {
            "latent": z,
            "source": ix.sources[i],
            "key": ix.key(i),
            "caption": ix.captions[i] or "",
            "original_size": ix.pair("original_size", i),
            "crop_top_left": (top, left),
            "target_size": ix.pair("bucket", i),
            "resolution": int(ix.resolution[i]),
        }
        if post is not None:
            item["posterior"] = post
        if self._flip:
            zf, pf = self._latent(i, "flip_")
            item["latent_flipped"] = zf
            # the mirror image's crop: the same window seen from the other side (kohya sd-scripts' flip_aug)
            item["crop_top_left_flipped"] = (top, ix.pair("resized_size", i)[1] - ix.pair("bucket", i)[1] - left)
            if pf is not None:
                item["posterior_flipped"] = pf
        return item

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        """-> list of index lists, each from one bucket (one epoch of a BucketSampler on one rank)."""
        from vaelens.datasets.sampler import BucketSampler

        return list(BucketSampler(self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                  rank=0, world_size=1))


def open_cache(out: str | Path, *, posterior: Posterior | str = Posterior.MODE, normalized: bool = True,
               resolution: int | None = None, verify: bool = True) -> CacheDataset:
    """cache folder -> CacheDataset of {"latent" [C,(F,)h,w], "caption", "original_size", "crop_top_left", …}.

    `posterior` is which latent each item's "latent" is: Posterior.MODE ("mode", the posterior's mean) or
    Posterior.SAMPLE ("sample", when the cache stored a fixed-seed sample); `normalized` applies the
    family's normalisation recorded in the cache (the latent a denoiser trains on) to the latent and to
    the posterior alike; `resolution` picks one resolution of a multi-resolution cache (default: all).
    Every shard is checked on open (verify=False skips it): a missing or truncated shard is one error
    saying to rerun the cache to repair it, not a FileNotFoundError mid-epoch.
    """
    return CacheDataset(out, posterior=posterior, normalized=normalized, resolution=resolution, verify=verify)
