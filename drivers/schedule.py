"""Open-model send schedules: when each message is *meant* to leave, independent of how fast the server answers.

A :class:`Schedule` yields ``(intended time in µs, burst)`` slots: ``burst`` messages every ``1 / rate`` seconds
from ``start`` for ``duration`` seconds, with a fixed random phase so that many senders do not fire in lockstep.
``poisson=True`` draws exponential gaps instead (a Poisson arrival process at the same mean rate).

Global arrival rates are split evenly: :func:`per_sender` gives each of ``senders`` senders its share.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
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
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def slots(self) -> Iterator[tuple[int, int]]:
        if self.rate <= 0:
            return
        interval = 1.0 / self.rate
        # Poisson: the first arrival is exponential too, so the mean count over T is exactly rate · T
        t = self.start + (self.rng.expovariate(self.rate) if self.poisson else self.rng.uniform(0, interval))
        end = None if self.duration is None else self.start + self.duration
        while end is None or t < end:
            yield int(t * 1e6), self.burst
            t += self.rng.expovariate(self.rate) if self.poisson else interval


def per_sender(total_rate: float, senders: int) -> float:
    """Each sender's rate for a global arrival rate shared by ``senders`` senders."""
    return total_rate / senders if senders > 0 else 0.0


@dataclass
class LiveSchedule:
    """Like :class:`Schedule`, but the rate is read again at every slot (capacity search moves it during the run).

    At rate 0 it yields empty slots (burst 0) every ``idle_s`` so the sender keeps looking."""

    #: slots per second for this sender, now
    rate: Callable[[], float]
    start: float
    burst: int = 1
    tolerance_s: float = 0.5
    idle_s: float = 0.1
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
            t += self.rng.uniform(0, interval) if first else interval
            first = False
            yield int(t * 1e6), self.burst
