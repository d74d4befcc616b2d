"""Spec or config.json -> the real diffusers module (meta device by default: no memory, no weights)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vaelens.errors import ConfigError
from vaelens.families.spec import FamilySpec
from vaelens.options import DType


def diffusers_class(name: str) -> type:
    """'AutoencoderKL' -> diffusers.AutoencoderKL; unknown names raise with the Autoencoder* classes."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type):
        known = sorted(n for n in dir(diffusers) if n.startswith("Autoencoder") or n.startswith("VQModel"))
        raise ConfigError(
            f"_class_name {name!r} is not a class in diffusers {diffusers.__version__}; "
            f"VAE classes it has: {', '.join(known)}"
        )
    return cls


def load_config(path: str | Path) -> dict[str, Any]:
    """A config.json file, or a folder holding config.json or vae/config.json -> config dict."""
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / "config.json", p / "vae" / "config.json"):
            if candidate.is_file():
                p = candidate
                break
        else:
            raise ConfigError(f"folder {str(path)!r} holds neither config.json nor vae/config.json")
    if not p.is_file():
        raise ConfigError(f"config path {str(path)!r} does not exist")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config {str(p)!r} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or "_class_name" not in cfg:
        raise ConfigError(
            f"config {str(p)!r} has no _class_name; a diffusers VAE config names its class, "
            'e.g. "_class_name": "AutoencoderKL"'
        )
    return cfg


def build_module(
    source: FamilySpec | Mapping[str, Any], *, device: str = "meta", dtype: DType | str = DType.FP32
):
    """FamilySpec | config dict -> diffusers VAE module in eval mode on `device` (meta: no storage).

    The module is the real diffusers class, built with `from_config`; on the meta device the
    parameters have shapes and dtypes but no memory, so any released VAE builds in milliseconds.
    """
    import torch
    from diffusers.utils import logging as dlogging

    cfg = source.diffusers_config() if isinstance(source, FamilySpec) else dict(source)
    cls = diffusers_class(str(cfg.get("_class_name")))
    # diffusers logs about unexpected config keys and fp32-kept modules on every build; a released
    # config is what it is, so keep the terminal quiet and restore the caller's verbosity after.
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with torch.device(device):
                    module = cls.from_config(cfg)
            except (TypeError, ValueError, KeyError, AssertionError) as exc:
                raise ConfigError(
                    f"diffusers {cls.__name__} could not be built from this config: {exc}"
                ) from None
            module = module.to(dtype=DType.parse(dtype).torch)
    finally:
        dlogging.set_verbosity(verbosity)
    return module.eval()


def run_encode(module, pixels):
    """pixels [B,3,(F,)H,W] -> raw latent [B,C,(F',)h,w]: the distribution's mode for KL VAEs,
    the deterministic latent otherwise (DC-AE `.latent`, AutoencoderTiny `.latents`)."""
    out = module.encode(pixels)
    if isinstance(out, tuple):
        out = out[0]
    dist = getattr(out, "latent_dist", None)
    if dist is not None:
        return dist.mode()
    for name in ("latent", "latents"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    if hasattr(out, "mode"):
        return out.mode()
    return out


def run_decode(module, latent):
    """raw latent [B,C,(F',)h,w] -> pixels [B,3,(F,)H,W] (the `.sample` of the decoder output)."""
    out = module.decode(latent)
    if isinstance(out, tuple):
        out = out[0]
    return getattr(out, "sample", out)
