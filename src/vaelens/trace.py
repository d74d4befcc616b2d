"""Run a module on meta tensors and record every layer and every aten operator.

module + inputs (meta or real) -> Trace: one LayerRecord per module call (path, type, output shape,
dtype, bytes, live bytes after it) and one OpEvent per aten operator (inputs, outputs, the storages
it allocated, the storages that died before it). The memory model (vaelens.memory) replays the events.

Tensor lifetime is tracked the way the CUDA caching allocator sees it: a storage is allocated when an
operator returns a tensor with a storage not seen before, and freed when the last tensor object that
uses it is garbage collected (a weak reference with a callback per tensor object, a count per storage; views share
the storage). Python frees a tensor the moment its last reference goes, whatever its device, so the
order of allocations and frees on meta is the order a CUDA run has.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from vaelens.errors import VaeLensError

# The CUDA caching allocator rounds every request up to a multiple of 512 bytes
# (kMinBlockSize in pytorch c10/cuda/CUDACachingAllocator.cpp); allocated-bytes stats count that.
BLOCK = 512


def round_block(nbytes: int) -> int:
    """bytes -> bytes the CUDA caching allocator accounts (>=512, multiple of 512; 0 stays 0)."""
    if nbytes <= 0:
        return 0
    return (nbytes + BLOCK - 1) // BLOCK * BLOCK


class Op(str, enum.Enum):
    """Which call of a module is traced."""

    ENCODE = "encode"
    DECODE = "decode"
    FORWARD = "forward"

    @classmethod
    def parse(cls, value: str | Op) -> Op:
        if isinstance(value, Op):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise VaeLensError(f"op {value!r} is not supported; choose one of: encode, decode, forward") from None


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """One tensor argument of an operator: shape, dtype, strides, storage id and storage bytes."""

    shape: tuple[int, ...]
    dtype: Any  # torch.dtype
    stride: tuple[int, ...]
    storage: int
    itemsize: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


@dataclass(frozen=True, slots=True)
class OpEvent:
    """One aten operator: what it read and returned, what it allocated, what died before it ran."""

    index: int
    name: str  # e.g. "aten.conv2d.default"
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    scalars: tuple[Any, ...]
    allocs: tuple[tuple[int, int], ...]  # (storage id, bytes) of new storages among outputs
    frees_before: tuple[int, ...]  # storage ids whose last tensor died since the previous op
    layer: int  # index of the innermost module call running when it ran (-1: none)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerRecord:
    """One module call: path and type, its output, and the activation bytes alive right after it."""

    index: int
    path: str
    type: str
    depth: int  # 0: the traced module; 1: layers it calls; 2: layers they call, ...
    output_shape: tuple[int, ...] | None
    dtype: str | None
    bytes: int  # bytes of the tensors it returned
    live_bytes: int  # activation bytes alive after it (512-rounded, weights and input excluded)
    first_op: int
    last_op: int  # ops first_op .. last_op-1 ran inside it


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """A traced call: per-layer records and per-operator events, plus the resident bytes around it."""

    op: Op
    module_type: str
    layers: tuple[LayerRecord, ...]
    events: tuple[OpEvent, ...]
    final_frees: tuple[int, ...]  # storages that died after the last op (before the result is read)
    input_shapes: tuple[tuple[int, ...], ...]
    input_bytes: int
    input_dtype: str | None
    output_shape: tuple[int, ...] | None
    output_bytes: int
    weights_bytes: int


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


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


def _tensors(obj: Any, out: list) -> list:
    import torch

    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _tensors(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _tensors(item, out)
    return out


def call_op(module: Any, op: Op, inputs: Sequence[Any]) -> Any:
    """Run `op` the way the measurements did: encode -> latent_dist.mode() (KL) or the latent tensor;
    decode -> .sample; forward -> module(*inputs)."""
    if op is Op.FORWARD:
        return module(*inputs)
    fn = getattr(module, op.value, None)
    if fn is None:
        raise VaeLensError(f"op {op.value!r}: {type(module).__name__} has no .{op.value}(); use op='forward'")
    out = fn(*inputs)
    if op is Op.ENCODE:
        dist = getattr(out, "latent_dist", None)
        if dist is not None:
            return dist.mode()
        for name in ("latents", "latent", "latent_sample"):
            value = getattr(out, name, None)
            if value is not None:
                return value
        return out[0] if isinstance(out, tuple) else out
    sample = getattr(out, "sample", None)
    if sample is not None:
        return sample
    return out[0] if isinstance(out, tuple) else out


class _Recorder:
    """TorchDispatchMode body + module hooks; counts storages per tensor object."""

    def __init__(self, resident: set[int], detail: Collection[str] | None = None) -> None:
        self.resident = resident
        self.detail = frozenset(detail) if detail is not None else None
        self.names: dict[Any, str] = {}
        self.wrefs: dict[Any, int] = {}  # weakref to a tensor object -> its storage id
        self.refs: dict[int, int] = {}  # storage id -> live tensor objects using it
        self.size: dict[int, int] = {}  # storage id -> rounded bytes
        self.live = 0
        self.pending: list[int] = []
        self.events: list[OpEvent] = []
        self.stack: list[int] = []

    def _release(self, sid: int) -> None:
        n = self.refs.get(sid)
        if n is None:
            return
        if n > 1:
            self.refs[sid] = n - 1
            return
        del self.refs[sid]
        self.live -= self.size.pop(sid)
        self.pending.append(sid)

    def meta(self, t: Any) -> TensorMeta:
        return TensorMeta(tuple(t.shape), t.dtype, tuple(t.stride()), t.untyped_storage()._cdata, t.element_size())

    def _dead(self, ref: Any) -> None:
        self._release(self.wrefs.pop(ref))

    def on_op(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        import torch

        name = self.names.get(func)
        if name is None:
            name = self.names[func] = str(func)
        detail = self.detail is None or name in self.detail
        ins: list[TensorMeta] = []
        scalars: list[Any] = []
        if detail:
            for a in list(args) + list(kwargs.values()):
                if isinstance(a, torch.Tensor):
                    ins.append(self.meta(a))
                elif isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
                    ins.extend(self.meta(x) for x in a if isinstance(x, torch.Tensor))
                else:
                    scalars.append(a)
        outs: list[TensorMeta] = []
        allocs: list[tuple[int, int]] = []
        for t in (out,) if isinstance(out, torch.Tensor) else _tensors(out, []):
            if detail:
                outs.append(self.meta(t))
            if getattr(t, "_vaelens_seen", False):
                continue  # in-place op or an input returned as-is: same object, nothing new
            storage = t.untyped_storage()
            sid = storage._cdata
            if sid in self.resident:
                continue
            try:
                t._vaelens_seen = True
            except (AttributeError, RuntimeError):
                pass
            if sid in self.refs:
                self.refs[sid] += 1
            else:
                nbytes = round_block(storage.nbytes())
                self.refs[sid] = 1
                self.size[sid] = nbytes
                self.live += nbytes
                allocs.append((sid, nbytes))
            self.wrefs[weakref.ref(t, self._dead)] = sid
        frees, self.pending = tuple(self.pending), []
        self.events.append(
            OpEvent(len(self.events), name, tuple(ins), tuple(outs), tuple(scalars), tuple(allocs), frees,
                    self.stack[-1] if self.stack else -1)
        )


# Operators whose CUDA kernel returns a contiguous tensor where the meta kernel keeps the input's
# channels-last layout (ops/sd-kl-f8c4-decode-*: upsample_nearest2d after the mid-block attention).
# On meta the output is re-laid out so later operators see the strides a CUDA run has.
CUDA_CONTIGUOUS_OUTPUT = frozenset({
    "aten.upsample_nearest2d.vec", "aten.upsample_nearest3d.vec",
    "aten._upsample_nearest_exact2d.vec", "aten._upsample_nearest_exact3d.vec",
})


_SCALARS = (int, float, bool, str, type(None))


def _key_of(value: Any, torch: Any) -> Any:
    """A hashable description of an operator argument; raises TypeError for anything else."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            raise TypeError("not meta")
        return ("T", tuple(value.shape), value.stride(), value.dtype, value.storage_offset())
    if isinstance(value, _SCALARS):
        return (type(value), value)
    if isinstance(value, (list, tuple)):
        return tuple(_key_of(v, torch) for v in value)
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return value
    raise TypeError(type(value).__name__)


def _fresh_output(func: Any) -> bool:
    """Operators whose outputs are new tensors: no mutated argument, no returned alias."""
    schema = func._schema
    if schema.is_mutable:
        return False
    if any(r.alias_info is not None for r in schema.returns):
        return False
    return all(str(r.type) in ("Tensor", "List[Tensor]") for r in schema.returns)


def _make_mode(rec: _Recorder, emulate_cuda: bool):
    """The dispatch mode. On meta, outputs of pure operators are cached by their inputs' shapes,
    strides and scalars: shape inference of a repeated call (video frames, tiles) is done once, and
    a fresh meta tensor with the cached layout is returned (a new storage, as the real kernel's)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    cache: dict[Any, Any] = {}
    fresh: dict[Any, bool] = {}

    def describe(out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return (tuple(out.shape), out.stride(), out.dtype)
        return [describe(o) for o in out]

    def build(desc: Any) -> Any:
        if isinstance(desc, tuple):
            return torch.empty_strided(desc[0], desc[1], dtype=desc[2], device="meta")
        return [build(d) for d in desc]

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            key = None
            if emulate_cuda:
                ok = fresh.get(func)
                if ok is None:
                    ok = fresh[func] = _fresh_output(func)
                if ok:
                    try:
                        key = (func, _key_of(args, torch), _key_of(tuple(sorted(kwargs.items())), torch))
                    except TypeError:
                        key = None
            hit = cache.get(key) if key is not None else None
            if hit:
                out = build(hit)
            else:
                out = func(*args, **kwargs)
                if emulate_cuda and isinstance(out, torch.Tensor) and str(func) in CUDA_CONTIGUOUS_OUTPUT:
                    out = out.contiguous()
                if key is not None and hit is None:
                    # a composite may hand back an input (dropout in eval): never cache those
                    ins = {t.untyped_storage()._cdata for t in _tensors([args, list(kwargs.values())], [])}
                    outs = _tensors(out, [])
                    aliased = any(t.untyped_storage()._cdata in ins for t in outs)
                    cache[key] = False if aliased or not outs else describe(out)
            rec.on_op(func, args, kwargs, out)
            return out

    return _Mode()


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


def trace(
    module: Any, inputs: Sequence[Any] | Any, *, op: str | Op = "forward", detail: Collection[str] | None = None,
) -> Trace:
    """nn.Module + inputs -> Trace (one record per module call, one event per aten operator).

    Runs `op` ("encode" | "decode" | "forward") once under `torch.inference_mode()` on the module's
    device (meta: no memory, no weights). Hooks are removed and the module's mode restored afterwards.
    `detail`: operator names (e.g. "aten.conv2d.default") whose events keep input/output metadata
    and scalars; None keeps it for every operator (slower on long video traces).

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU()).to("meta")
    >>> t = trace(m, torch.empty(1, 3, 16, 16, device="meta"))
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
    weights = 0
    seen_w: set[int] = set()
    for t in list(module.parameters()) + list(module.buffers()):
        sid = t.untyped_storage()._cdata
        resident.add(sid)
        if sid not in seen_w:
            seen_w.add(sid)
            weights += t.untyped_storage().nbytes()
    in_tensors = _tensors(inputs, [])
    for t in in_tensors:
        resident.add(t.untyped_storage()._cdata)
    rec = _Recorder(resident, detail)
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
        emulate = any(p.device.type == "meta" for p in module.parameters())
        with torch.inference_mode(), _make_mode(rec, emulate):
            result = call_op(module, op, inputs)
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
    )


TraceFn = Callable[..., Trace]
