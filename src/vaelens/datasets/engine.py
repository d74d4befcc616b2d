"""The engine choice: a planned Job run by local processes or by Ray Data, the same results either way.

Job + LoadedVae + EncodeSettings -> run_engine -> iterator of (batch, indices decoded, Encoded, flipped
Encoded, decode errors) in plan order, and the compute dtype with its reason. `cache_dataset` and
`compute_stats` both call it; it imports neither.
"""

from __future__ import annotations

from typing import Any

from vaelens.datasets.encoder import BatchEncoder, EncodeSettings
from vaelens.datasets.plan import Job
from vaelens.options import Choice


class Engine(Choice):
    """Where the batches run: worker processes on this machine, or a Ray cluster (Ray Data)."""

    LOCAL = "local"
    RAY = "ray"


def run_engine(job: Job, vae, encode: EncodeSettings, *, engine: Engine | str = Engine.LOCAL, pool: Any = None,
               address: str | None = None, workers: int | None = None, flip: bool = False, quiet: bool = False):
    """-> (the engine's iterator of results, (compute dtype, reason))."""
    if Engine.parse(engine) is Engine.RAY:
        from vaelens.datasets.ray_engine import run_ray

        return run_ray(job, vae, encode, address=address, workers=workers, flip=flip, quiet=quiet)
    from vaelens.datasets.local import run_local

    encoder = BatchEncoder(vae, encode)
    return run_local(job, encoder, pool=pool, flip=flip), (encoder.dtype.value, encoder.dtype_reason)
