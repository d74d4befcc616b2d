"""Budgeted, exact tiled encode and decode: any size inside a device memory budget.

plan.py     meta device, no weights, on a MetaContext: TilingPlan (method, tile shape, halo, tiles, predicted
            peak <= budget); plan_ops: {op: TilingPlan | NoTiling} for reports
execute.py  the real module under a TorchFunctionMode: every operation tiled exactly (the shared loop,
            pointwise, whole, data movement)
ops.py      the tiled operations: convolution, GroupNorm, nearest upsampling, linear / attention rows
grid.py     tile arithmetic shared by both
api.py      decode / encode / enable_budgeted_vae (the pipeline drop-in)
"""

from vaelens.tiling.api import budgeted_vae, decode, disable_budgeted_vae, enable_budgeted_vae, encode
from vaelens.tiling.plan import EXACT_CLASSES, NoTiling, TilingMethod, TilingPlan, plan_ops, plan_tiling

__all__ = [
    "EXACT_CLASSES", "NoTiling", "TilingMethod", "TilingPlan", "budgeted_vae", "decode", "disable_budgeted_vae",
    "enable_budgeted_vae", "encode", "plan_ops", "plan_tiling",
]
