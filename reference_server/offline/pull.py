"""Pull: no offline buffer. A reconnecting client learns each group's max seq from ``hello`` and pulls
what it missed from the group timeline with ``sync``. 0 writes per message."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from reference_server.offline import OfflineDelivery
from reference_server.protocol import Message
from reference_server.tally import Tally


class PullOffline(OfflineDelivery):
    name = "pull"

    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, offline: Sequence[int]) -> None:
        pass
