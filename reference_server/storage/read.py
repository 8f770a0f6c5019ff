"""Read diffusion: one row per entry in the group timeline, whatever the group size; 1 write per message.

A per-user delete index (uid, gid → deleted seqs) is subtracted on read; a private message is one timeline
row carrying its recipient list, merged into the history of those recipients only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

import orjson

from reference_server.storage.timeline import TimelineStorage


class ReadStorage(TimelineStorage):
    name = "read"

    def diffuse(self, members: Mapping[int, int]) -> bool:
        return False

    def countable(self, db: sqlite3.Connection, uid: int, gid: int, after: int, upto: int) -> int:
        """(upto − after) minus the seqs in range hidden from uid, found through small indexes only: its deletes,
        signals and recalled entries, its own messages, private messages to others."""
        if upto <= after:
            return 0
        r = (gid, after, upto)
        hidden = self._seqs(db, "deletes", uid, gid, after, upto)
        hidden.update(s for (s,) in db.execute(
            "SELECT seq FROM messages WHERE gid = ? AND seq > ? AND seq <= ? AND kind != 'msg'", r))
        hidden.update(s for (s,) in db.execute(
            "SELECT seq FROM messages WHERE gid = ? AND sender = ? AND seq > ? AND seq <= ?", (gid, uid, after, upto)))
        hidden.update(s for s, recipients in db.execute(
            "SELECT seq, recipients FROM messages WHERE gid = ? AND seq > ? AND seq <= ? AND recipients IS NOT NULL",
            r) if uid not in orjson.loads(recipients))
        return upto - after - len(hidden)
