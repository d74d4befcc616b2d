"""The caching-allocator model under a cap: release of cached segments and retry, OOM, min_device_bytes.

Every expected number is worked by hand from c10/cuda/CUDACachingAllocator.cpp's rules: requests of
10 MiB or more get a segment of their size rounded up to 2 MiB; a failed segment allocation under
the cap releases every cached segment with no block in use (release_cached_blocks) and tries once
more; a segment with a block in use stays.
"""

from __future__ import annotations

import pytest

from vaelens.memory.allocator import CachingAllocator, OutOfMemory
from vaelens.memory.rules import Transient, exact
from vaelens.memory.simulate import Program, Step, fits_under, min_device_bytes, run

MIB = 2**20


def test_retry_releases_unused_cached_segments_then_succeeds():
    a = CachingAllocator(cap=64 * MIB)
    a.malloc("a", 30 * MIB)  # segment 30 MiB
    a.free("a")  # cached, whole segment free
    assert a.reserved == 30 * MIB and a.allocated == 0
    a.malloc("b", 40 * MIB)  # 30 + 40 > 64: release the 30 MiB segment, retry: 40 MiB
    assert (a.reserved, a.allocated, a.retries, a.released) == (40 * MIB, 40 * MIB, 1, 30 * MIB)
    with pytest.raises(OutOfMemory):
        a.malloc("c", 30 * MIB)  # 40 + 30 > 64 and nothing cached to release
    assert a.allocated == 40 * MIB and a.reserved == 40 * MIB and a.retries == 2


def test_split_segment_cannot_be_released():
    """A free tail of a segment whose head is in use stays reserved (release_blocks frees only
    blocks with no neighbours): fragmentation makes a request fail below allocated + request."""
    a = CachingAllocator(cap=64 * MIB)
    a.malloc("x", 40 * MIB)
    a.free("x")
    a.malloc("y", 12 * MIB)  # best fit: the cached 40 MiB block, split (28 MiB rest > 1 MiB)
    assert a.reserved == 40 * MIB and a.allocated == 12 * MIB
    with pytest.raises(OutOfMemory):
        a.malloc("z", 30 * MIB)  # 28 MiB tail too small; 40 + 30 > 64; the tail cannot be released
    b = CachingAllocator()  # no cap: a new segment
    b.malloc("x", 40 * MIB)
    b.free("x")
    b.malloc("y", 12 * MIB)
    b.malloc("z", 30 * MIB)
    assert b.reserved == 70 * MIB and b.reserved_peak == 70 * MIB


def test_small_requests_take_whole_segments_under_the_cap():
    """1-10 MiB requests get 20 MiB segments (kLargeBuffer): 3 MiB under a 20 MiB cap works once."""
    a = CachingAllocator(cap=20 * MIB)
    a.malloc("p", 3 * MIB)
    a.malloc("q", 3 * MIB)  # the same segment's free tail (17 MiB)
    assert a.reserved == 20 * MIB and a.allocated == 6 * MIB
    a.malloc("r", 14 * MIB)  # the rest of that segment: 14 MiB exactly
    with pytest.raises(OutOfMemory):
        a.malloc("s", 512)  # small pool: a new 2 MiB segment would pass the cap


def _program(temp: Transient) -> Program:
    """resident 10 MiB; one operator allocating 30 MiB with `temp` temporaries."""
    return Program(resident=(10 * MIB,), steps=(Step((), ((1, 30 * MIB),), temp),))


def test_run_reports_base_peak_and_reserved():
    out = run(_program(exact(20 * MIB)))
    assert out.base == 10 * MIB and out.peak == 50 * MIB  # output 30 + temporary 20
    assert out.reserved_peak == 60 * MIB  # weights' segment + 30 + 20


def test_min_device_bytes_by_hand():
    """10 (weights) + 30 (output) + 20 (temporary) at once: 60 MiB works, 58 MiB does not."""
    prog = _program(exact(20 * MIB))
    assert fits_under(prog, 60 * MIB) and not fits_under(prog, 58 * MIB)
    assert min_device_bytes(prog) == 60 * MIB


def test_cudnn_fallback_only_when_asked():
    """A workspace that does not fit: without cudnn_fallback an OOM; with it, the next engine (0 B)."""
    temp = Transient(best=20 * MIB, low=0, high=20 * MIB, fallback=0, uncertain="engine")
    prog = _program(temp)
    assert not fits_under(prog, 44 * MIB)
    assert fits_under(prog, 44 * MIB, cudnn_fallback=True)
    assert min_device_bytes(prog) == 60 * MIB
    assert min_device_bytes(prog, cudnn_fallback=True) == 40 * MIB
    assert run(prog, mode="low").peak == 30 * MIB and run(prog, mode="high").peak == 50 * MIB
