"""Measure encode/decode on a CUDA GPU the way shared/measurements/README.md did (real GPU runs only).

config + shape + dtype -> Measured (allocated peak above base, reserved peak, base, time) and, with
`cap_search`, the smallest allocator cap the call runs under. The real diffusers module with random
weights (memory does not depend on weight values), cast with .to(device, dtype), default attention
processors, torch.inference_mode(); one warm-up call, empty_cache() and reset_peak_memory_stats(), then
the measured call: max_memory_allocated() minus memory_allocated() before it, and max_memory_reserved();
then `timed` more calls for the median time.

The cap search (`min_device_cap`) bisects torch.cuda.set_per_process_memory_fraction(cap / total) —
what the caching allocator's `allowed_memory_maximum` check uses — each try in a fresh process
(`python -m vaelens.memory.measure`, one JSON job on stdin, one JSON answer on stdout): the cap is set
before the weights arrive, and the call must run twice without torch.OutOfMemoryError. A fresh process
per try because an out-of-memory error leaves state behind: cuDNN keeps the engine it fell back to after
an out-of-memory workspace for later calls of the same process (Conv_v8.cpp benchmark_cache), so in one
process an earlier try can make a later one pass. The CUDA context is outside the cap; `context_bytes`
measures one: a first probe process reports the device's used memory (mem_get_info) and stays alive, a
second reports it again, and the difference is what one more process with a CUDA context costs (the
measuring process and others on the GPU are in both readings, so they cancel).

`memory --measure` and `vaelens validate` both measure through this module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import DType
from vaelens.trace import Op, call_op

# Exit code of a probe process that could not run its job (a crash, bad job): not an answer.
_PROBE_FAILED = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Measured:
    """One measured call: bytes as torch.cuda reports them."""

    peak_bytes: int  # max_memory_allocated() during the call minus memory_allocated() before it
    reserved_peak_bytes: int  # max_memory_reserved() over the call (after empty_cache())
    base_bytes: int  # memory_allocated() before the call
    min_device_bytes: int | None = None  # smallest cap the call ran under (cap_search)
    seconds_median: float | None = None  # median of `timed` calls after the measured one
    output_shape: tuple[int, ...] = ()

    def to_json(self) -> dict[str, int | None]:
        return {"peak_bytes": self.peak_bytes, "reserved_peak_bytes": self.reserved_peak_bytes,
                "base_bytes": self.base_bytes, "min_device_bytes": self.min_device_bytes}


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """One try of a call under an allocator cap, in a fresh process."""

    ok: bool  # ran twice without torch.OutOfMemoryError
    used_bytes: int | None = None  # device memory in use (all processes) once CUDA is initialised, before any
    # allocation: total - free from mem_get_info


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def require_cuda(what: str = "measure=True", device: str = "cuda", *, instead: str | None = None) -> None:
    """Raise VaeLensError (one line) when there is no CUDA GPU to measure on, or `device` names a GPU
    that is not there. `instead` says what works without one (default: run without `what`)."""
    import torch

    if not cuda_available():
        instead = instead or f"run without {what} for the prediction, which needs no GPU"
        raise VaeLensError(
            f"{what} needs a CUDA GPU, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}); {instead}", param="device", value=device)
    index = device_index(device)
    if index >= torch.cuda.device_count():
        raise VaeLensError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                           f"cuda:0 to cuda:{torch.cuda.device_count() - 1}", param="device", value=device,
                           choices=tuple(f"cuda:{i}" for i in range(torch.cuda.device_count())))


def device_index(device: str) -> int:
    """'cuda' | 'cuda:N' -> N (0 for 'cuda'); anything else is refused.

    >>> device_index("cuda:1"), device_index("cuda")
    (1, 0)
    """
    name, _, index = str(device).partition(":")
    if name != "cuda" or (index and not index.isdigit()):
        raise VaeLensError(f"device {device!r} is not a CUDA device; use cuda or cuda:N", param="device",
                           value=device)
    return int(index or 0)


def bisect_cap(runs: Callable[[int], bool], lo: int, hi: int, *, step: int = 2 << 20) -> int:
    """Smallest cap (a multiple of `step`) in (lo, hi] with runs(cap), given runs(hi) and not runs(lo)
    (both assumed, not called): a monotone bisection.

    >>> bisect_cap(lambda cap: cap >= 10_000_000, 0, 64 << 20)
    10485760
    """
    a, b = lo // step, -(-hi // step)
    while b - a > 1:
        mid = (a + b) // 2
        if runs(mid * step):
            b = mid
        else:
            a = mid
    return b * step


class _Session:
    """The real module and input on the GPU, and one call of it."""

    def __init__(self, config: Mapping[str, Any], shape: Sequence[int], dtype: DType, op: Op,
                 tiled: bool = False, sliced: bool = False, device: str = "cuda") -> None:
        import torch

        from vaelens.build import build_module
        from vaelens.memory.context import apply_modes

        target = torch.device(device)
        if target.type == "cuda":
            torch.cuda.set_device(target)
        torch.manual_seed(0)
        self.torch = torch
        self.op = op
        self.module = build_module(dict(config), device="cpu", dtype=DType.FP32).to(target, dtype.torch).eval()
        apply_modes(self.module, tiled, sliced)
        self.x = torch.randn(tuple(shape), device=target, dtype=dtype.torch)
        self.output_shape: tuple[int, ...] = ()

    def call(self) -> None:
        with self.torch.inference_mode():
            out = call_op(self.module, self.op, [self.x])
            self.output_shape = tuple(out.shape)
            del out
        self.torch.cuda.synchronize()

    def close(self) -> None:
        del self.module, self.x
        self.torch.cuda.empty_cache()


@dataclass(frozen=True, slots=True, kw_only=True)
class Peak:
    """What one call of `fn` did to the caching allocator, and how long it took."""

    base_bytes: int  # memory_allocated() before
    peak_bytes: int  # max_memory_allocated() during, minus base_bytes
    reserved_peak_bytes: int  # max_memory_reserved() during (after empty_cache())
    seconds: float


def measure_peak_of(fn: Callable[[], Any]) -> Peak:
    """One call of fn() on the current CUDA device -> Peak (empty_cache and reset_peak_memory_stats first;
    synchronised before the clock stops)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return Peak(base_bytes=int(base), peak_bytes=int(torch.cuda.max_memory_allocated() - base),
                reserved_peak_bytes=int(torch.cuda.max_memory_reserved()), seconds=seconds)


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """fn() `repeats` times, synchronised -> the median wall time in seconds."""
    import statistics

    import torch

    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def measure_call(
    config: Mapping[str, Any], shape: Sequence[int], dtype: DType | str, *, op: str | Op,
    tiled: bool = False, sliced: bool = False, cap_search: bool = False, device: str = "cuda", timed: int = 0,
) -> Measured:
    """diffusers config + input shape (pixels for encode, latent for decode) -> Measured on this GPU.

    With `cap_search`, also the smallest set_per_process_memory_fraction cap (in bytes) at which the call
    runs twice without an out-of-memory error (min_device_bytes; see min_device_cap). With `timed`, the
    median time of that many calls after the measured one."""
    require_cuda(device=device)
    dtype, op = DType.parse(dtype), Op.parse(op)
    s = _Session(config, shape, dtype, op, tiled, sliced, device)
    try:
        s.call()  # warm-up: cuDNN plans, the cuBLAS workspace
        got = measure_peak_of(s.call)
        seconds = median_seconds(s.call, timed) if timed else None
        out_shape = s.output_shape
    finally:
        s.close()
    cap = None
    if cap_search:
        cap = min_device_cap(config, shape, dtype, op=op, lo=got.base_bytes,
                             hi=got.reserved_peak_bytes + (2 << 20), tiled=tiled, sliced=sliced,
                             device=device)
    return Measured(peak_bytes=got.peak_bytes, reserved_peak_bytes=got.reserved_peak_bytes,
                    base_bytes=got.base_bytes, min_device_bytes=cap, seconds_median=seconds, output_shape=out_shape)


def measure_peak(
    config: Mapping[str, Any], shape: tuple[int, ...], dtype: DType, *, op: str | Op,
    tiled: bool = False, sliced: bool = False,
) -> int:
    """diffusers config + input shape -> measured peak bytes above base (measure_call's peak_bytes)."""
    return measure_call(config, shape, dtype, op=op, tiled=tiled, sliced=sliced).peak_bytes


# ---- the device minimum: one fresh process per try -------------------------------------------------


def probe_job(config: Mapping[str, Any], shape: Sequence[int], dtype: DType | str, *, op: str | Op,
              cap_bytes: int | None, tiled: bool = False, sliced: bool = False, device: str = "cuda") -> dict:
    """The JSON job one probe process runs (cap_bytes None: only report the device's used memory)."""
    return {"config": dict(config), "shape": [int(s) for s in shape], "dtype": DType.parse(dtype).value,
            "op": Op.parse(op).value, "cap_bytes": cap_bytes, "tiled": tiled, "sliced": sliced, "device": device}


PROBE_ARGV = (sys.executable, "-m", "vaelens.memory.measure")


def probe_in_subprocess(job: Mapping[str, Any], *, argv: Sequence[str] = PROBE_ARGV,
                        timeout: float = 600.0) -> Probe:
    """One job (probe_job) run in a fresh process -> Probe. `argv` is the process to start (tests pass a
    fake); it reads the job as one JSON line on stdin and prints one JSON object {"ok", "used_bytes"}."""
    try:
        r = subprocess.run(list(argv), input=json.dumps(job) + "\n", capture_output=True, text=True,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise VaeLensError(f"a memory probe ran past {timeout:.0f} s (cap_bytes={job.get('cap_bytes')})",
                           param="cap_bytes", value=job.get("cap_bytes")) from None
    return _answer(r.returncode, r.stdout, r.stderr, job)


def _failed(code: int | None, stderr: str, job: Mapping[str, Any]) -> VaeLensError:
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return VaeLensError(f"a memory probe process failed (exit {code}): {tail}", param="cap_bytes",
                        value=job.get("cap_bytes"))


def _answer(code: int, stdout: str, stderr: str, job: Mapping[str, Any]) -> Probe:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        raise _failed(code, stderr, job)
    answer = json.loads(lines[-1])
    return Probe(ok=bool(answer["ok"]), used_bytes=answer.get("used_bytes"))


def context_bytes(device: str = "cuda", *, argv: Sequence[str] = PROBE_ARGV, timeout: float = 120.0) -> int:
    """What one more process with a CUDA context holds on `device`, in bytes: a probe process that reports
    the used memory and stays alive, then a second one; the difference of their readings."""
    job = {"device": device, "cap_bytes": None, "hold": True}
    first = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdin is not None and first.stdout is not None
        first.stdin.write(json.dumps(job) + "\n")
        first.stdin.flush()
        line = first.stdout.readline()
        while line and not line.startswith("{"):  # libraries may print before the answer
            line = first.stdout.readline()
        if not line:  # it ended without an answer
            first.stdin.close()
            first.wait(timeout)
            raise _failed(first.returncode, first.stderr.read() if first.stderr else "", job)
        held = _answer(0, line, "", job)
        again = probe_in_subprocess({**job, "hold": False}, argv=argv, timeout=timeout)
    finally:
        if first.stdin and not first.stdin.closed:
            first.stdin.close()
        try:
            first.wait(timeout)
        except subprocess.TimeoutExpired:
            first.kill()
    return int((again.used_bytes or 0) - (held.used_bytes or 0))


def min_device_cap(
    config: Mapping[str, Any], shape: Sequence[int], dtype: DType | str, *, op: str | Op, lo: int, hi: int,
    tiled: bool = False, sliced: bool = False, device: str = "cuda", step: int = 2 << 20,
    probe: Callable[[Mapping[str, Any]], Probe] = probe_in_subprocess,
) -> int:
    """The smallest allocator cap (a multiple of `step`, bytes) under which the call runs twice, by
    bisection in (lo, hi], each try a fresh process (`probe`); `hi` is tried first and must run."""

    def runs(cap: int) -> bool:
        return probe(probe_job(config, shape, dtype, op=op, cap_bytes=cap, tiled=tiled, sliced=sliced,
                               device=device)).ok

    if not runs(hi):
        raise VaeLensError(f"the call does not run even under a cap of {hi} bytes (hi)", param="hi", value=hi)
    return bisect_cap(runs, lo, hi, step=step)


def run_probe_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """In the probe process: the device's used memory once CUDA is up, then (with a cap) the cap set, the
    module loaded and called twice -> {"ok", "used_bytes"}."""
    import torch

    torch.cuda.set_device(device_index(job.get("device", "cuda")))
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    answer: dict[str, Any] = {"ok": True, "used_bytes": int(total - free)}
    cap = job.get("cap_bytes")
    if cap is None:
        return answer
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    answer["ok"] = runs_twice(lambda: _Session(
        job["config"], job["shape"], DType.parse(job["dtype"]), Op.parse(job["op"]), job.get("tiled", False),
        job.get("sliced", False), job.get("device", "cuda")).call)
    return answer


def runs_twice(make_call: Callable[[], Callable[[], None]]) -> bool:
    """Load (make_call) and call twice -> False on torch.OutOfMemoryError (loading included), True otherwise;
    any other error propagates."""
    import torch

    try:
        call = make_call()
        call()
        call()
    except torch.OutOfMemoryError:
        return False
    return True


def _main() -> int:
    try:
        job = json.loads(sys.stdin.readline())
        print(json.dumps(run_probe_job(job)), flush=True)
    except Exception as exc:  # anything but an out-of-memory error is a failed probe, not an answer
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return _PROBE_FAILED
    if job.get("hold"):  # context_bytes: stay alive (context held) until the caller closes stdin
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
