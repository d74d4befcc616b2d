"""A diffusers config.json (any VAE, not only the registry's) -> FamilySpec derived from the module.

The latent channels and the spatial and temporal factors are read off the real module by running
encode on meta tensors (no memory, no weights); the normalisation comes from the config's own
scaling_factor / shift_factor / latents_mean / latents_std. Nothing is taken from the registry.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from vaelens.errors import ConfigError
from vaelens.families.spec import (
    FamilySpec,
    FrameRuleKind,
    Normalization,
    NormKind,
    SizeRule,
    SizeRuleKind,
    SpecOrigin,
    TemporalRule,
)

_PROBE_SIDE = 256  # divisible by every spatial factor in use (8, 16, 32, 64)


def _encode_shape(module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    import torch

    from vaelens.build import run_encode

    x = torch.empty(shape, device="meta", dtype=next(module.parameters()).dtype)
    try:
        with torch.inference_mode():
            return tuple(run_encode(module, x).shape)
    except Exception:  # noqa: BLE001 — a probe that the module rejects is information, not an error
        return None


def _normalization(cfg: dict[str, Any], source: str, module) -> Normalization:
    bn = getattr(module, "bn", None)
    if bn is not None and hasattr(bn, "running_mean"):
        # FLUX.2-style: BatchNorm statistics over p×p-patchified latents live in the checkpoint.
        p = cfg.get("patch_size") or [2, 2]
        return Normalization(
            kind=NormKind.BATCHNORM_PATCHED,
            patch=(int(p[0]), int(p[1])),
            eps=float(getattr(bn, "eps", 1e-4)),
            stats_from="bn",
            source=f"{source} (patch_size, batch_norm_eps); module buffers bn.running_mean/var",
        )
    buffers = dict(module.named_buffers())
    if "latents_mean" in buffers and "latents_std" in buffers and not cfg.get("latents_mean"):
        # LTX-style: per-channel statistics are buffers of the checkpoint, not config values.
        return Normalization(
            kind=NormKind.PER_CHANNEL,
            scale=float(cfg.get("scaling_factor") or 1.0),
            stats_from="latents_mean",
            source=f"{source} (scaling_factor); module buffers latents_mean/latents_std",
        )
    mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
    scale = cfg.get("scaling_factor")
    shift = cfg.get("shift_factor")
    if isinstance(mean, list) and isinstance(std, list) and mean and std:
        return Normalization(
            kind=NormKind.PER_CHANNEL,
            scale=float(scale if scale is not None else 1.0),
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            source=f"{source} (latents_mean, latents_std, scaling_factor)",
        )
    if scale is None or (float(scale) == 1.0 and not shift):
        return Normalization(kind=NormKind.NONE, source=f"{source} (no scaling_factor other than 1.0)")
    return Normalization(
        kind=NormKind.AFFINE,
        scale=float(scale),
        shift=float(shift or 0.0),
        source=f"{source} (scaling_factor, shift_factor)",
    )


# Config keys that must be positive whole numbers / finite numbers when present (a wrong one becomes a
# torch RuntimeError or a float() ValueError deep inside diffusers or vaelens).
_POSITIVE_INT_KEYS = ("latent_channels", "in_channels", "out_channels", "z_dim")
_NUMBER_KEYS = ("scaling_factor", "shift_factor")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_config_values(cfg: dict[str, Any], *, source: str) -> None:
    """Refuse, naming key and value, config values no VAE can have (negative channels, a text scale)."""
    where = f"{cfg.get('_class_name', 'config')} from {source}"
    for key in _POSITIVE_INT_KEYS:
        v = cfg.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ConfigError(f"{where}: {key} is {v!r}; it must be a whole number of at least 1", param="model")
    for key in _NUMBER_KEYS:
        v = cfg.get(key)
        if v is not None and not _is_number(v):
            raise ConfigError(f"{where}: {key} is {v!r}; it must be a finite number (e.g. 0.18215)", param="model")
    for key in ("block_out_channels", "latents_mean", "latents_std"):
        v = cfg.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or not all(_is_number(x) for x in v):
            raise ConfigError(f"{where}: {key} is {v!r}; it must be a list of finite numbers", param="model")
        if key == "block_out_channels" and not all(isinstance(x, int) and x >= 1 for x in v):
            raise ConfigError(f"{where}: block_out_channels is {v!r}; each must be a whole number of at least 1",
                              param="model")
        if key == "latents_std" and any(x == 0 for x in v):
            raise ConfigError(f"{where}: latents_std is {v!r}; a std of 0 cannot normalise", param="model")


def _vae_module(cfg: dict[str, Any], *, source: str):
    """config dict -> its diffusers module on the meta device; a class without encode/decode is refused."""
    from vaelens.build import build_module, diffusers_class

    cls = diffusers_class(str(cfg["_class_name"]))
    if not (callable(getattr(cls, "encode", None)) and callable(getattr(cls, "decode", None))):
        # e.g. a UNet's or transformer's config.json: a diffusers class, but no pixel <-> latent path
        import diffusers

        vaes = sorted(n for n in dir(diffusers) if n.startswith(("Autoencoder", "VQModel")))
        raise ConfigError(
            f"{source}: _class_name {cls.__name__!r} is not a VAE class (it has no encode/decode); "
            f"VAE classes in diffusers {diffusers.__version__}: {', '.join(vaes)}", param="model")
    try:
        return build_module(cfg)
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:  # diffusers' own check of the config
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{cfg['_class_name']} from {source} could not be built: {exc}", param="model") from None


class _Geometry(NamedTuple):
    channels: int
    spatial_factor: int
    temporal: TemporalRule | None
    video_module: bool  # takes [B,3,F,H,W] (even with no time compression)


def _probe_geometry(module, *, what: str) -> _Geometry:
    """meta module -> latent channels, spatial factor and (video) temporal factor, read off encode shapes."""
    s = _PROBE_SIDE
    out4 = _encode_shape(module, (1, 3, s, s))
    if out4 is not None and len(out4) == 4:
        return _Geometry(out4[1], s // out4[2], None, False)
    # 5-D module: probe two frame counts to read the temporal factor off (F - 1) // t + 1.
    probes = {}
    for frames in (9, 17, 33):
        out = _encode_shape(module, (1, 3, frames, s, s))
        if out is not None and len(out) == 5:
            probes[frames] = out
    if not probes:
        raise ConfigError(
            f"{what}: encode rejected both [1,3,{s},{s}] and [1,3,F,{s},{s}] probes; "
            "vaelens cannot read its latent geometry", param="model")
    first = next(iter(probes.values()))
    temporal = None
    if len(probes) >= 2:
        (f1, o1), (f2, o2) = list(probes.items())[:2]
        steps = o2[2] - o1[2]
        t = (f2 - f1) // steps if steps else 1
        if t > 1:
            temporal = TemporalRule(
                factor=t, rule=FrameRuleKind.RAISE, source=f"probed: encode of {f1} and {f2} frames"
            )
    return _Geometry(first[1], s // first[3], temporal, True)


def _name_from_source(source: str) -> str:
    """'…/model/vae/config.json' -> 'model' (the model, not its "vae" sub-folder); 'x.json' -> 'x'."""
    src = Path(source)
    if src.name != "config.json":
        return src.stem
    return src.parent.parent.name if src.parent.name == "vae" else src.parent.name


def spec_from_config(cfg: dict[str, Any], *, source: str) -> FamilySpec:
    """config dict (with _class_name) -> FamilySpec whose geometry is probed from the meta module."""
    check_config_values(cfg, source=source)
    module = _vae_module(cfg, source=source)
    what = f"{cfg['_class_name']} from {source}"
    geo = _probe_geometry(module, what=what)
    f, temporal = geo.spatial_factor, geo.temporal
    if geo.channels < 1:
        raise ConfigError(f"{what}: encode gives a latent with {geo.channels} latent "
                          "channels; latent_channels must be at least 1", param="model")
    sample = cfg.get("sample_size")
    side = int(sample[0] if isinstance(sample, (list, tuple)) else sample or 512)
    side = max(f, side // f * f)
    return FamilySpec(
        name=_name_from_source(source) or cfg["_class_name"],
        title=what,
        diffusers_class=cfg["_class_name"],
        config={k: v for k, v in cfg.items() if not k.startswith("_")},
        config_source=source,
        latent_channels=int(geo.channels),
        spatial_factor=int(f),
        temporal=temporal,
        video_module=geo.video_module and temporal is None,
        # module.config holds the class defaults for keys the file leaves out (SD 1.5's config has no
        # scaling_factor; AutoencoderKL's default 0.18215 is what its pipeline uses).
        normalization=_normalization({**dict(module.config), **cfg}, source, module),
        tokens=None,
        size_rule=SizeRule(
            kind=SizeRuleKind.FLOOR,
            multiple=int(f),
            source="diffusers VaeImageProcessor floors to a multiple of vae_scale_factor",
        ),
        default_size=(side, side),
        default_frames=(4 * temporal.factor + 1) if temporal else None,
        origin=SpecOrigin.CONFIG,
        notes="derived from a config.json: geometry probed on the meta device; no pipeline rules known",
        sources={"latent_channels": "probed",
                 "spatial_factor": f"probed: encode of {_PROBE_SIDE}x{_PROBE_SIDE} on meta"},
    )


def spec_from_config_path(path: str) -> FamilySpec:
    """config.json | folder with config.json or vae/config.json | 'owner/name' repo id in the local
    Hugging Face cache (never downloaded) -> derived FamilySpec."""
    from vaelens.build import load_config
    from vaelens.hfcache import hf_cache_folder, looks_like_repo_id

    p = Path(path).expanduser()
    repo_id = None
    if not p.exists() and looks_like_repo_id(path):
        repo_id, p = path, hf_cache_folder(path)
    cfg = load_config(p)
    src = p if p.is_file() else (p / "config.json" if (p / "config.json").is_file() else p / "vae" / "config.json")
    spec = spec_from_config(cfg, source=str(src))
    if repo_id is not None:  # named by what the user gave, not by the snapshot hash
        from dataclasses import replace

        spec = replace(spec, name=repo_id)
    if math.prod(spec.default_size) <= 0:  # pragma: no cover - defensive
        raise ConfigError(f"{path}: could not derive a default size", param="model")
    return spec
