"""The stored per-(user, group) counters both counter modes (per-message, merged) write, behind one interface:
in SQLite (embedded default), or in Redis (cluster mode, where Redis is the counter store).

Each change is one counter write, whichever the store, so ``chat_unread_writes_total`` means the same in both.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import redis

from reference_server.directory import Directory
from reference_server.protocol import ErrorCode, ProtocolError

log = logging.getLogger("chat.unread.counters")

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS unread_counts (uid INTEGER NOT NULL, gid INTEGER NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (uid, gid)) WITHOUT ROWID",
]
ADD = "INSERT INTO unread_counts VALUES (?, ?, ?) ON CONFLICT (uid, gid) DO UPDATE SET n = n + excluded.n"

# HINCRBY KEYS[1] by ARGV[1] for every field ARGV[2..]: one command for a message's N − 1 counter increments
_HINCRBY_ALL = "for i = 2, #ARGV do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[1]) end return #ARGV - 1"

Countable = Callable[[sqlite3.Connection, int, int, int, int], int]


def truths(db: sqlite3.Connection, directory: Directory, countable: Countable) -> dict[tuple[int, int], int]:
    """Every member's seq-derived count (``Storage.countable`` from its read mark to the group's max seq)."""
    return {(uid, gid): countable(db, uid, gid, group.read.get(uid, 0), group.max_seq)
            for gid, group in directory.groups.items() for uid in group.members}


class CounterStore(ABC):
    """Where the counter modes keep their counters. Writes come from the writer thread inside its transaction,
    ``stored`` from the loop."""

    @abstractmethod
    def add(self, db: sqlite3.Connection, changes: Iterable[tuple[int, int, int]]) -> int:
        """Apply (uid, gid, delta) changes; returns the counter writes (one per change)."""

    @abstractmethod
    def drop(self, db: sqlite3.Connection, uid: int, gid: int) -> int:
        """Forget uid's counter in gid (it left); returns the writes."""

    @abstractmethod
    def stored(self, db: sqlite3.Connection, uid: int, gid: int) -> int:
        """uid's stored counter in gid."""

    @abstractmethod
    def rebuild(self, db: sqlite3.Connection, directory: Directory, countable: Countable) -> tuple[int, int]:
        """Set every member's counter to the seq-derived truth; returns (counters rewritten, total absolute
        error)."""

    # -- the writer's transaction: stores outside it apply or drop what the batch staged
    def start(self, db: sqlite3.Connection, directory: Directory, countable: Countable) -> None:  # noqa: B027
        """Before the writer runs (start-up)."""

    def committed(self, db: sqlite3.Connection, directory: Directory,  # noqa: B027
                  countable: Countable) -> None:
        """The batch committed (writer thread, before its acks go out)."""

    def rolled_back(self) -> None:  # noqa: B027
        """The batch rolled back."""


class SqliteCounters(CounterStore):
    """The ``unread_counts`` table, written inside the writer's transaction (nothing to do at commit)."""

    def add(self, db: sqlite3.Connection, changes: Iterable[tuple[int, int, int]]) -> int:
        """Apply (uid, gid, delta) changes, one row write each; returns the rows written."""
        before = db.total_changes
        db.executemany(ADD, changes)
        return db.total_changes - before

    def drop(self, db: sqlite3.Connection, uid: int, gid: int) -> int:
        return db.execute("DELETE FROM unread_counts WHERE uid = ? AND gid = ?", (uid, gid)).rowcount

    def stored(self, db: sqlite3.Connection, uid: int, gid: int) -> int:
        row = db.execute("SELECT n FROM unread_counts WHERE uid = ? AND gid = ?", (uid, gid)).fetchone()
        return int(row[0]) if row is not None else 0

    def rebuild(self, db: sqlite3.Connection, directory: Directory, countable: Countable) -> tuple[int, int]:
        have = {(u, g): n for u, g, n in db.execute("SELECT uid, gid, n FROM unread_counts")}
        fixes = [(u, g, n) for (u, g), n in truths(db, directory, countable).items() if have.get((u, g), 0) != n]
        error = sum(abs(have.get((u, g), 0) - n) for u, g, n in fixes)
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR REPLACE INTO unread_counts VALUES (?, ?, ?)", fixes)
        db.execute("COMMIT")
        return len(fixes), error


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
        self.rebuilds = 0

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
        self.rebuilds += 1
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
