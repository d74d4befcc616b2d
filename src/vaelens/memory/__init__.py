"""Predict CUDA memory without a GPU: the caching-allocator model, per-operator rules, estimates, budgets.

allocator.py  the CUDA caching allocator (blocks, segments, rounding; cap, release-and-retry, OOM)
rules.py      what each aten operator allocates and frees inside its kernel: best, low, high, fallback
simulate.py   replay a trace: allocated and reserved peaks, fits under a cap, min_device_bytes
context.py    MetaContext: one model on meta at one dtype, its shapes, traces and estimates made once
estimate.py   trace a VAE call on meta and replay it: MemoryEstimate (peak_bytes, peak_bytes_low/high,
              reserved_peak_bytes, min_device_bytes, peak_at, per layer); estimate_call for any module
budget.py     which batch / size fits a VAE memory budget (check_vae_budget -> VaeBudgetReport)
measure.py    the same call measured on a CUDA GPU (allocated, reserved, the smallest cap)
"""

from vaelens.memory.context import MetaContext
from vaelens.memory.estimate import (
    LayerMemory,
    MemoryEstimate,
    estimate_call,
    estimate_memory,
    simulate,
    trace_request,
)

__all__ = ["LayerMemory", "MemoryEstimate", "MetaContext", "estimate_call", "estimate_memory", "simulate",
           "trace_request"]
