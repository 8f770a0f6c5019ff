"""Message storage modes behind one interface. A new mode is one module here and one name in MODES."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from reference_server.protocol import MAX_SYNC_PAGE_BYTES, SYNC_ENTRY_BYTES, Kind, Message
from reference_server.tally import Tally

if TYPE_CHECKING:
    from reference_server.config import ServerConfig


class Storage(ABC):
    """Where group entries (messages and signals) live. Write methods run inside the writer's transaction
    (and count every row they write in the tally); reads run on the loop's reader connection.

    Every mode gives the same user-visible answers: ``history`` omits what a user deleted for itself,
    private messages to others and recalled messages; ``countable`` counts exactly what unread counts.
    """

    name: str

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config

    @abstractmethod
    def schema(self) -> list[str]:
        """CREATE statements of this mode's tables (idempotent)."""

    @abstractmethod
    def append(self, db: sqlite3.Connection, tally: Tally, msg: Message, members: Mapping[int, int]) -> None:
        """Store one accepted entry for a group whose members map uid -> join seq."""

    @abstractmethod
    def history(self, db: sqlite3.Connection, uid: int, gid: int, after: int, limit: int) -> tuple[list[Message], int]:
        """One sync page: entries visible to uid with seq > after, oldest first, scanning the next ``limit`` seqs
        — or fewer: the page also ends after the entry that makes it full (``page_bytes``), in every mode alike.

        Returns the visible entries and the last seq scanned (``after`` if none), so a caller pages on
        with ``after = last`` even when deletes or private messages hid every row of a page.
        """

    @abstractmethod
    def get(self, db: sqlite3.Connection, gid: int, seq: int) -> Message | None:
        """The stored entry at seq as stored (kind RECALLED once recalled), whoever may see it."""

    @abstractmethod
    def delete(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, seq: int) -> bool:
        """Hide one message from one user (delete-for-me); whether this newly hid something."""

    @abstractmethod
    def recall(self, db: sqlite3.Connection, tally: Tally, gid: int, seq: int) -> None:
        """Retract a message for everyone: its body is erased and it leaves every history."""

    @abstractmethod
    def deleted_among(self, db: sqlite3.Connection, gid: int, seq: int, uids: Sequence[int]) -> set[int]:
        """Those of uids that deleted seq for themselves."""

    @abstractmethod
    def countable(self, db: sqlite3.Connection, uid: int, gid: int, after: int, upto: int) -> int:
        """How many seqs in (after, upto] count as unread for uid: ordinary messages it can see, did not send,
        did not delete, and that were not recalled. The one definition every unread mode agrees with."""

    def lookup(self, db: sqlite3.Connection, uid: int, gid: int, seq: int) -> Message | None:
        """The entry at seq as uid sees it now, or None (deleted, recalled, not for uid)."""
        msg = self.get(db, gid, seq)
        if msg is None or msg.kind == Kind.RECALLED or not msg.visible_to(uid):
            return None
        if msg.signal:  # no per-user state hides a signal; a removed member still gets its leave signal
            return msg
        msgs, _ = self.history(db, uid, gid, seq - 1, 1)
        return msgs[0] if msgs and msgs[0].seq == seq else None


def entry_bytes(msg: Message) -> int:
    """What an entry counts toward a sync page's MAX_SYNC_PAGE_BYTES: its body's UTF-8 bytes + SYNC_ENTRY_BYTES."""
    body = msg.body
    return (len(body) if body.isascii() else len(body.encode())) + SYNC_ENTRY_BYTES


def scan_end(db: sqlite3.Connection, gid: int, after: int, limit: int) -> int:
    """The last of the next ``limit`` seqs stored after ``after`` (``after`` if there are none): a page's range."""
    row = db.execute("SELECT seq FROM messages WHERE gid = ? AND seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
                     (gid, after, limit - 1)).fetchone()
    if row is not None:
        return int(row[0])
    (top,) = db.execute("SELECT max(seq) FROM messages WHERE gid = ? AND seq > ?", (gid, after)).fetchone()
    return int(top) if top is not None else after


def page_full(size: int) -> bool:
    return size >= MAX_SYNC_PAGE_BYTES


def create(name: str, config: ServerConfig | None = None) -> Storage:
    if name not in MODES:
        raise ValueError(f"unknown storage mode {name!r}; choose from {sorted(MODES)}")
    return MODES[name](config)


# modes subclass Storage above
from reference_server.storage.hybrid import HybridStorage  # noqa: E402
from reference_server.storage.read import ReadStorage  # noqa: E402
from reference_server.storage.write import WriteStorage  # noqa: E402

MODES: dict[str, type[Storage]] = {"read": ReadStorage, "write": WriteStorage, "hybrid": HybridStorage}
