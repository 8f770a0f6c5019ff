"""Capacity search inside one run: how far a configuration goes before it breaks its SLO.

The coordinator moves one load level — the open-model arrival rate, messages per second over all senders — and
judges each step on what arrived during it (interval HDR histograms of delivery latency, losses, send-queue
closes, missed send slots, the generator's own health). The search brackets (×``growth`` until a step fails),
bisects to ``resolution``, then holds the level found for ``confirm_s``. Nothing restarts between steps: the
senders read the level at every slot (:class:`drivers.schedule.LiveSchedule`).

The answer names its limit: the highest level that held, the first that failed and why. When the generator, not
the server, broke first (it missed send slots, its CPU or event loop saturated), the answer is *generator-bound
at X*, not a server capacity, and the run is invalid.

    --capacity 'p99<200ms,lost=0'      the SLO; clauses: p50/p90/p99/p999 <N ms, lost=N, closes=N
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

_CLAUSE: Final = re.compile(r"^\s*(p50|p90|p99|p999|lost|closes)\s*(<=|<|=)\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)?\s*$")
_PERCENTILE: Final = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


@dataclass(frozen=True)
class Slo:
    """Latency ceilings (ms, by percentile) and allowances (lost deliveries, send-queue closes) per step."""

    text: str
    latency_ms: dict[str, float]
    lost: int = 0
    closes: int = 0

    @classmethod
    def parse(cls, text: str) -> Slo:
        latency: dict[str, float] = {}
        counts = {"lost": 0, "closes": 0}
        if not text.strip():
            raise ValueError("empty SLO: give e.g. 'p99<200ms,lost=0'")
        for part in text.split(","):
            m = _CLAUSE.match(part)
            if m is None:
                raise ValueError(f"SLO clause {part.strip()!r}: expected p50|p90|p99|p999<N[ms|s], lost=N or "
                                 "closes=N")
            name, op, value, unit = m.groups()
            if name in _PERCENTILE:
                if op == "=":
                    raise ValueError(f"SLO clause {part.strip()!r}: a latency takes < or <=")
                latency[name] = float(value) * (1000.0 if unit == "s" else 1.0)
            else:
                if unit is not None or op != "=" or not float(value).is_integer():
                    raise ValueError(f"SLO clause {part.strip()!r}: {name} takes =N (a whole count)")
                counts[name] = int(float(value))
        return cls(text.strip(), latency, counts["lost"], counts["closes"])


@dataclass
class Step:
    """One level held and judged."""

    level: float
    phase: str  # bracket, bisect, retry (a failed step held again), confirm
    latency_ms: dict[str, float] = field(default_factory=dict)
    deliveries: int = 0
    lost: int = 0
    closes: int = 0
    missed_slots: int = 0
    sent: int = 0
    generator_cpu: float = 0.0
    generator_lag_ms: float = 0.0
    server_cpu: float | None = None
    #: the server's CPU per message it accepted in the step (ms): a cost that grows over a search at similar
    #: levels is the server's state growing (a table), and the answer depends on when it was confirmed
    server_ms_per_message: float | None = None
    server_p99_ms: float | None = None  # the server's own accept → socket write p99 (bucket bound) in the step
    failures: list[str] = field(default_factory=list)  # SLO clauses broken (empty: held)
    generator_limits: list[str] = field(default_factory=list)  # why the generator was the limit (empty: it wasn't)
    drain_s: float | None = None  # after a failure: seconds at level 0 until the server was quiet (None: not waited)

    @property
    def held(self) -> bool:
        return not self.failures and not self.generator_limits

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "phase": self.phase, "held": self.held, "latency_ms": self.latency_ms,
                "deliveries": self.deliveries, "lost": self.lost, "closes": self.closes,
                "missed_slots": self.missed_slots, "sent": self.sent, "generator_cpu": self.generator_cpu,
                "generator_lag_ms": self.generator_lag_ms, "server_cpu": self.server_cpu,
                "server_ms_per_message": self.server_ms_per_message,
                "server_p99_ms": self.server_p99_ms,
                "failures": self.failures, "generator_limits": self.generator_limits, "drain_s": self.drain_s}


#: a generator lag under this fraction of a latency ceiling is within a step's resolution (see judge)
LAG_MATERIAL: Final = 0.1


def judge(step: Step, slo: Slo, cpu_limit: float, lag_limit_ms: float) -> None:
    """Fill ``step.failures`` (the SLO) and ``step.generator_limits`` (the generator's own health)."""
    for name, ceiling in slo.latency_ms.items():
        value = step.latency_ms.get(name)
        if value is not None and value >= ceiling:
            step.failures.append(f"latency {name} {value:.1f} ms ≥ {ceiling:g} ms")
    if step.sent == 0:  # nothing to judge: the level is below what a step can measure, or the senders stalled
        step.generator_limits.append("nothing was sent during the step")
    elif step.deliveries == 0:
        step.failures.append("no delivery arrived")
    if step.lost > slo.lost:
        step.failures.append(f"lost {step.lost} > {slo.lost}")
    if step.closes > slo.closes:
        step.failures.append(f"send-queue closes {step.closes} > {slo.closes}")
    if step.missed_slots:
        step.generator_limits.append(f"{step.missed_slots} send slots missed")
    if step.generator_cpu > cpu_limit:
        step.generator_limits.append(f"generator CPU {step.generator_cpu:.0%} > {cpu_limit:.0%}")
    if step.generator_lag_ms > lag_limit_ms:
        step.generator_limits.append(f"generator event loop {step.generator_lag_ms:.0f} ms late")
    else:
        # a late event loop delays every receive it holds up by at most its lag: a latency over its ceiling by less
        # than that lag may be the generator's alone (then the step says nothing of the server); a lag under a tenth
        # of the ceiling is within the step's resolution
        lag = step.generator_lag_ms
        for name, ceiling in slo.latency_ms.items():
            value = step.latency_ms.get(name)
            if value is not None and value >= ceiling and lag >= ceiling * LAG_MATERIAL and value - lag < ceiling:
                step.generator_limits.append(
                    f"generator event loop {lag:.0f} ms late: {name} {value:.1f} ms less that is under the "
                    f"{ceiling:g} ms ceiling, so the latency may be the generator's")
                break


class Search:
    """The search as a state machine: :meth:`next_level` says what to hold next (None: done), :meth:`record`
    takes the judged step. Pure: unit-tested against simulated systems."""

    #: confirms tried before the answer is "no level held for the confirm period". Near a soft knee a short step's
    #: p99 is noisy (or the system degrades over the run): after the k-th failed confirm the next one is held at
    #: that level / (1 + resolution)^(2^(k−1)) — 9 %, 17 %, 32 % lower at the default resolution, 49 % in all —
    #: whatever shorter steps held in between (after one failed confirm, the answer is within the resolution of it)
    MAX_CONFIRMS: Final = 4

    def __init__(self, start: float, *, growth: float = 2.0, resolution: float = 0.1, maximum: float = math.inf,
                 minimum: float = 1e-3, confirm: bool = True, whole: bool = False, retry: bool = True) -> None:
        """``whole``: levels are whole numbers (a count of groups): bisection ends when no whole level lies
        between the last hold and the first failure, whatever the resolution. ``retry``: a short step that fails
        is held once more at its level (phase ``retry``), and only a failed retry narrows the search. A step of a
        few dozen messages judges p99 over about one message's fan-out: one stall of the server or the host fails
        it (measured: read diffusion at 2,000 members failed 10 and 20 msg/s with p99 105–124 ms at 20–43 % of a
        core, and those searches answered 9.2 and 18.3 msg/s where another held 73.4), and a failure caps the search
        for good. A retry that holds overturns the failure; a real limit fails twice (one step more per failure).
        Confirms are not retried: a stall that recurs within the confirm period still fails the level found."""
        if whole:
            start = float(max(round(start), 1))
            maximum = float(math.floor(maximum)) if math.isfinite(maximum) else maximum
            minimum = float(min(math.ceil(minimum), start))
        if start <= 0 or growth <= 1 or not 0 < resolution < 1 or not 0 < minimum <= start or maximum < minimum:
            raise ValueError("capacity search: 0 < minimum <= start, minimum <= maximum, growth > 1, "
                             "0 < resolution < 1")
        self.whole = whole
        #: the lowest level a step can measure (below it a step sends too little to judge): a configuration that
        #: fails there has no capacity under the SLO — the answer says so, it is not the generator's limit
        self.minimum = minimum
        self.growth, self.resolution, self.maximum, self.confirm = growth, resolution, maximum, confirm
        self.steps: list[Step] = []
        self.lo: float | None = None  # highest level that held (below hi)
        self.hi: float | None = None  # lowest level that failed
        self._next: float | None = min(start, maximum)
        self.phase = "bracket"
        self.confirmed: bool | None = None
        self.found: float | None = None  # the level that held for the confirm period
        self._confirms = 0
        #: why the search ended before it narrowed (None: it did not): no later step could be judged fairly
        self.stopped: str | None = None
        #: the failed confirm at the lowest measurable level, if the search ended there
        self._failed_at_minimum: Step | None = None
        self.retry = retry
        self._retrying: tuple[int, str] | None = None  # (index of the failed step, the phase to go back to)
        self._superseded: set[int] = set()  # indexes of failed steps held again: their retry's result counts

    def next_level(self) -> float | None:
        return self._next

    def record(self, step: Step) -> None:
        self.steps.append(step)
        if step.phase == "confirm":
            if step.held:
                self.confirmed = True
                self.found = step.level
                self._next = None
                return
            # the level found did not hold for the confirm period: hold a lower one, further down each time
            if step.level <= self.minimum:  # even the lowest measurable level did not hold for the period
                self.confirmed = False
                self._failed_at_minimum = step
                self._next = None
            elif self._confirms >= self.MAX_CONFIRMS:
                self.confirmed = False
                self._next = None
            else:
                below = step.level / (1 + self.resolution) ** (2 ** (self._confirms - 1))
                self._confirms += 1
                self._next = max(self._down(below, step.level), self.minimum)
            return
        if self._retrying is not None:  # the retry's result counts for the level, its first try's does not
            failed, self.phase = self._retrying
            self._retrying = None
            self._superseded.add(failed)
        elif self.retry and not step.held:
            self._retrying = (len(self.steps) - 1, self.phase)
            self.phase = "retry"
            self._next = step.level
            return
        if step.held:
            self.lo = step.level if self.lo is None else max(self.lo, step.level)
        else:
            # a generator-limited step narrows like any failure (nothing above it is measurable); if it stays the
            # lowest failure the answer is generator-bound, but a server failure found below it is a capacity
            self.hi = step.level if self.hi is None else min(self.hi, step.level)
        if self.hi is None:  # still bracketing upwards
            if step.level >= self.maximum:
                self._finish()
            else:
                self._next = min(self._up(step.level * self.growth, step.level), self.maximum)
            return
        if self.lo is None:  # failed at the start: bracket downwards, down to the lowest measurable level
            if step.level <= self.minimum:
                self._finish()
            else:
                self._next = max(self._down(step.level / self.growth, step.level), self.minimum)
            return
        self._narrow()

    def stop(self, reason: str) -> None:
        """End the search now, unanswered: the levels measured so far stay in the steps, no capacity is given."""
        self.stopped = reason
        self._next = None

    def _up(self, level: float, above: float) -> float:
        return float(max(round(level), above + 1)) if self.whole else level

    def _down(self, level: float, below: float) -> float:
        return float(min(round(level), below - 1)) if self.whole else level

    def _narrow(self) -> None:
        assert self.lo is not None and self.hi is not None
        if self.hi / self.lo - 1 <= self.resolution or (self.whole and self.hi - self.lo <= 1):
            self._finish()
        else:
            self.phase = "bisect"
            mid = math.sqrt(self.lo * self.hi)  # geometric: the same relative resolution at any scale
            self._next = float(min(max(round(mid), self.lo + 1), self.hi - 1)) if self.whole else mid

    def _finish(self) -> None:
        if self.confirm and self.lo is not None and not self._generator_bound():
            self.phase = "confirm"
            self._confirms += 1
            self._next = self.lo
        else:
            self._next = None

    def _first_failure(self) -> Step | None:
        fails = [s for i, s in enumerate(self.steps)
                 if not s.held and s.phase != "confirm" and i not in self._superseded]
        return min(fails, key=lambda s: s.level) if fails else None

    def _generator_bound(self) -> bool:
        first = self._first_failure()
        return first is not None and bool(first.generator_limits)

    def _highest_held(self) -> float | None:
        """The highest level that held a step, not counting those at or above a confirm that failed."""
        ceiling = min((s.level for s in self.steps if s.phase == "confirm" and not s.held), default=math.inf)
        return max((s.level for s in self.steps if s.held and s.level < ceiling), default=None)

    def answer(self) -> dict[str, Any]:
        """``capacity``: with a confirm phase, the level that held for the confirm period (the highest short step
        that held, or after failed confirms a level further below it); without, the highest level that held. None
        when the generator broke first, nothing held, or no level survived its confirm."""
        first = self._first_failure()
        generator_bound = self._generator_bound()
        capacity = self.found if self.confirm else self.lo
        if generator_bound or (self.confirm and self.confirmed is not True) or self.stopped is not None:
            capacity = None
        because = (first.failures + first.generator_limits) if first else []
        below = self.lo is None and first is not None and first.level <= self.minimum and not generator_bound
        if below:
            because = [*because, f"no level held down to {self.minimum:g}, the lowest a step measures"]
        at_minimum = self._failed_at_minimum
        if at_minimum is not None and not generator_bound and not at_minimum.generator_limits and not below:
            # a short step at the lowest level held, its confirm did not: no capacity under the SLO either
            below = True
            because = [*because, *at_minimum.failures,
                       f"the lowest level a step measures ({self.minimum:g}) did not hold for the confirm period"]
        elif self.confirmed is False:
            because = [*because, "no level held for the confirm period"]
        if self.stopped is not None:
            because = [*because, self.stopped]
        costed = [s for s in self.steps if s.server_ms_per_message is not None]
        found = [s for s in costed if s.held and s.level == capacity and (s.phase == "confirm") == self.confirm]
        return {
            "capacity": capacity,
            "highest_held": self._highest_held(),
            "first_failed": first.level if first else None,
            "failed_because": because,
            "generator_bound": generator_bound,
            "generator_bound_at": first.level if generator_bound and first else None,
            "below_minimum": below,
            "minimum": self.minimum,
            "confirmed": self.confirmed,
            "resolution": self.resolution,
            "stopped": self.stopped,
            # the server's CPU per message at the search's first step and at the step that gave the answer
            "server_ms_per_message_first": costed[0].server_ms_per_message if costed else None,
            "server_ms_per_message_found": found[-1].server_ms_per_message if found else None,
            "steps": [s.as_dict() for s in self.steps],
        }
