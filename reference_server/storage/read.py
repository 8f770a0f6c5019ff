"""Read diffusion: one row per message in the group timeline, whatever the group size.

A per-user delete index (uid, gid → deleted seqs) is subtracted on read; a private message is one timeline
row carrying its recipient list, merged into the history of those recipients only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

import orjson

from reference_server.protocol import Message
from reference_server.storage import Storage
from reference_server.tally import Tally


class ReadStorage(Storage):
    name = "read"

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS messages (gid INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "sender INTEGER NOT NULL, cts INTEGER NOT NULL, sts INTEGER NOT NULL, body TEXT NOT NULL, "
            "recipients BLOB, PRIMARY KEY (gid, seq)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS deletes (uid INTEGER NOT NULL, gid INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "PRIMARY KEY (uid, gid, seq)) WITHOUT ROWID",
            # private messages are rare: a partial index keeps "which are private after my read mark" cheap
            "CREATE INDEX IF NOT EXISTS messages_private ON messages (gid, seq) WHERE recipients IS NOT NULL",
        ]

    def append(self, db: sqlite3.Connection, tally: Tally, msg: Message, members: Mapping[int, int]) -> None:
        recipients = orjson.dumps(msg.to) if msg.to is not None else None
        db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
            (msg.gid, msg.seq, msg.sender, msg.cts, msg.sts, msg.body, recipients),
        )
        tally.storage["body"] += 1

    def history(self, db: sqlite3.Connection, uid: int, gid: int, after: int, limit: int) -> tuple[list[Message], int]:
        rows = db.execute(
            "SELECT seq, sender, cts, sts, body, recipients FROM messages WHERE gid = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (gid, after, limit),
        ).fetchall()
        if not rows:
            return [], after
        last = rows[-1][0]
        deleted = {
            r[0]
            for r in db.execute(
                "SELECT seq FROM deletes WHERE uid = ? AND gid = ? AND seq > ? AND seq <= ?", (uid, gid, after, last)
            )
        }
        out = []
        for seq, sender, cts, sts, body, recipients in rows:
            if seq in deleted:
                continue
            to = tuple(orjson.loads(recipients)) if recipients is not None else None
            msg = Message(gid, seq, sender, cts, sts, body, to)
            if to is None or msg.visible_to(uid):
                out.append(msg)
        return out, last

    def delete(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, seq: int) -> None:
        if db.execute("INSERT OR IGNORE INTO deletes VALUES (?, ?, ?)", (uid, gid, seq)).rowcount:
            tally.storage["delete"] += 1

    def hidden_after(self, db: sqlite3.Connection, uid: int, gid: int, after: int) -> int:
        (deleted,) = db.execute(
            "SELECT count(*) FROM deletes WHERE uid = ? AND gid = ? AND seq > ?", (uid, gid, after)
        ).fetchone()
        invisible = 0
        for seq, sender, recipients in db.execute(
            "SELECT seq, sender, recipients FROM messages WHERE gid = ? AND seq > ? AND recipients IS NOT NULL",
            (gid, after),
        ):
            # a private message this user also deleted is already counted above
            if (
                sender != uid
                and uid not in orjson.loads(recipients)
                and not db.execute("SELECT 1 FROM deletes WHERE uid = ? AND gid = ? AND seq = ?",
                                   (uid, gid, seq)).fetchone()
            ):
                invisible += 1
        return int(deleted) + invisible
