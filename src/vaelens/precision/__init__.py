"""Per-layer ranges in fp32, emulated fp16/bf16, the first overflow, and the priced upcast that removes it.

`vaelens.precision.measure_precision(vae, images, …)` -> PrecisionReport (analyze.py); the package can be
called as that function too: `vaelens.precision(vae, images)`.
  watch.py    one watched run: layer statistics, rounding every call's output, the first inf/NaN
  upcast.py   blocks in call order, the upcast applied to a real module, the diffusers snippet
  price.py    memory of fp32 / fp16 / bf16 / fp16 with the upcast blocks (vaelens.memory)
  inputs.py   image and clip files -> pixels (the one place files are read)
"""

import sys
import types
from typing import Any

from vaelens.precision.analyze import (
    DTypeResult,
    LayerRange,
    PrecisionOp,
    PrecisionReport,
    UpcastFix,
    measure_precision,
    run_real,
)
from vaelens.precision.price import Price
from vaelens.precision.upcast import apply_upcast, block_names, snippet
from vaelens.precision.watch import BF16_MAX, FP16_MAX, FP16_TINY, NonFinite

__all__ = [
    "BF16_MAX",
    "FP16_MAX",
    "FP16_TINY",
    "DTypeResult",
    "LayerRange",
    "NonFinite",
    "PrecisionOp",
    "PrecisionReport",
    "Price",
    "UpcastFix",
    "apply_upcast",
    "block_names",
    "measure_precision",
    "run_real",
    "snippet",
]


class _CallablePackage(types.ModuleType):
    """`vaelens.precision(vae, images, …)` is measure_precision (the issue's spelling of the call)."""

    def __call__(self, *args: Any, **kwargs: Any) -> PrecisionReport:
        return measure_precision(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
