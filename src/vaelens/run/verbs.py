"""The one public door per verb: `vaelens.encode` and `vaelens.decode`.

pixels [B,3,(F,)H,W] in [-1,1] -> encode(vae, pixels, normalized=…) -> Encoded(latent, report, tiling)
latent [B,C,(F',)h,w] -> decode(vae, latent, normalized=…) -> Decoded(pixels, report, tiling)

`vae` is a LoadedVae (vaelens.load_vae) or any diffusers VAE module (pipe.vae). `normalized` has no
default: it says whether the latent is (made) raw — the module's own units, what `vae.decode` takes —
or normalised with the family's scaling (what a diffusion model sees). `budget=` runs the call inside a
device memory budget with vaelens.tiling (untiled when that fits, exact tiles otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import Posterior
from vaelens.run.steps import StepReport, Upcast, check_latent, decode_step, encode_step, posterior_label

_BUDGET_ATTR = "_vaelens_budget"  # where vaelens.tiling.api keeps a budgeted module's state


@dataclass(frozen=True, slots=True, kw_only=True)
class Encoded:
    """encode's result: the latent [B,C,(F',)h,w] float32 on CPU and how it was made."""

    latent: Any
    normalized: bool
    posterior: str  # "mode" | "sample" | "deterministic" (a VAE without a posterior)
    report: StepReport
    tiling: Any = None  # the TilingPlan the call ran under (None without a budget)

    def to_json(self) -> dict[str, Any]:
        return {"latent_shape": list(self.latent.shape), "normalized": self.normalized, "posterior": self.posterior,
                "encode": self.report.to_json(), "tiling": self.tiling.to_json() if self.tiling else None}


@dataclass(frozen=True, slots=True, kw_only=True)
class Decoded:
    """decode's result: pixels [B,3,(F,)H,W] float32 on CPU in about [-1,1] (not clamped) and how."""

    pixels: Any
    normalized: bool
    report: StepReport
    tiling: Any = None
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"pixel_shape": list(self.pixels.shape), "normalized": self.normalized,
                "decode": self.report.to_json(), "tiling": self.tiling.to_json() if self.tiling else None,
                "warnings": list(self.warnings)}


def as_loaded(vae: Any):
    """LoadedVae | diffusers VAE module -> LoadedVae (a module's family: the registry family its config
    matches, else one derived from its config)."""
    import torch

    from vaelens.weights.load import Layout, LoadedVae, registry_match

    if isinstance(vae, LoadedVae):
        return vae
    if not isinstance(vae, torch.nn.Module) or not callable(getattr(vae, "decode", None)):
        raise VaeLensError(
            f"vae= is a {type(vae).__name__}; pass a LoadedVae (vaelens.load_vae) or a diffusers VAE module",
            param="vae", value=type(vae).__name__,
        )
    cfg = dict(getattr(vae, "config", {}) or {})
    cfg.setdefault("_class_name", type(vae).__name__)
    spec = registry_match(cfg)
    detection = f"config matches registry family {spec.name}" if spec else "derived from the module's config"
    if spec is None:
        from vaelens.families.from_config import spec_from_config

        spec = spec_from_config(cfg, source=f"{type(vae).__name__} module config")
    param = next(vae.parameters())
    from vaelens.options import DType

    return LoadedVae(module=vae, spec=spec, source=type(vae).__name__, files=(), layout=Layout.MODULE,
                     detection=detection, converted=False, device=str(param.device), dtype=DType.of(param.dtype))


class PlanLog(Sequence):
    """The plans of the calls made inside a `budgeted` block, in order (read live: vaelens.tiling appends
    each call's plan as it runs)."""

    def __init__(self, plans: list | None = None, start: int = 0) -> None:
        self._plans, self._start = plans if plans is not None else [], start

    def __getitem__(self, i):  # type: ignore[override]
        return self._plans[self._start :][i]

    def __len__(self) -> int:
        return len(self._plans) - self._start


@contextlib.contextmanager
def budgeted(module: Any, budget: int | str | None, plan: Any = None) -> Iterator[PlanLog]:
    """Within the block module.encode/decode run inside `budget` (or `plan`'s budget); yields the PlanLog of
    the block's calls (empty without a budget). A module the caller has budgeted already keeps its own
    budget after the block."""
    if plan is not None:
        budget = plan.budget_bytes
    if budget is None:
        yield PlanLog()
        return
    from vaelens.tiling.api import disable_budgeted_vae, enable_budgeted_vae

    prior = getattr(module, _BUDGET_ATTR, None)
    kept = (prior.budget, prior.cache) if prior is not None else None
    start = len(prior.plans) if prior is not None else 0
    state = enable_budgeted_vae(module, budget)
    try:
        yield PlanLog(state.plans, start)
    finally:
        if prior is not None and kept is not None:
            prior.budget, prior.cache = kept
        else:
            disable_budgeted_vae(module)


def _last(plans: Sequence, op: str):
    return next((p for p in reversed(plans) if p.op == op), None)


def encode(
    vae: Any,
    pixels: Any,
    *,
    normalized: bool,
    posterior: Posterior | str = Posterior.MODE,
    seed: int = 0,
    upcast: Upcast | str = Upcast.AUTO,
    budget: int | str | None = None,
    plan: Any = None,
) -> Encoded:
    """pixels [B,3,(F,)H,W] in [-1,1] -> Encoded(latent [B,C,(F',)h,w], normalised when normalized=True).

    posterior: "mode" (the mean of a KL VAE's posterior) or "sample" (item i drawn with seed + i); a VAE
    without a posterior has one deterministic latent. A batch item that comes out NaN/Inf at fp16/bf16 is
    redone alone in fp32 (upcast="auto"). budget (bytes or "4GiB") / plan: run inside it (vaelens.tiling).

    >>> import torch, vaelens
    >>> from vaelens.weights.demo import load_demo_vae
    >>> vaelens.encode(load_demo_vae(), torch.zeros(1, 3, 64, 64), normalized=True).latent.shape
    torch.Size([1, 4, 16, 16])
    """
    from vaelens.normalization import normalize

    loaded = as_loaded(vae)
    _check_normalized(normalized)
    posterior = Posterior.parse(posterior)
    with budgeted(loaded.module, budget, plan) as plans:
        z, report = encode_step(loaded, pixels, posterior=posterior, seeds=[seed + i for i in range(len(pixels))],
                                upcast=upcast)
    if normalized:
        z = normalize(z, loaded.spec.normalization, module=loaded.module).float().cpu()
    return Encoded(latent=z, normalized=normalized, posterior=posterior_label(loaded, posterior), report=report,
                   tiling=_last(plans, "encode"))


def decode(
    vae: Any,
    latent: Any,
    *,
    normalized: bool,
    normalization: Any = None,
    upcast: Upcast | str = Upcast.AUTO,
    budget: int | str | None = None,
    plan: Any = None,
) -> Decoded:
    """latent [B,C,(F',)h,w] (raw, or normalised when normalized=True) -> Decoded(pixels [B,3,(F,)H,W]).

    normalization: the one to undo (e.g. what a latent file records); default the VAE's own. A batch item
    that comes out NaN/Inf at fp16/bf16 is redone alone in fp32 (upcast="auto"). budget / plan: see encode.

    >>> import torch, vaelens
    >>> from vaelens.weights.demo import load_demo_vae
    >>> vaelens.decode(load_demo_vae(), torch.zeros(1, 4, 8, 8), normalized=False).pixels.shape
    torch.Size([1, 3, 32, 32])
    """
    from vaelens.normalization import denormalize

    loaded = as_loaded(vae)
    _check_normalized(normalized)
    check_latent(loaded, latent, normalized=normalized)
    z = latent
    if normalized:
        z = denormalize(latent.to(loaded.device), normalization or loaded.spec.normalization,
                        module=loaded.module).float()
    with budgeted(loaded.module, budget, plan) as plans:
        pixels, report = decode_step(loaded, z, upcast=upcast)
    return Decoded(pixels=pixels, normalized=normalized, report=report, tiling=_last(plans, "decode"))


def _check_normalized(normalized: Any) -> None:
    if not isinstance(normalized, bool):
        raise VaeLensError(
            f"normalized={normalized!r}; say True (the family's normalised latent, what a diffusion model sees) "
            "or False (the raw latent, what module.decode takes)", param="normalized", value=normalized,
            choices=(True, False),
        )


def _comparable(norm) -> dict[str, Any]:
    from vaelens.normalization import normalization_to_json

    return {k: v for k, v in normalization_to_json(norm).items() if k not in ("source", "formula")}


def recorded_normalization(recorded, vae):
    """The normalisation a latent file records, the VAE's -> (Normalization to undo, warning or None).

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
            "weights that encoded it, or treat it as raw with normalized=False", param="normalized", value=True,
        )
    return recorded, (
        f"undoing the normalisation recorded in the file ({describe(recorded)}), not {vae.family}'s "
        f"configured {describe(configured)}"
    )
