"""The normalisation a dataset's raw-latent statistics imply, in each family's own form, beside the one
the family is configured with.

DatasetStats -> ImpliedNormalization:
  scale        z · (1/std)                         SD 1.x/2.x, SDXL (latent-diffusion's scale_by_std:
                                                   1 / std of all latent elements, CompVis/latent-diffusion
                                                   ldm/models/diffusion/ddpm.py LatentDiffusion.on_train_batch_start)
  shift_scale  (z − mean) · (1/std)                SD3, FLUX.1 (shift_factor, scaling_factor)
  per_channel  (z − mean_c) / std_c                Wan, Qwen-Image, Mochi, LTX (latents_mean / latents_std)
The configured form is the family's (vaelens.families NormKind); its difference from the implied one is
given as ratios (scale) and differences (shift, mean), so "configured 0.13025, implied 0.1298: ×0.997"
reads directly as how far this dataset sits from the data the constant was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vaelens.datasets.moments import DatasetStats
from vaelens.families.spec import Normalization, NormKind

FORMS = ("scale", "shift_scale", "per_channel")
_FORM_OF_KIND = {
    NormKind.NONE: "scale",
    NormKind.AFFINE: "shift_scale",
    NormKind.PER_CHANNEL: "per_channel",
    NormKind.BATCHNORM_PATCHED: "per_channel",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ImpliedNormalization:
    """Implied constants in the three forms, the configured constants, and their difference."""

    family: str
    configured_kind: str
    form: str  # the family's own form, one of FORMS
    implied: dict[str, Any]  # form -> constants
    configured: dict[str, Any] | None  # the configured constants in the family's form (None: not resolvable)
    difference: dict[str, Any] | None
    note: str = ""

    @property
    def diffusers_config(self) -> dict[str, Any]:
        """The implied constants as the keys of a diffusers VAE config.json, in the family's form:
        scaling_factor (SD, SDXL); shift_factor + scaling_factor (SD3, FLUX.1); latents_mean + latents_std
        (Wan, Qwen-Image, Mochi, LTX: AutoencoderKLWan/QwenImage/Mochi/LTXVideo configs)."""
        if self.form == "scale":
            return {"scaling_factor": self.implied["scale"]["scale"]}
        if self.form == "shift_scale":
            return {"shift_factor": self.implied["shift_scale"]["shift"],
                    "scaling_factor": self.implied["shift_scale"]["scale"]}
        return {"latents_mean": self.implied["per_channel"]["mean"], "latents_std": self.implied["per_channel"]["std"]}

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "configured_kind": self.configured_kind,
            "form": self.form,
            "diffusers_config": self.diffusers_config,
            "implied": self.implied,
            "configured": self.configured,
            "difference": self.difference,
            "note": self.note,
        }


def _inv(x: float) -> float | None:
    return 1.0 / x if x > 0 else None


def implied_normalization(
    stats: DatasetStats, norm: Normalization, *, family: str, module: Any = None
) -> ImpliedNormalization:
    """DatasetStats of raw latents + the configured Normalization -> ImpliedNormalization.

    `module` (the VAE with weights) resolves statistics that live in checkpoint buffers (LTX, FLUX.2).
    """
    implied = {
        "scale": {"scale": _inv(stats.overall_std)},
        "shift_scale": {"shift": stats.overall_mean, "scale": _inv(stats.overall_std)},
        "per_channel": {"mean": list(stats.mean), "std": list(stats.std)},
    }
    form = _FORM_OF_KIND[norm.kind]
    configured: dict[str, Any] | None
    difference: dict[str, Any] | None = None
    note = ""
    if norm.kind is NormKind.NONE:
        configured = {"scale": 1.0}
    elif norm.kind is NormKind.AFFINE:
        configured = {"shift": norm.shift, "scale": norm.scale}
        if not norm.shift:  # SD/SDXL write only a scale: compare in that form
            form, configured = "scale", {"scale": norm.scale}
    else:
        configured = _resolved_per_channel(norm, module)
        if configured is None:
            note = "the configured statistics live in the checkpoint; load the weights to compare"
        elif norm.kind is NormKind.BATCHNORM_PATCHED:
            note = (
                "FLUX.2 normalises 2×2-patchified latents with BatchNorm statistics [4C]; compared here as "
                "the mean over each channel's 4 patch positions"
            )
    if configured is not None:
        difference = _difference(form, implied[form], configured)
    return ImpliedNormalization(
        family=family,
        configured_kind=norm.kind.value,
        form=form,
        implied=implied,
        configured=configured,
        difference=difference,
        note=note,
    )


def _resolved_per_channel(norm: Normalization, module: Any) -> dict[str, Any] | None:
    """PER_CHANNEL / BATCHNORM_PATCHED -> {"mean": [C], "std": [C]} in raw-latent units (None: unresolvable)."""
    from vaelens.errors import VaeLensError
    from vaelens.normalization import _stats

    try:
        mean, std = _stats(norm, module)
    except VaeLensError:
        return None
    mean = np.asarray(mean.detach().double().cpu()) if hasattr(mean, "detach") else np.asarray(mean, float)
    std = np.asarray(std.detach().double().cpu()) if hasattr(std, "detach") else np.asarray(std, float)
    if norm.kind is NormKind.BATCHNORM_PATCHED:
        p = int(np.prod(norm.patch or (2, 2)))
        # patchified channel order is c·p·p + position (normalization.patchify): average the positions
        mean = mean.reshape(-1, p).mean(axis=1)
        std = np.sqrt((std.reshape(-1, p) ** 2).mean(axis=1))
    elif norm.scale and norm.scale != 1.0:
        std = std / norm.scale  # (z − mean) · scale / std  ==  (z − mean) / (std / scale)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _difference(form: str, implied: dict[str, Any], configured: dict[str, Any]) -> dict[str, Any]:
    """implied vs configured -> ratios for scales/stds, differences for shifts/means."""
    if form == "per_channel":
        im, cm = np.asarray(implied["mean"]), np.asarray(configured["mean"])
        istd, cstd = np.asarray(implied["std"]), np.asarray(configured["std"])
        if im.shape != cm.shape:
            return {"error": f"{len(im)} channels in the data, {len(cm)} configured"}
        ratio = istd / np.where(cstd > 0, cstd, np.nan)
        return {
            "mean_minus_configured": [float(v) for v in im - cm],
            "std_over_configured": [float(v) for v in ratio],
            "max_abs_mean_difference": float(np.abs(im - cm).max()),
            "max_std_ratio_deviation": float(np.nanmax(np.abs(ratio - 1.0))),
        }
    out: dict[str, Any] = {}
    if implied.get("scale") is not None and configured.get("scale"):
        out["scale_over_configured"] = implied["scale"] / configured["scale"]
    if "shift" in configured:
        out["shift_minus_configured"] = implied["shift"] - configured["shift"]
    return out
