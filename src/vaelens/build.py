"""Spec or config.json -> the real diffusers module (meta device by default: no memory, no weights).

Also the one adapter to diffusers' conventions: what `encode` / `decode` return (an output object, a
tuple, a distribution) -> the tensor, and the logging diffusers does on every build and cast.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from vaelens.errors import ConfigError
from vaelens.options import DType, Posterior


class ConfigSource(Protocol):
    """Anything that names a diffusers config (a FamilySpec; build.py does not import the registry)."""

    def diffusers_config(self) -> dict[str, Any]: ...


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' logger (error level) and Python warnings for the block; both restored after.

    diffusers logs about unexpected config keys and fp32-kept modules on every build, and about
    "modules that should be kept in float32: []" on every dtype cast (models/modeling_utils.py
    ModelMixin.to), even when the list is empty; a released config is what it is.
    """
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlogging.set_verbosity(verbosity)


def diffusers_class(name: str) -> type:
    """'AutoencoderKL' -> diffusers.AutoencoderKL; unknown names raise with the Autoencoder* classes."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type):
        known = sorted(n for n in dir(diffusers) if n.startswith("Autoencoder") or n.startswith("VQModel"))
        raise ConfigError(
            f"_class_name {name!r} is not a class in diffusers {diffusers.__version__}; "
            f"VAE classes it has: {', '.join(known)}", param="model", value=name, choices=known,
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
            raise ConfigError(f"folder {str(path)!r} holds neither config.json nor vae/config.json", param="model",
                              value=str(path))
    if not p.is_file():
        raise ConfigError(f"config path {str(path)!r} does not exist", param="model", value=str(path))
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config {str(p)!r} is not valid JSON: {exc}", param="model", value=str(p)) from None
    if not isinstance(cfg, dict) or "_class_name" not in cfg:
        raise ConfigError(
            f"config {str(p)!r} has no _class_name; a diffusers VAE config names its class, "
            'e.g. "_class_name": "AutoencoderKL"', param="model", value=str(p),
        )
    return cfg


def build_module(
    source: ConfigSource | Mapping[str, Any], *, device: str = "meta", dtype: DType | str = DType.FP32
):
    """FamilySpec | config dict -> diffusers VAE module in eval mode on `device` (meta: no storage).

    The module is the real diffusers class, built with `from_config`; on the meta device the
    parameters have shapes and dtypes but no memory, so any released VAE builds in milliseconds.
    """
    import torch

    cfg = dict(source) if isinstance(source, Mapping) else source.diffusers_config()
    cls = diffusers_class(str(cfg.get("_class_name")))
    with quiet_diffusers():
        try:
            with torch.device(device):
                module = cls.from_config(cfg)
        except (TypeError, ValueError, KeyError, AssertionError) as exc:
            raise ConfigError(f"diffusers {cls.__name__} could not be built from this config: {exc}",
                              param="model", value=cls.__name__) from None
        module = module.to(dtype=DType.parse(dtype).torch)
    return module.eval()


def encoded_latent(out: Any, *, posterior: Posterior | str = Posterior.MODE, generator: Any = None):
    """module.encode(...) output -> raw latent [B,C,(F',)h,w].

    KL VAEs: the posterior's mode, or with posterior="sample" a draw from it with `generator`;
    deterministic VAEs (DC-AE `.latent`, AutoencoderTiny `.latents`) have one latent for either choice.
    A `return_dict=False` tuple gives its first item.
    """
    import torch

    posterior = Posterior.parse(posterior)

    if isinstance(out, tuple):
        out = out[0]
    if isinstance(out, torch.Tensor):
        return out
    dist = getattr(out, "latent_dist", None)
    if dist is None and callable(getattr(out, "mode", None)):
        dist = out  # a bare DiagonalGaussianDistribution
    if dist is not None:
        return dist.sample(generator=generator) if posterior is Posterior.SAMPLE else dist.mode()
    for name in ("latent", "latents", "latent_sample"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return out


def decoded_pixels(out: Any):
    """module.decode(...) output -> pixels [B,3,(F,)H,W] (its `.sample`, or a tuple's first item)."""
    if isinstance(out, tuple):
        out = out[0]
    return getattr(out, "sample", out)


def run_encode(module, pixels, *, posterior: Posterior | str = Posterior.MODE, generator: Any = None):
    """pixels [B,3,(F,)H,W] -> raw latent [B,C,(F',)h,w]: one call of module.encode (see encoded_latent)."""
    return encoded_latent(module.encode(pixels), posterior=posterior, generator=generator)


def run_decode(module, latent):
    """raw latent [B,C,(F',)h,w] -> pixels [B,3,(F,)H,W]: one call of module.decode."""
    return decoded_pixels(module.decode(latent))


def meta_copy(module: Any, dtype: Any = None):
    """nn.Module (weights anywhere) -> a copy on the meta device, cast to `dtype` if given; the weights are
    never copied (each parameter and buffer is pre-mapped to an empty meta twin). A module already on
    meta is returned as it is.

    >>> import torch
    >>> meta_copy(torch.nn.Linear(2, 3)).weight.is_meta
    True
    """
    import copy

    import torch

    tensors = [*module.parameters(), *module.buffers()]
    if all(t.is_meta for t in tensors):
        return module
    memo: dict[int, Any] = {}
    for t in tensors:
        twin = torch.empty_like(t, device="meta")
        is_param = isinstance(t, torch.nn.Parameter)
        memo[id(t)] = torch.nn.Parameter(twin, requires_grad=t.requires_grad) if is_param else twin
    clone = copy.deepcopy(module, memo)
    if dtype is None:
        return clone
    with quiet_diffusers():
        return clone.to(dtype)
