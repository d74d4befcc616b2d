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

_dtype_name = dtype_name
_tensors = tensors_in


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
        raise VaeLensError(f"op {op.value!r}: {type(module).__name__} has no .{op.value}(); use op='forward'")
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
        raise VaeLensError(f"trace needs a torch.nn.Module, got {type(module).__name__}")
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    inputs = _to_module_device(module, inputs)
    resident: set[int] = set()
    sizes: list[int] = []  # resident storages in the order .to("cuda") allocates them, then the inputs
    for t in _apply_order(module):
        sid = t.untyped_storage()._cdata
        if sid not in resident:
            resident.add(sid)
            sizes.append(t.untyped_storage().nbytes())
    weights = sum(sizes)
    in_tensors = _tensors(inputs, [])
    for t in in_tensors:
        sid = t.untyped_storage()._cdata
        if sid not in resident:
            resident.add(sid)
            sizes.append(t.untyped_storage().nbytes())
    rec = Recorder(resident, detail)
    layers: list[LayerRecord | None] = []
    starts: dict[int, int] = {}
    names = {id(m): (n, m) for n, m in module.named_modules()}
    handles = []

    depths: dict[int, int] = {}

    def pre_hook(mod, _args):
        idx = len(layers)
        layers.append(None)
        starts[idx] = len(rec.events)
        depths[idx] = len(rec.stack)  # nesting in the call tree (containers never called don't count)
        rec.stack.append(idx)
        mod._vaelens_call = getattr(mod, "_vaelens_call", []) + [idx]

    def post_hook(mod, _args, output):
        idx = mod._vaelens_call.pop()
        if rec.stack and rec.stack[-1] == idx:
            rec.stack.pop()
        path = names[id(mod)][0]
        ts = _tensors(output, [])
        first = ts[0] if ts else _first_tensor(output)
        layers[idx] = LayerRecord(
            index=idx, path=path, type=type(mod).__name__, depth=depths.pop(idx),
            output_shape=tuple(first.shape) if first is not None else None,
            dtype=_dtype_name(first.dtype) if first is not None else None,
            bytes=sum(t.numel() * t.element_size() for t in ts) if ts else
            (first.numel() * first.element_size() if first is not None else 0),
            live_bytes=rec.live, first_op=starts.pop(idx), last_op=len(rec.events),
        )

    was_training = module.training
    result = None
    final: tuple[int, ...] = ()
    root = -1
    if op is not Op.FORWARD:  # encode/decode are methods, not forward: a record for the whole call
        root = len(layers)
        layers.append(None)
        rec.stack.append(root)
    try:
        module.eval()
        for _, m in module.named_modules():
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(post_hook))
        emulate = any(t.device.type == "meta" for t in [*module.parameters(), *in_tensors])
        with torch.inference_mode(), make_mode(rec, emulate):
            result = call(module, inputs) if call is not None else call_op(module, op, inputs)
        final = tuple(rec.pending)
        rec.pending = []
        if root >= 0:
            out_ts = _tensors(result, [])
            layers[root] = LayerRecord(
                index=root, path="", type=type(module).__name__, depth=0,
                output_shape=tuple(out_ts[0].shape) if out_ts else None,
                dtype=_dtype_name(out_ts[0].dtype) if out_ts else None,
                bytes=sum(t.numel() * t.element_size() for t in out_ts), live_bytes=rec.live,
                first_op=0, last_op=len(rec.events),
            )
    finally:
        for h in handles:
            h.remove()
        for _, m in module.named_modules():
            if hasattr(m, "_vaelens_call"):
                del m._vaelens_call
        module.train(was_training)
    out_t = _first_tensor(result)
    done = tuple(r for r in layers if r is not None)
    return Trace(
        op=op, module_type=type(module).__name__, layers=done, events=tuple(rec.events), final_frees=final,
        input_shapes=tuple(tuple(t.shape) for t in in_tensors),
        input_bytes=sum(t.numel() * t.element_size() for t in in_tensors),
        input_dtype=_dtype_name(in_tensors[0].dtype) if in_tensors else None,
        output_shape=tuple(out_t.shape) if out_t is not None else None,
        output_bytes=out_t.numel() * out_t.element_size() if out_t is not None else 0,
        weights_bytes=weights,
        resident_sizes=tuple(sizes),
    )

