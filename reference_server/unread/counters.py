"""The stored per-(user, group) counters both counter modes (per-message, merged) write, behind one interface:
in SQLite (embedded default), or in Redis (a cluster's logic node: ``cluster.counters.RedisCounters``).

Each change is one counter write, whichever the store, so ``chat_unread_writes_total`` means the same in both.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from reference_server.directory import Directory

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS unread_counts (uid INTEGER NOT NULL, gid INTEGER NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (uid, gid)) WITHOUT ROWID",
]
ADD = "INSERT INTO unread_counts VALUES (?, ?, ?) ON CONFLICT (uid, gid) DO UPDATE SET n = n + excluded.n"

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
