"""Run encode/decode inside a memory budget with real weights, and the drop-in for pipelines.

decode(vae, latent, budget=…) / encode(vae, pixels, budget=…): one call, planned then run.
enable_budgeted_vae(pipe.vae, budget=…): the module's own .decode/.encode become budgeted (planned per
input shape and dtype, cached), so a diffusers pipeline's decode is exact and inside the budget; it
replaces enable_tiling(). disable_budgeted_vae undoes it; budgeted_vae is the same as a `with` block.
Each takes `device_profile=` (the profile the plan's time is minimised on; default: the module's device)
and `spill_dir=` (an existing, writable folder: spilled host copies become memory-mapped files there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelens.build import quiet_diffusers
from vaelens.errors import OutputError, VaeLensError
from vaelens.tiling.plan import APPROXIMATE, UNTILED, TilingPlan, plan_tiling

_ATTR = "_vaelens_budget"


@dataclass(slots=True)
class BudgetState:
    """What enable_budgeted_vae attaches to a module: the budget, its plans, the original methods."""

    budget: int | str
    device_profile: Any = None  # a profile name or DeviceProfile; None: the module's device, detected
    spill_dir: Path | None = None  # where spilled host copies go as memory-mapped files (None: RAM)
    originals: dict[str, Any] = field(default_factory=dict)
    cache: dict[tuple, TilingPlan] = field(default_factory=dict)
    plans: list[TilingPlan] = field(default_factory=list)  # every call's plan, in order
    # every call's RunCounts (bytes copied host <-> device, host peak), beside its plan in `plans`;
    # None where the call ran untiled or with the class's own (approximate) tiling
    counts: list[Any] = field(default_factory=list)

    @property
    def last_plan(self) -> TilingPlan | None:
        return self.plans[-1] if self.plans else None


def _module(vae: Any):
    import torch

    module = getattr(vae, "module", vae)  # LoadedVae -> its diffusers module
    if not isinstance(module, torch.nn.Module) or not hasattr(module, "decode"):
        raise VaeLensError(f"vae {type(vae).__name__} is not a diffusers VAE module (nor a LoadedVae)", param="vae",
                           value=type(vae).__name__)
    return module


def _dtype(module: Any):
    from vaelens.tiling.plan import _dtype_of

    return _dtype_of(next(iter(module.parameters()), None))


def _move(obj: Any, device: Any) -> Any:
    """A diffusers output (DecoderOutput, AutoencoderKLOutput with its posterior, tuple, tensor) with
    every tensor moved to `device`."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_move(o, device) for o in obj)
    if isinstance(obj, list):
        return [_move(o, device) for o in obj]
    if isinstance(obj, dict):  # diffusers BaseOutput is an OrderedDict whose __setitem__ keeps attributes
        for k in list(obj.keys()):
            obj[k] = _move(obj[k], device)
        return obj
    if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):  # DiagonalGaussianDistribution
        for k, v in vars(obj).items():
            if isinstance(v, torch.Tensor):
                setattr(obj, k, v.to(device))
    return obj


def _plan_for(module: Any, state: BudgetState, op: str, x: Any) -> TilingPlan:
    key = (op, tuple(x.shape), _dtype(module))
    if key not in state.cache:
        state.cache[key] = plan_tiling(module, tuple(x.shape), key[2], state.budget, op=op,
                                       device_profile=state.device_profile)
    return state.cache[key]


def check_spill_dir(spill_dir: str | os.PathLike | None) -> Path | None:
    """folder | None -> the folder as a Path (None stays None): it must exist and be writable, since the
    run creates its memory-mapped spill files there. Raises OutputError (param spill_dir) otherwise."""
    if spill_dir is None:
        return None
    path = Path(spill_dir).expanduser()
    if not path.exists():
        raise OutputError(f"spill_dir {str(spill_dir)!r} does not exist; give an existing folder for the "
                          "memory-mapped spill files", param="spill_dir", value=str(spill_dir))
    if not path.is_dir():
        raise OutputError(f"spill_dir {str(spill_dir)!r} is not a folder; give an existing folder for the "
                          "memory-mapped spill files", param="spill_dir", value=str(spill_dir))
    import tempfile

    try:  # creating a file is the one check that covers permissions, ACLs and read-only mounts alike
        with tempfile.TemporaryFile(dir=path, prefix="vaelens-spill-check-"):
            pass
    except OSError as exc:
        raise OutputError(f"spill_dir {str(spill_dir)!r} is not writable ({exc.strerror or exc}); give a "
                          "folder the spill files can be created in", param="spill_dir",
                          value=str(spill_dir)) from None
    return path


def run_plan(module: Any, plan: TilingPlan, method: Any, x: Any, *args: Any, counts: list | None = None,
             spill_dir: Any = None, **kwargs: Any) -> Any:
    """Call `method` (the module's original encode/decode) on x as `plan` says: untiled, exact tiles, or
    the class's own enable_tiling() (approximate). Tensors in the result are on x's device; `counts`
    (a list) gets the run's RunCounts (bytes it copied host <-> device, its host peak)."""
    from vaelens.tiling.execute import run_tiled

    if plan.method == UNTILED:
        return method(x, *args, **kwargs)
    prev = getattr(module, "use_tiling", None)
    try:
        if plan.method == APPROXIMATE:
            with quiet_diffusers():
                module.enable_tiling()
            return method(x, *args, **kwargs)
        if prev is not None:
            module.use_tiling = False  # the exact path must not take diffusers' blended tiles
        device = next(iter(module.parameters())).device
        spill_dir, notes = _spill_to(plan, device, spill_dir, counts is not None)
        xd = x.to(device)
        out = run_tiled(module, lambda: method(xd, *args, **kwargs), fraction=plan.fraction,
                        decisions=plan.decisions, spill_dir=spill_dir, counts=counts, inputs=[xd],
                        inplace=plan.inplace_events, recompute=plan.recompute)
        if notes and counts:
            counts[-1] = dataclasses.replace(counts[-1], warnings=(*notes, *counts[-1].warnings))
        return _move(out, x.device)
    finally:
        if prev is not None:
            module.use_tiling = prev


def _spill_to(plan: TilingPlan, device: Any, spill_dir: Any, counted: bool) -> tuple[Any, tuple[str, ...]]:
    """-> where the run's spilled maps go (`spill_dir` when the caller names one; else None, RAM, while they
    fit the available RAM, or files in the temporary folder: vaelens.tiling.ram.host_policy) and its one-line
    warnings (a bound this platform cannot keep), which go to the run's counts when it has them, else to
    `warnings`. A CPU budget that RAM cannot honour raises BudgetError."""
    import warnings

    from vaelens.tiling.ram import host_policy

    policy = host_policy(plan, cpu=device.type == "cpu", spill_dir=spill_dir)
    if not counted:
        for line in policy.warnings:
            warnings.warn(line, stacklevel=4)
    # a folder the caller names is used whatever the RAM; without one, files only where RAM is short
    return (spill_dir if spill_dir is not None else policy.spill_dir), policy.warnings


def _call(module: Any, op: str, x: Any, *, budget: int | str | None, plan: TilingPlan | None,
          device_profile: Any = None, spill_dir: Any = None, counts: list | None = None):
    import torch

    from vaelens.trace import call_op
    from vaelens.trace.records import Op

    method = getattr(module, op)
    state = getattr(module, _ATTR, None)
    if state is not None:  # a budgeted module: call the original method, not the wrapper
        method = types.MethodType(state.originals[op], module)
    with torch.inference_mode():
        if plan is None and budget is None:
            for name, value in (("device_profile", device_profile), ("spill_dir", spill_dir)):
                if value is not None:  # it would change nothing: refused, not ignored
                    raise VaeLensError(f"{name}={str(value)!r} applies to a budgeted call; give budget= too",
                                       param=name, value=value)
            return call_op(_Bound(method, op), Op.parse(op), [x])
        spill = check_spill_dir(spill_dir)
        if plan is None:
            plan = plan_tiling(module, tuple(x.shape), _dtype(module), budget, op=op, device_profile=device_profile)
        elif plan.op != op or tuple(plan.input_shape) != tuple(x.shape):
            raise VaeLensError(f"plan is for {plan.op} of {list(plan.input_shape)}, not {op} of {list(x.shape)}",
                               param="plan", value=f"{plan.op} {list(plan.input_shape)}")
        return call_op(_Bound(lambda t: run_plan(module, plan, method, t, counts=counts, spill_dir=spill), op),
                       Op.parse(op), [x])


class _Bound:
    """Something call_op can read .encode/.decode from: one bound method."""

    def __init__(self, fn: Any, op: str) -> None:
        setattr(self, op, fn)


def decode(vae: Any, latent: Any, *, budget: int | str | None = None, plan: TilingPlan | None = None,
           device_profile: Any = None, spill_dir: Any = None, counts: list | None = None):
    """raw latent [B,C,(F,)h,w] -> pixels [B,3,(F,)H,W] (the module's .decode(...).sample) within `budget`.

    `vae`: a diffusers VAE module or a LoadedVae; the latent is not denormalised (vaelens.run.decode
    does that). Exact tiles when the untiled decode does not fit; untiled when it does; without
    budget and plan, the plain decode. Raises VaeLensError naming the smallest budget when none fits.
    `device_profile`: the profile the plan's time is minimised on (default: the module's device);
    `spill_dir`: spilled host copies as memory-mapped files there; `counts` (a list) gets the exact run's
    RunCounts (the bytes it copied, its host peak).
    """
    return _call(_module(vae), "decode", latent, budget=budget, plan=plan, device_profile=device_profile,
                 spill_dir=spill_dir, counts=counts)


def encode(vae: Any, pixels: Any, *, budget: int | str | None = None, plan: TilingPlan | None = None,
           device_profile: Any = None, spill_dir: Any = None, counts: list | None = None):
    """pixels [B,3,(F,)H,W] in [-1,1] -> raw latent [B,C,(F,)h,w] (the posterior's mode, or the latent of a
    VAE without one) within `budget`; see decode()."""
    return _call(_module(vae), "encode", pixels, budget=budget, plan=plan, device_profile=device_profile,
                 spill_dir=spill_dir, counts=counts)


def enable_budgeted_vae(vae: Any, budget: int | str = "8GiB", *, device_profile: Any = None,
                        spill_dir: Any = None) -> BudgetState:
    """Make vae.decode / vae.encode run inside `budget`, exactly (the pipeline drop-in for enable_tiling()).

    Each call is planned for its input's shape and dtype (cached) on `device_profile` (default: the
    module's device): untiled when that fits, exact tiles otherwise, the class's own tiling (approximate)
    for classes vaelens cannot tile exactly; spilled host copies go to memory-mapped files in `spill_dir`
    when given. Returns the state attached to the module (`.plans` lists what each call did, `.counts`
    what each exact run copied). Calling it again changes the budget, profile and spill folder.
    """
    from vaelens.options import parse_bytes
    from vaelens.tiling.profiles import get_profile

    module = _module(vae)
    if isinstance(budget, str):
        parse_bytes(budget)  # validate now, not at the first decode
    if device_profile is not None:
        get_profile(device_profile)  # likewise
    spill = check_spill_dir(spill_dir)
    state = getattr(module, _ATTR, None)
    if state is not None:
        state.budget, state.device_profile, state.spill_dir, state.cache = budget, device_profile, spill, {}
        return state
    state = BudgetState(budget=budget, device_profile=device_profile, spill_dir=spill)
    for op in ("decode", "encode"):
        original = getattr(type(module), op, None)
        if original is None:
            continue
        state.originals[op] = original

        def wrapper(self: Any, x: Any, *args: Any, _op: str = op, _orig: Any = original, **kwargs: Any) -> Any:
            plan = _plan_for(self, state, _op, x)
            state.plans.append(plan)
            counts: list = []
            try:
                return run_plan(self, plan, types.MethodType(_orig, self), x, *args, counts=counts,
                                spill_dir=state.spill_dir, **kwargs)
            finally:  # beside its plan, even when the call fails
                state.counts.append(counts[-1] if counts else None)

        object.__setattr__(module, op, types.MethodType(wrapper, module))
    object.__setattr__(module, _ATTR, state)
    return state


def disable_budgeted_vae(vae: Any) -> None:
    """Undo enable_budgeted_vae (the module's own encode/decode again)."""
    module = _module(vae)
    state = getattr(module, _ATTR, None)
    if state is None:
        return
    for op in state.originals:
        module.__dict__.pop(op, None)
    module.__dict__.pop(_ATTR, None)


@contextlib.contextmanager
def budgeted_vae(vae: Any, budget: int | str, *, device_profile: Any = None,
                 spill_dir: Any = None) -> Iterator[BudgetState]:
    """`with budgeted_vae(vae, "4GiB") as state:` — enable_budgeted_vae for the block, undone after."""
    state = enable_budgeted_vae(vae, budget, device_profile=device_profile, spill_dir=spill_dir)
    try:
        yield state
    finally:
        disable_budgeted_vae(vae)
