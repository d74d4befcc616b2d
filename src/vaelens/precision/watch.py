"""One run of a VAE under watch: per-layer |x| statistics, emulated half precision, the first inf/NaN.

module + pixels or latent -> Watch(...).run(op) -> (output, Watched): the layer records (fp32 runs), and
where the first non-finite value appeared (the innermost module running, the torch function, the
magnitude that overflowed).

Emulation runs a copy of the VAE cast to fp16/bf16 (weights rounded as `module.to(dtype)` stores them) under
a TorchFunctionMode that computes every call in fp32 and rounds its output back to the half dtype: what a
GPU kernel that accumulates in fp32 and stores half precision produces. A function mode, not forward hooks on
leaf modules: a hook sees only what a module returns, and the residual adds, attention products and scalings
a VAE does in its blocks' own `forward` code are not modules (diffusers resnet.py ResnetBlock2D:
`(input_tensor + hidden_states) / output_scale_factor`). The mode sees every torch call — F.conv2d,
F.group_norm, F.scaled_dot_product_attention, `+`, `*` — at the level a GPU runs one kernel for; calls a
function makes inside itself are not seen again (the mode is off while its handler runs).

Because the copy really is half precision, the module's own dtype logic runs as it does on a GPU: the
explicit fp32 islands diffusers writes (attention_processor.py: `query.float()` in the linear attention of
DC-AE, `upcast_softmax`) stay fp32, type promotion of fp32 and half tensors gives fp32, and the upcast blocks
(vaelens.precision.upcast.apply_upcast) are the real mixed-precision module. Casts, views and in-place calls
run as they are (a cast is a cast; a view has no arithmetic; an in-place call must write its own storage,
and CPU half kernels compute in fp32 internally, at::opmath_type).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vaelens.trace import Op, call_op
from vaelens.trace.dispatch import tensors_in

# fp16 and bf16 limits (torch.finfo(torch.float16).max / .tiny, torch.finfo(torch.bfloat16).max): kept as
# numbers so that rendering and JSON need no torch.
FP16_MAX = 65504.0
FP16_TINY = 2.0**-14  # smallest normal fp16, 6.1e-5
BF16_MAX = 3.3895313892515355e38
# The |x| percentile recorded per layer: the top 0.01 % of values (a few outliers) left out.
PERCENTILE = 99.99
# Values over which the percentile is taken on an evenly strided subset (see LayerStats.add).
SAMPLE_LIMIT = 1 << 22


def _all_finite(t: Any) -> bool:
    """No inf/NaN in t: one min/max reduction (NaN and inf propagate into it), no full-size mask."""
    import torch

    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


@dataclass(slots=True)
class LayerStats:
    """|x| over every value one module returned (all its calls, all images): the running record."""

    name: str
    type: str
    order: int  # call order of the module's first call
    done: int = -1  # order in which its first call returned (data-flow order: inner layers first)
    max_abs: float = 0.0
    p9999_abs: float = 0.0
    underflow: int = 0  # values with 0 < |x| < FP16_TINY
    numel: int = 0
    nonfinite: int = 0

    def add(self, t: Any) -> None:
        import torch

        if t.numel() == 0:
            return
        t = t.detach()
        if not _all_finite(t):
            bad = ~torch.isfinite(t)
            self.nonfinite += int(bad.sum())
            t = t[~bad]
            if t.numel() == 0:
                return
        a = t.abs().reshape(-1)
        n = a.numel()
        self.max_abs = max(self.max_abs, float(a.max()))
        # The 99.99th percentile is the smallest of the top ceil(n/10^4) values (torch.quantile refuses
        # tensors over 2^24 values; topk has no such limit). Over SAMPLE_LIMIT values it is taken on an evenly
        # strided subset of them (topk's cost grows with n; the subset keeps >= SAMPLE_LIMIT / 2 values).
        sample = a if n <= SAMPLE_LIMIT else a[:: math.ceil(n / SAMPLE_LIMIT)]
        k = max(1, math.ceil(sample.numel() * (100.0 - PERCENTILE) / 100.0))
        self.p9999_abs = max(self.p9999_abs, float(torch.topk(sample, k, sorted=False).values.min()))
        zeros = n - int(torch.count_nonzero(a))
        self.underflow += int(torch.count_nonzero(a < FP16_TINY)) - zeros
        self.numel += n

    def merge(self, other: LayerStats) -> None:
        """Fold another record of the same layer (another call, another image) into this one."""
        self.max_abs = max(self.max_abs, other.max_abs)
        self.p9999_abs = max(self.p9999_abs, other.p9999_abs)
        self.underflow += other.underflow
        self.numel += other.numel
        self.nonfinite += other.nonfinite

    @property
    def underflow_fraction(self) -> float:
        return self.underflow / self.numel if self.numel else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NonFinite:
    """The first call whose output held inf/NaN: where, which function, how large its finite part was."""

    layer: str  # innermost module running ("" = the VAE's own encode/decode code)
    function: str  # e.g. "conv2d", "add", "input cast" (a block's entry cast)
    max_abs: float  # the largest |x| the call produced before rounding (inf if fp32 itself overflowed)
    nan_only: bool  # True: NaN without inf (e.g. 0/0), not an overflow of the range


@dataclass(slots=True)
class Watched:
    """What one watched run saw."""

    first: NonFinite | None = None
    layers: dict[str, LayerStats] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # module paths in order of their first call


def _fname(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return name.replace("__", "") if name.startswith("__") else name


# Calls run as they are under emulation: casts, views (no arithmetic; they must alias their input),
# metadata, and in-place calls (they must write their own storage) — see the module docstring.
AS_IS = frozenset({
    "to", "float", "half", "bfloat16", "double", "type", "type_as", "view", "view_as", "reshape", "reshape_as",
    "permute", "transpose", "t", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as",
    "__getitem__", "chunk", "split", "tensor_split", "narrow", "select", "unbind", "movedim", "moveaxis",
    "swapaxes", "detach", "contiguous", "as_strided", "diagonal", "unfold", "__get__", "size", "dim", "numel",
    "stride", "is_contiguous", "data_ptr", "element_size", "is_floating_point", "__len__", "__format__",
    "__repr__", "item", "tolist", "__bool__", "__index__", "__int__", "__float__", "clone", "cpu", "cuda",
})


_CASTS = frozenset({"to", "half", "bfloat16", "type", "type_as"})


def _in_place(name: str) -> bool:
    return (name.endswith("_") and not name.startswith("__")) or name in (
        "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__")


def _map(obj: Any, fn: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map(v, fn) for v in obj)
    if isinstance(obj, list):
        return [_map(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


class Watch:
    """Hooks + a function mode around one module; `run(op, inputs)` -> (output, Watched).

    emulate: the half dtype (torch.float16 / torch.bfloat16) of a module already cast to it, whose calls are
    computed in fp32 and rounded back (None: every call runs as it is: fp32, or real half precision).
    stats: record LayerStats of every module's output.
    """

    def __init__(self, module: Any, *, emulate: Any = None, stats: bool = False) -> None:
        self.module = module
        self.emulate = emulate
        self.stats = stats
        self.stack: list[str] = []
        self.seen = Watched()
        self.called: set[str] = set()
        self.finished = 0
        self._last: tuple[Any, LayerStats] | None = None  # the last tensor measured and its record

    # ---------------------------------------------------------------------------------- recording
    def _note(self, out: Any, function: str, before: Any = None) -> None:
        """Record the first non-finite output (called after every call while none is recorded); `before`:
        the same outputs before rounding (their magnitude is what overflowed)."""
        import torch

        if self.seen.first is not None:
            return
        outs = tensors_in(out, [])
        for i, t in enumerate(outs):
            if not t.is_floating_point() or t.numel() == 0 or _all_finite(t):
                continue
            src = tensors_in(before, [])[i] if before is not None else t
            finite = src[torch.isfinite(src)]
            peak = float(finite.abs().max()) if finite.numel() else math.inf
            if bool(torch.isinf(src).any()):
                peak = math.inf
            self.seen.first = NonFinite(layer=self.stack[-1] if self.stack else "", function=function,
                                        max_abs=peak, nan_only=not bool(torch.isinf(t).any()))
            return

    def _pre(self, path: str):
        def hook(mod: Any, args: Any):
            if path not in self.called:
                self.called.add(path)
                self.seen.calls.append(path)
                if self.stats:
                    self.seen.layers[path] = LayerStats(name=path, type=type(mod).__name__, order=len(self.seen.calls))
            self.stack.append(path)

        return hook

    def _post(self, path: str):
        def hook(mod: Any, args: Any, out: Any):
            if self.stats:
                rec = self.seen.layers[path]
                if rec.done < 0:
                    self.finished += 1
                    rec.done = self.finished
                for t in tensors_in(out, []):
                    if not t.is_floating_point():
                        continue
                    if self._last is not None and self._last[0] is t:  # a block returning its last layer's tensor
                        rec.merge(self._last[1])
                        continue
                    one = LayerStats(name=path, type="", order=0)
                    one.add(t)
                    rec.merge(one)
                    self._last = (t, one)
            self.stack.pop()

        return hook

    # ---------------------------------------------------------------------------------- the mode
    def _mode(self):
        import torch
        from torch.overrides import TorchFunctionMode

        watch = self

        class Watching(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if watch.emulate is not None:
                    name = getattr(func, "__name__", "")
                    if name not in AS_IS and not _in_place(name):
                        return watch._emulated(func, args, kwargs)
                out = func(*args, **kwargs)
                if watch.seen.first is None:
                    cast = getattr(func, "__name__", "") in _CASTS and args and isinstance(args[0], torch.Tensor)
                    watch._note(out, _fname(func), before=args[0] if cast and isinstance(out, torch.Tensor) else None)
                return out

        return Watching()

    def _emulated(self, func: Any, args: Any, kwargs: Any) -> Any:
        """One call at the half dtype: inputs of that dtype widened to fp32, computed, the output rounded back
        unless an fp32 input with dimensions made it fp32 (type promotion: it is fp32 on a GPU too)."""
        import torch

        half = self.emulate
        ins = [t for t in tensors_in((args, kwargs), []) if t.is_floating_point()]
        if not any(t.dtype == half for t in ins):
            out = func(*args, **kwargs)
            if self.seen.first is None:
                self._note(out, _fname(func))
            return out
        promoted = any(t.dtype == torch.float32 and t.ndim > 0 for t in ins)
        def wide(t: Any) -> Any:
            return t.float() if t.dtype == half else t

        out = func(*_map(args, wide), **_map(kwargs, wide))
        if promoted:
            result = out
        else:
            result = _map(out, lambda t: t.to(half) if t.dtype == torch.float32 else t)
        if self.seen.first is None:
            self._note(result, _fname(func), before=out)
        return result

    # ---------------------------------------------------------------------------------- running
    def run(self, op: Op | str, inputs: list[Any]) -> tuple[Any, Watched]:
        """Run `op` (encode | decode | forward) on inputs under inference_mode; hooks removed after."""
        import torch

        op = Op.parse(op)
        handles: list[Any] = []
        try:
            for path, sub in self.module.named_modules():
                if not path:
                    continue
                # first of the pre-hooks: a cast made by an upcast hook (apply_upcast) belongs to this module
                handles.append(sub.register_forward_pre_hook(self._pre(path), prepend=True))
                handles.append(sub.register_forward_hook(self._post(path)))
            with torch.inference_mode(), self._mode():
                out = call_op(self.module, op, inputs)
        finally:
            for h in handles:
                h.remove()
            self.stack.clear()
            self._last = None
        return out, self.seen
