"""Local push (embedded default): one process holds every connection; walk the members, queue the same
frame bytes to each online one. No bus message."""

from __future__ import annotations

from reference_server.directory import Group
from reference_server.fanout import Fanout
from reference_server.protocol import Message


class LocalFanout(Fanout):
    name = "local"

    def push(self, msg: Message, frame: bytes, group: Group) -> int:
        online = self.gateway.online
        sender = msg.sender
        receivers = group.members if msg.to is None else msg.to
        n = 0
        for uid in receivers:
            conn = online.get(uid)
            if conn is not None and uid != sender and not conn.closing:
                conn.queue(frame)
                n += 1
        self.gateway.kick()
        return n
