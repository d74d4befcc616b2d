"""Local checkpoint files: safetensors / pickle reading.

file -> (tensors on CPU, metadata). The Hugging Face cache and the offline guard are vaelens.hfcache.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vaelens.errors import WeightsError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Prefixes of the VAE inside full checkpoints: diffusers/src/diffusers/loaders/single_file_utils.py LDM_VAE_KEYS
VAE_PREFIXES = ("first_stage_model.", "vae.")


# ---------------------------------------------------------------------------------------------- reading


def read_state_dict(path: str | Path, *, allow_pickle: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """weights file -> (tensors on CPU, safetensors metadata). Full checkpoints: only the VAE's tensors.

    Safetensors are read with `safe_open`; pickles (.ckpt/.pt/.pth/.bin) only with allow_pickle, and then
    with `torch.load(weights_only=True)`, which refuses arbitrary objects.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist", param="source")
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return _read_pickle(p, allow_pickle), {}
    if p.suffix.lower() != ".safetensors":
        raise WeightsError(
            f"weights file {str(path)!r} has suffix {p.suffix!r}; vaelens reads .safetensors "
            f"(and {', '.join(PICKLE_SUFFIXES)} with allow_pickle=True)",
            param="source",
        )
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            meta = dict(f.metadata() or {})
            wanted = _vae_keys(keys)
            tensors = {k: f.get_tensor(k) for k in wanted}
    except Exception as exc:  # noqa: BLE001 — safetensors raises its own and OSError types
        raise WeightsError(
            f"weights file {str(path)!r} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
            "it may be truncated or not a safetensors file",
            param="source",
        ) from None
    if not tensors:
        raise WeightsError(f"weights file {str(path)!r} holds no tensors", param="source")
    return tensors, meta


def _vae_keys(keys: list[str]) -> list[str]:
    """A full checkpoint's keys -> only its VAE's (first_stage_model.* / vae.*); other files: all keys."""
    for prefix in VAE_PREFIXES:
        if any(k.startswith(prefix) for k in keys) and not all(k.startswith(prefix) for k in keys):
            return [k for k in keys if k.startswith(prefix)]
    return keys


def _read_pickle(p: Path, allow_pickle: bool) -> dict[str, Any]:
    if not allow_pickle:
        raise WeightsError(
            f"weights file {str(p)!r} is a pickle checkpoint ({p.suffix}); unpickling can run code, so vaelens "
            "reads it only with allow_pickle=True, and then with torch.load(weights_only=True)",
            param="source",
        )
    import torch

    warnings.warn(f"loading pickle checkpoint {p} with torch.load(weights_only=True)", stacklevel=3)
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(
            f"pickle checkpoint {str(p)!r} could not be read with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {_unpickling_reason(exc)})",
            param="source",
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"pickle checkpoint {str(p)!r} holds no state dict of tensors", param="source")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return {k: tensors[k] for k in _vae_keys(list(tensors))}


def _unpickling_reason(exc: Exception) -> str:
    """torch.load's multi-line error -> its one line that says what was wrong with the file.

    torch's weights_only message spans several lines and advises weights_only=False (running the pickle's
    code), which is what vaelens refuses to do; only the WeightsUnpickler reason is kept."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip() or " ".join(lines[i + 1 : i + 2])
            return reason.split(" Please use", 1)[0]
    return lines[0] if lines else ""
