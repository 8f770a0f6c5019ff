"""Write diffusion: the body once in the timeline plus one index row per member who may see the entry — N + 1
writes per public message to N members. A user's history and unread count read only its own index rows;
delete-for-me removes the row."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from reference_server.protocol import Kind, Message
from reference_server.storage.timeline import _COLUMNS, TimelineStorage, row_message


class WriteStorage(TimelineStorage):
    name = "write"

    def diffuse(self, members: Mapping[int, int]) -> bool:
        return True

    def history(self, db: sqlite3.Connection, uid: int, gid: int, after: int, limit: int) -> tuple[list[Message], int]:
        cols = ", ".join("m." + c.strip() for c in _COLUMNS.split(","))
        rows = db.execute(
            f"SELECT {cols} FROM inbox i JOIN messages m ON m.gid = i.gid AND m.seq = i.seq "
            "WHERE i.uid = ? AND i.gid = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
            (uid, gid, after, limit),
        ).fetchall()
        if len(rows) == limit:
            last = rows[-1][0]
        else:  # the index is exhausted: everything up to the group's latest seq has been scanned
            (top,) = db.execute("SELECT max(seq) FROM messages WHERE gid = ?", (gid,)).fetchone()
            last = max(after, top or 0)
        return [row_message(gid, r) for r in rows if r[6] != Kind.RECALLED], last

    def countable(self, db: sqlite3.Connection, uid: int, gid: int, after: int, upto: int) -> int:
        if upto <= after:
            return 0
        (n,) = db.execute(
            "SELECT count(*) FROM inbox i JOIN messages m ON m.gid = i.gid AND m.seq = i.seq "
            "WHERE i.uid = ? AND i.gid = ? AND i.seq > ? AND i.seq <= ? AND m.kind = 'msg' AND m.sender != ?",
            (uid, gid, after, upto, uid),
        ).fetchone()
        return int(n)
