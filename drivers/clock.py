"""One reference clock for every generator process: the Locust master's (or the only process's).

A latency that crosses processes — sent on one worker, received on another, maybe on another host — is only as
true as the offset between their clocks. Each worker estimates its offset to the master NTP-style: a burst of
probes, each with four timestamps (t1 worker send, t2 master receive, t3 master reply, t4 worker receive); the
probe with the lowest round trip δ = (t4 − t1) − (t3 − t2) gives the offset θ = ((t2 − t1) + (t3 − t4)) / 2,
true to within ±δ/2. The estimate is repeated during the run to follow drift (``--clock-interval-s``).

Every timestamp the swarm takes (a send's ``cts``, a receive time, a schedule slot, health samples) comes from
:data:`CLOCK`, which adds the offset, so latencies are differences of reference-clock times. The offsets and
their bounds travel to the master with the worker reports and end up in the result record.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

#: probes per estimate, spread over about a second so that one finds both event loops at rest; how long a burst
#: may take
BURST: Final = 10
SPACING_S: Final = 0.1
BURST_TIMEOUT_S: Final = 3.0


def local_us() -> int:
    """This host's own wall clock, µs (what t1 and t4 are; never corrected)."""
    return time.time_ns() // 1000


def estimate(samples: Iterable[tuple[int, int, int, int]]) -> tuple[int, int] | None:
    """(offset µs = reference − local, bound µs) from the sample with the lowest round trip; None without any."""
    best: tuple[int, int, int] | None = None  # (rtt, offset, bound)
    for t1, t2, t3, t4 in samples:
        rtt = (t4 - t1) - (t3 - t2)
        if rtt < 0:  # a clock stepped during the probe: no information
            continue
        if best is None or rtt < best[0]:
            best = (rtt, ((t2 - t1) + (t3 - t4)) // 2, (rtt + 1) // 2)
    return None if best is None else (best[1], best[2])


class Clock:
    """This process's view of the reference clock."""

    def __init__(self) -> None:
        self.offset_us = 0  # reference − local
        self.bound_us = 0  # ± error of offset_us
        self.correct = True  # False: measure offsets, report them, but timestamp with the local clock
        self.estimates = 0  # applied
        self._measured: list[tuple[float, int, int, bool]] = []  # (reference s, offset µs, bound µs, applied)

    def now_us(self) -> int:
        """Reference-clock time, µs."""
        return time.time_ns() // 1000 + (self.offset_us if self.correct else 0)

    def time(self) -> float:
        """Reference-clock time, s (the swarm's ``time.time()``)."""
        return self.now_us() / 1e6

    def update(self, offset_us: int, bound_us: int, good_enough_us: int) -> bool:
        """Apply a new estimate unless it is worse than the one in use and than ``good_enough_us`` (a burst taken
        while an event loop was busy must not replace a precise estimate). Every estimate is reported."""
        applied = self.estimates == 0 or bound_us <= max(good_enough_us, self.bound_us)
        if applied:
            self.offset_us, self.bound_us = offset_us, bound_us
            self.estimates += 1
        self._measured.append((self.time(), offset_us, bound_us, applied))
        return applied

    def take(self) -> list[tuple[float, int, int, bool]]:
        """The estimates since the last take (they go with the worker's next report)."""
        out, self._measured = self._measured, []
        return out

    def new_run(self) -> None:
        """A run starts: the estimates reported so far belong to the time before it; the one in use (taken before
        the run, ideally while the event loops were idle) is reported again as the run's first."""
        self._measured = [(self.time(), self.offset_us, self.bound_us, True)] if self.estimates else []

    def reset(self) -> None:
        self.offset_us = self.bound_us = self.estimates = 0
        self._measured = []


CLOCK: Final = Clock()
