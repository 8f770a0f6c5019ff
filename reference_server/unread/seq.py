"""Seq-derived unread: unread = group max seq − the member's read seq − what does not count for it after the
read mark (its deletes and own messages, private messages to others, signals, recalled messages).
0 writes per message; the cost moves to the read (``Storage.countable``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from reference_server.directory import Group
from reference_server.protocol import Message
from reference_server.tally import Tally
from reference_server.unread import UnreadCounter


class SeqUnread(UnreadCounter):
    name = "seq"

    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, receivers: Sequence[int]) -> None:
        pass

    def on_change(self, db: sqlite3.Connection, tally: Tally, gid: int, uids: Sequence[int], delta: int) -> None:
        pass

    def on_read(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, old: int, new: int) -> None:
        pass

    def on_leave(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int) -> None:
        pass

    def count(self, db: sqlite3.Connection, uid: int, group: Group) -> int:
        read = group.read.get(uid, 0)
        if read >= group.max_seq:
            return 0
        return self.storage.countable(db, uid, group.gid, read, group.max_seq)
