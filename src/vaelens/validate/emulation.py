"""The precision emulation's side of the precision rows: `vaelens.precision` (emulated fp16/bf16 on the CPU)
run on the demo VAE and the demo photograph, when this version of vaelens has it.

() -> {dtype: (first_overflow, psnr_db)}, or a sentence saying why the rows are skipped.
"""

from __future__ import annotations

from typing import Any

DTYPES = ("fp16", "bf16")


def precision_function() -> Any:
    """-> vaelens.precision (the function), or None where this version has none."""
    import vaelens

    try:
        fn = vaelens.precision
    except (AttributeError, ModuleNotFoundError):
        return None
    if not callable(fn):  # the package vaelens.precision without the lazy export: its function
        fn = getattr(fn, "precision", None)
    return fn if callable(fn) else None


def _number(value: Any) -> float | None:
    """psnr_db as the result gives it: a number, or per op ({"decode": …}, the output of the round trip)."""
    if isinstance(value, dict):
        value = value.get("decode", next(iter(value.values()), None))
    return float(value) if isinstance(value, (int, float)) else None


def read_result(result: Any) -> dict[str, tuple[str | None, float | None]]:
    """A precision result -> {dtype: (first_overflow, psnr_db)}. Read from its per-dtype attributes
    (`result.fp16.first.layer`, `result.fp16.psnr_db`: vaelens.precision's PrecisionReport), or from its
    JSON (`to_json()` or a dict: `["fp16"]["first_overflow"]`, `["fp16"]["psnr_db"]`)."""
    out = {}
    for dtype in DTYPES:
        res = getattr(result, dtype, None)
        if res is not None and hasattr(res, "psnr_db"):
            first = getattr(res, "first", None)
            out[dtype] = (getattr(first, "layer", None) if first is not None else None, _number(res.psnr_db))
    if out:
        return out
    data = result.to_json() if hasattr(result, "to_json") else result
    for dtype in DTYPES:
        entry = data.get(dtype) if isinstance(data, dict) else None
        if isinstance(entry, dict):
            out[dtype] = (entry.get("first_overflow"), _number(entry.get("psnr_db")))
    return out


def emulated(fn: Any = None) -> dict[str, tuple[str | None, float | None]] | str:
    """Run the emulation on the demo VAE and photograph -> per dtype (first_overflow, psnr_db), or why not."""
    fn = fn if fn is not None else precision_function()
    if fn is None:
        return "vaelens.precision does not exist in this version of vaelens"
    from vaelens.weights.demo import demo_image_path, load_demo_vae

    try:
        result = fn(load_demo_vae(device="cpu"), [str(demo_image_path())])
    except TypeError as exc:
        return f"vaelens.precision(vae, images) could not be called: {exc}"
    got = read_result(result)
    if not got:
        return "vaelens.precision's result has no fp16/bf16 figures (.fp16.psnr_db or ['fp16']['psnr_db'])"
    return got
