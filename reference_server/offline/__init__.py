"""Offline-delivery modes behind one interface. A new mode is one module here and one name in MODES.

Whatever the mode, the group timeline has every entry, so a client that syncs from ``hello``'s max seqs misses
nothing; a buffer only saves it the pull. Signals (recall, join, leave) are never dropped by any mode.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reference_server.protocol import Message
from reference_server.tally import Tally

if TYPE_CHECKING:
    from reference_server.config import ServerConfig


class OfflineDelivery(ABC):
    """What happens to an entry for members who are not connected when it is stored (writer thread)."""

    name: str
    #: whether on_message needs the offline members (computing them costs a pass over the group)
    needs_offline_members: bool = False
    #: whether a connecting user is sent its buffer (an ``offline`` frame right after ``hello``)
    buffers: bool = False

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config

    def schema(self) -> list[str]:
        return []

    def load(self, db: sqlite3.Connection) -> None:  # noqa: B027  (optional hook)
        """Rebuild in-memory state from the database (at start, and after a rolled-back batch)."""

    @abstractmethod
    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, offline: Sequence[int]) -> None:
        """An entry was stored; ``offline`` are the members who may see it and are not connected."""

    def drain(self, db: sqlite3.Connection, tally: Tally, uid: int) -> tuple[list[tuple[int, int]], int]:
        """Empty uid's buffer: its (gid, seq) entries, oldest first, and how many were dropped for it."""
        return [], 0


def create(name: str, config: ServerConfig | None = None) -> OfflineDelivery:
    if name not in MODES:
        raise ValueError(f"unknown offline mode {name!r}; choose from {sorted(MODES)}")
    return MODES[name](config)


# modes subclass OfflineDelivery above
from reference_server.offline.buffer import BufferOffline  # noqa: E402
from reference_server.offline.pull import PullOffline  # noqa: E402
from reference_server.offline.rate_limited import RateLimitedOffline  # noqa: E402

MODES: dict[str, type[OfflineDelivery]] = {
    "pull": PullOffline, "buffer": BufferOffline, "rate-limited": RateLimitedOffline,
}
