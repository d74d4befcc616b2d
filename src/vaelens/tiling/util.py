"""Small helpers the executor and the tiled operations share (nested args, byte counts, axis pairs)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from vaelens.trace.dispatch import tensors_in

Region = tuple[tuple[int, int], ...]

tensors = tensors_in  # one walker over nested args, shared with the tracer


def one_tile(axes: list[list[tuple[int, int]]]) -> bool:
    """Per-axis ranges -> whether they make a single tile."""
    return all(len(rs) == 1 for rs in axes)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Nested tuples / lists / dicts with fn applied to every tensor in them."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(map_tensors(o, fn) for o in obj)
    if isinstance(obj, list):
        return [map_tensors(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def nbytes(ts: Iterable[torch.Tensor]) -> int:
    """Tensors -> the bytes of their elements (a view counts its own elements)."""
    return sum(t.numel() * t.element_size() for t in ts)


def pair(v: Any, n: int) -> tuple[int, ...]:
    """An int or a sequence -> an n-tuple (PyTorch's convention for stride, padding, kernel)."""
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


def output_tensors(obj: Any, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """What a diffusers call returns (tensor, tuple, DecoderOutput, AutoencoderKLOutput with its posterior)
    -> every tensor reachable from it, in a fixed order."""
    out = [] if out is None else out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            output_tensors(o, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            output_tensors(v, out)
    elif hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        for v in vars(obj).values():
            if isinstance(v, torch.Tensor):
                out.append(v)
    return out
