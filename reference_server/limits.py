"""Per-user budgets: token buckets keyed by uid, owned by the logic, so a reconnect does not refill one.

A user whose bucket is full holds no entry (an unknown uid has a full bucket), and entries that have refilled
are swept once the table has doubled since the last sweep: memory follows the users who spent tokens lately,
at O(1) amortized per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MIN_SWEEP = 1024  # entries before the first sweep


class TokenBuckets:
    """``rate`` tokens per second into a bucket of ``burst`` per user; each request takes one."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # uid -> (tokens, when last counted)
        self._sweep_at = MIN_SWEEP

    def take(self, uid: int) -> bool:
        """Take one of uid's tokens; False (and nothing taken) if it has less than one."""
        now = self.clock()
        tokens, at = self._buckets.get(uid, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        self._buckets[uid] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) >= self._sweep_at:
            self._sweep(now)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        """Forget the buckets that are full again by now (they are what an unknown uid gets)."""
        rate, burst = self.rate, self.burst
        self._buckets = {u: (t, at) for u, (t, at) in self._buckets.items() if t + (now - at) * rate < burst}
        self._sweep_at = max(MIN_SWEEP, 2 * len(self._buckets))
