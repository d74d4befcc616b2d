"""Latents as data: per-channel statistics, the scaling factor they imply, channel correlations, a
least-squares latent→RGB projection (an approximation, never the latent's "colours"), and latent files
(vaelens' own safetensors with metadata, and ComfyUI's .latent).

latent [B,C,(F,)h,w] -> ChannelStats (C rows) | projection W [3,C], b [3] | file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaelens.errors import ChoiceRequiredError, MissingModuleError, VaeLensError
from vaelens.families.spec import Normalization
from vaelens.normalization import normalization_from_json, normalization_to_json

FORMAT = "vaelens.latent/1"
# ComfyUI nodes.py SaveLatent writes {"latent_tensor": samples, "latent_format_version_0": tensor([])};
# LoadLatent multiplies by 1/0.18215 when the version key is absent (files from before the format change).
# LATENT samples in ComfyUI are raw VAE latents: the model's latent_format.process_in scales them inside
# sampling (comfy/model_base.py process_latent_in, comfy/latent_formats.py).
COMFY_KEY = "latent_tensor"
COMFY_VERSION_KEY = "latent_format_version_0"
COMFY_LEGACY_MULTIPLIER = 1.0 / 0.18215


def _channels_last(latent) -> np.ndarray:
    """latent [B,C,...] (torch or numpy) -> float64 array [N, C] of every position's channel vector."""
    a = latent.detach().cpu().double().numpy() if hasattr(latent, "detach") else np.asarray(latent)
    if a.ndim < 3:
        raise VaeLensError(f"latent shape {list(a.shape)} is not [B, C, (F,) h, w]", param="latent")
    return np.moveaxis(a.astype(np.float64), 1, -1).reshape(-1, a.shape[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelStats:
    """latent [B,C,...] -> per-channel mean, std, min, max (population std), and across all channels."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]
    overall_mean: float
    overall_std: float
    # C×C Pearson correlation between channels; None where a channel is constant (r is undefined, 0/0)
    correlation: tuple[tuple[float | None, ...], ...]
    nonfinite: int

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def implied_scale(self) -> float:
        """1 / std over all latent elements: the latent-diffusion paper's rule for scaling_factor
        (Rombach et al. 2022, §G; CompVis/latent-diffusion: scale_by_std)."""
        return 1.0 / self.overall_std if self.overall_std > 0 else float("inf")

    def mean_abs_correlation(self) -> float | None:
        """Mean |r| over pairs of different channels; None for one channel."""
        if self.channels < 2:
            return None
        off = np.abs(self._corr_array())[~np.eye(self.channels, dtype=bool)]
        return float(np.nanmean(off)) if np.isfinite(off).any() else None

    def _corr_array(self) -> np.ndarray:
        return np.array([[np.nan if v is None else v for v in row] for row in self.correlation], dtype=np.float64)

    def strongest_pair(self) -> tuple[int, int, float] | None:
        """(i, j, r) of the two different channels with the largest |r| (the first such pair when every
        r is 0); None for one channel, or when every pair involves a constant channel."""
        if self.channels < 2:
            return None
        corr = self._corr_array()
        off = np.nan_to_num(np.abs(corr), nan=-1.0)
        np.fill_diagonal(off, -1.0)
        if off.max() < 0:
            return None
        i, j = np.unravel_index(np.argmax(off), corr.shape)
        return int(i), int(j), float(corr[i, j])

    def to_json(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "per_channel": [
                {
                    "channel": c,
                    "mean": self.mean[c],
                    "std": self.std[c],
                    "min": self.min[c],
                    "max": self.max[c],
                }
                for c in range(self.channels)
            ],
            "overall": {"mean": self.overall_mean, "std": self.overall_std},
            # null for a constant latent (std 0): JSON has no Infinity
            "implied_scaling_factor": self.implied_scale if np.isfinite(self.implied_scale) else None,
            "correlation": [list(row) for row in self.correlation],
            "nonfinite": self.nonfinite,
        }


def channel_stats(latent) -> ChannelStats:
    """latent [B,C,(F,)h,w] -> ChannelStats over batch, frames and positions (NaN/Inf counted, then skipped).

    >>> import numpy as np
    >>> channel_stats(np.arange(8.0).reshape(1, 2, 2, 2)).mean
    (1.5, 5.5)
    """
    x = _channels_last(latent)
    finite = np.isfinite(x).all(axis=1)
    nonfinite = int((~np.isfinite(x)).sum())
    x = x[finite]
    if x.shape[0] == 0:
        raise VaeLensError("latent has no finite values: every position holds NaN or Inf", param="latent")
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant channel has no correlation: NaN
        corr = np.corrcoef(x, rowvar=False) if x.shape[0] > 1 else np.eye(x.shape[1])
    corr = np.atleast_2d(corr)

    def r(v) -> tuple[float, ...]:
        return tuple(round(float(t), 6) for t in v)

    def r_or_none(v) -> tuple[float | None, ...]:
        return tuple(round(float(t), 6) if np.isfinite(t) else None for t in v)

    return ChannelStats(
        mean=r(x.mean(0)),
        std=r(x.std(0)),
        min=r(x.min(0)),
        max=r(x.max(0)),
        overall_mean=round(float(x.mean()), 6),
        overall_std=round(float(x.std()), 6),
        correlation=tuple(r_or_none(row) for row in corr),
        nonfinite=nonfinite,
    )


# ------------------------------------------------------------------------------------ projection


@dataclass(frozen=True, slots=True, kw_only=True)
class RgbProjection:
    """latent vector [C] -> rgb [3] in [0,1] as weight @ z + bias: a least-squares approximation."""

    weight: tuple[tuple[float, ...], ...]  # [3][C]
    bias: tuple[float, ...]  # [3]
    r2: float  # fraction of the target's variance the linear map explains

    def apply(self, latent) -> np.ndarray:
        """latent [B,C,h,w] -> array [B,h,w,3] (not clamped)."""
        a = latent.detach().cpu().double().numpy() if hasattr(latent, "detach") else np.asarray(latent)
        w, b = np.asarray(self.weight), np.asarray(self.bias)
        return np.einsum("bchw,kc->bhwk", a.astype(np.float64), w) + b

    def to_json(self) -> dict[str, Any]:
        return {
            "weight": [list(r) for r in self.weight],
            "bias": list(self.bias),
            "r2": self.r2,
            "label": "approximation: least-squares linear fit of latent to the decoder's output, "
            "downsampled to latent resolution",
        }


def fit_rgb_projection(latent, rgb) -> RgbProjection:
    """latent [B,C,h,w], rgb [B,3,h,w] (the decoder's output pooled to latent size) -> RgbProjection.

    Solves min ‖[z 1]·Θ − rgb‖² over every position with numpy's lstsq.
    """
    z = _channels_last(latent)
    y = _channels_last(rgb)
    if z.shape[0] != y.shape[0]:
        raise VaeLensError(f"latent has {z.shape[0]} positions but rgb has {y.shape[0]}; pool rgb to latent size",
            param="rgb")
    ok = np.isfinite(z).all(1) & np.isfinite(y).all(1)
    design = np.concatenate([z[ok], np.ones((int(ok.sum()), 1))], axis=1)
    theta, *_ = np.linalg.lstsq(design, y[ok], rcond=None)
    pred = design @ theta
    ss_res = float(((y[ok] - pred) ** 2).sum())
    ss_tot = float(((y[ok] - y[ok].mean(0)) ** 2).sum())
    return RgbProjection(
        weight=tuple(tuple(float(v) for v in theta[:-1, k]) for k in range(y.shape[1])),
        bias=tuple(float(v) for v in theta[-1]),
        r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
    )


# ---------------------------------------------------------------------------------------- files


# Keys of LatentMetadata.to_json(), in the order they are written (README "The latent file").
_META_KEYS = ("format", "vaelens_version", "family", "class", "normalized", "normalization", "pixel_shape",
              "latent_shape", "sources", "vae_source", "weights_sha256", "posterior", "seed", "dtype")


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class LatentMetadata:
    """What a vaelens latent file records about its latent [B,C,(F,)h,w]: the family and VAE that made it,
    whether it is normalised (and how), the pixels it came from, and how the posterior was read.

    to_json() is the file's metadata schema (one JSON value per safetensors metadata key); from_json()
    reads any version of it: keys that are missing read as None, keys it does not know are kept in `extra`.
    """

    family: str | None = None
    diffusers_class: str | None = None  # JSON key "class"
    normalized: bool | None = None  # None: the file does not say
    normalization: Normalization | None = None
    pixel_shape: tuple[int, ...] | None = None
    latent_shape: tuple[int, ...] | None = None
    sources: tuple[str, ...] = ()
    vae_source: str | None = None
    weights_sha256: tuple[str, ...] = ()  # of the weights files that encoded it (vaelens.weights.load)
    posterior: str | None = None  # "mode" | "sample" | "deterministic"
    seed: int | None = None
    dtype: str | None = None
    format: str = FORMAT
    vaelens_version: str | None = None  # None: the running version, when written
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        from vaelens import __version__

        data = {
            "format": self.format,
            "vaelens_version": self.vaelens_version or __version__,
            "family": self.family,
            "class": self.diffusers_class,
            "normalized": self.normalized,
            "normalization": normalization_to_json(self.normalization) if self.normalization else None,
            "pixel_shape": list(self.pixel_shape) if self.pixel_shape is not None else None,
            "latent_shape": list(self.latent_shape) if self.latent_shape is not None else None,
            "sources": list(self.sources),
            "vae_source": self.vae_source,
            "weights_sha256": list(self.weights_sha256),
            "posterior": self.posterior,
            "seed": self.seed,
            "dtype": self.dtype,
        }
        return {**data, **{k: v for k, v in self.extra.items() if k not in data}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatentMetadata:
        """The decoded metadata of a latent file (any vaelens version) -> LatentMetadata."""
        norm = None
        record = data.get("normalization")
        if record is not None:  # a record that cannot be read is an error, never a silent fallback
            if not isinstance(record, Mapping):
                raise VaeLensError(f"the latent file's normalization record {record!r} is not an object",
                                   param="normalization", value=record)
            try:
                norm = normalization_from_json(record)
            except VaeLensError as exc:
                raise VaeLensError(f"the latent file's normalization record is corrupt: {exc}",
                                   param="normalization", value=record) from None
        digests = data.get("weights_sha256")
        normalized = data.get("normalized")
        sources = data.get("sources")
        seed = data.get("seed")
        return cls(
            family=data.get("family") if isinstance(data.get("family"), str) else None,
            diffusers_class=data.get("class") if isinstance(data.get("class"), str) else None,
            normalized=normalized if isinstance(normalized, bool) else None,
            normalization=norm,
            pixel_shape=_shape(data.get("pixel_shape")),
            latent_shape=_shape(data.get("latent_shape")),
            sources=tuple(str(s) for s in sources) if isinstance(sources, list) else (),
            vae_source=str(data["vae_source"]) if data.get("vae_source") is not None else None,
            weights_sha256=tuple(str(d) for d in digests) if isinstance(digests, list) else (),
            posterior=data.get("posterior") if isinstance(data.get("posterior"), str) else None,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            dtype=data.get("dtype") if isinstance(data.get("dtype"), str) else None,
            format=str(data.get("format") or FORMAT),
            vaelens_version=str(data["vaelens_version"]) if data.get("vaelens_version") else None,
            extra={k: v for k, v in data.items() if k not in _META_KEYS},
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LatentFile:
    """A latent file read back: the tensor [B,C,(F,)h,w] and what is known about it.

    `info` is the typed metadata (for a ComfyUI .latent: only normalized=False); `metadata` the decoded
    key -> value dict as stored, kept for keys this version does not model.
    """

    latent: Any
    normalized: bool | None  # None: unknown
    family: str | None
    metadata: dict[str, Any]
    comfy: bool
    info: LatentMetadata = field(default_factory=LatentMetadata)
    warnings: tuple[str, ...] = ()  # how the file was read where a choice was made (a legacy ComfyUI file)


def _output_file(path: str | Path) -> Path:
    """-> the path to write, its folder made; a path that is an existing folder is refused."""
    p = Path(path)
    if p.is_dir():
        example = str(p / "latents.safetensors")
        raise VaeLensError(f"output {str(path)!r} is a folder; give a file name, e.g. {example!r}", param="output")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def save_latents(path: str | Path, latent, *, metadata: LatentMetadata | Mapping[str, Any]) -> Path:
    """latent [B,C,...] + metadata -> vaelens safetensors file (key "latent"; metadata values JSON-encoded).

    `metadata` is a LatentMetadata (its to_json() is the schema), or a plain mapping written as given
    after `format` and `vaelens_version`.
    """
    from safetensors.torch import save_file

    from vaelens import __version__

    if isinstance(metadata, LatentMetadata):
        meta = metadata.to_json()
    else:
        meta = {"format": FORMAT, "vaelens_version": __version__, **metadata}
    p = _output_file(path)
    save_file(
        {"latent": latent.detach().float().cpu().contiguous()},
        str(p),
        metadata={k: json.dumps(v) for k, v in meta.items()},
    )
    return p


def save_comfy_latent(path: str | Path, raw_latent) -> Path:
    """raw (un-normalised) latent [B,C,h,w] -> ComfyUI .latent (what its SaveLatent node writes)."""
    import torch
    from safetensors.torch import save_file

    p = _output_file(path)
    save_file(
        {COMFY_KEY: raw_latent.detach().float().cpu().contiguous(), COMFY_VERSION_KEY: torch.tensor([])},
        str(p),
    )
    return p


def _check_latent_shape(t, path: str | Path) -> None:
    """A latent is float [B,C,h,w] or [B,C,F,h,w] with no empty axis; anything else is refused here, once."""
    if not t.is_floating_point():
        raise VaeLensError(
            f"latent file {str(path)!r} holds a {str(t.dtype).replace('torch.', '')} tensor; latents are float "
            "(a VAE never outputs integers)", param="latents", value=str(t.dtype),
        )
    if t.ndim not in (4, 5) or 0 in t.shape:
        raise VaeLensError(
            f"latent file {str(path)!r} holds a tensor of shape {list(t.shape)}; "
            "expected [B, C, h, w] or [B, C, F, h, w] with no empty axis",
            param="latents",
        )


def load_latents(path: str | Path) -> LatentFile:
    """vaelens latent file | ComfyUI .latent -> LatentFile (ComfyUI's are raw latents, like its LoadLatent)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise VaeLensError(f"latent file {str(path)!r} does not exist", param="latents")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            raw_meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in keys & {COMFY_KEY, COMFY_VERSION_KEY, "latent"}}
    except Exception as exc:  # noqa: BLE001
        raise VaeLensError(f"latent file {str(path)!r} is not a readable safetensors file ({exc})",
            param="latents") from None
    if COMFY_KEY in tensors:
        _check_latent_shape(tensors[COMFY_KEY], path)
        t = tensors[COMFY_KEY].float()
        legacy = COMFY_VERSION_KEY not in tensors
        if legacy:
            t = t * COMFY_LEGACY_MULTIPLIER
            comfy_warnings = (
                f"{p.name} has no {COMFY_VERSION_KEY} marker (a ComfyUI file from before its latent format "
                f"change): scaled by 1/0.18215 as ComfyUI's LoadLatent does, then read as raw latents",)
        else:
            comfy_warnings = ()
        return LatentFile(
            warnings=comfy_warnings,
            latent=t,
            normalized=False,
            family=None,
            comfy=True,
            metadata={"comfy_legacy_rescaled": legacy, **raw_meta},
            info=LatentMetadata(normalized=False, format="comfyui.latent"),
        )
    if "latent" not in tensors:
        shown = ", ".join(sorted(keys)[:3]) + (f", … ({len(keys)} tensors)" if len(keys) > 3 else "")
        raise VaeLensError(
            f"latent file {str(path)!r} holds {shown or 'no tensors'}; "
            f"expected 'latent' (vaelens) or '{COMFY_KEY}' (ComfyUI)",
            param="latents",
        )
    _check_latent_shape(tensors["latent"], path)
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    info = LatentMetadata.from_json(meta)
    return LatentFile(
        latent=tensors["latent"].float(),
        normalized=info.normalized,
        family=info.family,
        metadata=meta,
        comfy=False,
        info=info,
    )


def project_with_decoder(vae, raw_latent, *, upcast: str = "auto"):
    """raw latent [B,C,h,w] -> (RgbProjection fitted to this VAE's decoded pixels pooled to h×w,
    approximation [B,h,w,3] in [0,1], decoded [B,H,W,3] in [0,1]).

    The fit is per latent, to the decoder's own output (not to an input image), so it shows what a
    linear read-out of the channels can and cannot say about colour: R² is reported beside it.
    """
    import torch

    from vaelens.run.verbs import decode

    if raw_latent.ndim != 4:
        raise VaeLensError(f"the RGB projection takes image latents [B,C,h,w]; got {list(raw_latent.shape)}",
                           param="latent", value=list(raw_latent.shape))
    pixels = decode(vae, raw_latent, normalized=False, upcast=upcast).pixels
    rgb01 = (pixels.float().clamp(-1, 1) + 1) / 2
    pooled = torch.nn.functional.adaptive_avg_pool2d(rgb01, raw_latent.shape[-2:])
    proj = fit_rgb_projection(raw_latent, pooled)
    approx = np.clip(proj.apply(raw_latent), 0.0, 1.0)
    return proj, approx, rgb01.permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------------- inspection


def raw_latent_from_file(
    path: str | Path, *, vae=None, normalized: bool | None = None
) -> tuple[Any, LatentFile, tuple[str, ...]]:
    """latent file -> (raw latent z [B,C,(F,)h,w] float32 on CPU, the LatentFile, warnings).

    normalized: True/False overrides the file; None takes what the file records, and a file that does
    not say is refused (as decode refuses it). A normalised latent is denormalised with the
    normalisation recorded in the file (exact; run.verbs.recorded_normalization when `vae` is given, which
    refuses a mismatch it cannot resolve), else with `vae`'s; statistics that live in a checkpoint need `vae`.
    """
    from vaelens.normalization import denormalize

    lf = load_latents(path)
    z = lf.latent
    warnings: list[str] = list(lf.warnings)
    if normalized is None and lf.normalized is None:
        raise ChoiceRequiredError(f"{path} does not say whether its latents are normalised", param="normalized",
                                  choices=(True, False))
    if lf.normalized if normalized is None else normalized:
        norm = lf.info.normalization
        if vae is not None:
            from vaelens.run.verbs import recorded_normalization

            undo, note = recorded_normalization(norm, vae)
            z = denormalize(z, undo, module=vae.module)
            if note:
                warnings.append(note)
        elif norm is None:
            raise MissingModuleError(
                f"{path} holds normalised latents without their normalisation; pass vae= (the VAE that made them)",
                param="vae", value=None,
            )
        elif norm.stats_from:  # the statistics are checkpoint buffers, not in the file's metadata
            raise MissingModuleError(
                f"{path} holds normalised latents whose statistics live in the VAE checkpoint "
                f"({norm.stats_from}); pass vae= to undo the normalisation", param="vae", value=None,
            )
        else:
            z = denormalize(z, norm)
        warnings.append("file holds normalised latents; statistics are of the raw latent after undoing it")
    return z.float().cpu(), lf, tuple(warnings)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfiguredScale:
    """The configured normalisation applied to a raw latent: what std and mean it gives."""

    normalization: Normalization
    normalized_std: float
    normalized_mean: float

    def to_json(self) -> dict[str, Any]:
        from vaelens.normalization import describe

        return {
            "normalization": normalization_to_json(self.normalization),
            "formula": describe(self.normalization),
            "scaling_factor": self.normalization.scale,
            "normalized_std": self.normalized_std,
            "normalized_mean": self.normalized_mean,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LatentInspection:
    """raw latent z [B,C,(F,)h,w] -> its channel statistics, the configured normalisation's effect, and
    (with a decoder, image latents) a least-squares RGB approximation beside the decoder's output."""

    raw: Any  # float32 tensor [B,C,(F,)h,w]
    family: str | None
    stats: ChannelStats
    configured: ConfiguredScale | None
    projection: RgbProjection | None = None
    approximation: np.ndarray | None = None  # [B,h,w,3] in [0,1]
    decoded: np.ndarray | None = None  # [B,H,W,3] in [0,1]
    warnings: tuple[str, ...] = ()

    def item(self, index: int):
        """-> the batch item's latent [C,h,w] to draw (a video latent: its latent frame 0)."""
        if not 0 <= index < self.raw.shape[0]:
            raise VaeLensError(f"index {index} is outside the batch of {self.raw.shape[0]}", param="index")
        item = self.raw[index]
        return item[:, 0] if item.ndim == 4 else item


def inspect_latent(raw, *, vae=None, family: str | None = None, warnings: tuple[str, ...] = (),
                   upcast: str = "auto") -> LatentInspection:
    """raw latent z [B,C,(F,)h,w] (+ the LoadedVae that made it) -> LatentInspection.

    With `vae`: the configured normalisation's std/mean on this latent, and for image latents the RGB
    approximation fitted to the decoder's output (project_with_decoder). Without: statistics only.

    >>> import torch
    >>> insp = inspect_latent(torch.arange(8.0).reshape(1, 2, 2, 2))
    >>> insp.stats.mean, insp.configured
    ((1.5, 5.5), None)
    """
    from vaelens.normalization import normalize

    notes = list(warnings)
    configured = projection = approx = decoded = None
    if vae is not None:
        normed = normalize(raw, vae.spec.normalization, module=vae.module).float()
        configured = ConfiguredScale(
            normalization=vae.spec.normalization,
            normalized_std=round(float(normed.std()), 6),
            normalized_mean=round(float(normed.mean()), 6),
        )
        if raw.ndim == 4:
            projection, approx, decoded = project_with_decoder(vae, raw, upcast=upcast)
    if raw.ndim == 5:
        notes.append(f"video latent: drawing latent frame 0 of {raw.shape[2]}")
    if vae is None:
        notes.append("no VAE given: the RGB approximation needs the decoder, skipped")
    return LatentInspection(
        raw=raw,
        family=vae.family if vae is not None else family,
        stats=channel_stats(raw),
        configured=configured,
        projection=projection,
        approximation=approx,
        decoded=decoded,
        warnings=tuple(notes),
    )
