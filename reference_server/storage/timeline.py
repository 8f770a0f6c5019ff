"""The tables the storage modes share, and the read/write paths they have in common.

Every mode keeps each entry's body once in the group timeline (``messages``). What differs is the per-user
index: write diffusion adds one ``inbox`` row per member who may see the entry (its deletes remove that row);
read diffusion adds none (a per-user ``deletes`` index is subtracted on read, private messages are filtered by
their recipient list). ``messages.diffused`` says which path an entry took, so hybrid can mix both per group.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from reference_server.directory import audience
from reference_server.protocol import Kind, Message
from reference_server.storage import Storage, entry_bytes, page_full, scan_end
from reference_server.tally import Tally

_COLUMNS = "seq, sender, cts, sts, body, recipients, kind, ref, uids"


def _ids(raw: str | bytes | None) -> tuple[int, ...] | None:
    return tuple(orjson.loads(raw)) if raw is not None else None


def row_message(gid: int, row: Sequence[Any]) -> Message:
    seq, sender, cts, sts, body, recipients, kind, ref, uids = row[:9]
    if kind == Kind.JOIN or kind == Kind.LEAVE:  # ``ref`` holds how many members the signal names
        members = _ids(uids)
        return Message(gid, seq, sender, cts, sts, body, _ids(recipients), kind, 0, members,
                       ref or (len(members) if members is not None else 0))
    return Message(gid, seq, sender, cts, sts, body, _ids(recipients), kind, ref, _ids(uids))


class TimelineStorage(Storage):
    """Shared implementation; a mode decides per entry whether to diffuse it (write an index row per reader)."""

    def diffuse(self, members: Mapping[int, int]) -> bool:
        raise NotImplementedError

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS messages (gid INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "sender INTEGER NOT NULL, cts INTEGER NOT NULL, sts INTEGER NOT NULL, body TEXT NOT NULL, "
            # ref: a recall's recalled seq, a join/leave's member count; uids: a join/leave's members (up to 100)
            "recipients TEXT, kind TEXT NOT NULL DEFAULT 'msg', ref INTEGER NOT NULL DEFAULT 0, uids TEXT, "
            "diffused INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (gid, seq)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS deletes (uid INTEGER NOT NULL, gid INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "PRIMARY KEY (uid, gid, seq)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS inbox (uid INTEGER NOT NULL, gid INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "PRIMARY KEY (uid, gid, seq)) WITHOUT ROWID",
            # rare rows, found fast: private messages and signals/recalled entries after a read mark
            "CREATE INDEX IF NOT EXISTS messages_private ON messages (gid, seq) WHERE recipients IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS messages_special ON messages (gid, seq) WHERE kind != 'msg'",
            # a user's own messages are not unread for it
            "CREATE INDEX IF NOT EXISTS messages_sender ON messages (gid, sender, seq)",
        ]

    # -- writes (writer thread, in the transaction)
    def append(self, db: sqlite3.Connection, tally: Tally, msg: Message, members: Mapping[int, int]) -> None:
        diffused = self.diffuse(members)
        db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (msg.gid, msg.seq, msg.sender, msg.cts, msg.sts, msg.body,
             orjson.dumps(msg.to).decode() if msg.to is not None else None, str(msg.kind),
             msg.members_named if msg.kind == Kind.JOIN or msg.kind == Kind.LEAVE else msg.ref,
             orjson.dumps(uids).decode() if (uids := msg.bounded()) is not None else None, int(diffused)),
        )
        tally.storage["body"] += 1
        if diffused:
            seq, gid = msg.seq, msg.gid
            readers = audience(members, msg)
            if msg.sender in members:  # and its sender, who reads its own entries in its history
                readers.append(msg.sender)
            db.executemany("INSERT OR IGNORE INTO inbox VALUES (?, ?, ?)", [(u, gid, seq) for u in readers])
            tally.storage["index"] += len(readers)

    def delete(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, seq: int) -> bool:
        row = db.execute("SELECT diffused FROM messages WHERE gid = ? AND seq = ?", (gid, seq)).fetchone()
        if row is not None and row[0]:
            changed = db.execute("DELETE FROM inbox WHERE uid = ? AND gid = ? AND seq = ?", (uid, gid, seq)).rowcount
        else:
            changed = db.execute("INSERT OR IGNORE INTO deletes VALUES (?, ?, ?)", (uid, gid, seq)).rowcount
        if changed:
            tally.storage["delete"] += 1
        return bool(changed)

    def recall(self, db: sqlite3.Connection, tally: Tally, gid: int, seq: int) -> None:
        db.execute("UPDATE messages SET kind = ?, body = '' WHERE gid = ? AND seq = ?", (str(Kind.RECALLED), gid, seq))
        tally.storage["recall"] += 1

    # -- reads
    def get(self, db: sqlite3.Connection, gid: int, seq: int) -> Message | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM messages WHERE gid = ? AND seq = ?", (gid, seq)).fetchone()
        return row_message(gid, row) if row is not None else None

    def deleted_among(self, db: sqlite3.Connection, gid: int, seq: int, uids: Sequence[int]) -> set[int]:
        if not uids:
            return set()
        row = db.execute("SELECT diffused FROM messages WHERE gid = ? AND seq = ?", (gid, seq)).fetchone()
        arg = orjson.dumps(list(uids)).decode()
        if row is not None and row[0]:  # deleted = no index row any more
            present = {u for (u,) in db.execute(
                "SELECT uid FROM inbox WHERE gid = ? AND seq = ? AND uid IN (SELECT value FROM json_each(?))",
                (gid, seq, arg))}
            return set(uids) - present
        return {u for (u,) in db.execute(
            "SELECT uid FROM deletes WHERE gid = ? AND seq = ? AND uid IN (SELECT value FROM json_each(?))",
            (gid, seq, arg))}

    def history(self, db: sqlite3.Connection, uid: int, gid: int, after: int, limit: int) -> tuple[list[Message], int]:
        """Scan the timeline; a diffused entry is visible if uid still has its index row, another one if it is
        for uid and not in uid's delete index."""
        upto = scan_end(db, gid, after, limit)
        if upto <= after:
            return [], after
        deleted = self._seqs(db, "deletes", uid, gid, after, upto)
        indexed = self._seqs(db, "inbox", uid, gid, after, upto)
        out: list[Message] = []
        size = 0
        for row in db.execute(f"SELECT {_COLUMNS}, diffused FROM messages WHERE gid = ? AND seq > ? AND seq <= ? "
                              "ORDER BY seq", (gid, after, upto)):
            seq = row[0]
            if row[6] == Kind.RECALLED or (seq not in indexed if row[9] else seq in deleted):
                continue
            msg = row_message(gid, row)
            if row[9] or msg.visible_to(uid):
                out.append(msg)
                size += entry_bytes(msg)
                if page_full(size):
                    return out, seq
        return out, upto

    @staticmethod
    def _seqs(db: sqlite3.Connection, table: str, uid: int, gid: int, after: int, upto: int) -> set[int]:
        return {s for (s,) in db.execute(
            f"SELECT seq FROM {table} WHERE uid = ? AND gid = ? AND seq > ? AND seq <= ?", (uid, gid, after, upto))}

    def countable(self, db: sqlite3.Connection, uid: int, gid: int, after: int, upto: int) -> int:
        """One pass over the range (hybrid: entries of either path may be in it)."""
        if upto <= after:
            return 0
        deleted = self._seqs(db, "deletes", uid, gid, after, upto)
        indexed = self._seqs(db, "inbox", uid, gid, after, upto)
        n = 0
        for seq, recipients, diffused in db.execute(
            "SELECT seq, recipients, diffused FROM messages WHERE gid = ? AND seq > ? AND seq <= ? "
            "AND kind = 'msg' AND sender != ?", (gid, after, upto, uid),
        ):
            if diffused:
                n += seq in indexed
            elif seq not in deleted and (recipients is None or uid in orjson.loads(recipients)):
                n += 1
        return n
