"""A cluster's unread counter store: Redis, where every node could read the counters (``unread.counters``
has the interface and the embedded SQLite store)."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable

import redis

from reference_server.directory import Directory
from reference_server.protocol import ErrorCode, ProtocolError
from reference_server.unread.counters import Countable, CounterStore, truths

log = logging.getLogger("chat.cluster.counters")

# HINCRBY KEYS[1] by ARGV[1] for every field ARGV[2..]: one command for a message's N − 1 counter increments
_HINCRBY_ALL = "for i = 2, #ARGV do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[1]) end return #ARGV - 1"


class RedisCounters(CounterStore):
    """Cluster mode: counters in Redis, a hash per group (``chat:unread:<gid>``, field uid).

    Changes are staged in the writer's transaction and applied after it commits — before the acks go out — in
    one pipeline; a rolled-back batch applies nothing. Redis without persistence loses them on a restart: the
    ``chat:unread:ready`` marker is then gone, and every counter is rebuilt from seqs (storage is the truth)
    before the next change is applied, as at start. While Redis is down the writer waits for it (the seq
    allocator does too), and counts answer ``unavailable``.
    """

    KEY = "chat:unread:{}"
    MARKER = "chat:unread:ready"

    def __init__(self, url: str, on_reconnect: Callable[[], None] = lambda: None) -> None:
        self.r = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.on_reconnect = on_reconnect
        self._staged: list[tuple[int, int, int | None]] = []  # (uid, gid, delta | None = drop)

    def add(self, db: sqlite3.Connection, changes: Iterable[tuple[int, int, int]]) -> int:
        n = len(self._staged)
        self._staged.extend(changes)
        return len(self._staged) - n

    def drop(self, db: sqlite3.Connection, uid: int, gid: int) -> int:
        self._staged.append((uid, gid, None))
        return 1

    def stored(self, db: sqlite3.Connection, uid: int, gid: int) -> int:
        try:
            v = self.r.hget(self.KEY.format(gid), str(uid))
        except redis.RedisError as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"counter store unavailable: {exc}") from None
        return int(v) if v else 0

    def rebuild(self, db: sqlite3.Connection, directory: Directory, countable: Countable) -> tuple[int, int]:
        truth = truths(db, directory, countable)
        pipe = self.r.pipeline(transaction=False)
        for gid in directory.groups:
            pipe.hgetall(self.KEY.format(gid))
        have = {(int(u), gid): int(n) for gid, h in zip(directory.groups, pipe.execute(), strict=True)
                for u, n in h.items()}
        error = sum(abs(have.get(k, 0) - n) for k, n in truth.items()) + \
            sum(abs(n) for k, n in have.items() if k not in truth)
        pipe = self.r.pipeline(transaction=True)
        for gid in directory.groups:
            pipe.delete(self.KEY.format(gid))
        for (uid, gid), n in truth.items():
            if n:
                pipe.hset(self.KEY.format(gid), str(uid), n)
        pipe.set(self.MARKER, 1)
        pipe.execute()
        return sum(1 for n in truth.values() if n), error

    def start(self, db: sqlite3.Connection, directory: Directory, countable: Countable) -> None:
        self._until_done(lambda: self._ensure(db, directory, countable))

    def committed(self, db: sqlite3.Connection, directory: Directory, countable: Countable) -> None:
        if not self._staged:
            return
        staged, self._staged = self._staged, []

        def apply() -> None:
            if self._ensure(db, directory, countable):
                return  # rebuilt from storage, which already holds this batch
            pipe = self.r.pipeline(transaction=True)
            # consecutive changes of one (group, delta) — a message's N − 1 increments — go as one script call:
            # packing one command instead of N − 1 is what makes this affordable for the logic node
            for (gid, delta), run in itertools.groupby(staged, key=lambda c: (c[1], c[2])):
                uids = [str(c[0]) for c in run]
                if delta is None:
                    pipe.hdel(self.KEY.format(gid), *uids)
                else:
                    pipe.eval(_HINCRBY_ALL, 1, self.KEY.format(gid), delta, *uids)
            pipe.execute()

        self._until_done(apply)

    def rolled_back(self) -> None:
        self._staged.clear()

    def _ensure(self, db: sqlite3.Connection, directory: Directory, countable: Countable) -> bool:
        """Rebuild every counter from seqs if Redis lost them (no marker); True if it did."""
        if self.r.exists(self.MARKER):
            return False
        t0 = time.perf_counter()
        rows, error = self.rebuild(db, directory, countable)
        log.warning("unread counters rebuilt in redis from seqs: %d counters (total error %d) in %.2f s", rows,
                    error, time.perf_counter() - t0)
        return True

    def _until_done(self, step: Callable[[], object]) -> None:
        delay, failed = 0.05, False
        while True:
            try:
                step()
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not failed:
                    self.on_reconnect()
                failed = True
                log.warning("unread counters: redis unavailable (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
