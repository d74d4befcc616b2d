"""What each precision choice costs in memory: all-fp32 (diffusers' force_upcast), all-fp16, all-bf16, and
fp16 with the upcast blocks in fp32 — predicted by vaelens.memory on the meta device.

The mixed module is priced as it runs, not interpolated: a meta copy of the VAE at fp16 gets the upcast
applied exactly as `apply_upcast` does it for real (blocks cast to fp32, the casting hooks at their
entry and after them), and that module is traced and replayed through the allocator model like any
other. The fp32 island's activations count at 4 bytes, the rest at 2, and each cast is one more
allocation at the block boundary. The allocator model's low/high range (cuDNN's algorithm choice,
workspaces) is the range of the mixed peak; when the peak falls in the fp16 part or in the fp32 island
depends on the blocks, and the trace decides it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vaelens.options import DType
from vaelens.trace import Op


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """One precision choice: weights, and the largest predicted peak over the ops analysed (batch 1)."""

    label: str  # "fp32", "fp16", "bf16", "fp16+upcast"
    weights_bytes: int
    peak_bytes: int
    peak_bytes_low: int
    peak_bytes_high: int
    peak_op: str  # the op (encode | decode) whose peak is the largest

    def to_json(self) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights_bytes,
            "peak_bytes": self.peak_bytes,
            "peak_bytes_low": self.peak_bytes_low,
            "peak_bytes_high": self.peak_bytes_high,
            "peak_op": self.peak_op,
        }


def _combine(label: str, estimates: Mapping[Op, Any]) -> Price:
    op, est = max(estimates.items(), key=lambda kv: kv[1].peak_bytes)
    return Price(
        label=label,
        weights_bytes=est.weights_bytes,
        peak_bytes=est.peak_bytes,
        peak_bytes_low=max(e.peak_bytes_low for e in estimates.values()),
        peak_bytes_high=max(e.peak_bytes_high for e in estimates.values()),
        peak_op=op.value,
    )


def price_uniform(module: Any, shapes: Mapping[Op, Sequence[int]], dtype: DType) -> Price:
    """module (any device) + input shape per op -> Price of running it all at `dtype`."""
    import torch

    from vaelens.memory.estimate import estimate_call

    ests = {
        op: estimate_call(module, torch.empty(tuple(shape), device="meta", dtype=dtype.torch), op=op,
                          dtype=dtype, device=False)
        for op, shape in shapes.items()
    }
    return _combine(dtype.value, ests)


def price_upcast(module: Any, shapes: Mapping[Op, Sequence[int]], upcast: Sequence[str], after: str | None,
                 dtype: DType = DType.FP16) -> Price:
    """module + input shape per op + upcast blocks -> Price of the mixed module (see the module docstring)."""
    import torch

    from vaelens.build import meta_copy
    from vaelens.memory.estimate import simulate
    from vaelens.memory.rules import RULES
    from vaelens.precision.upcast import apply_upcast
    from vaelens.trace import trace_module

    ests = {}
    for op, shape in shapes.items():
        meta = meta_copy(module, dtype.torch)
        if meta is module:  # a module already on meta: leave the caller's copy untouched
            import copy

            meta = copy.deepcopy(module).to(dtype.torch)
        apply_upcast(meta, upcast, after, dtype.torch)
        x = torch.empty(tuple(shape), device="meta", dtype=dtype.torch)
        tr = trace_module(meta, [x], op=op, detail=RULES.keys())
        ests[op] = simulate(tr, dtype=dtype, device=False)
    return _combine(f"{dtype.value}+upcast", ests)
