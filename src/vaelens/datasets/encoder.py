"""Batched encoding for datasets: uint8 pixels of one bucket -> raw latent moments, per-sample NaN/Inf
checks with an fp32 retry, and a fixed-seed posterior sample that does not depend on the batch.

pixels uint8 [B,H,W,3] (clips [B,F,H,W,3]) -> pinned memory -> device (non_blocking) -> [-1,1] in the
compute dtype, channels_last -> module.encode under inference_mode -> mean [B,C,(F',)h,w] (and logvar)
float32 on CPU. A sample whose output holds NaN/Inf is encoded again alone in fp32 (an fp32 copy of the
module, made on first need); if that is still not finite it is reported and not returned as a latent.

The compute dtype follows diffusers: fp16 on a VAE whose config says force_upcast runs in fp32
(pipeline_stable_diffusion_xl.py: needs_upcasting); "auto" is bf16 on CUDA (the exponent range of fp32,
so the SDXL VAE's fp16 overflow does not occur) and fp32 on CPU.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaelens.errors import VaeLensError
from vaelens.options import DType, Posterior


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeSettings:
    """How latents are made (every field that changes a latent is part of the cache key)."""

    dtype: str = "auto"  # compute dtype: auto | fp32 | fp16 | bf16
    posterior: Posterior = Posterior.MODE  # the mean for KL VAEs | a fixed-seed sample per file
    seed: int = 0
    channels_last: bool = True
    compile: bool = False
    threads: int | None = None  # torch CPU threads (results depend on it bit-wise; engines must agree)
    budget: int | str | None = None  # memory budget of the exact tiled encode (vaelens.tiling); None: untiled

    def __post_init__(self) -> None:
        object.__setattr__(self, "posterior", Posterior.parse(self.posterior))
        if self.threads is not None and self.threads < 1:
            raise VaeLensError(f"threads {self.threads} must be at least 1", param="threads", value=self.threads)

    def key_fields(self, resolved_dtype: str) -> dict[str, Any]:
        """The fields that change a latent's value (channels_last, compile and threads change at most the
        last bits and are left out, so a cache stays valid across machines)."""
        return {
            "dtype": resolved_dtype,
            "posterior": self.posterior.value,
            "seed": self.seed if self.posterior is Posterior.SAMPLE else None,
            "budget": self.budget,
        }


def resolve_dtype(requested: str, *, device: str, config: dict[str, Any]) -> tuple[DType, str | None]:
    """'auto' | fp32 | fp16 | bf16 on device -> (DType to run in, reason when it differs from the request)."""
    if requested == "auto":
        return (DType.BF16, "auto: bf16 on CUDA") if device.startswith("cuda") else (DType.FP32, "auto: fp32 on CPU")
    dt = DType.parse(requested)
    if dt is DType.FP16 and config.get("force_upcast"):
        return DType.FP32, "config force_upcast with fp16: fp32 (as diffusers pipelines do)"
    return dt, None


def sample_seed(key: str, seed: int) -> int:
    """(cache key, seed) -> the generator seed of one sample: the same latent in any batch, on any engine."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Encoded:
    """One batch's result: latents per sample (None where not finite), and what happened to each."""

    mean: list[Any]  # per sample: float32 tensor [C,(F',)h,w] or None
    logvar: list[Any]
    sample: list[Any]
    retried: tuple[int, ...] = ()  # indices redone in fp32 after NaN/Inf
    failed: dict[int, str] = field(default_factory=dict)  # index -> reason (NaN/Inf even in fp32)


class BatchEncoder:
    """A VAE ready for dataset encoding (compute dtype, channels_last, optional torch.compile)."""

    def __init__(self, vae, settings: EncodeSettings) -> None:
        import torch

        from vaelens.weights.load import cast_module

        self.vae = vae
        self.settings = settings
        self.device = vae.device
        self.dtype, self.dtype_reason = resolve_dtype(settings.dtype, device=vae.device, config=dict(vae.spec.config))
        self.video = bool(vae.spec.is_video or vae.spec.video_module)
        module = vae.module
        if next(module.parameters()).dtype != self.dtype.torch:
            module = cast_module(copy.deepcopy(module), dtype=self.dtype.torch)
        if settings.channels_last and not self.video:
            module = module.to(memory_format=torch.channels_last)
        self.module = module.eval()
        self._fp32: Any = None
        self._fn = torch.compile(self._moments) if settings.compile else self._moments
        if settings.budget is not None:
            # module.encode becomes the budgeted exact tiled encode of vaelens.tiling (planned per input
            # shape and dtype, untiled when that fits); _moments calls it unchanged
            from vaelens.tiling.api import enable_budgeted_vae

            enable_budgeted_vae(self.module, settings.budget)

    def _moments(self, module, x):
        """pixels [B,3,(F,)H,W] -> (mean, logvar | None) raw latents."""
        out = module.encode(x)
        out = out[0] if isinstance(out, tuple) else out
        dist = getattr(out, "latent_dist", None)
        if dist is None:  # Tiny AE, DC-AE: a latent, no posterior
            from vaelens.build import run_encode

            return run_encode(module, x), None
        return dist.mean, dist.logvar

    def _to_input(self, pixels: np.ndarray, dtype) -> Any:
        """uint8 (or uint16) [B,H,W,3] / [B,F,H,W,3] -> [B,3,(F,)H,W] in [-1,1] on the device (pinned,
        non-blocking)."""
        import torch

        half = 127.5 if pixels.dtype == np.uint8 else 32767.5
        arr = np.ascontiguousarray(pixels if pixels.dtype == np.uint8 else pixels.astype(np.int32))
        t = torch.from_numpy(arr)
        cuda = self.device.startswith("cuda")
        if cuda:
            t = t.pin_memory().to(self.device, non_blocking=True)
        x = t.to(torch.float32).div_(half).sub_(1.0).to(dtype)
        if pixels.ndim == 5:
            return x.permute(0, 4, 1, 2, 3).contiguous()
        x = x.permute(0, 3, 1, 2)  # an NHWC buffer viewed as NCHW is channels_last already
        x = x.contiguous(memory_format=torch.channels_last) if self.settings.channels_last else x.contiguous()
        return x.unsqueeze(2) if self.video else x

    def _run(self, module, pixels: np.ndarray, dtype, fn) -> tuple[Any, Any]:
        import torch

        with torch.inference_mode():
            mean, logvar = fn(module, self._to_input(pixels, dtype))
            mean = mean.float().cpu()
            logvar = logvar.float().cpu() if logvar is not None else None
        return mean, logvar

    def encode(self, pixels: np.ndarray, keys: list[str]) -> Encoded:
        """uint8 pixels of one bucket + the samples' cache keys -> Encoded (float32 CPU tensors)."""
        import torch

        from vaelens.weights.load import cast_module

        mean, logvar = self._run(self.module, pixels, self.dtype.torch, self._fn)
        means, logvars = list(mean), list(logvar) if logvar is not None else [None] * len(mean)
        retried, failed = [], {}
        for i in range(len(means)):
            if _finite(means[i], logvars[i]):
                continue
            if self.dtype is not DType.FP32:
                if self._fp32 is None:
                    self._fp32 = cast_module(copy.deepcopy(self.vae.module), dtype=torch.float32).eval()
                    if self.settings.budget is not None:
                        from vaelens.tiling.api import disable_budgeted_vae, enable_budgeted_vae

                        disable_budgeted_vae(self._fp32)  # the copy carries the original's wrappers
                        enable_budgeted_vae(self._fp32, self.settings.budget)
                m, lv = self._run(self._fp32, pixels[i : i + 1], torch.float32, self._moments)
                retried.append(i)
                means[i], logvars[i] = m[0], (lv[0] if lv is not None else None)
                if _finite(means[i], logvars[i]):
                    continue
            failed[i] = f"NaN/Inf in the latent at {self.dtype.value}" + (
                " and again in fp32" if self.dtype is not DType.FP32 else ""
            )
            means[i] = logvars[i] = None
        samples: list[Any] = [None] * len(means)
        if self.settings.posterior is Posterior.SAMPLE:
            for i, (m, lv) in enumerate(zip(means, logvars, strict=True)):
                if m is None:
                    continue
                if lv is None:
                    samples[i] = m
                    continue
                gen = torch.Generator().manual_seed(sample_seed(keys[i], self.settings.seed))
                samples[i] = m + torch.exp(0.5 * lv) * torch.randn(m.shape, generator=gen)
        return Encoded(mean=means, logvar=logvars, sample=samples, retried=tuple(retried), failed=failed)


def encode_batch(encoder: BatchEncoder, pixels: np.ndarray, keys: list[str], *, flip: bool = False
                 ) -> tuple[Encoded, Encoded | None]:
    """pixels [B,H,W,3] / [B,F,H,W,3] of one bucket + their keys -> (Encoded, Encoded of the horizontally
    flipped pixels or None). The one call every engine makes per batch: dtype, NaN/Inf retry in fp32 and
    the posterior sample all happen in BatchEncoder.encode. The flipped batch is the same batch mirrored
    (so it is as deterministic as the first), its samples seeded by key + ":flip"."""
    enc = encoder.encode(pixels, keys)
    if not flip:
        return enc, None
    mirrored = np.ascontiguousarray(pixels[..., ::-1, :])  # W is the second to last axis
    return enc, encoder.encode(mirrored, [f"{k}:flip" for k in keys])


def _finite(mean, logvar) -> bool:
    import torch

    return bool(torch.isfinite(mean).all()) and (logvar is None or bool(torch.isfinite(logvar).all()))
