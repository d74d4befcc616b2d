"""The CUDA Backend of `vaelens validate`: peaks and the device minimum through vaelens.memory.measure (the
code `memory --measure` uses), a budgeted tiled decode, cache throughput and real fp16/bf16.

Every module is the real diffusers class with random weights (memory and time do not depend on weight
values), except the precision case, which needs trained weights and uses the shipped demo VAE.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vaelens.memory import measure
from vaelens.memory.measure import Measured, Probe
from vaelens.options import DType
from vaelens.trace import Op, call_op
from vaelens.validate.backend import PrecisionMeasurement, ThroughputMeasurement, TiledMeasurement
from vaelens.validate.cases import Case

TIMED_CALLS = 3  # the median of 3 timed calls, as shared/measurements/README.md measured seconds_median
THROUGHPUT_BATCH = 8
THROUGHPUT_WORKERS: int | None = None  # decode processes of the cache run (None: its default)


class CudaBackend:
    """Measures on one CUDA device (`cuda` or `cuda:N`)."""

    def __init__(self, device: str = "cuda") -> None:
        from vaelens.validate.run import NO_CUDA

        measure.require_cuda("validate", device, instead=NO_CUDA)
        import torch

        self.device = device
        self.index = measure.device_index(device)
        torch.cuda.set_device(self.index)
        # where modules and tensors go: this device (tests point it at the CPU with the CUDA counters stubbed)
        self.torch_device = f"cuda:{self.index}"

    def free_bytes(self) -> int:
        import torch

        free, _ = torch.cuda.mem_get_info(self.index)
        return int(free + torch.cuda.memory_reserved(self.index) - torch.cuda.memory_allocated(self.index))

    def measure_peak(self, case: Case, input_shape: tuple[int, ...]) -> Measured:
        assert case.spec is not None
        return measure.measure_call(case.spec.diffusers_config(), input_shape, case.request.dtype, op=case.op,
                                    device=self.torch_device, timed=TIMED_CALLS)

    def probe(self, job: Mapping[str, Any]) -> Probe:
        return measure.probe_in_subprocess(job)

    def context_bytes(self) -> int:
        return measure.context_bytes(self.device)

    def measure_tiled(self, case: Case, plan: Any) -> TiledMeasurement:
        import torch

        from vaelens.tiling.api import decode

        assert case.spec is not None
        dtype = case.request.dtype.torch
        with _module(case.spec.diffusers_config(), dtype, self.torch_device) as module:
            torch.manual_seed(0)
            latent = torch.randn(tuple(plan.input_shape), device=self.torch_device, dtype=dtype)
            decode(module, latent, plan=plan)  # warm-up
            held: list[Any] = []
            got = measure.measure_peak_of(lambda: held.append(decode(module, latent, plan=plan)))
            tiled = held.pop().float().cpu()
            untiled, untiled_s = _untiled(module, latent)
            diffusers_s = _diffusers_tiling(module, latent)
        psnr = _psnr(tiled, untiled) if untiled is not None else None
        return TiledMeasurement(peak_bytes=got.base_bytes + got.peak_bytes, seconds=got.seconds,
                                untiled_seconds=untiled_s, diffusers_tiling_seconds=diffusers_s, psnr_db=psnr,
                                note="" if untiled is not None else "the untiled decode did not fit this device")

    def measure_throughput(self, case: Case) -> ThroughputMeasurement:
        assert case.spec is not None and case.images is not None
        with tempfile.TemporaryDirectory(prefix="vaelens-validate-") as tmp:
            return _throughput(case, Path(tmp), self.torch_device)

    def measure_precision(self, case: Case) -> PrecisionMeasurement:
        import torch

        from vaelens.metrics import psnr
        from vaelens.weights.demo import load_demo_vae

        vae = load_demo_vae(device=self.torch_device, dtype="fp32")
        pixels = demo_pixels(vae.spec).to(self.torch_device)
        ref = _roundtrip(vae.module, pixels)
        got, first = real_half(vae.module, pixels, case.request.dtype)
        db = psnr(_unit(ref), _unit(got)) if bool(torch.isfinite(got).all()) else float("nan")
        return PrecisionMeasurement(first_overflow=first, psnr_db=db)


def real_half(module: Any, pixels: Any, dtype: DType) -> tuple[Any, str | None]:
    """fp32 module + pixels [1,3,H,W] -> (encode+decode run for real at `dtype`, on the CPU in fp32; the layer of
    the first inf/NaN or None). Through vaelens.precision.run_real where it exists (the emulation's own
    watcher, so both name a layer the same way); else forward hooks on the leaf modules of a copy."""
    import copy

    try:
        from vaelens.precision import run_real
    except ImportError:
        run_real = None
    if run_real is not None:
        out, first = run_real(module, pixels, op="both", dtype=dtype)
        return out.float().cpu(), (first.layer if first is not None else None)
    half = copy.deepcopy(module).to(dtype.torch)
    seen: list[str] = []
    hooks = [m.register_forward_hook(_overflow_hook(name, seen))
             for name, m in half.named_modules() if name and not list(m.children())]
    try:
        return _roundtrip(half, pixels.to(dtype.torch)), (seen[0] if seen else None)
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def _module(config: Mapping[str, Any], dtype: Any, device: str) -> Iterator[Any]:
    import torch

    from vaelens.build import build_module

    torch.manual_seed(0)
    module = build_module(dict(config), device="cpu", dtype=DType.FP32).to(device, dtype).eval()
    try:
        yield module
    finally:
        del module
        torch.cuda.empty_cache()


def _untiled(module: Any, latent: Any) -> tuple[Any, float | None]:
    """The plain decode -> (output on the CPU in fp32, median seconds), or (None, None) when it does not fit."""
    import torch

    def call() -> Any:
        with torch.inference_mode():
            return call_op(module, Op.DECODE, [latent])

    try:
        out = call().float().cpu()
        seconds = measure.median_seconds(call, TIMED_CALLS)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, None
    return out, seconds


def _diffusers_tiling(module: Any, latent: Any) -> float | None:
    """The class's own enable_tiling() decode -> median seconds (None: no such method, or out of memory)."""
    import torch

    from vaelens.build import quiet_diffusers

    if not hasattr(module, "enable_tiling"):
        return None
    with quiet_diffusers():
        module.enable_tiling()
    try:
        def call() -> Any:
            with torch.inference_mode():
                return call_op(module, Op.DECODE, [latent])

        call()  # warm-up
        return measure.median_seconds(call, TIMED_CALLS)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    finally:
        module.disable_tiling()


def _psnr(got: Any, ref: Any) -> float:
    """Two decodes (same shape) -> PSNR in dB on the reference's own value range (random weights do not keep
    outputs in [-1, 1]); inf when equal."""
    import math

    diff = (got.double() - ref.double()).pow(2).mean().item()
    span = (ref.max() - ref.min()).item() or 1.0
    return math.inf if diff == 0 else 10.0 * math.log10(span * span / diff)


def demo_pixels(spec: Any) -> Any:
    """The demo photograph as pixels [1,3,H,W] in [-1,1], cropped to the demo VAE's size rule (`spec`)."""
    from vaelens.images import apply_family_size, read_image, to_pixels
    from vaelens.weights.demo import demo_image_path

    arr, info = read_image(demo_image_path())
    return to_pixels([apply_family_size(arr, spec, info)[0]])


def _roundtrip(module: Any, pixels: Any) -> Any:
    import torch

    with torch.inference_mode():
        latent = call_op(module, Op.ENCODE, [pixels])
        return call_op(module, Op.DECODE, [latent]).float().cpu()


def _unit(x: Any) -> Any:
    """pixels [1,3,H,W] in [-1,1] -> an array [H,W,3] in [0,1] (what metrics.psnr takes)."""
    return ((x[0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy()


def _overflow_hook(name: str, first: list[str]) -> Any:
    import torch

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if not first and isinstance(output, torch.Tensor) and not bool(torch.isfinite(output).all()):
            first.append(name)

    return hook


def _throughput(case: Case, tmp: Path, device: str) -> ThroughputMeasurement:
    """Generated JPEGs -> the naive loop's and `vaelens cache`'s images/s, the same VAE in the same dtype."""
    import torch

    from vaelens.build import build_module
    from vaelens.datasets import CacheOptions, EncodeSettings, cache_dataset, make_bucketing
    from vaelens.weights.load import load_vae

    assert case.spec is not None and case.images is not None
    data = tmp / "data"
    data.mkdir()
    files = write_images(data, case.images, (case.request.height, case.request.width))
    torch.manual_seed(0)
    build_module(case.spec, device="cpu").save_pretrained(tmp / "vae")
    vae = load_vae(tmp / "vae", family=case.spec, device=device, dtype=case.request.dtype)
    naive_loop(files[:THROUGHPUT_BATCH], vae.module, device)  # warm-up
    t0 = time.perf_counter()
    naive_loop(files, vae.module, device)
    naive = len(files) / (time.perf_counter() - t0)
    bucketing = make_bucketing(vae.spec, size=(case.request.height, case.request.width))
    t0 = time.perf_counter()
    cache_dataset(data, vae, tmp / "cache", options=CacheOptions(bucketing=bucketing, batch_size=THROUGHPUT_BATCH,
                                                          workers=THROUGHPUT_WORKERS),
                  encode=EncodeSettings(dtype=case.request.dtype.value))
    cached = len(files) / (time.perf_counter() - t0)
    return ThroughputMeasurement(images=len(files), cache_images_per_s=cached, naive_images_per_s=naive)


def write_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """n photograph-like JPEGs (smooth gradients and noise) of size (height, width) -> their paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        fx, fy = rng.uniform(20, 90, 2)
        base = np.stack([np.sin(xx / fx + i) * 90 + 128, np.cos(yy / fy) * 90 + 128, (xx * 0.1 + yy * 0.07) % 256], -1)
        img = np.clip(base + rng.normal(0, 14, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(img).save(paths[-1], quality=90)
    return paths


def naive_loop(files: list[Path], module: Any, device: str, batch: int = THROUGHPUT_BATCH) -> None:
    """What a training script usually does: open, RGB, to tensor, encode, one batch after another."""
    import numpy as np
    import torch
    from PIL import Image

    dtype = next(module.parameters()).dtype
    for s in range(0, len(files), batch):
        arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for f in files[s:s + batch]]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device, dtype)
        with torch.inference_mode():
            call_op(module, Op.ENCODE, [x]).cpu()
