"""Seq-derived unread: unread = group max seq − the member's read seq − what the member cannot see
(messages it deleted for itself, private messages to others) after the read mark. 0 writes per message."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from reference_server.directory import Group
from reference_server.protocol import Message
from reference_server.tally import Tally
from reference_server.unread import UnreadCounter


class SeqUnread(UnreadCounter):
    name = "seq"

    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, members: Mapping[int, int]) -> None:
        pass

    def on_read(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, old: int, new: int) -> None:
        pass

    def count(self, db: sqlite3.Connection, uid: int, group: Group) -> int:
        read = group.read.get(uid, 0)
        if read >= group.max_seq:
            return 0
        return group.max_seq - read - self.storage.hidden_after(db, uid, group.gid, read)
