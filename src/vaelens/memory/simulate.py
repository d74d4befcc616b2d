"""Replay a traced call through the caching-allocator model: peaks, reserved bytes, the OOM threshold.

Trace -> Program (per operator: storages freed, storages allocated, kernel temporaries) -> Outcome.
A run is the way the shared measurements were taken: weights and input allocated, one warm-up call,
`empty_cache()` and `reset_peak_memory_stats()`, then the measured call. `mode` picks each
operator's temporaries: "best", "low" or "high" (vaelens.memory.rules.Transient). Under a cap
(`fits_under`, `min_device_bytes`) the allocator releases its cache and retries as PyTorch does.
With `cudnn_fallback`, a convolution whose workspace still cannot be allocated runs the next cuDNN
engine (Conv_v8.cpp try_configs catches the OutOfMemoryError) with its `fallback` bytes; without
it (the default, what budgets use) every workspace must be allocated: vaelens does not count on
cuDNN having a slower engine without layout buffers for every shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaelens.memory.allocator import ROUND_LARGE, CachingAllocator, OutOfMemory
from vaelens.memory.rules import Transient, transient_range
from vaelens.trace import Trace

MODES = ("best", "low", "high")


@dataclass(frozen=True, slots=True)
class Step:
    frees: tuple[int, ...]
    allocs: tuple[tuple[int, int], ...]
    temp: Transient


@dataclass(frozen=True, slots=True)
class Program:
    """A trace reduced to what the allocator sees; built once, replayed many times."""

    resident: tuple[int, ...]
    steps: tuple[Step, ...]


# Operators PyTorch runs through cuBLAS. Its first cuBLAS call on a stream allocates the handle's
# workspace through the caching allocator and keeps it (aten/src/ATen/cuda/CublasHandlePool.cpp,
# getCurrentCUDABlasHandle -> cublasSetWorkspace): 4096 KiB x 8 = 32 MiB on sm90 (H100), the
# GPU of the shared measurements (4096 KiB x 2 + 16 KiB x 8 on other GPUs). It is part of
# memory_allocated() before the measured call, not of the call's peak.
CUBLAS_OPS = frozenset({"aten.linear.default", "aten.addmm.default", "aten.mm.default", "aten.bmm.default",
                        "aten.baddbmm.default", "aten.matmul.default", "aten.einsum.default"})
CUBLAS_WORKSPACE_SM90 = 32 << 20


def compile_trace(tr: Trace, *, cublas_workspace: int = CUBLAS_WORKSPACE_SM90) -> Program:
    """Trace -> Program (per-operator rules evaluated once; the cuBLAS workspace made resident
    when the call uses cuBLAS)."""
    steps = tuple(Step(tuple(ev.frees_before), tuple(ev.allocs), transient_range(ev)) for ev in tr.events)
    resident = tuple(tr.resident_sizes)
    if cublas_workspace and any(ev.name in CUBLAS_OPS for ev in tr.events):
        resident += (cublas_workspace,)
    return Program(resident, steps)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One simulated measurement: memory_allocated() before the call, the call's peaks."""

    base: int  # memory_allocated() before the measured call (weights + input as blocks)
    peak: int  # max_memory_allocated() during it minus base
    reserved_peak: int  # max_memory_reserved() over it (resident segments included)
    peak_step: int  # operator index at the peak (-1: before the first operator)
    during: tuple[int, ...] = ()  # allocated bytes above base inside each operator (when asked)


def _amount(temp: Transient, mode: str) -> int:
    return temp.best if mode == "best" else temp.low if mode == "low" else temp.high


def _call(prog: Program, alloc: CachingAllocator, mode: str, during: list[int] | None = None,
          fallback: bool = False) -> int:
    """One call; returns the operator index at the call's allocated peak. Raises OutOfMemory."""
    peak, at = alloc.allocated, -1
    for i, step in enumerate(prog.steps):
        for sid in step.frees:
            alloc.free(sid)
        for sid, nbytes in step.allocs:
            alloc.malloc(sid, nbytes)
        nbytes = _amount(step.temp, mode)
        grown = 0
        if nbytes:
            try:
                grown = alloc.transient(nbytes)
            except OutOfMemory:
                if not fallback or step.temp.fallback >= nbytes:
                    raise
                grown = alloc.transient(step.temp.fallback) if step.temp.fallback else 0
        now = alloc.allocated + grown
        if during is not None:
            during.append(now)
        if now > peak:
            peak, at = now, i
    for sid in list(alloc._live):  # the caller drops what is left (the output): back to the cache
        if not (isinstance(sid, tuple) and sid[0] == "resident"):
            alloc.free(sid)
    return at


def run(
    prog: Program, *, mode: str = "best", cap: int | None = None, per_step: bool = False, cudnn_fallback: bool = False,
) -> Outcome:
    """Program -> Outcome of weights + input, warm-up call, empty_cache(), measured call.

    Raises OutOfMemory when `cap` is given and the call cannot run under it."""
    alloc = CachingAllocator(cap)
    for i, nbytes in enumerate(prog.resident):
        alloc.malloc(("resident", i), nbytes)
    _call(prog, alloc, mode, fallback=cudnn_fallback)
    alloc.empty_cache()
    base = alloc.allocated
    alloc.reset_peak()
    during: list[int] | None = [] if per_step else None
    at = _call(prog, alloc, mode, during, fallback=cudnn_fallback)
    return Outcome(base=base, peak=max(0, alloc.peak - base), reserved_peak=alloc.reserved_peak, peak_step=at,
                   during=tuple(v - base for v in during) if during is not None else ())


def fits_under(prog: Program, cap: int, *, mode: str = "high", cudnn_fallback: bool = False) -> bool:
    """Whether weights + input + the call (twice: warm-up and measured) run under a `cap` of segment
    bytes (set_per_process_memory_fraction(cap / total)) without an out-of-memory error."""
    try:
        run(prog, mode=mode, cap=cap, cudnn_fallback=cudnn_fallback)
    except OutOfMemory:
        return False
    return True


def min_device_bytes(
    prog: Program, *, mode: str = "high", cudnn_fallback: bool = False, hint: int | None = None,
) -> int:
    """Program -> the smallest cap (a multiple of 2 MiB, the segment granularity above 10 MiB)
    under which the call runs: bisection between what must be allocated at once (a cap below it
    cannot work) and the reserved peak without a cap (which always works)."""
    free_run = _no_cap_reserved(prog, mode)
    floor = _floor(prog, mode, cudnn_fallback)
    lo = max(0, floor // ROUND_LARGE - 1)  # caps <= lo * 2 MiB fail
    hi = -(-free_run // ROUND_LARGE)  # hi * 2 MiB works
    if hint is not None:  # a cheap first split when the caller has a good guess
        h = max(lo + 1, min(hi, -(-hint // ROUND_LARGE)))
        if h < hi:
            if fits_under(prog, h * ROUND_LARGE, mode=mode, cudnn_fallback=cudnn_fallback):
                hi = h
            else:
                lo = h
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits_under(prog, mid * ROUND_LARGE, mode=mode, cudnn_fallback=cudnn_fallback):
            hi = mid
        else:
            lo = mid
    return hi * ROUND_LARGE


def _no_cap_reserved(prog: Program, mode: str) -> int:
    """Most segment bytes held at any moment of resident + warm-up + call without a cap."""
    alloc = CachingAllocator()
    for i, nbytes in enumerate(prog.resident):
        alloc.malloc(("resident", i), nbytes)
    _call(prog, alloc, mode)
    _call(prog, alloc, mode)
    return alloc.reserved_peak


def _floor(prog: Program, mode: str, cudnn_fallback: bool) -> int:
    """memory_allocated() at the call's highest, optional temporaries at their fallback when
    `cudnn_fallback`: no cap below it can work (segments hold at least the allocated blocks)."""
    alloc = CachingAllocator()
    for i, nbytes in enumerate(prog.resident):
        alloc.malloc(("resident", i), nbytes)
    peak = alloc.allocated
    for step in prog.steps:
        for sid in step.frees:
            alloc.free(sid)
        for sid, nbytes in step.allocs:
            alloc.malloc(sid, nbytes)
        temp = step.temp.fallback if cudnn_fallback else _amount(step.temp, mode)
        peak = max(peak, alloc.allocated + temp)
    return peak


def _scaled(a: int, b: int, k: int) -> int:
    """The value at k more repetitions, growing by b - a per repetition (never below 0)."""
    return max(0, b + k * (b - a))


def extend_repeated(tr_a: Trace, tr_b: Trace, n: int) -> Program | None:
    """Traces of one call with r and r+1 identical repeated sub-calls (diffusers' enable_slicing():
    one encoder/decoder call per sample, then torch.cat) -> the Program with n (>= r+1) repetitions,
    without tracing it; None when the two traces do not have that structure.

    Both traces start with the same prologue (the split); each repetition is the same operators
    with the same sizes; the epilogue (torch.cat, the latent distribution) has the same operators
    with sizes that grow by the same bytes per repetition. The last repetition of `tr_b` is
    replayed again with fresh storages; what it frees of the repetition before it is freed of the
    copy before it; the epilogue frees every repetition's storages where it freed those of one.
    """
    a, b = compile_trace(tr_a), compile_trace(tr_b)
    layout = _repeat_layout(tr_b, a, b, n)
    if layout is None:
        return None
    start, unit, r_b, tail = layout
    named = _name_storages(b, start, unit, r_b)
    steps = _repeated_steps(b, named, start, unit, r_b, n)
    steps += _epilogue_steps(a, b, named, tail, r_b, n)
    # the input (resident) grows with the batch like everything per repetition
    k = n - r_b
    return Program(tuple(_scaled(x, y, k) for x, y in zip(a.resident, b.resident, strict=True)), tuple(steps))


def _repeat_layout(tr_b: Trace, a: Program, b: Program, n: int) -> tuple[int, int, int, int] | None:
    """-> (start of the first repetition, steps per repetition, repetitions in b, epilogue steps), or
    None when the two programs are not a prologue, identical repetitions and an epilogue alike."""
    unit = len(b.steps) - len(a.steps)
    first = [r for r in tr_b.layers if r.depth == 1]
    if unit <= 0 or not first or len(a.resident) != len(b.resident):
        return None
    start = first[0].first_op
    reps = sum(1 for r in first if r.path == first[0].path)
    r_b = reps
    tail = len(b.steps) - start - r_b * unit
    if tail < 0 or len(a.steps) - start - (r_b - 1) * unit != tail or n < r_b:
        return None

    def signature(steps: tuple[Step, ...]) -> list:
        return [(len(s.frees), tuple(n for _, n in s.allocs), s.temp) for s in steps]

    units = [b.steps[start + j * unit: start + (j + 1) * unit] for j in range(r_b)]
    starts = [r.first_op for r in first if r.path == first[0].path]
    if starts != [start + j * unit for j in range(r_b)] or r_b < 3 or \
            any(signature(u) != signature(units[-1]) for u in units[1:]) or \
            signature(a.steps[:start]) != signature(b.steps[:start]):
        return None  # (the first repetition frees nothing of one before it: it is not compared)
    tail_a, tail_b = a.steps[len(a.steps) - tail:], b.steps[len(b.steps) - tail:]
    if [len(s.allocs) for s in tail_a] != [len(s.allocs) for s in tail_b]:
        return None
    return start, unit, r_b, tail


def _name_storages(b: Program, start: int, unit: int, r_b: int) -> list[tuple[tuple, tuple]]:
    """Storage ids are addresses the trace may reuse once freed: name every storage by where it was
    allocated (("rep", j, i): repetition j's i-th; ("pro"/"end", step, i) otherwise), resolving
    each free against the storages alive at that moment -> per step of b: (freed names, allocated names)."""
    live: dict[int, tuple] = {}
    named: list[tuple[tuple, tuple]] = []
    for t, st in enumerate(b.steps):
        freed = tuple(live.pop(sid) for sid in st.frees if sid in live)
        j = (t - start) // unit if start <= t < start + r_b * unit else None
        names = []
        for i, (sid, _) in enumerate(st.allocs):
            if j is not None:
                pos = sum(len(x.allocs) for x in b.steps[start + j * unit: t]) + i
                name: tuple = ("rep", j, pos)
            else:
                name = ("pro" if t < start else "end", t if t < start else t - len(b.steps), i)
            live[sid] = name
            names.append(name)
        named.append((freed, tuple(names)))
    return named


def _repeated_steps(b: Program, named: list[tuple[tuple, tuple]], start: int, unit: int, r_b: int,
                    n: int) -> list[Step]:
    """b's prologue and repetitions as named steps, then b's last repetition replayed up to n."""
    last = r_b - 1

    def shift(name: tuple, j: int) -> tuple:
        """A name in the last repetition's frame, moved to repetition j."""
        return ("rep", j - (last - name[1]), name[2]) if name[0] == "rep" else name

    steps: list[Step] = []
    for t in range(start + r_b * unit):
        freed, names = named[t]
        steps.append(Step(freed, tuple(zip(names, (nb for _, nb in b.steps[t].allocs), strict=True)),
                          b.steps[t].temp))
    base = start + last * unit
    for j in range(r_b, n):
        for t in range(base, base + unit):
            freed, names = named[t]
            steps.append(Step(tuple(shift(x, j) for x in freed),
                              tuple((shift(x, j), nb) for x, (_, nb) in zip(names, b.steps[t].allocs, strict=True)),
                              b.steps[t].temp))
    return steps


def _epilogue_steps(a: Program, b: Program, named: list[tuple[tuple, tuple]], tail: int, r_b: int,
                    n: int) -> list[Step]:
    """The epilogue for n repetitions: sizes extrapolated from a and b, frees of one repetition's
    storages extended to every repetition's."""
    last, k = r_b - 1, n - r_b
    tail_a, tail_b = a.steps[len(a.steps) - tail:], b.steps[len(b.steps) - tail:]
    steps: list[Step] = []
    for (sa, sb), t in zip(zip(tail_a, tail_b, strict=True), range(len(b.steps) - tail, len(b.steps)), strict=True):
        freed, names = named[t]
        frees: list[tuple] = []
        for x in freed:
            if x[0] == "rep" and x[1] == last:  # one repetition's storage: every repetition's
                frees.extend(("rep", j, x[2]) for j in range(n))
            elif x[0] != "rep":
                frees.append(x)
        allocs = tuple((name, _scaled(na, nb, k)) for name, (_, na), (_, nb)
                       in zip(names, sa.allocs, sb.allocs, strict=True))
        ta, tb = sa.temp, sb.temp
        temp = Transient(_scaled(ta.best, tb.best, k), _scaled(ta.low, tb.low, k), _scaled(ta.high, tb.high, k),
                         _scaled(ta.fallback, tb.fallback, k), tb.uncertain)
        steps.append(Step(tuple(frees), allocs, temp))
    return steps
