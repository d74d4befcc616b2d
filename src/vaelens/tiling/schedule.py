"""Which buffers stay on the device: Belady's rule over the event sequence planning recorded.

events (vaelens.tiling.residency.Event) + buffer sizes and deaths + each event's working set + budget
-> Schedule: before each event, the buffers to spill and to fetch and whether a new tiled output is
written to the host; the exact bytes that will cross host <-> device per event; the host peak.

Before event j everything it needs whole (an operation run whole, a copying view, the returned tensors)
is fetched. If weights + working set + resident buffers exceed the budget, the buffer whose next use is
farthest away goes to the host (Belady's optimal rule: the future is known from planning). A tiled
event reads a buffer left on the host tile by tile (its halos included) and may write its output there
tile by tile; a host input is fetched whole only where it fits without evicting anything.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from vaelens.tiling.residency import Decision, Event

_NEVER = 1 << 60


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """The decisions of one run and what they cost (bytes)."""

    decisions: tuple[Decision, ...]
    h2d: tuple[int, ...]  # per event
    d2h: tuple[int, ...]
    host_bytes: int  # peak of spilled-and-live host bytes
    device_peak: int  # weights + resident buffers + working set, largest over events
    need: int  # the smallest budget this sequence can run in (everything possible on the host)
    feasible: bool

    @property
    def transfer_bytes(self) -> int:
        return sum(self.h2d) + sum(self.d2h)


def schedule(events: Sequence[Event], sizes: Sequence[int], deaths: Sequence[int | None],
             working: Sequence[int], fixed: int, budget: int) -> Schedule:
    """Belady residency for `events` under `budget` (see the module docstring). `fixed` is what stays
    on the device throughout (weights); `working[j]` the largest tile's device bytes of event j."""
    uses: dict[int, list[int]] = {}
    for j, ev in enumerate(events):
        for b in ev.uses:
            uses.setdefault(b, []).append(j)
        if ev.out is not None and ev.out not in ev.new:
            uses.setdefault(ev.out, []).append(j)
    gone: dict[int, list[int]] = {}
    for b, d in enumerate(deaths):
        if d is not None:
            gone.setdefault(d, []).append(b)

    def next_use(b: int, j: int) -> int:
        us = uses.get(b, ())
        i = bisect.bisect_right(us, j)
        return us[i] if i < len(us) else _NEVER

    loc: dict[int, bool] = {}  # alive buffer -> on the host
    host_live = host_peak = device_peak = need = 0
    feasible = True
    decisions, h2d_all, d2h_all = [], [], []
    for j, ev in enumerate(events):
        for b in gone.get(j, ()):
            if loc.pop(b, False):
                host_live -= sizes[b]
        new_out = ev.out if (ev.kind == "tiled" and ev.out in ev.new) else None
        for b in ev.new:
            if b != new_out:
                loc[b] = False
        must = set(ev.required) | {b for b in ev.new if b != new_out}
        cap = budget - fixed - working[j]
        need = max(need, fixed + working[j] + sum(sizes[b] for b in must))
        h2d = d2h = 0
        spill: list[int] = []
        fetch: list[int] = []
        for b in sorted(must):
            if loc.get(b):
                loc[b] = False
                fetch.append(b)
                h2d += sizes[b]
                host_live -= sizes[b]
        resident = [b for b, h in loc.items() if not h]
        total = sum(sizes[b] for b in resident)
        out_host = False
        if new_out is not None:
            total += sizes[new_out]
            resident.append(new_out)
        if total > cap:
            order = sorted((b for b in resident if b not in must),
                           key=lambda b: (next_use(b, j - 1 if b in ev.uses else j), b != new_out, sizes[b]),
                           reverse=True)
            for b in order:
                if total <= cap:
                    break
                total -= sizes[b]
                if b == new_out:
                    out_host = True
                else:
                    loc[b] = True
                    spill.append(b)
                    d2h += sizes[b]
                    host_live += sizes[b]
            if total > cap:
                feasible = False
        if new_out is not None:
            loc[new_out] = out_host
            if out_host:
                host_live += sizes[new_out]
        for b in sorted((b for b in ev.uses if loc.get(b)), key=lambda b: next_use(b, j)):
            if b not in spill and total + sizes[b] <= cap:  # a host input fetched whole: only into free room
                loc[b] = False
                fetch.append(b)
                h2d += sizes[b]
                host_live -= sizes[b]
                total += sizes[b]
        h2d += sum(n for b, n in ev.uses.items() if loc.get(b))
        if ev.out is not None and loc.get(ev.out):
            d2h += ev.out_bytes
        host_peak = max(host_peak, host_live)
        device_peak = max(device_peak, fixed + working[j] + total)
        decisions.append(Decision(spill=tuple(spill), fetch=tuple(fetch), out_host=out_host))
        h2d_all.append(h2d)
        d2h_all.append(d2h)
    return Schedule(decisions=tuple(decisions), h2d=tuple(h2d_all), d2h=tuple(d2h_all), host_bytes=host_peak,
                    device_peak=device_peak, need=need, feasible=feasible)
