"""What a validation run measures through: the Backend interface, and the measurement records it returns.

The CUDA implementation is vaelens.validate.cuda.CudaBackend (built on vaelens.memory.measure, the same
code as `memory --measure`); tests pass a fake with the same methods, so the orchestration, bisection,
tolerances and output are tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vaelens.memory.measure import Measured, Probe
from vaelens.validate.cases import Case

if TYPE_CHECKING:
    from vaelens.tiling.plan import TilingPlan


@dataclass(frozen=True, slots=True, kw_only=True)
class TiledMeasurement:
    """A budgeted decode on the device, and the same latent decoded untiled and with diffusers' tiling."""

    peak_bytes: int  # max_memory_allocated() over the budgeted call: weights and input included
    seconds: float  # the budgeted call (after a warm-up)
    untiled_seconds: float | None  # None: the untiled decode did not fit the device
    diffusers_tiling_seconds: float | None  # the class's enable_tiling(); None: no such method
    psnr_db: float | None  # budgeted vs untiled, on the untiled output's range; None without untiled
    note: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ThroughputMeasurement:
    """`vaelens cache` and a naive loop encoding the same generated images with the same VAE."""

    images: int
    cache_images_per_s: float  # the whole cache run: scan, hash, decode, encode, shards, index
    naive_images_per_s: float  # open, resize, encode one batch after another in one process


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecisionMeasurement:
    """The real dtype on the device against fp32 on the device (encode, then decode)."""

    first_overflow: str | None  # module path of the first layer whose output is not finite
    psnr_db: float  # decoded in the dtype vs decoded in fp32, images in [0, 1]


class Backend(Protocol):
    """A device to measure on. Every method measures one case; none predicts."""

    device: str

    def free_bytes(self) -> int:
        """Device memory this process can still use (a case needing more is skipped, not failed)."""
        ...

    def measure_peak(self, case: Case, input_shape: tuple[int, ...]) -> Measured:
        """The case's call (encode pixels / decode a latent of `input_shape`): allocated and reserved peak,
        base, median time."""
        ...

    def probe(self, job: Mapping[str, Any]) -> Probe:
        """One try of a call under an allocator cap in a fresh process (memory.measure.probe_job)."""
        ...

    def context_bytes(self) -> int:
        """What one more process with a CUDA context holds on the device (memory.measure.context_bytes)."""
        ...

    def measure_tiled(self, case: Case, plan: TilingPlan) -> TiledMeasurement:
        """Decode a random latent of plan.input_shape with `plan`, untiled, and with enable_tiling()."""
        ...

    def measure_throughput(self, case: Case) -> ThroughputMeasurement:
        """`vaelens cache` vs a naive loop on case.images generated images."""
        ...

    def measure_precision(self, case: Case) -> PrecisionMeasurement:
        """The demo VAE on the demo photograph in case.request.dtype vs fp32, on the device."""
        ...
