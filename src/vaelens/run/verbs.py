"""The one public door per verb: `vaelens.encode` and `vaelens.decode`.

pixels [B,3,(F,)H,W] in [-1,1] -> encode(vae, pixels, normalized=…) -> Encoded(latent, report, tiling)
latent [B,C,(F',)h,w] -> decode(vae, latent, normalized=…) -> Decoded(pixels, report, tiling)

`vae` is a LoadedVae (vaelens.load_vae) or any diffusers VAE module (pipe.vae). `normalized` has no
default: it says whether the latent is (made) raw — the module's own units, what `vae.decode` takes —
or normalised with the family's scaling (what a diffusion model sees). `budget=` runs the call inside a
device memory budget with vaelens.tiling (untiled when that fits, exact tiles otherwise); `device_profile=`
names the profile the plan is timed on, `spill_dir=` a folder for memory-mapped spill files. The result
carries the plan (`tiling`) and what the exact run counted (`counts`: bytes copied, host peak).
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
    counts: Any = None  # the exact run's RunCounts (None: no budget, untiled, or approximate tiles)

    def to_json(self) -> dict[str, Any]:
        return {"latent_shape": list(self.latent.shape), "normalized": self.normalized, "posterior": self.posterior,
                "encode": self.report.to_json(), "tiling": run_tiling_json(self.tiling, self.counts)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Decoded:
    """decode's result: pixels [B,3,(F,)H,W] float32 on CPU in about [-1,1] (not clamped) and how."""

    pixels: Any
    normalized: bool
    report: StepReport
    tiling: Any = None
    counts: Any = None  # see Encoded.counts
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"pixel_shape": list(self.pixels.shape), "normalized": self.normalized,
                "decode": self.report.to_json(), "tiling": run_tiling_json(self.tiling, self.counts),
                "warnings": list(self.warnings)}


def run_tiling_json(plan: Any, counts: Any = None) -> dict[str, Any] | None:
    """TilingPlan (+ the run's RunCounts) -> the `tiling` block of a run: the plan's figures, and what the
    run counted beside the plan's: `measured_transfer_bytes` (bytes copied host <-> device, both ways) and
    `measured_host_bytes` (the peak of spilled-and-live host bytes); null where the run did not count
    (the class's own approximate tiling). None when there is no plan or the call ran untiled."""
    block = plan.to_json() if plan is not None else None
    if block is None:
        return None
    block["measured_transfer_bytes"] = counts.transfer_bytes if counts is not None else None
    block["measured_host_bytes"] = counts.host_peak_bytes if counts is not None else None
    return block


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
    each call's plan as it runs, and what the run counted beside it)."""

    def __init__(self, state: Any = None, start: int = 0) -> None:
        self._state, self._start = state, start

    def _plans(self) -> list:
        return self._state.plans[self._start :] if self._state is not None else []

    def __getitem__(self, i):  # type: ignore[override]
        return self._plans()[i]

    def __len__(self) -> int:
        return len(self._plans())

    def warnings(self) -> tuple[str, ...]:
        """The one-line warnings of the block's runs (RunCounts.warnings: e.g. pinned memory unavailable),
        each once."""
        counts = self._state.counts[self._start :] if self._state is not None else []
        return tuple(dict.fromkeys(w for c in counts if c is not None for w in c.warnings))

    def last(self, op: str | None = None, start: int = 0) -> tuple[Any, Any]:
        """-> (the TilingPlan, its RunCounts or None) of the last call of `op` (any op when None) from the
        block's call number `start` on; (None, None) when there is none."""
        if self._state is None:
            return None, None
        plans, counts = self._state.plans, self._state.counts
        for i in range(len(plans) - 1, self._start + start - 1, -1):
            if op is None or plans[i].op == op:
                return plans[i], counts[i] if i < len(counts) else None
        return None, None


def check_tiling(budget: Any, device_profile: Any = None, spill_dir: Any = None) -> None:
    """Refuse, before any work, a device_profile or spill_dir without a budget (it would change nothing), an
    unknown profile (the error names the profiles) and a spill folder that is missing or not writable."""
    for name, value in (("device_profile", device_profile), ("spill_dir", spill_dir)):
        if value is not None and budget is None:
            raise VaeLensError(f"{name}={str(value)!r} applies to a budgeted call (it sets how the tiling plan is "
                               "timed or where it spills); give budget= too", param=name, value=value)
    if device_profile is not None:
        from vaelens.tiling.profiles import get_profile

        get_profile(device_profile)
    from vaelens.tiling.api import check_spill_dir

    check_spill_dir(spill_dir)


@contextlib.contextmanager
def budgeted(module: Any, budget: int | str | None, plan: Any = None, *, device_profile: Any = None,
             spill_dir: Any = None) -> Iterator[PlanLog]:
    """Within the block module.encode/decode run inside `budget` (or `plan`'s budget, timed on its
    profile), planned on `device_profile`, spilling to memory-mapped files in `spill_dir`; yields the
    PlanLog of the block's calls. Without a budget: the calls of a module budgeted outside the block
    (enable_budgeted_vae, an enclosing block), else an empty log; a profile or spill folder without a
    budget is refused (it would change nothing). A module the caller has budgeted already keeps its own
    settings after the block."""
    if plan is not None:
        budget = plan.budget_bytes
        device_profile = device_profile if device_profile is not None else plan.device_profile
    prior = getattr(module, _BUDGET_ATTR, None)
    if budget is None:
        check_tiling(budget, device_profile, spill_dir)
        yield PlanLog(prior, len(prior.plans)) if prior is not None else PlanLog()
        return
    from vaelens.tiling.api import disable_budgeted_vae, enable_budgeted_vae

    kept = (prior.budget, prior.device_profile, prior.spill_dir, prior.cache) if prior is not None else None
    start = len(prior.plans) if prior is not None else 0
    state = enable_budgeted_vae(module, budget, device_profile=device_profile, spill_dir=spill_dir)
    try:
        yield PlanLog(state, start)
    finally:
        if prior is not None and kept is not None:
            prior.budget, prior.device_profile, prior.spill_dir, prior.cache = kept
        else:
            disable_budgeted_vae(module)


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
    device_profile: Any = None,
    spill_dir: Any = None,
) -> Encoded:
    """pixels [B,3,(F,)H,W] in [-1,1] -> Encoded(latent [B,C,(F',)h,w], normalised when normalized=True).

    posterior: "mode" (the mean of a KL VAE's posterior) or "sample" (item i drawn with seed + i); a VAE
    without a posterior has one deterministic latent. A batch item that comes out NaN/Inf at fp16/bf16 is
    redone alone in fp32 (upcast="auto"). budget (bytes or "4GiB") / plan: run inside it (vaelens.tiling),
    the plan timed on device_profile (a vaelens.tiling.profiles name; default: the module's device),
    spilled host copies as memory-mapped files in spill_dir (an existing, writable folder).

    >>> import torch, vaelens
    >>> from vaelens.weights.demo import load_demo_vae
    >>> vaelens.encode(load_demo_vae(), torch.zeros(1, 3, 64, 64), normalized=True).latent.shape
    torch.Size([1, 4, 16, 16])
    """
    from vaelens.normalization import normalize

    loaded = as_loaded(vae)
    _check_normalized(normalized)
    posterior = Posterior.parse(posterior)
    with budgeted(loaded.module, budget, plan, device_profile=device_profile, spill_dir=spill_dir) as plans:
        z, report = encode_step(loaded, pixels, posterior=posterior, seeds=[seed + i for i in range(len(pixels))],
                                upcast=upcast)
    if normalized:
        z = normalize(z, loaded.spec.normalization, module=loaded.module).float().cpu()
    tiling, counts = plans.last("encode")
    return Encoded(latent=z, normalized=normalized, posterior=posterior_label(loaded, posterior), report=report,
                   tiling=tiling, counts=counts)


def decode(
    vae: Any,
    latent: Any,
    *,
    normalized: bool,
    normalization: Any = None,
    upcast: Upcast | str = Upcast.AUTO,
    budget: int | str | None = None,
    plan: Any = None,
    device_profile: Any = None,
    spill_dir: Any = None,
) -> Decoded:
    """latent [B,C,(F',)h,w] (raw, or normalised when normalized=True) -> Decoded(pixels [B,3,(F,)H,W]).

    normalization: the one to undo (e.g. what a latent file records); default the VAE's own. A batch item
    that comes out NaN/Inf at fp16/bf16 is redone alone in fp32 (upcast="auto"). budget / plan /
    device_profile / spill_dir: see encode.

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
    with budgeted(loaded.module, budget, plan, device_profile=device_profile, spill_dir=spill_dir) as plans:
        pixels, report = decode_step(loaded, z, upcast=upcast)
    tiling, counts = plans.last("decode")
    return Decoded(pixels=pixels, normalized=normalized, report=report, tiling=tiling, counts=counts,
                   warnings=plans.warnings())


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
