"""Buffer: one offline-buffer entry per offline member per entry — as many writes per message as members are
offline. Capped per user (``--offline-cap``): past it the user's oldest ordinary entry is dropped and counted
(signals are never dropped; they may take a user past the cap). On connect the buffer is sent right after
``hello`` (an ``offline`` frame) and emptied."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reference_server.offline import OfflineDelivery
from reference_server.protocol import Message
from reference_server.tally import Tally

if TYPE_CHECKING:
    from reference_server.config import ServerConfig


class BufferOffline(OfflineDelivery):
    name = "buffer"
    needs_offline_members = True
    buffers = True

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS offline_buf (id INTEGER PRIMARY KEY, uid INTEGER NOT NULL, "
            "gid INTEGER NOT NULL, seq INTEGER NOT NULL, sig INTEGER NOT NULL)",
            "CREATE INDEX IF NOT EXISTS offline_buf_uid ON offline_buf (uid, sig, id)",
        ]

    def __init__(self, config: ServerConfig | None = None) -> None:
        super().__init__(config)
        self.held: Counter[int] = Counter()  # entries per user: the cap check must not query per member
        self.dropped: Counter[int] = Counter()  # copies dropped per user since start (told in its offline frame)

    @property
    def cap(self) -> int:
        return self.config.offline_cap if self.config is not None else 1000

    def load(self, db: sqlite3.Connection) -> None:
        self.held = Counter(dict(db.execute("SELECT uid, count(*) FROM offline_buf GROUP BY uid")))

    def admit(self, msg: Message, offline: Sequence[int], tally: Tally) -> Sequence[int]:
        """Who gets a buffered copy (the rate-limited mode spends tokens here)."""
        return offline

    def on_message(self, db: sqlite3.Connection, tally: Tally, msg: Message, offline: Sequence[int]) -> None:
        if not offline:
            return
        sig = int(msg.signal)
        admitted = self.admit(msg, offline, tally)
        held, cap = self.held, self.cap
        for u in admitted:
            if held[u] >= cap and not sig:
                cur = db.execute(
                    "DELETE FROM offline_buf WHERE id = (SELECT id FROM offline_buf WHERE uid = ? AND sig = 0 "
                    "ORDER BY id LIMIT 1)", (u,))
                if cur.rowcount:
                    held[u] -= 1
                    self.dropped[u] += 1
                    tally.offline_dropped += 1
                    tally.storage["offline_evict"] += 1
        gid, seq = msg.gid, msg.seq
        db.executemany("INSERT INTO offline_buf (uid, gid, seq, sig) VALUES (?, ?, ?, ?)",
                       [(u, gid, seq, sig) for u in admitted])
        for u in admitted:
            held[u] += 1
        tally.offline += len(admitted)

    def drain(self, db: sqlite3.Connection, tally: Tally, uid: int) -> tuple[list[tuple[int, int]], int]:
        entries = [(g, s) for g, s in db.execute("SELECT gid, seq FROM offline_buf WHERE uid = ? ORDER BY id", (uid,))]
        if entries:
            db.execute("DELETE FROM offline_buf WHERE uid = ?", (uid,))
            tally.storage["offline_drain"] += len(entries)
        self.held.pop(uid, None)
        return entries, self.dropped.pop(uid, 0)
