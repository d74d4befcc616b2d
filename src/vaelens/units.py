"""Bytes in and out: parse a memory size a user wrote, and show a byte count. The bottom of the package
(imports only errors), so the memory model, the planners and the renderers can all use it.

The rule for sizes: decimal units are powers of 1000 and binary units powers of 1024, each spelled in full
(KB MB GB TB = 10^3 10^6 10^9 10^12; KiB MiB GiB TiB = 2^10 2^20 2^30 2^40). A bare K/M/G/T is refused as
ambiguous (`8G` is 8·10^9 to a disk vendor and 8·2^30 to most GPU tools); a bare number is refused too.
"""

from __future__ import annotations

import math
import re

from vaelens.errors import BudgetError

DECIMAL = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15}
BINARY = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}
_UNITS = {**DECIMAL, **BINARY}
UNIT_NAMES = ("B", "KB", "MB", "GB", "TB", "PB", "KiB", "MiB", "GiB", "TiB", "PiB")

# The largest budget taken: far above any device (an 8-GPU node holds ~1.5 TiB), low enough that a typo such as
# 1e30GiB is caught instead of printed as a 27-digit number of TiB.
MAX_BUDGET_BYTES = 2**50

SIZE_RULE = "GB = 10^9 bytes, GiB = 2^30 bytes (same for K, M, T); a bare G is refused as ambiguous"


def parse_bytes(text: str, *, param: str = "budget") -> int:
    """'8GiB' | '24 GB' | '512MiB' | '1e9B' -> bytes, between 1 and MAX_BUDGET_BYTES (1 PiB).

    >>> parse_bytes("8GiB"), parse_bytes("8GB")
    (8589934592, 8000000000)
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m and unit in ("k", "m", "g", "t", "p"):
        n = m.group(1)
        raise BudgetError(f"{param} {text!r} is ambiguous; write {n}{unit.upper()}iB ({unit.upper()}iB = "
                          f"2^{10 * ' kmgtp'.index(unit)} bytes) or {n}{unit.upper()}B "
                          f"({unit.upper()}B = 10^{3 * ' kmgtp'.index(unit)} bytes)", param=param, value=text)
    if not m or (m.group(2) and unit not in _UNITS):
        raise BudgetError(f"{param} {text!r} is not a size; write e.g. 8GiB, 24GB or 512MiB "
                          f"(units: {', '.join(UNIT_NAMES)})", param=param, value=text)
    if not m.group(2):  # '8' is almost never 8 bytes: a unit is required (B for bytes)
        raise BudgetError(f"{param} {text!r} has no unit; write e.g. {m.group(1)}GiB or {m.group(1)}GB "
                          f"({m.group(1)}B for bytes)", param=param, value=text)
    number = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(number) or number > MAX_BUDGET_BYTES:
        raise BudgetError(f"{param} {text!r} is above vaelens' limit of 1 PiB; write e.g. 8GiB or 80GB",
                          param=param, value=text)
    value = int(number)
    if value <= 0:
        raise BudgetError(f"{param} {text!r} must be more than 0 bytes", param=param, value=text)
    return value


def budget_bytes(budget: int | str, *, param: str = "budget") -> int:
    """A budget as bytes or as a size string ('8GiB') -> bytes, checked like parse_bytes (1 B .. 1 PiB).

    >>> budget_bytes(1024), budget_bytes("1KiB")
    (1024, 1024)
    """
    if isinstance(budget, str):
        return parse_bytes(budget, param=param)
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise BudgetError(f"{param} {budget!r} is neither a number of bytes nor a size such as '8GiB'",
                          param=param, value=budget)
    if not 0 < budget <= MAX_BUDGET_BYTES:
        raise BudgetError(f"{param} {budget} must be between 1 byte and 1 PiB ({MAX_BUDGET_BYTES} bytes)",
                          param=param, value=budget)
    return int(budget)


def human_bytes(n: float) -> str:
    """bytes -> '1.50 GiB' (binary units, as GPU tools report memory).

    >>> human_bytes(4 * 1024**2)
    '4.00 MiB'
    """
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, i = float(n), 0
    while abs(value) >= 1024 and i < len(units) - 1:
        value, i = value / 1024, i + 1
    return f"{int(value)} B" if i == 0 else f"{value:.2f} {units[i]}"
