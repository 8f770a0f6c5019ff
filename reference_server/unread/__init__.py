"""Unread-count modes behind one interface. A new mode is one module here and one name in MODES."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Mapping

from reference_server.directory import Group
from reference_server.protocol import Message
from reference_server.storage import Storage
from reference_server.tally import Tally


class UnreadCounter(ABC):
    """Keeps unread counts. Write hooks run inside the writer's transaction; ``count`` on the loop."""

    name: str

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def schema(self) -> list[str]:
        return []

    @abstractmethod
    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, members: Mapping[int, int]) -> None:
        """A message was stored."""

    @abstractmethod
    def on_read(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, old: int, new: int) -> None:
        """uid moved its read mark in gid from old to new."""

    @abstractmethod
    def count(self, db: sqlite3.Connection, uid: int, group: Group) -> int:
        """uid's unread count in group."""


def create(name: str, storage: Storage) -> UnreadCounter:
    if name not in MODES:
        raise ValueError(f"unknown unread mode {name!r}; choose from {sorted(MODES)}")
    return MODES[name](storage)


from reference_server.unread.seq import SeqUnread  # noqa: E402  (modes subclass UnreadCounter above)

MODES: dict[str, type[UnreadCounter]] = {"seq": SeqUnread}
