"""Reading a latent cache in training code: `open_cache(OUT)` -> a PyTorch Dataset of latents.

cache folder -> CacheDataset: item i -> {"latent": [C,(F,)h,w] float32 (normalised as the family's
pipeline does, unless normalized=False), "source", "key", "original_size" (H, W), "crop_top_left"
(top, left), "target_size" (H, W) — the three SDXL micro-conditioning inputs — and "logvar" when
stored}. `batches()` groups indices by bucket for a DataLoader's batch_sampler (one shape per batch).
Shards are opened lazily with safetensors' safe_open (memory-mapped) in each worker process.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from vaelens.datasets.store import read_index, read_summary
from vaelens.errors import VaeLensError


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


class CacheDataset(_torch_dataset_base()):  # type: ignore[misc]
    """A finished latent cache as a map-style torch Dataset (see the module docstring)."""

    def __init__(self, out: str | Path, *, latent: str = "mean", normalized: bool = True) -> None:
        self.out = Path(out)
        self.summary = read_summary(out)
        if latent not in self.summary["tensors"]:
            raise VaeLensError(
                f"latent={latent!r} is not stored in {str(out)!r}; stored: {', '.join(self.summary['tensors'])}"
            )
        self.latent = latent
        self.normalized = normalized
        index = read_index(out)
        self.records = [r for r in index if "key" in r]
        self.skipped = [r for r in index if "key" not in r]
        self._norm = _normalization(self.summary["normalization"]) if normalized else None
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handles
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _tensor(self, rec: dict[str, Any], what: str):
        from safetensors import safe_open

        shard = rec["shard"]
        f = self._handles.get(shard)
        if f is None:
            f = self._handles[shard] = safe_open(str(self.out / shard), framework="pt")
        return f.get_tensor(rec["tensors"][what]).float()

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        z = self._tensor(rec, self.latent)
        if self._norm is not None:
            from vaelens.normalization import normalize

            z = normalize(z[None], self._norm)[0]
        item: dict[str, Any] = {
            "latent": z,
            "source": rec["source"],
            "key": rec["key"],
            "original_size": tuple(rec["original_size"]),
            "crop_top_left": tuple(rec["crop_top_left"]),
            "target_size": tuple(rec["bucket"]),
        }
        if "logvar" in rec["tensors"]:
            item["logvar"] = self._tensor(rec, "logvar")
        return item

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        """-> list of index lists, each from one bucket (a DataLoader batch_sampler)."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(self.records):
            groups.setdefault((tuple(r["bucket"]), r.get("frames")), []).append(i)
        rng = random.Random(seed)
        out = []
        for idx in groups.values():
            if shuffle:
                rng.shuffle(idx)
            out += [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
        if drop_last:
            out = [b for b in out if len(b) == batch_size]
        if shuffle:
            rng.shuffle(out)
        return out


def open_cache(out: str | Path, *, latent: str = "mean", normalized: bool = True) -> CacheDataset:
    """cache folder -> CacheDataset of {"latent" [C,(F,)h,w], "original_size", "crop_top_left", …}.

    `latent` is "mean" or "sample" (when the cache stored a fixed-seed sample); `normalized` applies the
    family's normalisation recorded in the cache (the latent a denoiser trains on).
    """
    return CacheDataset(out, latent=latent, normalized=normalized)
