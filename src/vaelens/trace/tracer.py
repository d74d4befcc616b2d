"""Run a module on meta tensors and record every layer and every aten operator.

module + inputs (meta or real) -> Trace: one LayerRecord per module call (path, type, output shape,
dtype, bytes, live bytes after it) and one OpEvent per aten operator (inputs, outputs, the storages
it allocated, the storages that died before it). The memory model (vaelens.memory) replays the events.

Tensor lifetime is tracked the way the CUDA caching allocator sees it: a storage is allocated when an
operator returns a tensor with a storage not seen before, and freed when the last tensor object that
uses it is garbage collected (a weak reference with a callback per tensor object, a count per
storage; views share the storage). Python frees a tensor the moment its last reference goes, whatever its device, so the
order of allocations and frees on meta is the order a CUDA run has.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.trace.dispatch import Recorder, dtype_name, make_mode, tensors_in
from vaelens.trace.records import LayerRecord, Op, Trace

__all__ = ["call_op", "trace_module"]



def _first_tensor(obj: Any):
    """The first tensor in a module output (tensor, tuple/list, dict, diffusers BaseOutput, dist)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for item in obj:
            t = _first_tensor(item)
            if t is not None:
                return t
        return None
    if isinstance(obj, dict):
        for item in obj.values():
            t = _first_tensor(item)
            if t is not None:
                return t
        return None
    params = getattr(obj, "parameters", None)  # DiagonalGaussianDistribution keeps its moments here
    if params is not None and isinstance(params, torch.Tensor):
        return params
    return None


def call_op(module: Any, op: Op, inputs: Sequence[Any]) -> Any:
    """Run `op` the way the measurements did: encode -> latent_dist.mode() (KL) or the latent tensor;
    decode -> .sample; forward -> module(*inputs)."""
    from vaelens.build import decoded_pixels, encoded_latent

    if op is Op.FORWARD:
        return module(*inputs)
    fn = getattr(module, op.value, None)
    if fn is None:
        raise VaeLensError(f"op {op.value!r}: {type(module).__name__} has no .{op.value}(); use op='forward'",
                           param="op", value=op.value)
    out = fn(*inputs)
    return encoded_latent(out) if op is Op.ENCODE else decoded_pixels(out)


def _apply_order(module: Any) -> list[Any]:
    """Parameters and buffers in the order nn.Module._apply (behind .to()) visits them: each
    child's first, then the module's own."""
    out: list[Any] = []
    for child in module.children():
        out.extend(_apply_order(child))
    out.extend(p for p in module._parameters.values() if p is not None)
    out.extend(b for b in module._buffers.values() if b is not None)
    return out


def _to_module_device(module: Any, inputs: Sequence[Any]) -> list[Any]:
    import torch

    device = next((p.device for p in module.parameters()), None)
    res = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and device is not None and x.device != device:
            x = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=device) if device.type == "meta" \
                else x.to(device)
        res.append(x)
    return res


def _resident_storages(module: Any, in_tensors: Sequence[Any]) -> tuple[set[int], list[int], int]:
    """-> (storage ids already on the device, their bytes in the order .to("cuda") allocates them and
    then the inputs', weight bytes): what is resident before the traced call starts."""
    resident: set[int] = set()
    sizes: list[int] = []

    def add(tensors: Sequence[Any]) -> None:
        for t in tensors:
            sid = t.untyped_storage()._cdata
            if sid not in resident:
                resident.add(sid)
                sizes.append(t.untyped_storage().nbytes())

    add(_apply_order(module))
    weights = sum(sizes)
    add(in_tensors)
    return resident, sizes, weights


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size()


class _LayerLog:
    """Forward hooks on every submodule -> one LayerRecord per call (index = call order), with the
    operator events it spans and its depth in the call tree (containers never called don't count)."""

    def __init__(self, module: Any, rec: Recorder) -> None:
        self.rec = rec
        self.records: list[LayerRecord | None] = []
        self.starts: dict[int, int] = {}
        self.depths: dict[int, int] = {}
        self.names = {id(m): n for n, m in module.named_modules()}
        self.modules = [m for _, m in module.named_modules()]
        self.handles: list[Any] = []

    def open(self) -> int:
        idx = len(self.records)
        self.records.append(None)
        self.starts[idx] = len(self.rec.events)
        self.depths[idx] = len(self.rec.stack)
        self.rec.stack.append(idx)
        return idx

    def close(self, idx: int, mod: Any, output: Any) -> None:
        if self.rec.stack and self.rec.stack[-1] == idx:
            self.rec.stack.pop()
        ts = tensors_in(output, [])
        first = ts[0] if ts else _first_tensor(output)
        self.records[idx] = LayerRecord(
            index=idx, path=self.names.get(id(mod), ""), type=type(mod).__name__, depth=self.depths.pop(idx),
            output_shape=tuple(first.shape) if first is not None else None,
            dtype=dtype_name(first.dtype) if first is not None else None,
            bytes=sum(_nbytes(t) for t in ts) if ts else (_nbytes(first) if first is not None else 0),
            live_bytes=self.rec.live, first_op=self.starts.pop(idx), last_op=len(self.rec.events),
        )

    def _pre(self, mod: Any, _args: Any) -> None:
        mod._vaelens_call = getattr(mod, "_vaelens_call", []) + [self.open()]

    def _post(self, mod: Any, _args: Any, output: Any) -> None:
        self.close(mod._vaelens_call.pop(), mod, output)

    def install(self) -> None:
        for m in self.modules:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for m in self.modules:
            if hasattr(m, "_vaelens_call"):
                del m._vaelens_call

    def done(self) -> tuple[LayerRecord, ...]:
        return tuple(r for r in self.records if r is not None)


def _run_hooked(module: Any, inputs: list[Any], log: _LayerLog, invoke: Callable[[Any, list[Any]], Any],
                *, root: bool, emulate: bool) -> tuple[Any, tuple[int, ...]]:
    """Run invoke(module, inputs) under inference mode and the recording dispatch mode, hooks on;
    -> (result, storages freed after the last operator). `root`: a record for the whole call (encode
    and decode are methods, not forward, so no hook fires for the module itself)."""
    import torch

    rec = log.rec
    was_training = module.training
    top = log.open() if root else -1
    try:
        module.eval()
        log.install()
        with torch.inference_mode(), make_mode(rec, emulate):
            result = invoke(module, inputs)
        final = tuple(rec.pending)
        rec.pending = []
        if top >= 0:
            log.close(top, module, result)
    finally:
        log.remove()
        module.train(was_training)
    return result, final


def trace_module(
    module: Any, inputs: Sequence[Any] | Any, *, op: str | Op = "forward", detail: Collection[str] | None = None,
    call: Callable[[Any, list[Any]], Any] | None = None,
) -> Trace:
    """nn.Module + inputs -> Trace (one record per module call, one event per aten operator).

    Runs `op` ("encode" | "decode" | "forward") once under `torch.inference_mode()` on the module's
    device (meta: no memory, no weights). Hooks are removed and the module's mode restored afterwards.
    `detail`: operator names (e.g. "aten.conv2d.default") whose events keep input/output metadata
    and scalars; None keeps it for every operator (slower on long video traces). `call(module, inputs)`
    replaces the default invocation (e.g. keyword arguments built from the inputs); layer paths stay
    the module's own.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU()).to("meta")
    >>> t = trace_module(m, torch.empty(1, 3, 16, 16, device="meta"))
    >>> [(r.path, r.output_shape) for r in t.layers]
    [('', (1, 8, 16, 16)), ('0', (1, 8, 16, 16)), ('1', (1, 8, 16, 16))]
    """
    import torch

    op = Op.parse(op)
    if not isinstance(module, torch.nn.Module):
        raise VaeLensError(f"trace needs a torch.nn.Module, got {type(module).__name__}", param="module",
                           value=type(module).__name__)
    inputs = _to_module_device(module, list(inputs) if isinstance(inputs, (list, tuple)) else [inputs])
    in_tensors = tensors_in(inputs, [])
    resident, sizes, weights = _resident_storages(module, in_tensors)
    log = _LayerLog(module, Recorder(resident, detail))
    emulate = any(t.device.type == "meta" for t in [*module.parameters(), *in_tensors])
    result, final = _run_hooked(module, inputs, log, call or (lambda m, xs: call_op(m, op, xs)),
                                root=op is not Op.FORWARD, emulate=emulate)
    out_t = _first_tensor(result)
    return Trace(
        op=op, module_type=type(module).__name__, layers=log.done(), events=tuple(log.rec.events),
        final_frees=final, input_shapes=tuple(tuple(t.shape) for t in in_tensors),
        input_bytes=sum(_nbytes(t) for t in in_tensors),
        input_dtype=dtype_name(in_tensors[0].dtype) if in_tensors else None,
        output_shape=tuple(out_t.shape) if out_t is not None else None,
        output_bytes=_nbytes(out_t) if out_t is not None else 0,
        weights_bytes=weights,
        resident_sizes=tuple(sizes),
    )
