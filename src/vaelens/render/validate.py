"""`vaelens validate`: the table (a line per judged quantity, grouped by section), the JSON, the JSONL rows.

ValidationReport -> render_validation (text) | validation_json (dict) | validation_jsonl (one line per row,
in the format of shared/measurements/*.jsonl with the predictions and verdicts beside the measurements).
"""

from __future__ import annotations

import json
import math
from typing import Any

from vaelens.render.env import render_environment
from vaelens.render.tables import human_bytes, table
from vaelens.validate.cases import Section
from vaelens.validate.rows import Row, ValidationReport
from vaelens.validate.tolerances import Check, Rule

TITLES = {
    Section.PEAK: "Peaks: allocated above the base (predicted range low..high) and reserved",
    Section.DEVICE_MIN: "Device minimum: smallest memory-fraction cap that ran (fresh process per try)",
    Section.TILING: "Tiling: a budgeted exact decode",
    Section.THROUGHPUT: "Throughput: vaelens cache vs a naive loop",
    Section.PRECISION: "Precision: emulated fp16/bf16 vs the real dtype",
}
SHORT = {"peak_bytes": "peak", "reserved_peak_bytes": "reserved", "min_device_bytes": "device min",
         "cuda_context_bytes": "CUDA context", "tiled_peak_bytes": "peak vs budget",
         "tiled_plan_peak_bytes": "peak vs plan", "tiled_psnr_db": "PSNR vs untiled", "tiled_seconds": "time",
         "untiled_seconds": "untiled time", "diffusers_tiling_seconds": "enable_tiling() time",
         "cache_speedup": "speed-up", "first_overflow": "first overflow", "precision_psnr_db": "PSNR vs fp32"}


def _value(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "bytes":
        return human_bytes(v)
    if unit == "seconds":
        return f"{v:.3f} s"
    if unit == "dB":
        return "identical" if v == math.inf else f"{v:.1f} dB"
    if unit == "x":
        return f"{v:.2f}×"
    return str(v)


def _predicted(c: Check) -> str:
    text = _value(c.predicted, c.unit)
    if c.low is not None and c.low != c.high:
        text += f" ({_value(c.low, c.unit)}–{_value(c.high, c.unit)})"
    return text


def _error(c: Check) -> str:
    if c.error is None:
        return ""
    return f"{c.error:+.1f} dB" if c.unit == "dB" else f"{c.error:+.2%}"


def _tolerance(c: Check) -> str:
    t = c.tolerance
    return {Rule.RELATIVE: lambda: f"±{t.limit:.0%}", Rule.RANGE_OR_RELATIVE: lambda: f"range or ±{t.limit:.0%}",
            Rule.AT_MOST: lambda: "≤ budget", Rule.AT_LEAST: lambda: f"≥ {_value(t.limit, c.unit)}",
            Rule.EQUAL: lambda: "same", Rule.ABSOLUTE: lambda: f"±{_value(t.limit, c.unit)}",
            Rule.INFO: lambda: "info"}[t.rule]()


def _verdict(passed: bool | None, rule: Rule) -> str:
    if passed is None:
        return "info" if rule is Rule.INFO else "-"
    return "pass" if passed else "FAIL"


def _lines(row: Row, dry_run: bool) -> list[list[str]]:
    """One table line per check; a skipped or failed row is one line whose last column says why."""
    if row.skipped is not None or row.failure is not None:
        why = f"skipped: {row.skipped}" if row.skipped is not None else f"FAIL: {row.failure}"
        return [[row.label, "-", "-"] + ([] if dry_run else ["-", "", ""]) + [why]]
    out = []
    for i, c in enumerate(row.checks):
        line = [row.label if i == 0 else "", SHORT.get(c.quantity, c.quantity), _predicted(c)]
        if not dry_run:
            line += [_value(c.measured, c.unit), _error(c), _tolerance(c)]
        note = f" ({c.note})" if c.note else ""
        line.append((_tolerance(c) if dry_run else _verdict(c.passed, c.tolerance.rule)) + note)
        out.append(line)
    return out


def _summary(rep: ValidationReport) -> str:
    dev = rep.environment.device(_index(rep.device))
    where = f"{rep.device} ({dev.name})" if dev else rep.device
    if rep.dry_run:
        n = len(rep.rows)
        return (f"vaelens validate --dry-run: {n} case{'s' if n != 1 else ''} would run on {where}; "
                "predictions only, nothing measured")
    passed = sum(r.passed is True for r in rep.rows)
    skipped = sum(r.skipped is not None for r in rep.rows)
    verdict = "PASS" if rep.passed else "FAIL"
    return (f"vaelens validate on {where}: {verdict} — {len(rep.rows)} rows, {passed} pass, {len(rep.failed)} fail, "
            f"{skipped} skipped, {rep.seconds:.0f} s{' (quick)' if rep.quick else ''}")


def _index(device: str) -> int:
    _, _, n = device.partition(":")
    return int(n) if n.isdigit() else 0


def render_validation(rep: ValidationReport) -> str:
    """ValidationReport -> the environment block, then one table per section, then the verdict line."""
    parts = [_summary(rep), "", render_environment(rep.environment)]
    headers = ["case", "quantity", "predicted"] + (["tolerance"] if rep.dry_run else
                                                   ["measured", "error", "tolerance", "result"])
    for section in Section:
        rows = [r for r in rep.rows if r.section is section]
        if not rows:
            continue
        lines = [line for r in rows for line in _lines(r, rep.dry_run)]
        parts += ["", TITLES[section], table(headers, lines, right=(2,) if rep.dry_run else (2, 3, 4))]
    parts += [""] + [f"warning: {w}" for w in rep.warnings]
    if not rep.dry_run:
        failed = ", ".join(r.label for r in rep.failed)
        parts.append(f"{'all judged rows pass' if rep.passed else 'missed a tolerance: ' + failed}. Tolerances: "
                     "docs/validate.md. Attach the JSONL (-o DIR) to a bug report.")
    return "\n".join(parts).rstrip() + "\n"


def validation_json(rep: ValidationReport) -> dict[str, Any]:
    """`vaelens validate --json`."""
    return rep.to_json()


def validation_jsonl(rep: ValidationReport) -> str:
    """Every row as one JSON line (Row.to_record): the file to attach to a bug report."""
    index = _index(rep.device)
    return "".join(json.dumps(_finite(r.to_record(rep.environment, index)), allow_nan=False) + "\n"
                   for r in rep.rows)


def _finite(data: Any) -> Any:
    """NaN / ±inf are not JSON: null (an identical tiled output has PSNR inf; `error` says 0 then)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data
