"""Offline-delivery modes behind one interface. A new mode is one module here and one name in MODES."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable

from reference_server.protocol import Message
from reference_server.tally import Tally


class OfflineDelivery(ABC):
    """What happens to a message for members who are not connected when it is sent."""

    name: str
    #: whether on_message needs the offline members (computing them costs a pass over the group)
    needs_offline_members: bool = False

    def schema(self) -> list[str]:
        return []

    @abstractmethod
    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, offline: Iterable[int]) -> None:
        """A message was stored; ``offline`` are the members not connected at send time."""


def create(name: str) -> OfflineDelivery:
    if name not in MODES:
        raise ValueError(f"unknown offline mode {name!r}; choose from {sorted(MODES)}")
    return MODES[name]()


from reference_server.offline.pull import PullOffline  # noqa: E402  (modes subclass OfflineDelivery above)

MODES: dict[str, type[OfflineDelivery]] = {"pull": PullOffline}
