"""Per-user budgets: token buckets keyed by uid, owned by the logic, so a reconnect does not refill one.

Two kinds of use: ``take`` one token per request (the send rate), or ``spend`` what a request cost — the server
time it took — which may leave the bucket in debt (the request budget of every other kind); ``exhausted`` says
whether a user has nothing left.

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

    def spend(self, uid: int, amount: float) -> None:
        """Take ``amount`` from uid's bucket, into debt if it holds less."""
        now = self.clock()
        tokens, at = self._buckets.get(uid, (self.burst, now))
        self._buckets[uid] = (min(self.burst, tokens + (now - at) * self.rate) - amount, now)
        if len(self._buckets) >= self._sweep_at:
            self._sweep(now)

    def exhausted(self, uid: int) -> bool:
        """Whether uid's bucket holds nothing (or is in debt) now."""
        entry = self._buckets.get(uid)
        return entry is not None and entry[0] + (self.clock() - entry[1]) * self.rate <= 0.0

    def wait_s(self, uid: int) -> float:
        """Seconds until uid's bucket holds something again (0.0: it does now)."""
        entry = self._buckets.get(uid)
        if entry is None:
            return 0.0
        tokens = entry[0] + (self.clock() - entry[1]) * self.rate
        return 0.0 if tokens > 0.0 else -tokens / self.rate + 1e-4

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        """Forget the buckets that are full again by now (they are what an unknown uid gets)."""
        rate, burst = self.rate, self.burst
        self._buckets = {u: (t, at) for u, (t, at) in self._buckets.items() if t + (now - at) * rate < burst}
        self._sweep_at = max(MIN_SWEEP, 2 * len(self._buckets))
