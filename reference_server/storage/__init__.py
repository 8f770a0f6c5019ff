"""Message storage modes behind one interface. A new mode is one module here and one name in MODES."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Mapping

from reference_server.protocol import Message
from reference_server.tally import Tally


class Storage(ABC):
    """Where group messages live. Write methods run inside the writer's transaction; reads on the loop."""

    name: str

    @abstractmethod
    def schema(self) -> list[str]:
        """CREATE statements of this mode's tables (idempotent)."""

    @abstractmethod
    def append(self, db: sqlite3.Connection, tally: Tally, msg: Message, members: Mapping[int, int]) -> None:
        """Store one accepted message for a group whose members map uid -> join seq."""

    @abstractmethod
    def history(self, db: sqlite3.Connection, uid: int, gid: int, after: int, limit: int) -> tuple[list[Message], int]:
        """Messages visible to uid with seq > after, oldest first, scanning at most ``limit`` seqs.

        Returns the visible messages and the last seq scanned (``after`` if none), so a caller pages on
        with ``after = last`` even when deletes or private messages hid every row of a page.
        """

    @abstractmethod
    def delete(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, seq: int) -> None:
        """Hide one message from one user (delete-for-me)."""

    @abstractmethod
    def hidden_after(self, db: sqlite3.Connection, uid: int, gid: int, after: int) -> int:
        """How many seqs > after are not visible to uid (deleted by them, or private to others)."""


def create(name: str) -> Storage:
    if name not in MODES:
        raise ValueError(f"unknown storage mode {name!r}; choose from {sorted(MODES)}")
    return MODES[name]()


from reference_server.storage.read import ReadStorage  # noqa: E402  (modes subclass Storage above)

MODES: dict[str, type[Storage]] = {"read": ReadStorage}
