"""Unread-count modes behind one interface. A new mode is one module here and one name in MODES.

Every mode answers the same count: the ordinary messages above the user's read mark that it can see, did not
send, did not delete, and that were not recalled (``Storage.countable``). Signals (recall, join, leave) never
count. A recall removes the recalled message from the count of everyone who still had it unread; a delete
removes it from the deleter's; a read subtracts what it covered.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from reference_server.directory import Directory, Group
from reference_server.protocol import Message
from reference_server.storage import Storage
from reference_server.tally import Tally
from reference_server.unread.counters import CounterStore, SqliteCounters

if TYPE_CHECKING:
    from reference_server.config import ServerConfig


class UnreadCounter(ABC):
    """Keeps unread counts. Write hooks run inside the writer's transaction; ``count`` on the loop.

    Counter modes (``needs_receivers``) get told whose count changes; the seq mode derives counts and ignores
    the hooks, so the writer skips computing receivers for it.
    """

    name: str
    #: whether the hooks need the lists of users whose count changes (a pass over the group per message)
    needs_receivers: bool = False
    #: seconds between timer flushes of pending changes (None: this mode writes in the transaction)
    flush_interval_s: float | None = None

    def __init__(self, storage: Storage, config: ServerConfig | None = None,
                 counters: CounterStore | None = None) -> None:
        self.storage = storage
        self.config = config
        #: where the counter modes keep their counters: SQLite (embedded), Redis (a cluster's logic node)
        self.counters: CounterStore = counters if counters is not None else SqliteCounters()
        #: set by the store: ask the writer for a flush job (thread-safe)
        self.request_flush: Callable[[], None] = lambda: None

    def schema(self) -> list[str]:
        return []

    @abstractmethod
    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, receivers: Sequence[int]) -> None:
        """An ordinary message was stored; it counts for receivers (members who can see it, but not the sender)."""

    @abstractmethod
    def on_change(self, db: sqlite3.Connection, tally: Tally, gid: int, uids: Sequence[int], delta: int) -> None:
        """The counts of uids in gid changed by delta (a recall or a delete removed an unread message)."""

    @abstractmethod
    def on_read(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int, old: int, new: int) -> None:
        """uid moved its read mark in gid from old to new."""

    @abstractmethod
    def on_leave(self, db: sqlite3.Connection, tally: Tally, uid: int, gid: int) -> None:
        """uid was removed from gid (a later re-join starts from 0)."""

    @abstractmethod
    def count(self, db: sqlite3.Connection, uid: int, group: Group) -> int:
        """uid's unread count in group."""

    # -- transaction hooks (writer thread): modes that keep state in memory apply or drop it here
    def committed(self) -> None:  # noqa: B027  (optional hook)
        """The batch whose hooks ran since the last commit/rollback committed."""

    def rolled_back(self) -> None:  # noqa: B027  (optional hook)
        """It rolled back."""

    def pending(self) -> int:
        """Counter changes accepted but not written yet (lost if the process dies now)."""
        return 0

    def has_pending(self) -> bool:
        return False

    def flush(self, db: sqlite3.Connection, tally: Tally) -> int:
        """Write pending changes (writer thread, in a flush job's transaction); returns rows written."""
        return 0

    def repair(self, db: sqlite3.Connection, directory: Directory) -> tuple[int, int]:
        """Rebuild stored counters from seqs (start-up, before the writer runs). Returns (counters rewritten,
        total absolute error found)."""
        return 0, 0


def create(name: str, storage: Storage, config: ServerConfig | None = None,
           counters: CounterStore | None = None) -> UnreadCounter:
    """``counters``: the counter store of the counter modes (default: SQLite, in the writer's database)."""
    if name not in MODES:
        raise ValueError(f"unknown unread mode {name!r}; choose from {sorted(MODES)}")
    return MODES[name](storage, config, counters)


# modes subclass UnreadCounter above
from reference_server.unread.merged import MergedUnread  # noqa: E402
from reference_server.unread.per_message import PerMessageUnread  # noqa: E402
from reference_server.unread.seq import SeqUnread  # noqa: E402

MODES: dict[str, type[UnreadCounter]] = {"seq": SeqUnread, "per-message": PerMessageUnread, "merged": MergedUnread}
