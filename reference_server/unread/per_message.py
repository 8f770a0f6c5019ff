"""Per-message unread: one stored counter per (user, group), incremented for every receiver of every message
inside the message's transaction — N − 1 writes per public message to N members. Exact and durable."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from reference_server.directory import Directory, Group
from reference_server.protocol import Message
from reference_server.tally import Tally
from reference_server.unread import UnreadCounter, counters


class PerMessageUnread(UnreadCounter):
    name = "per-message"
    needs_receivers = True

    def schema(self) -> list[str]:
        return list(counters.SCHEMA)

    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, receivers: Sequence[int]) -> None:
        gid = msg.gid
        tally.unread += self.counters.add(db, ((u, gid, 1) for u in receivers))

    def on_change(self, db: sqlite3.Connection, tally: Tally, gid: int, uids: Sequence[int], delta: int) -> None:
        tally.unread += self.counters.add(db, ((u, gid, delta) for u in uids))

    def on_read(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, old: int, new: int) -> None:
        k = self.storage.countable(db, uid, gid, old, new)
        if k:
            tally.unread += self.counters.add(db, ((uid, gid, -k),))

    def on_leave(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int) -> None:
        tally.unread += self.counters.drop(db, uid, gid)

    def count(self, db: sqlite3.Connection, uid: int, group: Group) -> int:
        return self.counters.stored(db, uid, group.gid)

    def repair(self, db: sqlite3.Connection, directory: Directory) -> tuple[int, int]:
        return self.counters.rebuild(db, directory, self.storage.countable)
