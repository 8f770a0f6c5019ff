"""Local push (embedded default): one process holds every connection; walk the entry's audience, queue the
same frame bytes to each online one. No bus message."""

from __future__ import annotations

from collections.abc import Mapping

from reference_server.directory import audience
from reference_server.fanout import Fanout
from reference_server.protocol import Message
from reference_server.roles import Sockets


class LocalFanout(Fanout):
    name = "local"
    local = True

    def __init__(self, sockets: Sockets) -> None:
        self.sockets = sockets

    def push(self, msg: Message, frame: bytes, members: Mapping[int, int]) -> int:
        online = self.sockets.online
        n = 0
        # a group larger than this process' connections (a million members, a few thousand online): walk the
        # connections, not the members (the audience rule either way)
        among = online if msg.to is None and len(members) > 4 * len(online) else None
        for uid in audience(members, msg, among):
            conn = online.get(uid)
            if conn is not None and not conn.closing:
                conn.queue(frame)
                n += 1
        self.sockets.kick()
        return n
