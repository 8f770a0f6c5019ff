"""Write diffusion: the body once in the timeline plus one index row per member who may see the entry — N + 1
writes per public message to N members. A user's history and unread count read only its own index rows;
delete-for-me removes the row."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from reference_server.protocol import Kind, Message
from reference_server.storage import entry_bytes, page_full, scan_end
from reference_server.storage.timeline import _COLUMNS, TimelineStorage, row_message


class WriteStorage(TimelineStorage):
    name = "write"

    def diffuse(self, members: Mapping[int, int]) -> bool:
        return True

    def history(self, db: sqlite3.Connection, uid: int, gid: int, after: int, limit: int) -> tuple[list[Message], int]:
        """The user's own index rows in the page's range: the same seqs scanned, the same page as every mode."""
        upto = scan_end(db, gid, after, limit)
        if upto <= after:
            return [], after
        cols = ", ".join("m." + c.strip() for c in _COLUMNS.split(","))
        out: list[Message] = []
        size = 0
        for row in db.execute(
            f"SELECT {cols} FROM inbox i JOIN messages m ON m.gid = i.gid AND m.seq = i.seq "
            "WHERE i.uid = ? AND i.gid = ? AND i.seq > ? AND i.seq <= ? ORDER BY i.seq",
            (uid, gid, after, upto),
        ):
            if row[6] == Kind.RECALLED:
                continue
            msg = row_message(gid, row)
            out.append(msg)
            size += entry_bytes(msg)
            if page_full(size):
                return out, msg.seq
        return out, upto

    def countable(self, db: sqlite3.Connection, uid: int, gid: int, after: int, upto: int) -> int:
        if upto <= after:
            return 0
        (n,) = db.execute(
            "SELECT count(*) FROM inbox i JOIN messages m ON m.gid = i.gid AND m.seq = i.seq "
            "WHERE i.uid = ? AND i.gid = ? AND i.seq > ? AND i.seq <= ? AND m.kind = 'msg' AND m.sender != ?",
            (uid, gid, after, upto, uid),
        ).fetchone()
        return int(n)
