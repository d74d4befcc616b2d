"""One model on the meta device at one dtype, shared by every prediction a command makes about it.

model (family name, FamilySpec, config dict, nn.Module, LoadedVae) + dtype -> MetaContext: the meta module is
built once, each PixelRequest is planned once (the family's size and frame rules), and each (op, input shape,
tiled, sliced) is traced and replayed once. `vaelens memory` estimates encode and decode, searches the budget
and plans the tiles on one context; every verb that takes a model also takes a context, and builds one when
given anything else.

Diffusers' own tiling and slicing switches are set in one place, `diffusers_modes`, and restored after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import DType, PixelRequest
from vaelens.trace.records import Op, Trace


def apply_modes(module: Any, tiled: bool, sliced: bool) -> tuple[bool, bool]:
    """Call diffusers' enable_tiling()/enable_slicing() (their default tile sizes, read from the config by each
    class's __init__) or switch them off -> the previous (tiling, slicing) flags, to pass back to restore."""
    from vaelens.build import quiet_diffusers

    prev = (bool(getattr(module, "use_tiling", False)), bool(getattr(module, "use_slicing", False)))
    for flag, name, opt in ((tiled, "tiling", "tiled"), (sliced, "slicing", "sliced")):
        if flag and not hasattr(module, f"enable_{name}"):
            raise VaeLensError(f"{opt}=True: diffusers {type(module).__name__} has no enable_{name}()", param=opt,
                               value=True)
        with quiet_diffusers():
            if flag:
                getattr(module, f"enable_{name}")()
            elif hasattr(module, f"use_{name}"):
                setattr(module, f"use_{name}", False)
    return prev


@contextlib.contextmanager
def diffusers_modes(module: Any, *, tiled: bool = False, sliced: bool = False) -> Iterator[Any]:
    """A diffusers VAE module -> the same module with enable_tiling()/enable_slicing() as asked, inside the
    block; its own flags are restored after."""
    prev = apply_modes(module, tiled, sliced)
    try:
        yield module
    finally:
        apply_modes(module, *prev)


def _module_and_spec(model: Any, dtype: DType) -> tuple[Any, Any]:
    """FamilySpec | name | config path | config dict | nn.Module | LoadedVae -> (meta module, spec or None).

    A module (or a LoadedVae's) is traced as a meta copy at `dtype`; the original is untouched. A module
    wrapped by vaelens.enable_budgeted_vae is traced without the wrapper.
    """
    import torch

    from vaelens.build import build_module
    from vaelens.families.spec import FamilySpec

    loaded = getattr(model, "module", None), getattr(model, "spec", None)  # a LoadedVae
    if isinstance(loaded[0], torch.nn.Module) and isinstance(loaded[1], FamilySpec):
        return _meta_twin(loaded[0], dtype), loaded[1]
    if isinstance(model, torch.nn.Module):
        return _meta_twin(model, dtype), None
    if isinstance(model, Mapping):
        return build_module(model, device="meta", dtype=dtype), None
    if isinstance(model, (str, FamilySpec)):
        from vaelens.contract import resolve_model

        spec = resolve_model(model)
        return build_module(spec, device="meta", dtype=dtype), spec
    raise VaeLensError(
        f"model {type(model).__name__} is not supported; give a family name, a FamilySpec, a config "
        "dict with _class_name, an nn.Module (any device) or a LoadedVae",
        param="model", value=type(model).__name__,
    )


_WRAPPER = ("decode", "encode", "_vaelens_budget")  # what vaelens.tiling.api's enable_budgeted_vae sets


def _meta_twin(module: Any, dtype: DType) -> Any:
    """A module (weights anywhere, or already on meta) -> a copy of it on meta at `dtype`, in eval mode, without
    enable_budgeted_vae's instance-level encode/decode (the class's own methods are what is traced). The
    caller's module is never changed: the context toggles its copy's tiling and slicing switches."""
    import copy

    from vaelens.build import meta_copy, quiet_diffusers

    meta = meta_copy(module, dtype.torch)
    if meta is module:  # already on meta: meta_copy hands it back as it is
        with quiet_diffusers():
            meta = copy.deepcopy(module).to(dtype.torch)
    for name in _WRAPPER:
        meta.__dict__.pop(name, None)
    return meta.eval()


class MetaContext:
    """model + dtype -> its meta module (built once), the shapes of each request (planned once), and the
    trace and estimate of each call (made once). Holds no weights; drop it with the command that made it.

    >>> ctx = MetaContext.of("sdxl", "bf16")
    >>> ctx.shapes(PixelRequest(width=512, height=512, dtype="bf16"))
    ((1, 3, 512, 512), (1, 4, 64, 64))
    """

    def __init__(self, model: Any, dtype: DType) -> None:
        self.source = model
        self.dtype = dtype
        self.module, self.spec = _module_and_spec(model, dtype)
        self._shapes: dict[PixelRequest, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._traces: dict[Any, tuple[Trace, bool]] = {}  # key -> (trace, every event detailed)
        self._estimates: dict[Any, Any] = {}
        self.hits = 0  # calls answered from the context (tests read it)

    @classmethod
    def of(cls, model: Any, dtype: DType | str) -> MetaContext:
        """A model or a MetaContext + dtype -> a MetaContext at that dtype (the given one when it is one)."""
        dtype = DType.parse(dtype)
        if isinstance(model, MetaContext):
            return model if model.dtype is dtype else cls(model.source, dtype)
        return cls(model, dtype)

    def add_plan(self, plan: Any) -> MetaContext:
        """A ShapePlan the caller already made (vaelens.contract) -> this context, which then reuses it."""
        self._shapes[plan.request] = (tuple(plan.pixel_shape), tuple(plan.latent_shape))
        return self

    def shapes(self, request: PixelRequest) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """PixelRequest -> (pixel shape, latent shape) after the family's size rules (the module's own encode
        on meta for a module without a family)."""
        if request not in self._shapes:
            self._shapes[request] = self._plan(request)
        else:
            self.hits += 1
        return self._shapes[request]

    def _plan(self, request: PixelRequest) -> tuple[tuple[int, ...], tuple[int, ...]]:
        import torch

        if self.spec is not None:
            from vaelens.contract import plan_shapes

            plan = plan_shapes(self.spec, request)
            return tuple(plan.pixel_shape), tuple(plan.latent_shape)
        video = request.frames is not None or any(isinstance(m, torch.nn.Conv3d) for m in self.module.modules())
        pixel = ((request.batch, 3, request.frames or 1, request.height, request.width) if video
                 else (request.batch, 3, request.height, request.width))
        from vaelens.trace import call_op

        x = torch.empty(pixel, device="meta", dtype=self.dtype.torch)
        with torch.inference_mode():
            latent = tuple(call_op(self.module, Op.ENCODE, [x]).shape)
        return pixel, latent

    def input_shape(self, request: PixelRequest, op: Op) -> tuple[int, ...]:
        """PixelRequest + op -> the shape the call takes: pixels for encode, the latent for decode."""
        pixel, latent = self.shapes(request)
        return pixel if op is Op.ENCODE else latent

    def trace(self, shape: tuple[int, ...], op: Op, *, tiled: bool = False, sliced: bool = False,
              full: bool = False) -> Trace:
        """input shape + op -> Trace of the meta module's encode or decode (with diffusers' modes as asked).

        The events keep their inputs' metadata for the operators the memory rules read; `full=True` keeps it
        for every operator (the time model, vaelens.tiling.cost, prices them all), and answers both asks."""
        import torch

        from vaelens.memory.rules import RULES
        from vaelens.trace import trace_module

        key = (op, tuple(shape), tiled, sliced)
        if key in self._traces and (self._traces[key][1] or not full):
            self.hits += 1
            return self._traces[key][0]
        try:
            with diffusers_modes(self.module, tiled=tiled, sliced=sliced):
                tr = trace_module(self.module, [torch.empty(shape, device="meta", dtype=self.dtype.torch)], op=op,
                                  detail=None if full else RULES.keys())
        except (RuntimeError, ValueError, IndexError) as exc:  # the module refuses the input (diffusers' own check)
            mode = " with enable_tiling()" if tiled else " with enable_slicing()" if sliced else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VaeLensError(
                f"diffusers {type(self.module).__name__}.{op.value}{mode} fails on input {list(shape)}: {first}",
                param="size", value=list(shape),
            ) from exc  # the cause stays readable: tiling/plan.py words it for a shape
        self._traces[key] = (tr, full)
        return tr

    def estimate(self, shape: tuple[int, ...], op: Op, *, tiled: bool = False, sliced: bool = False) -> Any:
        """input shape + op -> MemoryEstimate of that call (traced once, replayed through the allocator model)."""
        from vaelens.memory.estimate import simulate

        key = (op, tuple(shape), tiled, sliced)
        if key in self._estimates:
            self.hits += 1
            return self._estimates[key]
        est = simulate(self.trace(shape, op, tiled=tiled, sliced=sliced), dtype=self.dtype, tiled=tiled,
                       sliced=sliced)
        self._estimates[key] = est
        return est
