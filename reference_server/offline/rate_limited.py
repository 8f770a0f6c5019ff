"""Rate-limited: the buffer of the ``buffer`` mode behind a token bucket on its writes (``--offline-rate``
writes per second, the bucket holding one second's worth). A copy with no token left is dropped and counted
(``chat_offline_dropped_total``); signals never take or need a token. At most the bucket's content is written
per message. Clients repair the gaps by syncing from ``hello``'s max seqs; the ``offline`` frame's ``dropped``
tells them copies are missing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reference_server.offline.buffer import BufferOffline
from reference_server.protocol import Message
from reference_server.tally import Tally

if TYPE_CHECKING:
    from reference_server.config import ServerConfig


class RateLimitedOffline(BufferOffline):
    name = "rate-limited"

    def __init__(self, config: ServerConfig | None = None) -> None:
        super().__init__(config)
        self.rate = self.config.offline_rate if self.config is not None else 10_000.0
        self.tokens = self.rate
        self.at = time.monotonic()
        #: the clock; tests replace it (and ``at``) to make the bucket deterministic
        self.clock = time.monotonic

    def admit(self, msg: Message, offline: Sequence[int], tally: Tally) -> Sequence[int]:
        if msg.signal:
            return offline
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        n = min(len(offline), int(self.tokens))
        self.tokens -= n
        for u in offline[n:]:
            self.dropped[u] += 1
        tally.offline_dropped += len(offline) - n
        return offline[:n]
