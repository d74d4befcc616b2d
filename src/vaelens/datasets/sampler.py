"""Batches for training over a latent cache: one bucket per batch, reshuffled every epoch, split across
distributed ranks without overlap.

CacheDataset (its columns) + batch size + seed + epoch -> per bucket (bucket, frames) the items shuffled
with the (seed, epoch) generator and cut into batches -> all batches shuffled -> batch k goes to rank
k mod world_size; every rank gets the same number of batches (the last world_size-1 leftovers are
dropped, so no rank waits on another at the end of an epoch). DataLoader worker processes need no split:
a batch sampler hands each batch to one worker.

    sampler = BucketSampler(ds, batch_size=16, seed=0)      # rank / world size from torch.distributed
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=4)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader: ...
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vaelens.errors import VaeLensError


def _sampler_base():
    from torch.utils.data import Sampler

    return Sampler


class BucketSampler(_sampler_base()):  # type: ignore[misc]
    """A torch batch sampler over a CacheDataset (see the module docstring)."""

    def __init__(self, dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise VaeLensError(f"batch_size {batch_size!r} must be at least 1", param="batch_size", value=batch_size)
        if rank is None or world_size is None:
            r, w = _distributed()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise VaeLensError(f"rank {rank} is not in 0..{world_size - 1} (world_size={world_size})",
                               param="rank", value=rank)
        self.groups = list(dataset.index.groups().values())
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration draws (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        out: list[list[int]] = []
        for idx in self.groups:
            idx = rng.permutation(idx) if self.shuffle else idx
            for s in range(0, len(idx), self.batch_size):
                b = idx[s : s + self.batch_size]
                if len(b) == self.batch_size or not self.drop_last:
                    out.append([int(i) for i in b])
        if self.shuffle:
            out = [out[k] for k in rng.permutation(len(out))]
        usable = len(out) // self.world_size * self.world_size
        return out[:usable]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._all_batches()[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = sum((len(g) // self.batch_size) if self.drop_last else -(-len(g) // self.batch_size) for g in self.groups)
        return n // self.world_size


def _distributed() -> tuple[int, int]:
    """-> (rank, world size) of torch.distributed when it is initialised, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
