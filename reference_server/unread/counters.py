"""The stored per-(user, group) counter table both counter modes (per-message, merged) write."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from reference_server.directory import Directory

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS unread_counts (uid INTEGER NOT NULL, gid INTEGER NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (uid, gid)) WITHOUT ROWID",
]
ADD = "INSERT INTO unread_counts VALUES (?, ?, ?) ON CONFLICT (uid, gid) DO UPDATE SET n = n + excluded.n"


def add(db: sqlite3.Connection, changes: Iterable[tuple[int, int, int]]) -> int:
    """Apply (uid, gid, delta) changes, one row write each; returns the rows written."""
    before = db.total_changes
    db.executemany(ADD, changes)
    return db.total_changes - before


def drop(db: sqlite3.Connection, uid: int, gid: int) -> int:
    return db.execute("DELETE FROM unread_counts WHERE uid = ? AND gid = ?", (uid, gid)).rowcount


def stored(db: sqlite3.Connection, uid: int, gid: int) -> int:
    row = db.execute("SELECT n FROM unread_counts WHERE uid = ? AND gid = ?", (uid, gid)).fetchone()
    return int(row[0]) if row is not None else 0


Countable = Callable[[sqlite3.Connection, int, int, int, int], int]


def rebuild(db: sqlite3.Connection, directory: Directory, countable: Countable) -> tuple[int, int]:
    """Set every member's counter to the seq-derived truth (``Storage.countable`` from its read mark to the
    group's max seq); returns (rows rewritten, total absolute error found)."""
    have = {(u, g): n for u, g, n in db.execute("SELECT uid, gid, n FROM unread_counts")}
    fixes: list[tuple[int, int, int]] = []
    error = 0
    for gid, group in directory.groups.items():
        for uid in group.members:
            truth = countable(db, uid, gid, group.read.get(uid, 0), group.max_seq)
            n = have.get((uid, gid), 0)
            if n != truth:
                error += abs(n - truth)
                fixes.append((uid, gid, truth))
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT OR REPLACE INTO unread_counts VALUES (?, ?, ?)", fixes)
    db.execute("COMMIT")
    return len(fixes), error
