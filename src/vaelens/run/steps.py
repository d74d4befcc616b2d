"""One encode or decode step on a loaded VAE: the dtype policy, input checks, the per-sample NaN retry in
fp32, the posterior choice, time and peak memory.

pixels [B,3,(F,)H,W] in [-1,1] -> encode_step -> raw latent z [B,C,(F',)h,w] float32 CPU + StepReport
raw latent z -> decode_step -> pixels [B,3,(F,)H,W] float32 CPU (not clamped) + StepReport

The dtype policy has one meaning everywhere (this module, the CLI, the dataset encoder): a requested dtype
"auto" is bf16 on CUDA and fp32 on CPU; fp16 on a VAE whose config says force_upcast runs in fp32, as
diffusers pipelines do (pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py: needs_upcasting);
with Upcast.AUTO a sample whose output holds NaN/Inf is redone alone in fp32.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import Choice, DType, Posterior

AUTO = "auto"


class Upcast(Choice):
    """When to run a step in fp32 although the module's dtype is fp16/bf16."""

    AUTO = "auto"  # fp32 when config.force_upcast and fp16 (as diffusers); a NaN/Inf sample redone in fp32
    ALWAYS = "always"
    NEVER = "never"


def resolve_dtype(requested: DType | str, *, device: str, config: Any = None) -> tuple[DType, str | None]:
    """'auto' | fp32 | fp16 | bf16 on device -> (DType to run in, reason when it differs from the request).

    >>> resolve_dtype("auto", device="cpu")
    (<DType.FP32: 'fp32'>, 'auto: fp32 on CPU')
    """
    if str(getattr(requested, "value", requested)).lower() == AUTO:
        return (DType.BF16, "auto: bf16 on CUDA") if device.startswith("cuda") else (DType.FP32, "auto: fp32 on CPU")
    dt = DType.parse(requested)
    if dt is DType.FP16 and (config or {}).get("force_upcast"):
        return DType.FP32, "config force_upcast with fp16: fp32 (as diffusers pipelines do)"
    return dt, None


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
    retried: tuple[int, ...] = ()  # batch items redone alone in fp32 after NaN/Inf
    items: int = 0  # batch items in the call(s)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "dtype_requested": self.dtype_requested.value,
            "dtype_used": self.dtype_used.value,
            "upcast": self.upcast_reason,
            "nonfinite_first_attempt": self.nonfinite_first,
            "nonfinite": self.nonfinite,
            "retried_items": list(self.retried),
            "seconds": round(self.seconds, 4),
            "memory": self.memory,
        }


# --------------------------------------------------------------------------------------- memory


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
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


# ----------------------------------------------------------------------------------------- checks


def is_video_vae(vae) -> bool:
    return bool(vae.spec.is_video or vae.spec.video_module)


def _tensor(x: Any, what: str):
    import torch

    if not isinstance(x, torch.Tensor):
        raise VaeLensError(
            f"{what}= is a {type(x).__name__}; vaelens takes a torch.Tensor (torch.as_tensor(...) converts arrays)",
            param=what, value=type(x).__name__,
        )
    return x


def check_pixels(vae, pixels: Any):
    """pixels [B,3,H,W] / [B,3,F,H,W] float, finite -> the same tensor; anything else raises VaeLensError."""
    t = _tensor(pixels, "pixels")
    if not t.is_floating_point():
        hint = "pixels.float() / 127.5 - 1" if t.dtype.itemsize == 1 else "pixels.float()"
        raise VaeLensError(
            f"pixels is a {str(t.dtype).replace('torch.', '')} tensor; vaelens takes float pixels in [-1, 1] "
            f"(a uint8 image is 0..255): convert it explicitly, e.g. {hint}",
            param="pixels", value=str(t.dtype),
        )
    want = int(vae.spec.config.get("in_channels", 3))
    if t.ndim not in (4, 5) or t.shape[1] != want or 0 in t.shape:
        raise VaeLensError(
            f"pixels shape {list(t.shape)} is not [B, {want}, H, W] or [B, {want}, F, H, W] for {vae.family}",
            param="pixels", value=list(t.shape),
        )
    _finite_input(t, "pixels")
    return t


def check_latent(vae, latent: Any, *, normalized: bool):
    """latent [B,C,h,w] / [B,C,F,h,w] float, finite, with the VAE's channel count -> the same tensor."""
    t = _tensor(latent, "latent")
    if not t.is_floating_point():
        raise VaeLensError(
            f"latent is a {str(t.dtype).replace('torch.', '')} tensor; latents are float (an integer latent is "
            "not a VAE's output): convert it explicitly with latent.float() if that is what you mean",
            param="latent", value=str(t.dtype),
        )
    norm = vae.spec.normalization
    want = vae.spec.latent_channels
    if normalized and norm.patch:  # BatchNorm on p×p patches: the normalised latent has C·p·p channels
        want *= norm.patch[0] * norm.patch[1]
    if t.ndim not in (4, 5) or t.shape[1] != want or 0 in t.shape:
        raise VaeLensError(
            f"latent shape {list(t.shape)} is not [B, {want}, h, w] or [B, {want}, F, h, w]: {vae.family} decodes "
            f"{want}-channel {'normalised' if normalized else 'raw'} latents",
            param="latent", value=list(t.shape),
        )
    if t.ndim == 5 and not is_video_vae(vae) and t.shape[2] != 1:
        raise VaeLensError(
            f"latent {list(t.shape)} has {t.shape[2]} frames; {vae.family} is an image VAE "
            "and decodes [B, C, h, w] (or one frame)", param="latent", value=list(t.shape),
        )
    _finite_input(t, "latent")
    return t


def _finite_input(t, what: str) -> None:
    bad = nonfinite(t)
    if bad:
        raise VaeLensError(
            f"{what} holds {bad} NaN/Inf values of {t.numel()}; the VAE is not run on non-finite input",
            param=what, value=bad,
        )


def nonfinite(t) -> int:
    import torch

    return int((~torch.isfinite(t)).sum().item())


def as_module_input(vae, pixels):
    """pixels [B,3,H,W] -> [B,3,1,H,W] for modules that take video (one frame)."""
    return pixels.unsqueeze(2) if is_video_vae(vae) and pixels.ndim == 4 else pixels


def as_module_latent(vae, latent):
    """latent [B,C,h,w] -> [B,C,1,h,w] for a video VAE (one latent frame, as encode makes of an image);
    [B,C,1,h,w] -> [B,C,h,w] for an image VAE."""
    if is_video_vae(vae) and latent.ndim == 4:
        return latent.unsqueeze(2)
    if not is_video_vae(vae) and latent.ndim == 5:
        return latent[:, :, 0]
    return latent


# ------------------------------------------------------------------------------------------ posterior

# Classes whose encode returns a latent, not a posterior distribution (diffusers autoencoder_tiny.py
# AutoencoderTinyOutput.latents, autoencoder_dc.py EncoderOutput.latent, vq_model.py VQEncoderOutput):
# a sample cannot change what they return.
DETERMINISTIC_CLASSES = frozenset({"AutoencoderTiny", "AutoencoderDC", "VQModel"})


def has_posterior(vae) -> bool:
    """LoadedVae -> True for KL VAEs (mode or seeded sample), False for one deterministic latent per image."""
    return vae.spec.diffusers_class not in DETERMINISTIC_CLASSES


def posterior_label(vae, posterior: Posterior) -> str:
    """-> what a latent file records: "mode" | "sample" | "deterministic" (a VAE without a posterior)."""
    return posterior.value if has_posterior(vae) else "deterministic"


def _encode_fn(posterior: Posterior, seeds: Sequence[int]):
    """-> fn(module, x, items) giving raw latents of batch items `items`: the mode, or mean + std·noise
    with noise drawn per item from a CPU generator seeded seeds[item] (so a latent does not depend on the
    batch it ran in, nor on the device)."""

    def fn(module, x, items: Sequence[int]):
        import torch

        from vaelens.build import encoded_latent

        out = module.encode(x)
        out = out[0] if isinstance(out, tuple) else out
        dist = getattr(out, "latent_dist", None)
        if dist is None and callable(getattr(out, "mode", None)):
            dist = out
        if dist is None or posterior is Posterior.MODE:
            return encoded_latent(out)
        noise = torch.stack([
            torch.randn(tuple(dist.mean.shape[1:]), generator=torch.Generator().manual_seed(int(seeds[i])))
            for i in items
        ]).to(dist.mean.device, dist.mean.dtype)
        return dist.mean + dist.std * noise

    return fn


def _decode_fn(module, z, items):
    from vaelens.build import run_decode

    return run_decode(module, z)


# ------------------------------------------------------------------------------------------- steps


def _module_dtype(module) -> DType:
    return DType.of(next(module.parameters()).dtype)


def _per_item_nonfinite(out) -> list[int]:
    import torch

    return [int(v) for v in (~torch.isfinite(out)).reshape(out.shape[0], -1).sum(1).tolist()]


def run_step(vae, op: str, x, fn, upcast: Upcast | str = Upcast.AUTO) -> tuple[Any, StepReport]:
    """fn(module, x, items) at the module's dtype (or fp32 as `upcast` says); with Upcast.AUTO each batch
    item whose output holds NaN/Inf is redone alone in fp32. The module's dtype is restored after.
    -> (output float32 on CPU, StepReport)."""
    import torch

    from vaelens.weights.load import cast_module

    upcast = Upcast.parse(upcast)
    module = vae.module
    requested = _module_dtype(module)
    forced = None
    if requested is not DType.FP32:
        if upcast is Upcast.ALWAYS:
            forced = "always (as asked)"
        elif upcast is Upcast.AUTO and requested is DType.FP16 and vae.spec.config.get("force_upcast"):
            forced = "config force_upcast with fp16 (as diffusers pipelines do)"
    items = list(range(x.shape[0]))
    t0 = time.perf_counter()
    with measure_memory(vae.device) as mem:
        try:
            used = DType.FP32 if forced else requested
            if forced:
                cast_module(module, dtype=torch.float32)
            with torch.inference_mode():
                out = fn(module, x.to(vae.device, used.torch), items).float()
            counts = _per_item_nonfinite(out)
            first, reason, retried = sum(counts), forced, []
            if first and used is not DType.FP32 and upcast is Upcast.AUTO:
                cast_module(module, dtype=torch.float32)
                with torch.inference_mode():
                    for i in (i for i, c in enumerate(counts) if c):
                        out[i : i + 1] = fn(module, x[i : i + 1].to(vae.device, torch.float32), [i]).float()
                        retried.append(i)
                reason = (f"{first} NaN/Inf values at {requested.value} in {_items(len(retried))}; "
                          "redone alone in fp32")
            final = nonfinite(out) if retried else first
        finally:
            cast_module(module, dtype=requested.torch)
    report = StepReport(
        op=op, dtype_requested=requested, dtype_used=DType.FP32 if retried and len(retried) == len(items) else used,
        upcast_reason=reason, nonfinite_first=first, nonfinite=final, seconds=time.perf_counter() - t0,
        memory=dict(mem), retried=tuple(retried), items=len(items),
    )
    return out.cpu(), report


def _items(n: int) -> str:
    return f"{n} batch item" + ("" if n == 1 else "s")


def encode_step(
    vae, pixels, *, posterior: Posterior | str = Posterior.MODE, seeds: Sequence[int] | None = None,
    upcast: Upcast | str = Upcast.AUTO,
) -> tuple[Any, StepReport]:
    """pixels [B,3,(F,)H,W] in [-1,1] -> (raw latent [B,C,(F',)h,w] float32 CPU, StepReport).

    The batch function with per-item NaN retry that every encoder calls (files, roundtrip, datasets).
    `seeds[i]` seeds item i's posterior sample (default: 0, 1, …); ignored for the mode and for VAEs
    without a posterior. Video VAEs take an image as one frame: [B,C,1,h,w] comes back.
    """
    posterior = Posterior.parse(posterior)
    check_pixels(vae, pixels)
    x = as_module_input(vae, pixels)
    seeds = list(seeds) if seeds is not None else list(range(x.shape[0]))
    if len(seeds) != x.shape[0]:
        raise VaeLensError(f"seeds has {len(seeds)} values for a batch of {x.shape[0]}", param="seeds",
                           value=len(seeds))
    return run_step(vae, "encode", x, _encode_fn(posterior, seeds), upcast)


def _moments_fn(module, x, items):
    """-> the posterior's mean and log-variance stacked on the channel axis [B,2C,…] (one tensor, so the
    per-item NaN check covers both), or the latent alone for a VAE without a posterior."""
    import torch

    from vaelens.build import encoded_latent

    out = module.encode(x)
    out = out[0] if isinstance(out, tuple) else out
    dist = getattr(out, "latent_dist", None)
    if dist is None and callable(getattr(out, "mode", None)):
        dist = out
    return encoded_latent(out) if dist is None else torch.cat([dist.mean, dist.logvar], dim=1)


def moments_step(vae, pixels, *, upcast: Upcast | str = Upcast.AUTO) -> tuple[Any, Any, StepReport]:
    """pixels [B,3,(F,)H,W] in [-1,1] -> (mean [B,C,(F',)h,w], logvar or None for a VAE without a posterior,
    StepReport), float32 CPU, with encode_step's per-item NaN retry: what a latent cache stores."""
    check_pixels(vae, pixels)
    out, report = run_step(vae, "encode", as_module_input(vae, pixels), _moments_fn, upcast)
    if not has_posterior(vae):
        return out, None, report
    c = out.shape[1] // 2
    return out[:, :c], out[:, c:], report


def decode_step(vae, raw_latent, *, upcast: Upcast | str = Upcast.AUTO) -> tuple[Any, StepReport]:
    """raw latent [B,C,(F',)h,w] -> (pixels [B,3,(F,)H,W] float32 CPU, not clamped, StepReport). A video
    VAE's one-frame output comes back as an image [B,3,H,W]."""
    check_latent(vae, raw_latent, normalized=False)
    pixels, report = run_step(vae, "decode", as_module_latent(vae, raw_latent), _decode_fn, upcast)
    if pixels.ndim == 5 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return pixels, report


def merge_steps(reports: Sequence[StepReport]) -> StepReport:
    """Calls of one op (e.g. one per batch) -> one StepReport: seconds and NaN counts summed, the
    largest peak, fp32 if any call ran in fp32, the distinct upcast reasons joined, retried items
    numbered across the calls."""
    if not reports:
        raise VaeLensError("merge_steps needs at least one StepReport", param="reports", value=0)
    if len(reports) == 1:
        return reports[0]
    first = reports[0]
    peaks = [r.memory.get("peak_bytes") for r in reports]
    memory = dict(first.memory)
    memory["peak_bytes"] = None if any(p is None for p in peaks) else max(peaks)  # type: ignore[type-var]
    used = DType.FP32 if any(r.dtype_used is DType.FP32 for r in reports) else first.dtype_used
    reasons = list(dict.fromkeys(r.upcast_reason for r in reports if r.upcast_reason))
    return StepReport(
        op=first.op,
        dtype_requested=first.dtype_requested,
        dtype_used=used,
        upcast_reason="; ".join(reasons) or None,
        nonfinite_first=sum(r.nonfinite_first for r in reports),
        nonfinite=sum(r.nonfinite for r in reports),
        seconds=sum(r.seconds for r in reports),
        memory=memory,
        retried=tuple(i + sum(r.items for r in reports[:k]) for k, r in enumerate(reports) for i in r.retried),
        items=sum(r.items for r in reports),
    )
