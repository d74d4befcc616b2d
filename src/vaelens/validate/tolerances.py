"""The one table of tolerances `vaelens validate` judges by (docs/validate.md states the same table; a test
checks that they agree), and the judging of one quantity.

quantity + predicted + measured (+ range, limit) -> Check (error, pass/fail, the tolerance as text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vaelens.options import Choice


class Rule(Choice):
    """How a predicted figure is compared with its measurement."""

    RELATIVE = "relative"  # |predicted / measured - 1| <= limit
    RANGE_OR_RELATIVE = "range_or_relative"  # low <= measured <= high, or RELATIVE
    AT_MOST = "at_most"  # measured <= predicted (a promise such as a budget)
    AT_LEAST = "at_least"  # measured >= limit
    EQUAL = "equal"  # the same value (a layer name)
    ABSOLUTE = "absolute"  # |predicted - measured| <= limit
    INFO = "info"  # shown, not judged


@dataclass(frozen=True, slots=True, kw_only=True)
class Tolerance:
    """One quantity's rule and limit, the sentence docs/validate.md uses, and why that limit."""

    quantity: str
    rule: Rule
    limit: float | None
    text: str
    why: str


# The memory figures (46 rows, 0.32%, 16.42%) are benchmarks/memory_accuracy.py's summary over
# shared/measurements/h100.jsonl and h100-large.jsonl, as the README's accuracy section prints it.
TOLERANCES: tuple[Tolerance, ...] = (
    Tolerance(quantity="peak_bytes", rule=Rule.RANGE_OR_RELATIVE, limit=0.02,
              text="measured inside the predicted low..high range, or the best estimate within 2%",
              why="the range brackets all 46 H100 rows of `shared/measurements/` and the best estimate is within "
                  "0.32% of each"),
    Tolerance(quantity="reserved_peak_bytes", rule=Rule.RELATIVE, limit=0.20,
              text="within 20%",
              why="max 16.42% on the same rows: what the caching allocator keeps depends on the process's history"),
    Tolerance(quantity="min_device_bytes", rule=Rule.RELATIVE, limit=0.10,
              text="within 10% of the smallest cap that ran (bisection step included)",
              why="never measured before `validate`; a budget verdict off by more than 10% would mislead"),
    Tolerance(quantity="cuda_context_bytes", rule=Rule.INFO, limit=None,
              text="shown: the documented typical figure against what this device holds beyond the allocator",
              why="a documented figure (512 MiB), not a prediction; it also counts other processes on the GPU"),
    Tolerance(quantity="tiled_peak_bytes", rule=Rule.AT_MOST, limit=None,
              text="measured allocated peak (weights and input included) at most the budget",
              why="the promise of `decode(..., budget=)`"),
    Tolerance(quantity="tiled_plan_peak_bytes", rule=Rule.INFO, limit=None,
              text="shown: the plan's predicted peak against the measured one",
              why="the plan prices each step; fragmentation across steps is not simulated"),
    Tolerance(quantity="tiled_psnr_db", rule=Rule.AT_LEAST, limit=60.0,
              text="at least 60 dB against the untiled decode (fp32, on the untiled output's range)",
              why="the exact tiler stays at or above 60 dB from the untiled call (`benchmarks/tiled_fidelity.py`)"),
    Tolerance(quantity="tiled_seconds", rule=Rule.INFO, limit=None,
              text="shown: budgeted time against the plan's prediction, untiled, and diffusers' enable_tiling()",
              why="time depends on the GPU; the device profile is a guess until measured"),
    Tolerance(quantity="untiled_seconds", rule=Rule.INFO, limit=None,
              text="shown: the untiled decode's time (the plan's prediction where it has one)",
              why="the reference the budgeted time is read against"),
    Tolerance(quantity="diffusers_tiling_seconds", rule=Rule.INFO, limit=None,
              text="shown: the same decode with diffusers' enable_tiling() (approximate, blended tiles)",
              why="what users run today instead of a budget"),
    Tolerance(quantity="cache_speedup", rule=Rule.AT_LEAST, limit=0.9,
              text="vaelens cache images/s at least 0.9x the naive loop's",
              why="the cache must not be slower than the loop it replaces; 10% for run-to-run noise"),
    Tolerance(quantity="first_overflow", rule=Rule.EQUAL, limit=None,
              text="the emulation names the same first overflowing layer as the real dtype (or none in both)",
              why="finding that layer without a GPU is what the emulation is for"),
    Tolerance(quantity="precision_psnr_db", rule=Rule.ABSOLUTE, limit=1.0,
              text="emulated PSNR within 1 dB of the real dtype's PSNR (both vs fp32)",
              why="the precision tests hold the emulation to 1 dB of real fp16/bf16"),
)

TOLERANCE = {t.quantity: t for t in TOLERANCES}


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One quantity of one row: predicted vs measured, the error and the verdict (None: not judged)."""

    quantity: str
    unit: str  # "bytes" | "seconds" | "dB" | "x" | "layer"
    predicted: Any
    measured: Any
    error: float | None  # predicted / measured - 1 ("bytes", "seconds"); predicted - measured ("dB")
    passed: bool | None
    low: Any = None  # the predicted range, where there is one
    high: Any = None
    note: str = ""

    @property
    def tolerance(self) -> Tolerance:
        return TOLERANCE[self.quantity]

    def to_json(self) -> dict[str, Any]:
        out = {"quantity": self.quantity, "unit": self.unit, "predicted": self.predicted, "measured": self.measured,
               "error": self.error, "pass": self.passed, "tolerance": self.tolerance.text}
        if self.low is not None:
            out.update(low=self.low, high=self.high)
        if self.note:
            out["note"] = self.note
        return out


def _relative(predicted: Any, measured: Any) -> float | None:
    if not isinstance(predicted, (int, float)) or not isinstance(measured, (int, float)) or not measured:
        return None
    return predicted / measured - 1


def judge(quantity: str, predicted: Any, measured: Any, *, unit: str = "bytes", low: Any = None, high: Any = None,
          note: str = "") -> Check:
    """One figure against TOLERANCE[quantity] -> Check. A measured None (not measured) is not judged.

    >>> judge("peak_bytes", 100, 101, low=99, high=103).passed
    True
    >>> c = judge("reserved_peak_bytes", 130, 100); round(c.error, 2), c.passed
    (0.3, False)
    """
    tol = TOLERANCE[quantity]
    if unit == "dB" or tol.rule is Rule.ABSOLUTE:
        if predicted is not None and predicted == measured:  # inf == inf: identical outputs in both
            error = 0.0
        else:
            error = (predicted - measured) if _finite(predicted) and _finite(measured) else None
    else:
        error = _relative(predicted, measured)
    passed: bool | None
    if measured is None or tol.rule is Rule.INFO:
        passed = None
    elif tol.rule is Rule.RELATIVE:
        passed = error is not None and abs(error) <= tol.limit
    elif tol.rule is Rule.RANGE_OR_RELATIVE:
        in_range = low is not None and high is not None and low <= measured <= high
        passed = in_range or (error is not None and abs(error) <= tol.limit)
    elif tol.rule is Rule.AT_MOST:
        passed = measured <= predicted
    elif tol.rule is Rule.AT_LEAST:
        passed = isinstance(measured, (int, float)) and not math.isnan(measured) and measured >= tol.limit
    elif tol.rule is Rule.EQUAL:
        passed = predicted == measured
    else:  # ABSOLUTE
        passed = error is not None and abs(error) <= tol.limit
    return Check(quantity=quantity, unit=unit, predicted=predicted, measured=measured, error=error,
                 passed=passed, low=low, high=high, note=note)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
