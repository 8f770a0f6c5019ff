"""Open-model send schedules: when each message is *meant* to leave, independent of how fast the server answers.

A :class:`Schedule` yields ``(intended time in µs, burst)`` slots: ``burst`` messages every ``1 / rate`` seconds
from ``start`` for ``duration`` seconds, at a fixed phase so that many senders do not fire in lockstep.
``poisson=True`` draws exponential gaps instead (a Poisson arrival process at the same mean rate).

The phase: ``staggered(i, n)`` for sender i of n puts the senders' slots evenly through each interval, so their
sum arrives at the global rate at even gaps (the periodic arrival process a capacity search wants: a level is then
judged on its rate, not on how its senders' random phases happened to bunch — ten senders at 10 msg/s with random
phases put two messages within 10 ms of each other in most seconds). Without one, each sender draws a random
phase (independent senders, e.g. one per group).

Global arrival rates are split evenly: :func:`per_sender` gives each of ``senders`` senders its share.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Schedule:
    #: slots per second for this sender
    rate: float
    #: epoch seconds of the first slot (before the phase)
    start: float
    #: seconds; None = until the run stops
    duration: float | None = None
    #: messages sent together in one slot
    burst: int = 1
    #: a slot the generator reaches later than this is missed (counted, not sent late)
    tolerance_s: float = 0.5
    poisson: bool = False
    #: where in each interval this sender's slots fall, a fraction in [0, 1); None: drawn at random
    phase: float | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def slots(self) -> Iterator[tuple[int, int]]:
        if self.rate <= 0:
            return
        interval = 1.0 / self.rate
        # Poisson: the first arrival is exponential too, so the mean count over T is exactly rate · T
        phase = self.rng.random() if self.phase is None else self.phase
        t = self.start + (self.rng.expovariate(self.rate) if self.poisson else phase * interval)
        end = None if self.duration is None else self.start + self.duration
        while end is None or t < end:
            yield int(t * 1e6), self.burst
            t += self.rng.expovariate(self.rate) if self.poisson else interval


def staggered(index: int, senders: int) -> float:
    """The phase of sender ``index`` of ``senders`` (0-based): their slots spread evenly through each interval."""
    if not 0 <= index < senders:
        raise ValueError(f"sender {index} of {senders}: the index must be in 0..{senders - 1}")
    return index / senders


def phase_among(member: int, senders: Sequence[int]) -> float:
    """The phase of ``member`` among ``senders`` (:func:`staggered` by its place in that list, which every process
    of a run shares)."""
    if member not in senders:
        raise ValueError(f"user {member} is not one of the {len(senders)} senders")
    return staggered(senders.index(member), len(senders))


def per_sender(total_rate: float, senders: int) -> float:
    """Each sender's rate for a global arrival rate shared by ``senders`` senders."""
    return total_rate / senders if senders > 0 else 0.0


@dataclass
class LiveSchedule:
    """Like :class:`Schedule`, but the rate is read again at every slot (capacity search moves it during the run).

    At rate 0 it yields empty slots (burst 0) every ``idle_s`` so the sender keeps looking. With a ``phase``, the
    slots are the points ``start + (k + phase) / rate`` of a grid every sender with the same ``start`` shares, taken
    again at each slot: after a change of rate the senders' slots are at even gaps again from their next one."""

    #: slots per second for this sender, now
    rate: Callable[[], float]
    start: float
    burst: int = 1
    tolerance_s: float = 0.5
    idle_s: float = 0.1
    phase: float | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def slots(self) -> Iterator[tuple[int, int]]:
        t = self.start
        first = True
        while True:
            rate = self.rate()
            if rate <= 0:
                t += self.idle_s
                first = True
                yield int(t * 1e6), 0
                continue
            interval = 1.0 / rate
            if self.phase is None:
                t += self.rng.uniform(0, interval) if first else interval
            else:  # the first grid point at (after a slot: after) t; t is a float of epoch seconds, so up to rounding
                k = (t - self.start) / interval - self.phase
                m = math.ceil(k - 1e-3) if first else math.floor(k + 1e-3) + 1
                nxt = self.start + (m + self.phase) * interval
                t = nxt if first or nxt > t else nxt + interval  # rounding never repeats a slot
            first = False
            yield int(t * 1e6), self.burst
