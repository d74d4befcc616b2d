"""Batched encoding for datasets on the run engine: uint8 pixels of one bucket -> raw latent moments with
the engine's per-sample NaN/Inf retry in fp32, and a fixed-seed posterior sample that does not depend on
the batch.

pixels uint8 [B,H,W,3] (clips [B,F,H,W,3]) -> pinned memory -> device (non_blocking) -> [-1,1] in the
compute dtype, channels_last -> vaelens.run.moments_step (module.encode under inference_mode; a sample
whose output holds NaN/Inf is redone alone with the module cast to fp32) -> mean [B,C,(F',)h,w] (and
logvar) float32 on CPU. A sample still not finite is reported and not returned as a latent.

The compute dtype is vaelens.run.resolve_dtype's (the one meaning of "auto": bf16 on CUDA, fp32 on CPU;
fp16 on a force_upcast VAE runs in fp32, as diffusers pipelines do).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaelens.errors import VaeLensError
from vaelens.options import Posterior
from vaelens.run.steps import StepReport, Upcast, moments_step, resolve_dtype

__all__ = ["BatchEncoder", "EncodeSettings", "Encoded", "encode_batch", "resolve_dtype", "sample_seed"]


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
    report: StepReport | None = None  # the run engine's record of the step (dtype, time, peak memory)


class BatchEncoder:
    """A VAE ready for dataset encoding (compute dtype, channels_last, optional torch.compile, optional
    memory budget), run through vaelens.run.moments_step."""

    def __init__(self, vae, settings: EncodeSettings) -> None:
        import torch

        from vaelens.weights.load import cast_module

        self.settings = settings
        self.device = vae.device
        self.dtype, self.dtype_reason = resolve_dtype(settings.dtype, device=vae.device, config=dict(vae.spec.config))
        module = vae.module
        if next(module.parameters()).dtype != self.dtype.torch:
            module = cast_module(copy.deepcopy(module), dtype=self.dtype.torch)
        if settings.channels_last and not (vae.spec.is_video or vae.spec.video_module):
            module = module.to(memory_format=torch.channels_last)
        module = module.eval()
        if settings.budget is not None:
            # module.encode becomes the budgeted exact tiled encode of vaelens.tiling (planned per input
            # shape and dtype, untiled when that fits); moments_step calls it unchanged
            from vaelens.tiling.api import enable_budgeted_vae

            enable_budgeted_vae(module, settings.budget)
        if settings.compile:
            # an instance attribute shadows the class's encode, as enable_budgeted_vae's wrapper does;
            # the engine's fp32 retry recasts the module, which torch.compile's dtype guards recompile for
            object.__setattr__(module, "encode", torch.compile(module.encode))
        # the run engine reads module, device and spec from a LoadedVae: this one holds the prepared module
        self.vae = dataclasses.replace(vae, module=module, dtype=self.dtype)

    @property
    def module(self) -> Any:
        return self.vae.module

    def _to_input(self, pixels: np.ndarray) -> Any:
        """uint8 (or uint16) [B,H,W,3] / [B,F,H,W,3] -> [B,3,(F,)H,W] in [-1,1] at the compute dtype on the
        device (pinned, non-blocking); moments_step adds the frame axis a video VAE needs for an image."""
        import torch

        half = 127.5 if pixels.dtype == np.uint8 else 32767.5
        arr = np.ascontiguousarray(pixels if pixels.dtype == np.uint8 else pixels.astype(np.int32))
        t = torch.from_numpy(arr)
        if self.device.startswith("cuda"):
            t = t.pin_memory().to(self.device, non_blocking=True)
        x = t.to(torch.float32).div_(half).sub_(1.0).to(self.dtype.torch)
        if pixels.ndim == 5:
            return x.permute(0, 4, 1, 2, 3).contiguous()
        x = x.permute(0, 3, 1, 2)  # an NHWC buffer viewed as NCHW is channels_last already
        return x.contiguous(memory_format=torch.channels_last) if self.settings.channels_last else x.contiguous()

    def encode(self, pixels: np.ndarray, keys: list[str]) -> Encoded:
        """uint8 pixels [B,H,W,3] / [B,F,H,W,3] of one bucket + the samples' cache keys -> Encoded (float32
        CPU tensors [C,(F',)h,w] per sample)."""
        import torch

        from vaelens.datasets.posterior import LatentPosterior

        mean, logvar, report = moments_step(self.vae, self._to_input(pixels), upcast=Upcast.AUTO)
        means = list(mean)
        logvars = list(logvar) if logvar is not None else [None] * len(means)
        failed: dict[int, str] = {}
        for i in range(len(means)):
            if not _finite(means[i], logvars[i]):
                again = " and again in fp32" if i in report.retried else ""
                failed[i] = f"NaN/Inf in the latent at {self.dtype.value}{again}"
                means[i] = logvars[i] = None
        samples: list[Any] = [None] * len(means)
        if self.settings.posterior is Posterior.SAMPLE:
            # the run engine's rule (vaelens.run.steps._encode_fn): noise per sample from a CPU generator
            # seeded by that sample alone, mean + exp(logvar / 2) · noise; computed here from the fp32
            # moments so one encoder pass gives mean, logvar and sample
            for i, (m, lv) in enumerate(zip(means, logvars, strict=True)):
                if m is None:
                    continue
                gen = torch.Generator().manual_seed(sample_seed(keys[i], self.settings.seed))
                samples[i] = m if lv is None else LatentPosterior(m, lv).sample(gen)
        return Encoded(mean=means, logvar=logvars, sample=samples, retried=report.retried, failed=failed,
                       report=report)


def encode_batch(encoder: BatchEncoder, pixels: np.ndarray, keys: list[str], *, flip: bool = False
                 ) -> tuple[Encoded, Encoded | None]:
    """pixels [B,H,W,3] / [B,F,H,W,3] of one bucket + their keys -> (Encoded, Encoded of the horizontally
    flipped pixels or None). The one call every engine makes per batch: dtype, NaN/Inf retry in fp32 (the
    run engine's moments_step) and the posterior sample all happen in BatchEncoder.encode. The flipped
    batch is the same batch mirrored (so it is as deterministic as the first), its samples seeded by
    key + ":flip"."""
    enc = encoder.encode(pixels, keys)
    if not flip:
        return enc, None
    mirrored = np.ascontiguousarray(pixels[..., ::-1, :])  # W is the second to last axis
    return enc, encoder.encode(mirrored, [f"{k}:flip" for k in keys])


def _finite(mean, logvar) -> bool:
    import torch

    return bool(torch.isfinite(mean).all()) and (logvar is None or bool(torch.isfinite(logvar).all()))
