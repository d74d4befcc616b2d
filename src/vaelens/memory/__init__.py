"""Predict CUDA memory without a GPU: the caching-allocator model, per-operator rules, estimates, budgets.

allocator.py  the CUDA caching allocator (blocks, segments, rounding)
rules.py      what each aten operator allocates and frees inside its kernel (workspaces, layout copies)
estimate.py   trace a VAE call on meta and replay it: MemoryEstimate (peak, peak_at, per layer)
budget.py     which batch / size fits a VAE memory budget
measure.py    the same call measured on a CUDA GPU
"""

from vaelens.memory.estimate import LayerMemory, MemoryEstimate, estimate_memory, simulate, trace_request

__all__ = ["LayerMemory", "MemoryEstimate", "estimate_memory", "simulate", "trace_request"]
