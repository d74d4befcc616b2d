"""The result of a validation run: one Row per case (its predictions, its measurements in the field names of
shared/measurements/*.jsonl, its judged Checks), and the report that holds them.

Row.to_record(env) is one line of the JSONL a user attaches to a bug report: a measurement-file row
(family, op, shape, dtype, input/output shapes and bytes, peak_above_base, base_allocated, reserved_peak,
seconds_median, torch, diffusers, gpu) with the section, the predictions and the verdicts beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vaelens.envinfo import Environment
from vaelens.validate.cases import Section
from vaelens.validate.tolerances import Check


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One case: what was predicted, what was measured, and each judged quantity."""

    section: Section
    label: str
    family: str
    op: str
    shape: tuple[int, ...]  # the pixels [B,3,(F,)H,W]
    dtype: str
    predicted: Mapping[str, Any] = field(default_factory=dict)
    measured: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    skipped: str | None = None  # why it did not run (does not fit this device, a missing feature)
    failure: str | None = None  # a measurement that could not be made (an error, counted as a fail)

    @property
    def passed(self) -> bool | None:
        """False: a check missed its tolerance or the measurement failed; None: nothing was judged."""
        if self.failure is not None:
            return False
        verdicts = [c.passed for c in self.checks if c.passed is not None]
        if self.skipped is not None or not verdicts:
            return None
        return all(verdicts)

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section.value, "label": self.label, "family": self.family, "op": self.op,
                "shape": list(self.shape), "dtype": self.dtype, "predicted": dict(self.predicted),
                "measured": dict(self.measured), "checks": [c.to_json() for c in self.checks],
                "pass": self.passed, "skipped": self.skipped, "failure": self.failure}

    def to_record(self, env: Environment, device_index: int = 0) -> dict[str, Any]:
        """-> one JSONL line in the format of shared/measurements/*.jsonl, plus the validation fields."""
        dev = env.device(device_index)
        record: dict[str, Any] = {"family": self.family, "op": self.op, "shape": list(self.shape),
                                  "dtype": self.dtype, **self.measured}
        record.update(torch=env.torch, diffusers=env.diffusers, gpu=dev.name if dev else None, cuda=env.cuda,
                      cudnn=env.cudnn, driver=env.driver, vaelens=env.vaelens, section=self.section.value,
                      predicted=dict(self.predicted), checks=[c.to_json() for c in self.checks],
                      skipped=self.skipped, failure=self.failure)
        record["pass"] = self.passed
        return record


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationReport:
    """A whole run: the environment, the rows in order, and the verdict."""

    environment: Environment
    device: str
    quick: bool
    dry_run: bool
    rows: tuple[Row, ...]
    seconds: float
    warnings: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.passed is False)

    @property
    def passed(self) -> bool:
        """True when no row missed its tolerance (skipped and unjudged rows do not fail a run)."""
        return not self.failed

    @property
    def exit_code(self) -> int:
        """0 when every judged row passes, 1 otherwise (the CLI's exit code)."""
        return 0 if self.passed else 1

    def to_json(self) -> dict[str, Any]:
        counts = {"rows": len(self.rows), "passed": sum(r.passed is True for r in self.rows),
                  "failed": len(self.failed), "skipped": sum(r.skipped is not None for r in self.rows)}
        return {"device": self.device, "quick": self.quick, "dry_run": self.dry_run, "pass": self.passed,
                "seconds": round(self.seconds, 2), "counts": counts, "environment": self.environment.to_json(),
                "rows": [r.to_json() for r in self.rows], "warnings": list(self.warnings)}
