"""Encode, decode and round-trip with real weights: normalisation, fp32 upcast, NaN/Inf checks,
time and peak memory, PSNR and SSIM.

pixels [B,3,H,W] in [-1,1] -> encode -> raw latent z [B,C,h,w] -> normalise -> latent
latent -> denormalise -> decode -> pixels [B,3,H,W] (float32 on CPU; not clamped)
Video families take a still image as one frame: pixels [B,3,1,H,W].
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaelens.errors import VaeLensError
from vaelens.metrics import psnr, ssim
from vaelens.options import Choice, DType
from vaelens.weights.load import LoadedVae, cast_module


class Upcast(Choice):
    """When to run a step in fp32 although the module's dtype is fp16/bf16."""

    AUTO = "auto"  # as diffusers: fp32 when config.force_upcast and fp16; and redo in fp32 on NaN/Inf
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepReport:
    """One encode or decode call: the dtype it ran in, why, what went non-finite, time and memory."""

    op: str
    dtype_requested: DType
    dtype_used: DType
    upcast_reason: str | None
    nonfinite_first: int  # NaN/Inf elements in the first attempt's output
    nonfinite: int  # … in the output returned
    seconds: float
    memory: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "dtype_requested": self.dtype_requested.value,
            "dtype_used": self.dtype_used.value,
            "upcast": self.upcast_reason,
            "nonfinite_first_attempt": self.nonfinite_first,
            "nonfinite": self.nonfinite,
            "seconds": round(self.seconds, 4),
            "memory": self.memory,
        }


# --------------------------------------------------------------------------------------- memory


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def measure_memory(device: str) -> Iterator[dict[str, Any]]:
    """Peak memory of the block. CUDA: max_memory_allocated − memory_allocated before (vaelens' peak_bytes
    definition). CPU: resident-set size sampled every 2 ms minus RSS before (allocator caching included;
    not comparable with CUDA numbers). Other platforms: not measured."""
    import torch

    out: dict[str, Any] = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        try:
            yield out
        finally:
            torch.cuda.synchronize()
            out.update(
                peak_bytes=int(torch.cuda.max_memory_allocated() - before),
                method="torch.cuda.max_memory_allocated() - memory_allocated() before the call",
            )
        return
    start = _rss_bytes()
    if start is None:
        out.update(peak_bytes=None, method="not measured on this platform (no /proc/self/statm)")
        yield out
        return
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > peak[0]:
                peak[0] = rss
            stop.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        end = _rss_bytes() or start
        peak[0] = max(peak[0], end)
        out.update(
            peak_bytes=int(peak[0] - start),
            method="CPU: peak resident-set size (sampled every 2 ms) minus RSS before the call; "
            "includes allocator caching, not comparable with CUDA peak_bytes",
        )


# ------------------------------------------------------------------------------------------ steps


def _nonfinite(t) -> int:
    import torch

    return int((~torch.isfinite(t)).sum().item())


def _dtype_of(module) -> DType:
    return DType.of(next(module.parameters()).dtype)


def _run(vae: LoadedVae, op: str, x, fn, upcast: Upcast) -> tuple[Any, StepReport]:
    """Run fn(module, x) at the module's dtype, or in fp32 per `upcast`; module's dtype restored after."""
    import torch

    module = vae.module
    requested = _dtype_of(module)
    forced = None
    if requested is not DType.FP32:
        if upcast is Upcast.ALWAYS:
            forced = "always (as asked)"
        elif upcast is Upcast.AUTO and requested is DType.FP16 and vae.spec.config.get("force_upcast"):
            # diffusers pipelines (e.g. stable_diffusion_xl/pipeline_stable_diffusion_xl.py: needs_upcasting)
            # run a force_upcast VAE in fp32 when the pipeline runs in fp16.
            forced = "config force_upcast with fp16 (as diffusers pipelines do)"
    t0 = time.perf_counter()
    with measure_memory(vae.device) as mem:
        try:
            used = DType.FP32 if forced else requested
            if forced:
                cast_module(module, dtype=torch.float32)
            with torch.inference_mode():
                out = fn(module, x.to(vae.device, used.torch))
            first = _nonfinite(out)
            reason = forced
            final = first
            if first and used is not DType.FP32 and upcast is Upcast.AUTO:
                cast_module(module, dtype=torch.float32)
                with torch.inference_mode():
                    out = fn(module, x.to(vae.device, torch.float32))
                used, final = DType.FP32, _nonfinite(out)
                reason = f"{first} NaN/Inf values at {requested.value}; redone in fp32"
        finally:
            cast_module(module, dtype=requested.torch)
    seconds = time.perf_counter() - t0
    report = StepReport(
        op=op,
        dtype_requested=requested,
        dtype_used=used,
        upcast_reason=reason,
        nonfinite_first=first,
        nonfinite=final,
        seconds=seconds,
        memory=dict(mem),
    )
    return out.float().cpu(), report


def _as_module_input(vae: LoadedVae, pixels):
    """pixels [B,3,H,W] -> [B,3,1,H,W] for modules that take video (one frame)."""
    if (vae.spec.is_video or vae.spec.video_module) and pixels.ndim == 4:
        return pixels.unsqueeze(2)
    return pixels


def _as_module_latent(vae: LoadedVae, latent):
    """latent [B,C,h,w] -> [B,C,1,h,w] for a video VAE (one latent frame, as encode makes of an image);
    [B,C,1,h,w] -> [B,C,h,w] for an image VAE; a latent with several frames is refused by an image VAE."""
    video = vae.spec.is_video or vae.spec.video_module
    if video and latent.ndim == 4:
        return latent.unsqueeze(2)
    if not video and latent.ndim == 5:
        if latent.shape[2] != 1:
            raise VaeLensError(
                f"latent {list(latent.shape)} has {latent.shape[2]} frames; {vae.family} is an image VAE "
                "and decodes [B, C, h, w] (or one frame)"
            )
        return latent[:, :, 0]
    return latent


def _check_input(t, what: str) -> None:
    if not t.is_floating_point():
        hint = f"{what}.float() / 127.5 - 1" if what == "pixels" else f"{what}.float()"
        raise VaeLensError(
            f"{what} is a {str(t.dtype).replace('torch.', '')} tensor; vaelens takes float {what}"
            + (" in [-1, 1] (a uint8 image is 0..255)" if what == "pixels" else "")
            + f": convert it explicitly, e.g. {hint}"
        )
    bad = _nonfinite(t)
    if bad:
        raise VaeLensError(
            f"{what} holds {bad} NaN/Inf values of {t.numel()}; the VAE is not run on non-finite input"
        )


# Classes whose encode returns a latent, not a posterior distribution (diffusers autoencoder_tiny.py
# AutoencoderTinyOutput.latents, autoencoder_dc.py EncoderOutput.latent, vq_model.py VQEncoderOutput):
# `sample` cannot change what they return.
DETERMINISTIC_CLASSES = frozenset({"AutoencoderTiny", "AutoencoderDC", "VQModel"})


def posterior_kind(vae: LoadedVae) -> str:
    """LoadedVae -> "gaussian" (KL VAEs: mode or seeded sample) or "deterministic" (one latent per image)."""
    return "deterministic" if vae.spec.diffusers_class in DETERMINISTIC_CLASSES else "gaussian"


def encode(
    vae: LoadedVae,
    pixels,
    *,
    sample: bool = False,
    seed: int = 0,
    normalized: bool = True,
    upcast: Upcast | str = Upcast.AUTO,
) -> tuple[Any, StepReport]:
    """pixels [B,3,H,W] in [-1,1] -> (latent [B,C,(1,)h,w] float32 CPU, normalised unless told not, StepReport).

    `sample` draws from the posterior with a seeded generator; otherwise its mode (the mean for KL VAEs).
    """
    import torch

    from vaelens.build import run_encode
    from vaelens.normalization import normalize

    _check_input(pixels, "pixels")
    upcast = Upcast.parse(upcast)
    x = _as_module_input(vae, pixels)

    def fn(module, inp):
        gen = torch.Generator(device=inp.device).manual_seed(seed) if sample else None
        return run_encode(module, inp, sample=sample, generator=gen)  # one encoder pass

    z, report = _run(vae, "encode", x, fn, upcast)
    if normalized:
        z = normalize(z, vae.spec.normalization, module=vae.module)
        z = z.float().cpu()
    return z, report


def _comparable(norm) -> dict[str, Any]:
    from vaelens.normalization import normalization_to_json

    return {k: v for k, v in normalization_to_json(norm).items() if k not in ("source", "formula")}


def recorded_normalization(recorded, vae: LoadedVae):
    """The normalisation a latent file records, the VAE's -> (Normalization to undo, note or None).

    The file's record is exact (it is what encode applied), so it wins over the VAE's config when they
    differ; statistics that live in a checkpoint (stats_from) are not in the file, so such a mismatch is
    refused naming both.
    """
    from vaelens.normalization import describe

    configured = vae.spec.normalization
    if recorded is None or _comparable(recorded) == _comparable(configured):
        return configured, None
    if recorded.stats_from:
        raise VaeLensError(
            f"the latent file was normalised as {describe(recorded)} (statistics from the checkpoint's "
            f"{recorded.stats_from}), {vae.family} normalises as {describe(configured)}; decode it with the "
            "weights that encoded it, or treat it as raw with normalized=False"
        )
    return recorded, (
        f"undoing the normalisation recorded in the file ({describe(recorded)}), not {vae.family}'s "
        f"configured {describe(configured)}"
    )


def decode(
    vae: LoadedVae,
    latent,
    *,
    normalized: bool = True,
    upcast: Upcast | str = Upcast.AUTO,
    normalization: Any = None,
) -> tuple[Any, StepReport]:
    """latent (normalised unless told not) -> (pixels [B,3,(F,)H,W] float32 CPU, not clamped, StepReport).

    normalization: the one to undo (e.g. what a latent file records; see recorded_normalization);
    default: the VAE's own.
    """
    from vaelens.build import run_decode
    from vaelens.normalization import denormalize

    _check_input(latent, "latent")
    upcast = Upcast.parse(upcast)
    z = _as_module_latent(vae, latent)
    if normalized:
        z = denormalize(z.to(vae.device), normalization or vae.spec.normalization, module=vae.module)
    pixels, report = _run(vae, "decode", z, run_decode, upcast)
    if pixels.ndim == 5 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return pixels, report


@dataclass(frozen=True, slots=True, kw_only=True)
class Roundtrip:
    """pixels -> latent -> pixels, scored: PSNR/SSIM on [0,1] images, per-pixel error map."""

    latent: Any
    reconstruction: np.ndarray  # [B,H,W,3] in [0,1]
    error: np.ndarray  # [B,H,W] mean |input − reconstruction| over RGB, in [0,1] units
    psnr: tuple[float, ...]
    ssim: tuple[float, ...]
    encode: StepReport
    decode: StepReport
    # The largest |input − reconstruction| of any pixel and channel (the map above averages RGB first,
    # so its max is smaller); NaN where the reconstruction is not finite.
    max_abs_error: tuple[float, ...] = ()

    def item(self, i: int) -> Roundtrip:
        """-> the Roundtrip of batch item i alone (its encode/decode reports are the whole call's)."""
        from dataclasses import replace

        return replace(
            self,
            latent=self.latent[i : i + 1],
            reconstruction=self.reconstruction[i : i + 1],
            error=self.error[i : i + 1],
            psnr=self.psnr[i : i + 1],
            ssim=self.ssim[i : i + 1],
            max_abs_error=self.max_abs_error[i : i + 1],
        )

    @property
    def finite(self) -> bool:
        """False when a metric is NaN (the reconstruction holds NaN/Inf): the round trip failed."""
        return not any(np.isnan(v) for v in (*self.psnr, *self.ssim, *self.max_abs_error))

    def to_json(self) -> dict[str, Any]:
        reasons: dict[str, str] = {}

        def number(values, key: str, digits: int) -> list[float | None]:
            """JSON has no NaN/Infinity: such a value is null, with the reason under "null_reasons"."""
            out: list[float | None] = []
            for i, v in enumerate(values):
                v = float(v)
                if np.isfinite(v):
                    out.append(round(v, digits))
                    continue
                out.append(None)
                reasons[f"{key}[{i}]"] = (
                    "infinite: the reconstruction equals the input exactly" if v == float("inf")
                    else "NaN: the reconstruction holds NaN/Inf values"
                )
            return out

        data = {
            "psnr_db": number(self.psnr, "psnr_db", 4),
            "ssim": number(self.ssim, "ssim", 5),
            "latent_shape": list(self.latent.shape),
            "mean_abs_error": number((e.mean() for e in self.error), "mean_abs_error", 6),
            "max_abs_error": number(self.max_abs_error, "max_abs_error", 6),
            "max_abs_error_map": number((e.max() for e in self.error), "max_abs_error_map", 6),
            "seconds": round(self.encode.seconds + self.decode.seconds, 4),
            "encode": self.encode.to_json(),
            "decode": self.decode.to_json(),
        }
        if reasons:
            data["null_reasons"] = reasons
        return data


def roundtrip(
    vae: LoadedVae,
    pixels,
    *,
    sample: bool = False,
    seed: int = 0,
    upcast: Upcast | str = Upcast.AUTO,
    on_stage: Callable[[str], None] | None = None,
) -> Roundtrip:
    """pixels [B,3,H,W] in [-1,1] -> Roundtrip (the latent passes through the family's normalisation).

    on_stage("encode" | "decode" | "metrics") is called as each stage starts (a progress display).
    """
    from vaelens.images import from_pixels

    stage = on_stage or (lambda name: None)
    stage("encode")
    latent, enc = encode(vae, pixels, sample=sample, seed=seed, upcast=upcast)
    stage("decode")
    out, dec = decode(vae, latent, upcast=upcast)
    stage("metrics")
    src, rec = from_pixels(pixels), from_pixels(out)
    if rec.shape != src.shape:
        raise VaeLensError(f"decoder returned {list(out.shape)} for input {list(pixels.shape)}")
    diff = np.abs(src - rec)
    err = diff.mean(axis=-1)
    return Roundtrip(
        max_abs_error=tuple(float(d.max()) for d in diff),
        latent=latent,
        reconstruction=rec,
        error=err,
        psnr=tuple(psnr(s, r) for s, r in zip(src, rec, strict=True)),
        ssim=tuple(ssim(s, r) for s, r in zip(src, rec, strict=True)),
        encode=enc,
        decode=dec,
    )
