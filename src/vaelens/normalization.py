"""raw latent z -> the normalised latent a denoiser sees, and back, exactly as each pipeline does it.

Four kinds (vaelens.families.spec.NormKind), each mirroring diffusers 0.42.1 pipeline code:

- NONE               identity (TAESD family: scaling_factor 1.0)
- AFFINE             (z - shift) * scale; back: x / scale + shift
                     (pipelines/flux/pipeline_flux.py, stable_diffusion_3/pipeline_stable_diffusion_3.py)
- PER_CHANNEL        (z - mean_c) * scale / std_c; back: x * std_c / scale + mean_c
                     (pipelines/ltx/pipeline_ltx.py _normalize_latents/_denormalize_latents,
                     mochi/pipeline_mochi.py, wan/pipeline_wan.py, qwenimage/pipeline_qwenimage.py)
- BATCHNORM_PATCHED  p×p patchify [B,C,H,W] -> [B,C·p·p,H/p,W/p],
                     then (x - running_mean) / sqrt(running_var + eps);
                     back: x * sqrt(running_var + eps) + running_mean, then unpatchify
                     (pipelines/flux2/pipeline_flux2.py _patchify_latents, _encode_vae_image, __call__)

Statistics come from the spec (mean/std) or, when the spec names `stats_from`, from the module's
checkpoint buffers: "bn" -> module.bn.running_mean / running_var; "latents_mean" -> module.latents_mean
and module.latents_std (the std buffer is the mean's name with "mean" -> "std"; "a,b" names both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.families.spec import Normalization, NormKind


def _num(x: float) -> str:
    return format(float(x), ".10g")


def _attr(module: Any, path: str) -> Any:
    obj = module
    for part in path.split("."):
        if not hasattr(obj, part):
            raise VaeLensError(
                f"module {type(module).__name__} has no attribute {path!r} (stats_from); "
                "it must be the checkpoint's module that holds the normalisation statistics",
                param="module", value=type(module).__name__,
            )
        obj = getattr(obj, part)
    return obj


def _checked(t: Any, what: str):
    import torch

    if not isinstance(t, torch.Tensor):
        raise VaeLensError(f"{what} is {type(t).__name__}, not a tensor", param="module", value=what)
    if t.is_meta:
        raise VaeLensError(
            f"{what} lives on the meta device (a module built without weights has no statistics); "
            "load the checkpoint's weights, or give mean/std in the spec",
            param="module", value=what,
        )
    return t


def _stat_paths(stats_from: str) -> tuple[str, str]:
    """'latents_mean' -> ('latents_mean', 'latents_std'); 'a,b' -> ('a', 'b')."""
    if "," in stats_from:
        mean_path, std_path = (p.strip() for p in stats_from.split(",", 1))
        return mean_path, std_path
    head, _, last = stats_from.rpartition(".")
    if "mean" not in last:
        raise VaeLensError(
            f"stats_from {stats_from!r}: name the mean buffer (e.g. 'latents_mean') or both ('a,b')",
            param="stats_from", value=stats_from,
        )
    return stats_from, (f"{head}." if head else "") + last.replace("mean", "std")


def _stats(norm: Normalization, module: Any) -> tuple[Any, Any]:
    """-> (mean, std) as 1-D tensors; std already includes eps for BatchNorm statistics."""
    import torch

    if norm.mean is not None and norm.std is not None:
        return torch.tensor(norm.mean, dtype=torch.float64), torch.tensor(norm.std, dtype=torch.float64)
    if norm.stats_from is None:
        raise VaeLensError(
            f"{norm.kind.value} normalisation needs mean/std or stats_from; the spec gives neither",
            param="norm", value=norm.kind.value,
        )
    if module is None:
        raise VaeLensError(
            f"{norm.kind.value} normalisation takes its statistics from the checkpoint "
            f"(module attribute {norm.stats_from!r}); pass module= (the VAE with weights loaded)",
            param="module", value=None,
        )
    if norm.kind is NormKind.BATCHNORM_PATCHED:
        bn = _attr(module, norm.stats_from)
        mean = _checked(getattr(bn, "running_mean", None), f"{norm.stats_from}.running_mean")
        var = _checked(getattr(bn, "running_var", None), f"{norm.stats_from}.running_var")
        eps = norm.eps if norm.eps > 0 else float(getattr(bn, "eps", 0.0))
        # flux2 pipeline: torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps)
        return mean, torch.sqrt(var + eps)
    mean_path, std_path = _stat_paths(norm.stats_from)
    mean = _checked(_attr(module, mean_path), mean_path)
    std = _checked(_attr(module, std_path), std_path)
    return mean, std


def _channel_view(t: Any, like: Any):
    """1-D [C] -> [1, C, 1, 1(, 1)] on like's device and dtype (the pipelines' .view(1, -1, 1, 1, 1))."""
    return t.reshape(1, -1, *([1] * (like.ndim - 2))).to(like.device, like.dtype)


def _check_channels(x: Any, mean: Any, what: str) -> None:
    if x.ndim not in (4, 5):
        raise VaeLensError(f"{what} must be [B,C,H,W] or [B,C,F,H,W]; got shape {list(x.shape)}", param="latent",
                           value=list(x.shape))
    if x.shape[1] != mean.numel():
        raise VaeLensError(
            f"{what} has {x.shape[1]} channels but the normalisation has {mean.numel()} statistics",
            param="latent", value=list(x.shape),
        )


def _patch(norm: Normalization) -> tuple[int, int]:
    p = norm.patch or (2, 2)
    return int(p[0]), int(p[1])


def patchify(z: Any, patch: tuple[int, int]):
    """[B,C,H,W] -> [B,C·ph·pw,H/ph,W/pw] in FLUX.2's channel order (pipeline_flux2.py _patchify_latents)."""
    ph, pw = patch
    if z.ndim != 4:
        raise VaeLensError(f"patchify takes a 4-D latent [B,C,H,W]; got shape {list(z.shape)}", param="latent",
                           value=list(z.shape))
    b, c, h, w = z.shape
    if h % ph or w % pw:
        raise VaeLensError(f"latent {h}x{w} (HxW) is not divisible by the patch {ph}x{pw}", param="latent",
                           value=list(z.shape))
    z = z.view(b, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(b, c * ph * pw, h // ph, w // pw)


def unpatchify(x: Any, patch: tuple[int, int]):
    """[B,C·ph·pw,h,w] -> [B,C,h·ph,w·pw], the inverse of patchify (pipeline_flux2.py _unpatchify_latents)."""
    ph, pw = patch
    if x.ndim != 4 or x.shape[1] % (ph * pw):
        raise VaeLensError(f"unpatchify takes [B,C·{ph}·{pw},h,w]; got shape {list(x.shape)}", param="latent",
                           value=list(x.shape))
    b, cp, h, w = x.shape
    x = x.reshape(b, cp // (ph * pw), ph, pw, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, cp // (ph * pw), h * ph, w * pw)


def normalize(z: Any, norm: Normalization, *, module: Any = None):
    """raw latent z [B,C,(F,)H,W] -> normalised latent (BATCHNORM_PATCHED: [B,C·p·p,H/p,W/p]).

    >>> import torch
    >>> from vaelens.families import get_family
    >>> z = torch.full((1, 16, 2, 2), 1.1159)
    >>> round(normalize(z, get_family("flux1").normalization)[0, 0, 0, 0].item(), 4)
    0.3611
    """
    kind = norm.kind
    if kind is NormKind.NONE:
        return z
    if kind is NormKind.AFFINE:
        return (z - norm.shift) * norm.scale
    mean, std = _stats(norm, module)
    if kind is NormKind.PER_CHANNEL:
        _check_channels(z, mean, "latent")
        return (z - _channel_view(mean, z)) * norm.scale / _channel_view(std, z)
    if kind is NormKind.BATCHNORM_PATCHED:
        x = patchify(z, _patch(norm))
        _check_channels(x, mean, "patchified latent")
        return (x - _channel_view(mean, x)) / _channel_view(std, x)
    raise VaeLensError(f"normalisation kind {kind!r} is not one of {[k.value for k in NormKind]}", param="norm",
                       value=kind, choices=[k.value for k in NormKind])


def denormalize(x: Any, norm: Normalization, *, module: Any = None):
    """normalised latent (BATCHNORM_PATCHED: [B,C·p·p,h,w]) -> raw latent z [B,C,(F,)H,W] for the decoder."""
    kind = norm.kind
    if kind is NormKind.NONE:
        return x
    if kind is NormKind.AFFINE:
        return x / norm.scale + norm.shift
    mean, std = _stats(norm, module)
    if kind is NormKind.PER_CHANNEL:
        _check_channels(x, mean, "normalised latent")
        return x * _channel_view(std, x) / norm.scale + _channel_view(mean, x)
    if kind is NormKind.BATCHNORM_PATCHED:
        _check_channels(x, mean, "normalised latent")
        return unpatchify(x * _channel_view(std, x) + _channel_view(mean, x), _patch(norm))
    raise VaeLensError(f"normalisation kind {kind!r} is not one of {[k.value for k in NormKind]}", param="norm",
                       value=kind, choices=[k.value for k in NormKind])


def describe(norm: Normalization) -> str:
    """Normalization -> one-line formula, e.g. '(z − 0.1159) × 0.3611'.

    >>> from vaelens.families import get_family
    >>> describe(get_family("flux1").normalization)
    '(z − 0.1159) × 0.3611'
    """
    kind = norm.kind
    if kind is NormKind.NONE:
        return "identity (scaling_factor 1.0: the latent is used as is)"
    if kind is NormKind.AFFINE:
        body = f"(z − {_num(norm.shift)})" if norm.shift else "z"
        return f"{body} × {_num(norm.scale)}"
    scale = "" if math.isclose(norm.scale, 1.0) else f" × {_num(norm.scale)}"
    if kind is NormKind.PER_CHANNEL:
        if norm.mean is not None:
            where = f"{len(norm.mean)} per-channel constants from the config"
        else:
            where = "per-channel statistics from the checkpoint buffers " + ", ".join(
                _stat_paths(norm.stats_from or "latents_mean")
            )
        return f"(z − mean_c){scale} / std_c, {where}"
    if kind is NormKind.BATCHNORM_PATCHED:
        ph, pw = _patch(norm)
        return (
            f"{ph}×{pw} patchify → [B, {ph * pw}C, H/{ph}, W/{pw}], then (x − running_mean_c) / "
            f"√(running_var_c + {_num(norm.eps)}), BatchNorm statistics from the checkpoint "
            f"({norm.stats_from})"
        )
    return kind.value


def normalization_to_json(norm: Normalization) -> dict[str, Any]:
    """Normalization -> the one JSON shape of a normalisation, used by `shapes --json`, `families --json`,
    `encode --json`, `inspect --json` and the latent-file metadata.

    Keys: kind, formula (describe()), scale, shift, mean, std, stats_from, patch, eps, source.

    >>> from vaelens.families import get_family
    >>> d = normalization_to_json(get_family("sdxl").normalization)
    >>> d["kind"], d["formula"], d["eps"]
    ('affine', 'z × 0.13025', 0.0)
    """
    return {
        "kind": norm.kind.value,
        "formula": describe(norm),
        "scale": norm.scale,
        "shift": norm.shift,
        "mean": list(norm.mean) if norm.mean is not None else None,
        "std": list(norm.std) if norm.std is not None else None,
        "stats_from": norm.stats_from,
        "patch": list(norm.patch) if norm.patch else None,
        "eps": norm.eps,
        "source": norm.source,
    }


def normalization_from_json(data: Mapping[str, Any]) -> Normalization:
    """normalization_to_json's dict -> Normalization. `formula` is derived, so it is not read back;
    keys written by older versions (no `formula`, no `eps`) read with their defaults. Statistics that
    live in a checkpoint (`stats_from`) stay there: denormalising such a latent needs the module.
    """
    kinds = ", ".join(k.value for k in NormKind)
    if not isinstance(data, Mapping) or "kind" not in data:
        raise VaeLensError(f"normalisation {data!r} has no 'kind'; expected one of: {kinds}", param="normalization",
                           value=data, choices=[k.value for k in NormKind])
    try:
        kind = NormKind(data["kind"])
    except ValueError:
        raise VaeLensError(f"normalisation kind {data['kind']!r} is not one of: {kinds}", param="normalization",
                           value=data["kind"], choices=[k.value for k in NormKind]) from None

    def floats(key: str) -> tuple[float, ...] | None:
        value = data.get(key)
        return tuple(float(v) for v in value) if value else None

    try:
        return Normalization(
            kind=kind,
            scale=float(data.get("scale", 1.0)),
            shift=float(data.get("shift", 0.0)),
            mean=floats("mean"),
            std=floats("std"),
            stats_from=data.get("stats_from"),
            patch=tuple(int(p) for p in data["patch"]) if data.get("patch") else None,  # type: ignore[arg-type]
            eps=float(data.get("eps") or 0.0),
            source=str(data.get("source") or ""),
        )
    except (TypeError, ValueError) as exc:
        raise VaeLensError(f"normalisation {dict(data)!r} has a value that is not a number ({exc})",
                           param="normalization", value=dict(data)) from None
