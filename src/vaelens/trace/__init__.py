"""Run any module on meta tensors and record every layer and aten operator (see tracer.py).

`trace_module(module, inputs)` -> Trace; the records (TensorMeta, OpEvent, LayerRecord, Trace) are what
vaelens.memory replays through its allocator model.
"""

from vaelens.trace.records import LayerRecord, Op, OpEvent, TensorMeta, Trace
from vaelens.trace.tracer import call_op, trace_module

__all__ = ["LayerRecord", "Op", "OpEvent", "TensorMeta", "Trace", "call_op", "trace_module"]
