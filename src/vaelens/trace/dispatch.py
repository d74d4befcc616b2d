"""The dispatch mode behind vaelens.trace: sees every aten operator, counts storages per tensor.

_Recorder.on_op(func, args, kwargs, out) -> one OpEvent; storages are freed (queued for the next
event) when the last tensor object using them is garbage collected.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection
from typing import Any

from vaelens.trace.records import OpEvent, TensorMeta


def dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def tensors_in(obj: Any, out: list) -> list:
    """Every tensor in a (nested) tuple / list / dict, in order."""
    import torch

    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            tensors_in(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            tensors_in(item, out)
    return out


class Recorder:
    """TorchDispatchMode body + module hooks; counts storages per tensor object."""

    def __init__(self, resident: set[int], detail: Collection[str] | None = None) -> None:
        # Sizes are the storages' own bytes; the allocator model (vaelens.memory.allocator) rounds them to
        # its blocks when it replays the trace.
        self.resident = resident
        self.detail = frozenset(detail) if detail is not None else None
        self.names: dict[Any, str] = {}
        self.wrefs: dict[Any, int] = {}  # weakref to a tensor object -> its storage id
        self.refs: dict[int, int] = {}  # storage id -> live tensor objects using it
        self.size: dict[int, int] = {}  # storage id -> bytes
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
        for t in (out,) if isinstance(out, torch.Tensor) else tensors_in(out, []):
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
                nbytes = storage.nbytes()
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


def make_mode(rec: Recorder, emulate_cuda: bool):
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
                    ins = {t.untyped_storage()._cdata for t in tensors_in([args, list(kwargs.values())], [])}
                    outs = tensors_in(out, [])
                    aliased = any(t.untyped_storage()._cdata in ins for t in outs)
                    cache[key] = False if aliased or not outs else describe(out)
            rec.on_op(func, args, kwargs, out)
            return out

    return _Mode()
