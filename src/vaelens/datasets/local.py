"""The local engine: decode and resize in worker processes, encode in this process, in plan order.

Job.batches -> pool of `workers` processes (decode_batch, at most `prefetch` batches in flight, so memory
stays bounded) -> encode_batch, in batch order -> Result. Decoding the next batches overlaps encoding this
one. A worker that dies (killed by the kernel for memory, a crash in a decoder) ends the run with a
VaeLensError naming the batch, never a hang: the pool is a ProcessPoolExecutor, which fails every
pending future when a worker process disappears.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

from vaelens.datasets.encoder import BatchEncoder, Encoded, encode_batch
from vaelens.datasets.plan import Batch, Job, decode_batch
from vaelens.errors import VaeLensError

# (batch, indices that decoded, Encoded | None, Encoded of the flipped pixels | None, {index: decode error})
Result = tuple[Batch, list[int], Encoded | None, Encoded | None, dict[int, str]]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split_cpus(workers: int | None, threads: int | None, device: str) -> tuple[int, int | None]:
    """-> (decode worker processes, torch threads of the encoder).

    On CUDA the encoder needs little CPU: workers = CPUs (at most 8), torch's threads. On CPU encoding is
    ~94% of the work (demo VAE, 1600x1200 JPEGs into 256²), so the encoder keeps every CPU as torch
    threads — what a naive loop gets, so vaelens is never the one with fewer threads (issue 21: one
    worker + one thread was 0.70× a naive loop with two threads on a quiet 2-core machine) — and one
    decode process overlaps the remaining ~6% (benchmarks/cache_throughput.py; docs/datasets.md).
    """
    cpus = _cpus()
    if device.startswith("cuda"):
        return (min(8, cpus) if workers is None else workers), threads
    workers = (1 if cpus > 1 else 0) if workers is None else workers
    return workers, (threads if threads is not None else cpus)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Any]:
    """-> a process pool (concurrent.futures), or None for 0. Forked on Linux, as torch's DataLoader
    workers are (the workers run PIL and numpy only; spawn would demand an `if __name__ == "__main__"`
    guard of every script that calls vaelens), spawned elsewhere."""
    from concurrent.futures import ProcessPoolExecutor

    if workers <= 0:
        yield None
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch.set_num_threads(n) for the block (results of CPU kernels depend on it bit-wise)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_local(job: Job, encoder: BatchEncoder, *, pool: Any = None, prefetch: int = 4,
              flip: bool = False) -> Iterator[Result]:
    """Job -> per batch in plan order: (batch, indices decoded, Encoded of those (None: none decoded),
    Encoded of their mirror images (flip=True), {index: decode error})."""
    batches = list(job.batches)
    with torch_threads(encoder.settings.threads):
        if pool is None:
            for batch in batches:
                yield _encode(batch, decode_batch(batch), encoder, flip)
            return
        window: deque[tuple[Batch, Any]] = deque()
        it = iter(batches)
        for batch in it:
            window.append((batch, pool.submit(decode_batch, batch)))
            if len(window) >= prefetch:
                break
        while window:
            batch, pending = window.popleft()
            nxt = next(it, None)
            if nxt is not None:
                window.append((nxt, pool.submit(decode_batch, nxt)))
            yield _encode(batch, _result(pending, batch), encoder, flip)


def _result(future: Any, batch: Batch) -> Any:
    from concurrent.futures.process import BrokenProcessPool

    try:
        return future.result()
    except BrokenProcessPool:
        first = batch.items[0].rel if batch.items else "?"
        raise VaeLensError(
            f"a decode worker process died while decoding batch {batch.index} ({len(batch.items)} files from "
            f"{first!r}, bucket {batch.bucket[1]}x{batch.bucket[0]}): killed by the system, most likely for "
            "memory; use a smaller resolution, batch_size or fewer workers", param="workers") from None


def _encode(batch: Batch, decoded, encoder: BatchEncoder, flip: bool) -> Result:
    pixels, ok, errors = decoded
    if pixels is None:
        return batch, ok, None, None, errors
    enc, flipped = encode_batch(encoder, pixels, [batch.items[i].key for i in ok], flip=flip)
    return batch, ok, enc, flipped, errors
