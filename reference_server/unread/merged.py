"""Merged unread (the lesson's unread-change service): counter changes go to an in-memory buffer queue instead
of the database; a timer (every ``--unread-flush-ms``) or the flusher (as soon as ``--unread-flush-size``
changes are queued) merges the +/− changes per (user, group) and writes each merged counter once, in a
transaction of its own through the writer. k messages to the same N members between two flushes cost N − 1
writes instead of k·(N − 1).

Known weakness, by design: pending changes live only in memory, so ``kill -9`` loses them (a SIGTERM flushes
first). ``chat_unread_pending`` reports them (Σ|merged change|: exactly the total error a crash now would
leave). ``--unread-repair`` rebuilds every counter from seqs at start.

Counts answer stored counter + pending change, so a running server is exact before a flush. Threads: the
writer thread alone changes the buffer; the loop only reads single keys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reference_server.directory import Directory, Group
from reference_server.protocol import Message
from reference_server.storage import Storage
from reference_server.tally import Tally
from reference_server.unread import UnreadCounter, counters
from reference_server.unread.counters import CounterStore

if TYPE_CHECKING:
    from reference_server.config import ServerConfig

Key = tuple[int, int]  # (uid, gid)


class MergedUnread(UnreadCounter):
    name = "merged"
    needs_receivers = True

    def __init__(self, storage: Storage, config: ServerConfig | None = None,
                 counters: CounterStore | None = None) -> None:
        super().__init__(storage, config, counters)
        c = self.config
        self.flush_interval_s = (c.unread_flush_ms if c is not None else 1000.0) / 1000.0
        self.flush_size = c.unread_flush_size if c is not None else 100_000
        self._pending: dict[Key, int] = {}  # merged, committed changes not yet written
        self._pending_abs = 0
        self._queued = 0  # changes entered the queue since the last flush (the merge ratio's numerator)
        self._staged: list[tuple[int, Sequence[int], int | None]] = []  # (gid, uids, delta | None = drop)
        self._taken: dict[Key, int] | None = None  # what a flush in the open transaction wrote
        self._left: set[Key] = set()  # counters dropped in the open transaction: a flush must not rewrite them
        self._flush_requested = False

    def schema(self) -> list[str]:
        return list(counters.SCHEMA)

    # -- hooks (writer thread, in a transaction): stage; the queue takes them only if the batch commits
    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, receivers: Sequence[int]) -> None:
        if receivers:
            self._staged.append((msg.gid, receivers, 1))

    def on_change(self, db: sqlite3.Connection, tally: Tally, gid: int, uids: Sequence[int], delta: int) -> None:
        if uids:
            self._staged.append((gid, uids, delta))

    def on_read(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, old: int, new: int) -> None:
        k = self.storage.countable(db, uid, gid, old, new)
        if k:
            self._staged.append((gid, (uid,), -k))

    def on_leave(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int) -> None:
        self._staged.append((gid, (uid,), None))
        self._left.add((uid, gid))
        tally.unread += self.counters.drop(db, uid, gid)

    def flush(self, db: sqlite3.Connection, tally: Tally) -> int:
        """Write every merged counter once (writer thread, in the flush job's transaction); returns rows."""
        self._flush_requested = False
        taken = {k: v for k, v in self._pending.items() if v and k not in self._left}
        rows = self.counters.add(db, ((u, g, v) for (u, g), v in taken.items()))
        tally.unread += rows
        self._taken = taken
        return rows

    def committed(self) -> None:
        pending = self._pending
        for gid, uids, delta in self._staged:
            if delta is None:
                for u in uids:
                    self._pending_abs -= abs(pending.pop((u, gid), 0))
                continue
            for u in uids:
                key = (u, gid)
                old = pending.get(key, 0)
                new = old + delta
                self._pending_abs += abs(new) - abs(old)
                if new:
                    pending[key] = new
                else:
                    del pending[key]
            self._queued += len(uids)
        self._staged.clear()
        self._left.clear()
        if self._taken is not None:
            self._queued = 0
            for key, v in self._taken.items():
                old = pending.get(key, 0)
                new = old - v
                self._pending_abs += abs(new) - abs(old)
                if new:
                    pending[key] = new
                else:
                    pending.pop(key, None)
            self._taken = None
        if self._queued >= self.flush_size and not self._flush_requested:
            self._flush_requested = True
            self.request_flush()

    def rolled_back(self) -> None:
        self._staged.clear()
        self._left.clear()
        self._taken = None
        self._flush_requested = False

    def pending(self) -> int:
        return self._pending_abs

    def has_pending(self) -> bool:
        return bool(self._pending)

    # -- reads (loop)
    def count(self, db: sqlite3.Connection, uid: int, group: Group) -> int:
        return self.counters.stored(db, uid, group.gid) + self._pending.get((uid, group.gid), 0)

    def repair(self, db: sqlite3.Connection, directory: Directory) -> tuple[int, int]:
        return self.counters.rebuild(db, directory, self.storage.countable)
