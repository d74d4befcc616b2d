"""The time model: what an operation costs (flops or bytes) and how long device visits take on a profile.

aten operator + shapes -> flops (op_flops) | OpEvent -> StepCost (event_cost) | StepCosts + DeviceProfile
-> seconds (predict_seconds) | meta-device Trace of the untiled call -> seconds (untiled_seconds).

The model, in full:
- Dense operations (convolutions, linear / matmul, attention) cost their multiply-accumulates x 2 at the
  profile's achieved dense rate for the dtype (DeviceProfile.compute_rate). Their memory traffic is not
  priced: a VAE's convolutions have 128-512 channels and are compute-bound (the 3- and 4-channel first
  and last convolutions are the exception, and are priced low).
- Every other operation that makes a new tensor (pointwise, GroupNorm, upsampling, dtype casts, copies)
  is bytes-bound: it costs the bytes it reads and writes / the device memory bandwidth (a roofline with
  the compute side ignored). Views, and operations that hand back an input (dropout in eval, .to() of
  the same dtype), cost nothing.
- One step (StepCost: one visit of a tile chain to the device) computes for flops/rate + bytes/bandwidth
  seconds and copies for h2d/rate + d2h/rate seconds (each direction at its pinned or pageable rate).
  On a CUDA profile with pinned copies, the copies run on a side stream and overlap the compute, so the
  step takes max(compute, copy); pageable copies are staged through a driver buffer and synchronous with
  the host, and on a CPU a "copy" is a memcpy on the same cores, so those steps take compute + copy.
- A run is the sum of its steps. Not modelled: kernel launch overhead (~microseconds per operation;
  it matters only for very small tiles), the first step's copy that nothing can overlap, cache effects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import DType
from vaelens.tiling.profiles import DeviceProfile, get_profile

__all__ = ["StepCost", "event_cost", "op_flops", "predict_seconds", "step_seconds", "untiled_seconds"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCost:
    """One device visit: dense flops, bytes-bound device traffic, and the copies in and out.

    `flops` counts 2 per multiply-accumulate of dense operations (of which `conv_flops` are
    convolutions: an fp32 convolution runs at the TF32 rate); `device_bytes` is what bytes-bound
    operations read and write in device memory; `h2d_bytes` / `d2h_bytes` cross the host link,
    from/to page-locked host memory when `pinned`.
    """

    flops: float = 0.0
    device_bytes: int = 0
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    pinned: bool = True
    conv_flops: float = 0.0

    def __add__(self, other: StepCost) -> StepCost:
        """Two costs run in one visit (pinned only if both copy from pinned memory)."""
        return StepCost(flops=self.flops + other.flops, device_bytes=self.device_bytes + other.device_bytes,
                        h2d_bytes=self.h2d_bytes + other.h2d_bytes, d2h_bytes=self.d2h_bytes + other.d2h_bytes,
                        pinned=self.pinned and other.pinned, conv_flops=self.conv_flops + other.conv_flops)


ZERO = StepCost()

_CONV = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "cudnn_convolution"})
_CONV_T = frozenset({"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})
_MATMUL = frozenset({"linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm", "einsum_matmul"})
_ATTENTION = frozenset({
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math",
})
# Operators that return a view of (or the same storage as) their input: no kernel, no traffic.
_VIEWS = frozenset({
    "view", "_unsafe_view", "as_strided", "transpose", "permute", "t", "expand", "unsqueeze", "squeeze",
    "slice", "select", "narrow", "detach", "alias", "unflatten", "flatten", "split", "chunk", "unbind",
    "view_as", "expand_as", "movedim", "split_with_sizes", "lift_fresh", "_reshape_alias",
})


def _base(op_name: str) -> str:
    """'aten.conv2d.default' | 'conv2d' -> 'conv2d'."""
    parts = str(op_name).split(".")
    return parts[1] if parts[0] == "aten" and len(parts) > 1 else parts[0]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def is_dense(op_name: str) -> bool:
    """Whether op_flops prices this operator (convolution, matmul family, attention)."""
    base = _base(op_name)
    return base in _CONV or base in _CONV_T or base in _MATMUL or base in _ATTENTION


def op_flops(op_name: str, input_shapes: Sequence[Sequence[int]], output_shape: Sequence[int], *,
             transposed: bool = False, **_params: Any) -> float:
    """aten op name + input shapes (tensor arguments in order) + output shape -> flops (2 per MAC).

    conv*/convolution: inputs (x, weight[, bias]); 2 * out.numel * weight[1:].numel (transposed: x.numel
    instead of out.numel, as each input element meets weight[1:]). linear / matmul / mm / bmm: 2 * out.numel
    * K, K the last axis of the first matrix (addmm / baddbmm: of the second input). Attention (q [.., L, E],
    k [.., S, E], v [.., S, Ev]): 2 * L * S * (E + Ev) per batch and head (q k^T and the weighted sum of v;
    the softmax is not counted). Bias adds are not counted. Any other operator: 0 (see event_cost).

    >>> op_flops("aten.conv2d.default", [(1, 4, 8, 8), (16, 4, 3, 3), (16,)], (1, 16, 8, 8))
    73728.0
    """
    base = _base(op_name)
    if base in _CONV or base in _CONV_T:
        if len(input_shapes) < 2:
            raise VaeLensError(f"op_flops({base!r}) needs the input and weight shapes, got {list(input_shapes)}",
                               param="input_shapes", value=list(input_shapes))
        x, w = input_shapes[0], input_shapes[1]
        per = _numel(w[1:])
        return 2.0 * (_numel(x) if (transposed or base in _CONV_T) else _numel(output_shape)) * per
    if base in _MATMUL:
        first = input_shapes[1] if base in ("addmm", "baddbmm", "addbmm") else input_shapes[0]
        return 2.0 * _numel(output_shape) * int(first[-1])
    if base in _ATTENTION:
        q, k, v = input_shapes[0], input_shapes[1], input_shapes[2]
        heads = _numel(q[:-2])
        return 2.0 * heads * int(q[-2]) * int(k[-2]) * (int(q[-1]) + int(v[-1]))
    return 0.0


def event_cost(event: Any) -> StepCost:
    """One traced OpEvent (vaelens.trace.records) -> its StepCost on the device (no copies).

    Dense operators -> flops; views and operators that return an input's storage -> nothing; a reshape
    of a contiguous tensor is a view; anything else -> the bytes of its tensor inputs and outputs.
    """
    base = _base(event.name)
    shapes = [t.shape for t in event.inputs]
    out = event.outputs[0].shape if event.outputs else ()
    if is_dense(event.name):
        transposed = base == "convolution" and any(s is True for s in event.scalars)
        flops = op_flops(event.name, shapes, out, transposed=transposed)
        return StepCost(flops=flops, conv_flops=flops if (base in _CONV or base in _CONV_T) else 0.0)
    if base in _VIEWS or not event.outputs:
        return ZERO
    if base in ("reshape", "contiguous", "clone_if_needed") and event.inputs and event.inputs[0].is_contiguous():
        return ZERO
    in_storages = {t.storage for t in event.inputs}
    if all(o.storage in in_storages for o in event.outputs):
        return ZERO  # dropout in eval, .to() of the same dtype, in-place ops on an input: no new tensor
    moved = sum(t.nbytes for t in event.inputs) + sum(o.nbytes for o in event.outputs)
    return StepCost(device_bytes=moved)


def _dtype(value: Any) -> DType:
    if isinstance(value, DType):
        return value
    try:
        return DType.parse(value)
    except VaeLensError:
        return DType.of(value)


def step_seconds(step: StepCost, profile: DeviceProfile | str, dtype: DType | str) -> float:
    """StepCost + profile + dtype -> seconds of that device visit (see the module docstring for the model)."""
    p = get_profile(profile)
    dt = _dtype(dtype)
    other = step.flops - step.conv_flops
    compute = (other / p.compute_rate(dt) + step.conv_flops / p.compute_rate(dt, conv=True)
               + step.device_bytes / p.memory_bandwidth)
    copy = (step.h2d_bytes / p.copy_rate("h2d", step.pinned)
            + step.d2h_bytes / p.copy_rate("d2h", step.pinned))
    overlapped = p.kind == "cuda" and step.pinned
    return max(compute, copy) if overlapped else compute + copy


def predict_seconds(steps: Iterable[StepCost], profile: DeviceProfile | str, dtype: DType | str) -> float:
    """[StepCost] (the visits of one run, in order) + profile + dtype -> predicted seconds (their sum).

    >>> round(predict_seconds([StepCost(flops=989.5e12 * 0.12)], "h100", "bf16"), 6)
    1.0
    """
    return sum(step_seconds(s, profile, dtype) for s in steps)


def untiled_seconds(trace: Any, profile: DeviceProfile | str, dtype: DType | str | None = None) -> float:
    """Trace of the untiled call on the meta device (vaelens.trace) + profile -> predicted seconds.

    Weights and input are resident (as in ../shared/measurements): no copies. Each operator is priced at
    its own dtype (an fp32 upcast inside a bf16 model costs fp32 rates) unless `dtype` forces one.
    """
    p = get_profile(profile)
    forced = _dtype(dtype) if dtype is not None else None
    total = 0.0
    for event in trace.events:
        cost = event_cost(event)
        if cost is ZERO:
            continue
        dt = forced or _event_dtype(event)
        total += step_seconds(cost, p, dt)
    return total


def _event_dtype(event: Any) -> DType:
    for t in (*event.inputs, *event.outputs):
        try:
            return DType.of(t.dtype)
        except VaeLensError:
            continue
    return DType.FP32
