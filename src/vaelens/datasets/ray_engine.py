"""The Ray engine: the same planned batches as a Ray Data pipeline.

Job.batches -> ray.data.from_items (one row per planned batch) -> map(decode_batch) on CPU tasks ->
map(_Encoder) on an actor pool (one GPU per actor where the cluster has GPUs, else CPU actors) ->
streamed back to the driver in plan order, which writes shards, manifest and statistics exactly as the
local engine does. The batches are the plan's, and each actor runs torch with the same thread count as
the local engine, so the tensors are identical to a local run.

Workers must see the dataset and the VAE weights at the same paths (a local cluster, or a shared
filesystem). Ray is an optional extra: pip install 'vaelens[ray]'.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from typing import Any

from vaelens.datasets.encoder import Encoded, EncodeSettings, encode_batch
from vaelens.datasets.plan import Batch, Job, decode_batch
from vaelens.errors import VaeLensError
from vaelens.run.steps import resolve_dtype


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise VaeLensError("engine='ray' needs Ray Data: pip install 'vaelens[ray]'", param="engine",
                           value="ray") from None
    return ray


def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
    batch: Batch = pickle.loads(row["batch"])
    pixels, ok, errors = decode_batch(batch)
    return {"batch": row["batch"], "decoded": pickle.dumps((pixels, ok, errors), protocol=5)}


class _Encoder:
    """A Ray actor holding one loaded VAE; encodes decoded batches."""

    def __init__(self, source: str, family: str | None, device: str, dtype: str, settings: EncodeSettings,
                 flip: bool = False) -> None:
        import torch

        from vaelens.datasets.encoder import BatchEncoder
        from vaelens.weights.load import load_vae

        if settings.threads:
            torch.set_num_threads(settings.threads)
        vae = load_vae(source, family=family, device=device, dtype=dtype)
        self.encoder = BatchEncoder(vae, settings)
        self.flip = flip

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        batch: Batch = pickle.loads(row["batch"])
        pixels, ok, errors = pickle.loads(row["decoded"])
        enc = flipped = None
        if pixels is not None:
            enc, flipped = encode_batch(self.encoder, pixels, [batch.items[i].key for i in ok], flip=self.flip)
        return {"index": batch.index, "result": pickle.dumps((ok, enc, flipped, errors), protocol=5)}


CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's address before giving up (Ray itself retries ~150 s)


def check_address(address: str | None, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """A Ray address -> None when something listens there (a TCP connect within `timeout` s), else a
    one-line VaeLensError. None, "auto" and "local" are not checked (Ray starts or finds a local cluster)."""
    import socket

    if address is None or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise VaeLensError(f"address {address!r} is not host:port (or ray://host:port, auto, local)",
                           param="address", value=address)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as exc:
        raise VaeLensError(f"address {address!r}: no Ray cluster answers there ({exc.strerror or exc}; waited "
                           f"at most {timeout:g} s)", param="address", value=address) from None


def run_ray(
    job: Job, vae, encode: EncodeSettings, *, address: str | None = None, workers: int | None = None,
    flip: bool = False, quiet: bool = False,
) -> tuple[Iterator[tuple[Batch, list[int], Encoded | None, Encoded | None, dict[int, str]]], tuple[str, str | None]]:
    """Job -> (iterator of (batch, decoded indices, Encoded, flipped Encoded, decode errors) in plan order,
    (dtype, reason)). quiet=True keeps Ray's own INFO/WARNING lines off the terminal."""
    import torch

    ray = import_ray()
    level = logging.ERROR if quiet else logging.WARNING
    if not ray.is_initialized():
        check_address(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=level,
                 configure_logging=True)
    # vaelens draws its own progress (images/s, ETA); Ray Data's bars and INFO lines would interleave
    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)
    dtype, reason = resolve_dtype(encode.dtype, device=vae.device, config=dict(vae.spec.config))
    settings = encode if encode.threads else _with_threads(encode, torch.get_num_threads())
    gpus = 1 if vae.device.startswith("cuda") else 0
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = (
        max(1, int(ray.cluster_resources().get("GPU", 0)))
        if gpus
        else (workers or max(1, cpus // max(1, settings.threads or 1)))
    )
    source = str(vae.source)
    family = vae.spec.name if vae.detection.startswith("given") else None
    return _stream(job, ray, source, family, vae.device.split(":")[0], dtype.value, settings, gpus, actors, flip), (
        dtype.value,
        reason,
    )


def _with_threads(encode: EncodeSettings, n: int) -> EncodeSettings:
    from dataclasses import replace

    return replace(encode, threads=n)


def _stream(job: Job, ray, source, family, device, dtype, settings, gpus, actors, flip):
    batches = {b.index: b for b in job.batches}
    if not batches:
        return
    rows = [{"batch": pickle.dumps(b, protocol=5)} for b in job.batches]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map(_decode_row, num_cpus=1)
    ds = ds.map(
        _Encoder,
        fn_constructor_args=(source, family, device, dtype, settings, flip),
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=0 if gpus else 1,
    )
    done: dict[int, tuple[Any, ...]] = {}
    nxt = 0
    order = sorted(batches)
    for row in ds.iter_rows():
        done[int(row["index"])] = pickle.loads(row["result"])
        while nxt < len(order) and order[nxt] in done:  # hand results on in plan order
            ok, enc, flipped, errors = done.pop(order[nxt])
            yield batches[order[nxt]], ok, enc, flipped, errors
            nxt += 1
