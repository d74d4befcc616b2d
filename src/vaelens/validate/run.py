"""Run a validation: each case predicted on the meta device, measured through a Backend, judged by the one
tolerance table.

models + device + quick -> cases (cases.py) -> per case: prediction (memory estimate, tiling plan,
precision emulation) and measurement (Backend) -> Row with Checks -> ValidationReport. `dry_run`
predicts only (no device needed). A measurement that raises becomes a failed row and the run goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from vaelens.families import FamilySpec
from vaelens.memory.context import MetaContext
from vaelens.memory.estimate import CUDA_CONTEXT_BYTES, estimate_memory
from vaelens.memory.measure import min_device_cap
from vaelens.progress import ProgressFn
from vaelens.units import human_bytes
from vaelens.validate.backend import Backend
from vaelens.validate.cases import DEFAULT_MODELS, Case, Section, plan_cases
from vaelens.validate.rows import Row, ValidationReport
from vaelens.validate.tolerances import judge

MIB = 2**20
NO_OVERFLOW = "(none)"  # a first_overflow of null: every layer's output finite
NO_CUDA = "a dry run lists the cases and their predictions without one"
BISECTION_STEPS = 64  # the device minimum to 1/64 of the searched range (at least 2 MiB): ~6 probes


def validate(
    models: Sequence[str | FamilySpec] | None = None, *, device: str = "cuda", quick: bool = False,
    dry_run: bool = False, sections: Sequence[Section | str] | None = None, backend: Backend | None = None,
    progress: ProgressFn | None = None,
) -> ValidationReport:
    """families (names, config paths or FamilySpecs; default sdxl, flux1, wan21) -> ValidationReport: every
    prediction of the cases measured on `device` and judged (validate.tolerances). Without CUDA (and without
    dry_run) raises VaeLensError before any work; dry_run lists the cases and their predictions anywhere."""
    from vaelens.contract import resolve_model
    from vaelens.envinfo import environment
    from vaelens.memory.measure import device_index, require_cuda

    specs = [resolve_model(m) for m in (models or DEFAULT_MODELS)]
    chosen = tuple(Section.parse(s) for s in sections) if sections else tuple(Section)
    device_index(device)  # refuse a non-CUDA device name even in a dry run
    if not dry_run and backend is None:
        require_cuda("validate", device, instead=NO_CUDA)
        from vaelens.validate.cuda import CudaBackend

        backend = CudaBackend(device)
    cases = plan_cases(specs, quick=quick, sections=chosen)
    t0 = time.perf_counter()
    runner = _Runner(None if dry_run else backend)
    rows = []
    for i, case in enumerate(cases):
        if progress is not None:
            progress(i, len(cases), case.label)
        rows.append(runner.row(case))
    if progress is not None:
        progress(len(cases), len(cases), "done")
    return ValidationReport(environment=environment(), device=device, quick=quick, dry_run=dry_run,
                            rows=tuple(rows), seconds=time.perf_counter() - t0, warnings=tuple(runner.warnings))


def _base(case: Case, **kw: Any) -> dict[str, Any]:
    r = case.request
    shape = (r.batch, 3) + ((r.frames,) if r.frames else ()) + (r.height, r.width)
    return dict(section=case.section, label=case.label, family=case.family, op=case.op.value, shape=shape,
                dtype=r.dtype.value, **kw)


def plan_figures(plan: Any) -> dict[str, Any]:
    """A TilingPlan -> every figure it has (numbers, strings, shapes), by field name, whatever the version."""
    out: dict[str, Any] = {}
    for f in fields(plan):
        v = getattr(plan, f.name)
        if isinstance(v, (int, float, str)) or v is None:
            out[f.name] = getattr(v, "value", v)
        elif isinstance(v, tuple) and all(isinstance(x, (int, float)) for x in v):
            out[f.name] = list(v)
    return out


class _Runner:
    """Predicts and measures one case at a time (a shared trace cache; the precision emulation once)."""

    def __init__(self, backend: Backend | None) -> None:
        self.backend = backend
        self.contexts: dict[tuple[str, Any], MetaContext] = {}  # one meta module per family and dtype
        self.warnings: list[str] = []
        self._emulation: Any = None

    def row(self, case: Case) -> Row:
        handler: Callable[[Case], Row] = {
            Section.PEAK: self._peak, Section.DEVICE_MIN: self._device_min, Section.TILING: self._tiling,
            Section.THROUGHPUT: self._throughput, Section.PRECISION: self._precision}[case.section]
        return handler(case)

    def _estimate(self, case: Case):
        key = (case.spec.name, case.request.dtype)
        if key not in self.contexts:
            self.contexts[key] = MetaContext.of(case.spec, case.request.dtype)
        return estimate_memory(self.contexts[key], case.request, op=case.op)

    def _skip_unfit(self, case: Case, need: int, predicted: dict[str, Any]) -> Row | None:
        free = self.backend.free_bytes() if self.backend is not None else None
        if free is not None and need > free:
            return Row(**_base(case, predicted=predicted,
                               skipped=f"needs {human_bytes(need)}, the device has {human_bytes(free)} free"))
        return None

    def _measure(self, case: Case, predicted: dict[str, Any], fn: Callable[[], Row]) -> Row:
        try:
            return fn()
        except Exception as exc:  # a failed measurement is a failed row, and the run goes on
            return Row(**_base(case, predicted=predicted, failure=f"{type(exc).__name__}: {exc}".splitlines()[0]))

    def _peak(self, case: Case) -> Row:
        est = self._estimate(case)
        predicted = {"peak_bytes": est.peak_bytes, "peak_bytes_low": est.peak_bytes_low,
                     "peak_bytes_high": est.peak_bytes_high, "reserved_peak_bytes": est.reserved_peak_bytes,
                     "min_device_bytes": est.min_device_bytes, "base_bytes": est.base_bytes}
        static = {"input_shape": list(est.input_shape), "weights_bytes": est.weights_bytes,
                  "input_bytes": est.input_bytes, "output_bytes": est.output_bytes}
        if self.backend is None:
            return Row(**_base(case, predicted=predicted, measured=static, checks=(
                judge("peak_bytes", est.peak_bytes, None, low=est.peak_bytes_low, high=est.peak_bytes_high),
                judge("reserved_peak_bytes", est.reserved_peak_bytes, None))))
        if (skip := self._skip_unfit(case, est.min_device_bytes, predicted)) is not None:
            return skip

        def run() -> Row:
            m = self.backend.measure_peak(case, tuple(est.input_shape))
            measured = {**static, "output_shape": list(m.output_shape or est.output_shape or ()),
                        "peak_above_base": m.peak_bytes, "seconds_median": m.seconds_median,
                        "base_allocated": m.base_bytes, "reserved_peak": m.reserved_peak_bytes}
            return Row(**_base(case, predicted=predicted, measured=measured, checks=(
                judge("peak_bytes", est.peak_bytes, m.peak_bytes, low=est.peak_bytes_low, high=est.peak_bytes_high),
                judge("reserved_peak_bytes", est.reserved_peak_bytes, m.reserved_peak_bytes))))

        return self._measure(case, predicted, run)

    def _device_min(self, case: Case) -> Row:
        est = self._estimate(case)
        predicted = {"min_device_bytes": est.min_device_bytes, "cuda_context_bytes": CUDA_CONTEXT_BYTES}
        if self.backend is None:
            return Row(**_base(case, predicted=predicted, checks=(
                judge("min_device_bytes", est.min_device_bytes, None),
                judge("cuda_context_bytes", CUDA_CONTEXT_BYTES, None))))
        if (skip := self._skip_unfit(case, est.min_device_bytes, predicted)) is not None:
            return skip
        return self._measure(case, predicted, lambda: self._bisect(case, est, predicted))

    def _bisect(self, case: Case, est: Any, predicted: dict[str, Any]) -> Row:
        assert self.backend is not None and case.spec is not None
        config, shape = case.spec.diffusers_config(), tuple(est.input_shape)
        m = self.backend.measure_peak(case, shape)  # the bounds: the base cannot run, the reserved peak did
        lo = m.base_bytes
        hi = max(m.reserved_peak_bytes, est.min_device_bytes + est.min_device_bytes // 4) + 2 * MIB
        step = max(2 * MIB, -(-(hi - lo) // BISECTION_STEPS) // (2 * MIB) * (2 * MIB))
        tries: list[int] = []

        def probe(job: Any) -> Any:
            tries.append(job["cap_bytes"])
            return self.backend.probe(job)

        context = self.backend.context_bytes()
        cap = min_device_cap(config, shape, case.request.dtype, op=case.op, lo=lo, hi=hi, step=step, probe=probe,
                             device=self.backend.device)
        measured = {"input_shape": list(shape), "min_device_bytes": cap, "cuda_context_bytes": context,
                    "base_allocated": m.base_bytes, "reserved_peak": m.reserved_peak_bytes,
                    "bisection_step_bytes": step, "probes": len(tries)}
        return Row(**_base(case, predicted=predicted, measured=measured, checks=(
            judge("min_device_bytes", est.min_device_bytes, cap, note=f"bisection step {human_bytes(step)}"),
            judge("cuda_context_bytes", CUDA_CONTEXT_BYTES, context))))

    def _tiling(self, case: Case) -> Row:
        from vaelens.tiling.plan import plan_tiling

        assert case.budget_bytes is not None
        est = self._estimate(case)
        plan = plan_tiling(case.spec, tuple(est.input_shape), case.request.dtype, case.budget_bytes, op="decode")
        predicted = plan_figures(plan)
        tiles = f"{plan.method}, {plan.tiles} tile{'s' if plan.tiles != 1 else ''}"
        if self.backend is None:
            return Row(**_base(case, predicted=predicted, checks=(
                judge("tiled_peak_bytes", case.budget_bytes, None),
                judge("tiled_plan_peak_bytes", plan.predicted_peak_bytes, None, note=tiles))))
        if (skip := self._skip_unfit(case, case.budget_bytes, predicted)) is not None:
            return skip

        def run() -> Row:
            m = self.backend.measure_tiled(case, plan)
            measured = {"input_shape": list(plan.input_shape), "output_shape": list(plan.output_shape),
                        "peak_allocated": m.peak_bytes, "seconds": m.seconds, "untiled_seconds": m.untiled_seconds,
                        "diffusers_tiling_seconds": m.diffusers_tiling_seconds, "psnr_db": m.psnr_db}
            return Row(**_base(case, predicted=predicted, measured=measured, checks=(
                judge("tiled_peak_bytes", case.budget_bytes, m.peak_bytes),
                judge("tiled_plan_peak_bytes", plan.predicted_peak_bytes, m.peak_bytes, note=tiles),
                judge("tiled_psnr_db", None, m.psnr_db, unit="dB", note=m.note),
                judge("tiled_seconds", predicted.get("predicted_seconds"), m.seconds, unit="seconds"),
                judge("untiled_seconds", predicted.get("untiled_seconds"), m.untiled_seconds, unit="seconds"),
                judge("diffusers_tiling_seconds", None, m.diffusers_tiling_seconds, unit="seconds"))))

        return self._measure(case, predicted, run)

    def _throughput(self, case: Case) -> Row:
        predicted = {"images": case.images, "size": [case.request.height, case.request.width]}
        what = f"{case.images} generated {case.request.width}x{case.request.height} JPEGs"
        if self.backend is None:
            return Row(**_base(case, predicted=predicted,
                               checks=(judge("cache_speedup", None, None, unit="x", note=what),)))

        def run() -> Row:
            m = self.backend.measure_throughput(case)
            measured = {"images": m.images, "cache_images_per_s": m.cache_images_per_s,
                        "naive_images_per_s": m.naive_images_per_s}
            speedup = m.cache_images_per_s / m.naive_images_per_s if m.naive_images_per_s > 0 else None
            return Row(**_base(case, predicted=predicted, measured=measured, checks=(
                judge("cache_speedup", None, speedup, unit="x",
                      note=f"{m.cache_images_per_s:.1f} vs {m.naive_images_per_s:.1f} images/s"),)))

        return self._measure(case, predicted, run)

    def _precision(self, case: Case) -> Row:
        from vaelens.validate.emulation import emulated

        dtype = case.request.dtype.value
        if self._emulation is None:
            self._emulation = emulated()
        if isinstance(self._emulation, str):
            return Row(**_base(case, skipped=self._emulation))
        first, db = self._emulation.get(dtype, (None, None))
        predicted = {"first_overflow": first, "psnr_db": db}
        first = NO_OVERFLOW if first is None else first
        if self.backend is None:
            return Row(**_base(case, predicted=predicted, checks=(
                judge("first_overflow", first, None, unit="layer"),
                judge("precision_psnr_db", db, None, unit="dB"))))

        def run() -> Row:
            m = self.backend.measure_precision(case)
            real_db = m.psnr_db if m.psnr_db is not None and math.isfinite(m.psnr_db) else None
            note = "" if real_db is not None or db is not None else "no finite output in either"
            return Row(**_base(case, predicted=predicted,
                               measured={"first_overflow": m.first_overflow, "psnr_db": real_db}, checks=(
                judge("first_overflow", first, NO_OVERFLOW if m.first_overflow is None else m.first_overflow,
                      unit="layer"),
                judge("precision_psnr_db", db, real_db if db is not None or real_db is not None else None,
                      unit="dB", note=note))))

        return self._measure(case, predicted, run)
