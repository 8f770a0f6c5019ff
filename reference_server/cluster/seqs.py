"""Per-group seqs from Redis (cluster mode): ``INCR chat:seq:<gid>`` is the atomic allocator.

The logic node's writer thread calls it inside its transaction (it is the store's ``roles.SeqAllocator``). If
the transaction rolls back, the counters it advanced are put back (only if nobody moved them since), so a
failed batch leaves no gap. If Redis restarts and loses the counters, they are re-seeded from the writer's
own record of the last seq per group before the next INCR, so a seq is never handed out twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import redis

log = logging.getLogger("chat.cluster.seqs")

SEQ_KEY = "chat:seq:{}"
# raise a counter to at least ARGV[1] (never lower it)
_AT_LEAST = "local v = tonumber(redis.call('GET', KEYS[1]) or '0') if v < tonumber(ARGV[1]) then " \
            "redis.call('SET', KEYS[1], ARGV[1]) end return 0"
# put a counter back from ARGV[1] (what this batch left) to ARGV[2] (what it found)
_ROLLBACK = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end return 0"


class RedisSeqs:
    def __init__(self, url: str, on_reconnect: Callable[[], None] = lambda: None) -> None:
        self.r = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.on_reconnect = on_reconnect
        self._reseed = True
        self._seeded = False

    def seed(self, last: Mapping[int, int]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for gid, seq in last.items():
            pipe.eval(_AT_LEAST, 1, SEQ_KEY.format(gid), seq)
        pipe.execute()

    def next(self, gid: int, last: Mapping[int, int]) -> int:
        """INCR the group's counter; ``last`` is the writer's record, used to re-seed after an outage."""
        delay = 0.05
        while True:
            try:
                if self._reseed:
                    log.log(logging.WARNING if self._seeded else logging.INFO,
                            "seeding redis seq counters of %d groups from storage", len(last))
                    self.seed(last)
                    self._reseed = False
                    self._seeded = True
                seq = int(self.r.incr(SEQ_KEY.format(gid)))
                if seq <= last.get(gid, 0):  # the counter was lost (a restart we did not see): never reuse
                    self._reseed = True
                    continue
                return seq
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not self._reseed:
                    self.on_reconnect()
                self._reseed = True
                log.warning("seq allocator: redis unavailable (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def rollback(self, before: Mapping[int, int], after: Mapping[int, int]) -> None:
        try:
            pipe = self.r.pipeline(transaction=False)
            for gid, seq in after.items():
                if before.get(gid, 0) != seq:
                    pipe.eval(_ROLLBACK, 1, SEQ_KEY.format(gid), seq, before.get(gid, 0))
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError):
            log.exception("could not roll seq counters back; they are re-seeded from storage on restart")
