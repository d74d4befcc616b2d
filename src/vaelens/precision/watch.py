"""One run of a VAE under watch: per-layer |x| statistics, emulated half precision, the first inf/NaN.

module + pixels or latent -> Watch(...).run(op) -> (output, Watched): the layer records (fp32 runs), and
where the first non-finite value appeared (the innermost module running, the torch function, the
magnitude that overflowed).

Emulation is a TorchFunctionMode, not forward hooks on leaf modules: a hook sees only what a module
returns, and the residual adds, attention products and scalings a VAE does in its blocks' own
`forward` code are not modules (diffusers resnet.py ResnetBlock2D: `(input_tensor + hidden_states) /
output_scale_factor`). A function mode sees every torch call — F.conv2d, F.group_norm,
F.scaled_dot_product_attention, `+`, `*` — at the level a GPU runs one kernel for, and rounds its
output to fp16/bf16 (`x.to(dtype).to(float32)`): what a kernel that accumulates in fp32 and stores in
half precision produces. Calls a function makes inside itself are not seen again (the mode is off
while its handler runs), so one call is rounded once. Views share their input's storage and are not
rounded again; in-place calls are rounded in place.

Weights are rounded too (restored after the run), as `module.to(dtype)` stores them.

Upcast emulation: calls running inside an upcast block (the block or any module inside it) are not
rounded; every other block rounds its floating-point inputs on entry, as the cast a real
mixed-precision module makes there (vaelens.precision.upcast.apply_upcast) does.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
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

        a = t.detach().abs().reshape(-1)
        if a.numel() == 0:
            return
        finite = torch.isfinite(a)
        bad = int(a.numel() - int(finite.sum()))
        if bad:
            self.nonfinite += bad
            a = a[finite]
            if a.numel() == 0:
                return
        self.max_abs = max(self.max_abs, float(a.max()))
        # The 99.99th percentile is the smallest of the top ceil(n/10^4) values (torch.quantile refuses
        # tensors over 2^24 values; topk has no such limit).
        k = max(1, math.ceil(a.numel() * (100.0 - PERCENTILE) / 100.0))
        self.p9999_abs = max(self.p9999_abs, float(torch.topk(a, k, sorted=False).values.min()))
        self.underflow += int(((a > 0) & (a < FP16_TINY)).sum())
        self.numel += int(a.numel())

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


def _round(t: Any, dtype: Any) -> Any:
    return t.to(dtype).to(t.dtype)


def _is_float(t: Any) -> bool:
    return t.is_floating_point() and t.dtype.itemsize >= 4


def _fname(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return name.replace("__", "") if name.startswith("__") else name


class Watch:
    """Hooks + a function mode around one module; `run(op, inputs)` -> (output, Watched).

    round_to: torch dtype every call's output is rounded to (None: run as is, fp32 or real half).
    stats: record LayerStats of every module's output. blocks / upcast: module paths; calls inside an
    `upcast` block are not rounded, the other `blocks` round their inputs on entry.
    """

    def __init__(self, module: Any, *, round_to: Any = None, stats: bool = False,
                 blocks: Iterable[str] = (), upcast: Collection[str] = ()) -> None:
        self.module = module
        self.round_to = round_to
        self.stats = stats
        self.blocks = tuple(blocks)
        self.upcast = frozenset(upcast)
        self.stack: list[str] = []
        self.inside_upcast = 0
        self.seen = Watched()
        self.called: set[str] = set()
        self.finished = 0

    # ---------------------------------------------------------------------------------- recording
    def _note(self, out: Any, function: str, before: Any = None) -> None:
        """Record the first non-finite output (called after every call while none is recorded)."""
        import torch

        if self.seen.first is not None:
            return
        for i, t in enumerate(tensors_in(out, [])):
            if not t.is_floating_point() or t.numel() == 0 or bool(torch.isfinite(t).all()):
                continue
            src = tensors_in(before, [])[i] if before is not None else t
            finite = src[torch.isfinite(src)]
            peak = float(finite.abs().max()) if finite.numel() else math.inf
            if bool(torch.isinf(src).any()):
                peak = math.inf
            nan_only = not bool(torch.isinf(t).any())
            self.seen.first = NonFinite(layer=self.stack[-1] if self.stack else "", function=function,
                                        max_abs=peak, nan_only=nan_only)
            return

    def _pre(self, path: str):
        block = path in self.blocks
        upcast = path in self.upcast

        def hook(mod: Any, args: Any, kwargs: Any):
            if path not in self.called:
                self.called.add(path)
                self.seen.calls.append(path)
                if self.stats:
                    self.seen.layers[path] = LayerStats(name=path, type=type(mod).__name__, order=len(self.seen.calls))
            self.stack.append(path)
            self.inside_upcast += upcast
            if block and not upcast and self.round_to is not None and not self.inside_upcast:
                return self._cast_inputs(args, kwargs)
            return None

        return hook

    def _cast_inputs(self, args: Any, kwargs: Any):
        """A fp16 block's entry: its floating-point tensor inputs rounded (what a cast to its dtype does)."""
        import torch

        def cast(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and _is_float(x):
                r = _round(x, self.round_to)
                self._note(r, "input cast", before=x)
                return r
            if isinstance(x, tuple):
                return tuple(cast(v) for v in x)
            return x

        return cast(args), {k: cast(v) for k, v in kwargs.items()}

    def _post(self, path: str):
        upcast = path in self.upcast

        def hook(mod: Any, args: Any, out: Any):
            if self.stats:
                rec = self.seen.layers[path]
                if rec.done < 0:
                    self.finished += 1
                    rec.done = self.finished
                for t in tensors_in(out, []):
                    if t.is_floating_point():
                        self.seen.layers[path].add(t)
            self.stack.pop()
            self.inside_upcast -= upcast

        return hook

    # ---------------------------------------------------------------------------------- the mode
    def _mode(self):
        import torch
        from torch.overrides import TorchFunctionMode

        watch = self

        class Rounding(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if watch.round_to is None or watch.inside_upcast:
                    if watch.seen.first is None and isinstance(out, (torch.Tensor, tuple, list)):
                        watch._note(out, _fname(func))
                    return out
                return watch._rounded(func, args, kwargs, out)

        return Rounding()

    def _rounded(self, func: Any, args: Any, kwargs: Any, out: Any) -> Any:
        import torch

        if isinstance(out, torch.Tensor):
            if not _is_float(out):
                return out
            ins = tensors_in((args, kwargs), [])
            if any(out is t for t in ins):  # in place (x.add_(y), x += y): round that storage in place
                before = out.clone() if self.seen.first is None else None
                with torch._C.DisableTorchFunction():
                    out.copy_(_round(out, self.round_to))
                if before is not None:
                    self._note(out, _fname(func), before=before)
                return out
            if _shares_storage(out, ins):  # a view: its input was rounded already
                return out
            r = _round(out, self.round_to)
            if self.seen.first is None:
                self._note(r, _fname(func), before=out)
            return r
        if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
            ins = tensors_in((args, kwargs), [])
            done = [t if not _is_float(t) or _shares_storage(t, ins) else _round(t, self.round_to) for t in out]
            if self.seen.first is None:
                self._note(done, _fname(func), before=list(out))
            return type(out)(done) if isinstance(out, list) else tuple(done)
        return out

    # ---------------------------------------------------------------------------------- running
    def _round_weights(self) -> list[tuple[Any, Any]]:
        """Parameters and buffers outside the upcast blocks rounded to round_to (as module.to(dtype) would
        store them); -> (tensor, original data) to restore."""
        saved = []
        for name, t in [*self.module.named_parameters(), *self.module.named_buffers()]:
            if not _is_float(t) or any(name.startswith(b + ".") for b in self.upcast):
                continue
            saved.append((t, t.data))
            t.data = _round(t.data, self.round_to)
        return saved

    def run(self, op: Op | str, inputs: list[Any]) -> tuple[Any, Watched]:
        """Run `op` (encode | decode | forward) on inputs under inference_mode; hooks removed after."""
        import torch

        op = Op.parse(op)
        handles: list[Any] = []
        saved: list[tuple[Any, Any]] = []
        try:
            for path, sub in self.module.named_modules():
                if not path:
                    continue
                handles.append(sub.register_forward_pre_hook(self._pre(path), with_kwargs=True))
                handles.append(sub.register_forward_hook(self._post(path)))
            if self.round_to is not None:
                inputs = [_round(x, self.round_to) if isinstance(x, torch.Tensor) and _is_float(x) else x
                          for x in inputs]
                saved = self._round_weights()
            with torch.inference_mode(), self._mode():
                out = call_op(self.module, op, inputs)
        finally:
            for t, data in saved:
                t.data = data
            for h in handles:
                h.remove()
            self.stack.clear()
            self.inside_upcast = 0
        return out, self.seen


def _shares_storage(t: Any, ins: list[Any]) -> bool:
    try:
        ptr = t.untyped_storage().data_ptr()
    except RuntimeError:
        return False
    return any(x.untyped_storage().data_ptr() == ptr for x in ins if x.device == t.device)
