"""Which buffers stay on the device: Belady's rule over the event sequence planning recorded.

events (vaelens.tiling.residency.Event) + buffer sizes and deaths + each event's working set + budget
-> Schedule: before each event, the buffers to spill and to fetch and whether a new tiled output is
written to the host; the exact bytes that will cross host <-> device per event; the host peak.

A buffer Python still holds but no later event reads is dropped: its memory is freed and its data copied
nowhere (the input of an up block, held by the caller's variable while the block runs). Before event j
everything it needs whole (an operation run whole, a copying view, the returned tensors)
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The choices Belady's rule leaves open; the planner tries each and keeps the fastest schedule.

    `out_first`: between buffers next used at the same event, a new tiled output goes to the host before
    a resident buffer is spilled. `lookahead`: where a tiled event could fetch a host input whole (rather
    than stream it tile by tile) at the price of sending its new output to the host, both are played out to
    the end of the run (the rest with the plain rule) and the one that moves fewer bytes is kept — e.g. a
    ResNet block's input brought back once so that the blocks after it keep it on the device."""

    out_first: bool = False
    lookahead: bool = False


POLICIES = (Policy(), Policy(out_first=True), Policy(lookahead=True), Policy(out_first=True, lookahead=True))


class _Run:
    """The schedule's state while it walks the events: where each live buffer is, and what it cost."""

    def __init__(self, events: Sequence[Event], sizes: Sequence[int], deaths: Sequence[int | None],
                 working: Sequence[int], fixed: int, budget: int, policy: Policy) -> None:
        self.events, self.sizes, self.working, self.fixed, self.budget = events, sizes, working, fixed, budget
        self.policy = policy
        self.uses: dict[int, list[int]] = {}
        for j, ev in enumerate(events):
            for b in ev.uses:
                self.uses.setdefault(b, []).append(j)
            if ev.out is not None and ev.out not in ev.new:
                self.uses.setdefault(ev.out, []).append(j)
        self.gone: dict[int, list[int]] = {}
        for b, d in enumerate(deaths):
            if d is not None:
                self.gone.setdefault(d, []).append(b)
        self.loc: dict[int, bool] = {}  # alive buffer -> on the host
        self.host_live = self.host_peak = self.device_peak = self.need = self.moved = 0
        self.feasible = True
        self.decisions: list[Decision] = []
        self.h2d: list[int] = []
        self.d2h: list[int] = []

    def copy(self) -> _Run:
        c = object.__new__(_Run)
        c.__dict__.update(self.__dict__)
        c.loc = dict(self.loc)
        c.decisions, c.h2d, c.d2h = [], [], []  # a rollout keeps totals only
        return c

    def next_use(self, b: int, j: int) -> int:
        us = self.uses.get(b, ())
        i = bisect.bisect_right(us, j)
        return us[i] if i < len(us) else _NEVER

    def candidates(self, j: int) -> set[int]:
        """Host inputs event j would stream in full: fetching each whole instead is the open choice."""
        ev = self.events[j]
        return {b for b, n in ev.uses.items() if self.loc.get(b) and n >= self.sizes[b] and b not in ev.required}

    def step(self, j: int, wanted: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        """Event j: drop, fetch what it needs whole (and `wanted`), spill farthest-next-use first, place its
        new output, stream the rest; record the decision and its bytes."""
        ev, sizes, loc = self.events[j], self.sizes, self.loc
        for b in self.gone.get(j, ()):
            if loc.pop(b, False):
                self.host_live -= sizes[b]
        drop: list[int] = []
        for b in [b for b in loc if b not in ev.uses and self.next_use(b, j - 1) == _NEVER]:
            # alive (Python holds it) but never read again: its memory is freed, its data copied nowhere
            if loc.pop(b):
                self.host_live -= sizes[b]
            drop.append(b)
        new_out = ev.out if (ev.kind == "tiled" and ev.out in ev.new) else None
        for b in ev.new:
            if b != new_out:
                loc[b] = False
        must = set(ev.required) | {b for b in ev.new if b != new_out}
        cap = self.budget - self.fixed - self.working[j]
        self.need = max(self.need, self.fixed + self.working[j] + sum(sizes[b] for b in must))
        if wanted and self.fixed + self.working[j] + sum(sizes[b] for b in must | wanted) <= self.budget:
            must |= wanted
        h2d = d2h = 0
        spill: list[int] = []
        fetch: list[int] = []
        for b in sorted(must):
            if loc.get(b):
                loc[b] = False
                fetch.append(b)
                h2d += sizes[b]
                self.host_live -= sizes[b]
        resident = [b for b, h in loc.items() if not h]
        total = sum(sizes[b] for b in resident)
        out_host = False
        if new_out is not None:
            total += sizes[new_out]
            resident.append(new_out)
        if total > cap:
            order = sorted((b for b in resident if b not in must),
                           key=lambda b: (self.next_use(b, j - 1 if b in ev.uses else j),
                                          (b == new_out) == self.policy.out_first, sizes[b]),
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
                    self.host_live += sizes[b]
            if total > cap:
                self.feasible = False
        if new_out is not None:
            loc[new_out] = out_host
            if out_host:
                self.host_live += sizes[new_out]
        for b in sorted((b for b in ev.uses if loc.get(b)), key=lambda b: self.next_use(b, j)):
            if b not in spill and total + sizes[b] <= cap:  # a host input fetched whole: only into free room
                loc[b] = False
                fetch.append(b)
                h2d += sizes[b]
                self.host_live -= sizes[b]
                total += sizes[b]
        h2d += sum(n for b, n in ev.uses.items() if loc.get(b))
        if ev.out is not None and loc.get(ev.out):
            d2h += ev.out_bytes
        # the run spills before it fetches (device room first): the fetched copies were still on the host
        self.host_peak = max(self.host_peak, self.host_live + sum(sizes[b] for b in fetch))
        self.device_peak = max(self.device_peak, self.fixed + self.working[j] + total)
        self.moved += h2d + d2h
        self.decisions.append(Decision(spill=tuple(spill), fetch=tuple(fetch), out_host=out_host, drop=tuple(drop)))
        self.h2d.append(h2d)
        self.d2h.append(d2h)

    def rollout(self, j: int, wanted: set[int]) -> tuple[bool, int, int]:
        """Event j with `wanted` fetched, the rest with the plain rule -> (infeasible, bytes moved, host peak)."""
        c = self.copy()
        c.step(j, wanted)
        for k in range(j + 1, len(self.events)):
            c.step(k)
        return not c.feasible, c.moved, c.host_peak


def schedule(events: Sequence[Event], sizes: Sequence[int], deaths: Sequence[int | None],
             working: Sequence[int], fixed: int, budget: int, policy: Policy = Policy()) -> Schedule:
    """Belady residency for `events` under `budget` (see the module docstring). `fixed` is what stays
    on the device throughout (weights); `working[j]` the largest tile's device bytes of event j."""
    run = _Run(events, sizes, deaths, working, fixed, budget, policy)
    for j in range(len(events)):
        wanted = run.candidates(j) if policy.lookahead else set()
        if wanted and run.rollout(j, wanted) >= run.rollout(j, set()):
            wanted = set()
        run.step(j, wanted)
    return Schedule(decisions=tuple(run.decisions), h2d=tuple(run.h2d), d2h=tuple(run.d2h), host_bytes=run.host_peak,
                    device_peak=run.device_peak, need=run.need, feasible=run.feasible)
