"""Records of a trace: tensors, aten operator events and module calls.

TensorMeta / OpEvent / LayerRecord / Trace are what vaelens.trace produces and vaelens.memory reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vaelens.options import Choice


class Op(Choice):
    """Which call of a module is traced."""

    ENCODE = "encode"
    DECODE = "decode"
    FORWARD = "forward"


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """One tensor argument of an operator: shape, dtype, strides, storage id and storage bytes."""

    shape: tuple[int, ...]
    dtype: Any  # torch.dtype
    stride: tuple[int, ...]
    storage: int
    itemsize: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


@dataclass(frozen=True, slots=True)
class OpEvent:
    """One aten operator: what it read and returned, what it allocated, what died before it ran."""

    index: int
    name: str  # e.g. "aten.conv2d.default"
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    scalars: tuple[Any, ...]
    allocs: tuple[tuple[int, int], ...]  # (storage id, bytes) of new storages among outputs
    frees_before: tuple[int, ...]  # storage ids whose last tensor died since the previous op
    layer: int  # index of the innermost module call running when it ran (-1: none)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerRecord:
    """One module call: path and type, its output, and the activation bytes alive right after it."""

    index: int
    path: str
    type: str
    depth: int  # 0: the traced module; 1: layers it calls; 2: layers they call, ...
    output_shape: tuple[int, ...] | None
    dtype: str | None
    bytes: int  # bytes of the tensors it returned
    live_bytes: int  # activation bytes alive after it (storage bytes, weights and input excluded)
    first_op: int
    last_op: int  # ops first_op .. last_op-1 ran inside it


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """A traced call: per-layer records and per-operator events, plus the resident bytes around it."""

    op: Op
    module_type: str
    layers: tuple[LayerRecord, ...]
    events: tuple[OpEvent, ...]
    final_frees: tuple[int, ...]  # storages that died after the last op (before the result is read)
    input_shapes: tuple[tuple[int, ...], ...]
    input_bytes: int
    input_dtype: str | None
    output_shape: tuple[int, ...] | None
    output_bytes: int
    weights_bytes: int
    resident_sizes: tuple[int, ...] = ()  # weights (in .to() order) then inputs: what the GPU holds first
