"""RAM on a CPU-only run: what the process holds (RSS and its peak), what the machine can give, and the C
allocator settings that make freed tensors leave RSS.

On a CPU the tiling "device" and "host" are the same RAM, so a budgeted run bounds RAM only if (1) freed
tensor memory goes back to the system and (2) the spilled side (`host_bytes`) either fits in RAM beside
the budget or goes to memory-mapped files. (1) is glibc's business: PyTorch's CPU allocator
(c10/core/impl/alloc_cpu.cpp) is posix_memalign/free with no cache, and glibc serves a request of at
least M_MMAP_THRESHOLD with its own mmap (returned to the system at free) and smaller ones from heaps
that it trims only from the top. The threshold is *dynamic* by default (glibc malloc/malloc.c,
"M_MMAP_THRESHOLD ... dynamic"): each freed mmapped chunk raises it to that chunk's size, up to 32 MiB
(DEFAULT_MMAP_THRESHOLD_MAX on 64-bit), so after the first few frees every tile-sized tensor comes from
a heap, and heap holes between live tiles stay in RSS. Fixing the threshold (`mallopt`, which also
turns the dynamic rule off) keeps every tensor above it in its own mapping.

    rss_bytes() / peak_rss_bytes() / reset_peak_rss()   this process (Linux /proc/self)
    available_ram_bytes()                               MemAvailable, capped by a cgroup memory limit
    bound_malloc()                                      the glibc settings above (once per process)
    host_policy(plan, ...)                              where a run's spilled maps go (RAM or files), or why not
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelens.errors import BudgetError

# glibc malloc.h parameter numbers (M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Tensors at or above this size get their own mmap and leave RSS when freed. glibc's initial (static)
# threshold is 128 KiB (DEFAULT_MMAP_THRESHOLD_MIN in glibc malloc/malloc.c); keeping it there only turns
# the dynamic raise off. Smaller tensors (GroupNorm statistics, scalars) stay on the heap.
MMAP_THRESHOLD = 128 * 1024
# Heap tops above this are returned at free (glibc's default, DEFAULT_TRIM_THRESHOLD, is also 128 KiB
# but the dynamic rule doubles it with the mmap threshold; setting it explicitly pins it).
TRIM_THRESHOLD = 128 * 1024

_PROC = Path("/proc/self")
_MALLOC: dict[str, bool] = {}


def _status(field: str) -> int | None:
    try:
        for line in (_PROC / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """-> this process's resident set (VmRSS) in bytes; None where /proc is not there."""
    return _status("VmRSS")


def peak_rss_bytes() -> int | None:
    """-> this process's peak resident set since start or the last reset_peak_rss() (VmHWM); None without /proc."""
    return _status("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: `echo 5 > /proc/self/clear_refs`) -> False where not allowed."""
    try:
        (_PROC / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cgroup_free() -> int | None:
    """bytes the process's cgroup (v2, else v1) may still charge; None without a limit."""
    try:
        rel = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in rel:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0":  # v2: memory.max / memory.current
            base = Path("/sys/fs/cgroup") / parts[2].lstrip("/")
            limit, used = base / "memory.max", base / "memory.current"
        elif "memory" in parts[1].split(","):
            base = Path("/sys/fs/cgroup/memory") / parts[2].lstrip("/")
            limit, used = base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"
        else:
            continue
        try:
            lim = limit.read_text().strip()
            if lim == "max" or int(lim) >= 1 << 60:
                return None
            return max(0, int(lim) - int(used.read_text().strip()))
        except (OSError, ValueError):
            return None
    return None


def available_ram_bytes() -> int | None:
    """-> bytes this process can still take without swapping: /proc/meminfo MemAvailable, capped by the
    free part of a cgroup memory limit; None where neither can be read."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    cg = _cgroup_free()
    if cg is not None:
        avail = cg if avail is None else min(avail, cg)
    return avail


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if os.name != "posix" or name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.gnu_get_libc_version  # noqa: B018  (glibc only; musl and macOS lack mallopt or ignore it)
    except (OSError, AttributeError):
        return None
    return libc


def bound_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module docstring) and give free heap memory back ->
    True where that took effect (glibc), False elsewhere (then RSS may keep freed tensors). Idempotent."""
    if "ok" not in _MALLOC:
        libc = _libc()
        ok = libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        _MALLOC["ok"] = ok
    if _MALLOC["ok"]:
        trim()
    return _MALLOC["ok"]


def trim() -> None:
    """Return free heap memory to the system (glibc malloc_trim(0)); nothing elsewhere."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class RamPolicy:
    """Where a run's spilled maps go: memory-mapped files in `spill_dir`, or RAM (`spill_dir` None); the RAM
    the run may hold (`ram_bytes`: on a CPU the budget, plus host_bytes while they stay in RAM); one-line
    `warnings` (a bound this platform cannot keep)."""

    spill_dir: Path | None
    ram_bytes: int
    available_bytes: int | None
    warnings: tuple[str, ...] = ()


def host_policy(plan: Any, *, cpu: bool, spill_dir: str | Path | None = None,
                available: int | None = None) -> RamPolicy:
    """A tiled plan (budget_bytes, host_bytes, predicted_peak_bytes) -> where its spilled maps go.

    They stay in RAM while the RAM side fits what is available (on a CPU the budget's resident side is RAM
    too: budget + host_bytes; on a GPU host_bytes); otherwise they go to memory-mapped files in `spill_dir`
    (the output's folder where the caller has one; default the system temporary folder). On a CPU, a
    resident side larger than the available RAM cannot be honoured even with the disk: BudgetError.
    `available` overrides available_ram_bytes() (tests)."""
    import tempfile

    from vaelens.units import human_bytes

    avail = available_ram_bytes() if available is None else available
    budget, host = int(plan.budget_bytes), int(plan.host_bytes)
    resident = int(plan.predicted_peak_bytes) if cpu else 0
    warnings: list[str] = []
    if cpu and not bound_malloc():
        warnings.append(f"budget={human_bytes(budget)} bounds live tensors, not RSS, on this platform "
                        "(no glibc mallopt: freed memory may stay with the process)")
    if avail is not None and resident > avail:
        raise BudgetError(f"budget={human_bytes(budget)} cannot be honoured on this CPU: the run holds up to "
                          f"{human_bytes(resident)} in RAM and {human_bytes(avail)} is available; give a "
                          "smaller budget", param="budget", value=budget, needed_bytes=None)
    own = budget if cpu else 0
    if host == 0 or avail is None or own + host <= avail:
        return RamPolicy(spill_dir=None, ram_bytes=own + host, available_bytes=avail, warnings=tuple(warnings))
    where = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    return RamPolicy(spill_dir=where, ram_bytes=own, available_bytes=avail, warnings=tuple(warnings))


_MADV_DONTNEED = 4  # linux/mman.h
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def drop_pages(host: Any, file: Any, *, sync: bool = False) -> None:
    """A tensor memory-mapped from `file` (torch.from_file, MAP_SHARED) -> its pages unmapped from this
    process (madvise MADV_DONTNEED keeps a shared file mapping's data in the file and page cache, and takes
    it out of RSS); `sync`: first written back (fdatasync), then dropped from the page cache
    (posix_fadvise DONTNEED), so the spilled data stops taking RAM at all. Nothing where unsupported."""
    libc = _libc()
    addr, n = host.data_ptr(), host.numel() * host.element_size()
    start = addr - addr % _PAGE
    if libc is not None and n:  # unmapped first: the page cache cannot drop pages a process still maps
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(addr + n - start), _MADV_DONTNEED)
    if sync:
        try:
            os.fdatasync(file.fileno())
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass
