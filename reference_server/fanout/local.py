"""Local push (embedded default): one process holds every connection; walk the members, queue the same
frame bytes to each online one. No bus message."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from reference_server.directory import Group
from reference_server.fanout import Fanout
from reference_server.protocol import Message

if TYPE_CHECKING:
    from reference_server.gateway import Gateway


class LocalFanout(Fanout):
    name = "local"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def push(self, msg: Message, frame: bytes, group: Group) -> int:
        online = self.gateway.online
        sender, seq, members = msg.sender, msg.seq, group.members
        receivers: Iterable[tuple[int, int]] = (
            members.items() if msg.to is None else [(uid, members.get(uid, seq)) for uid in msg.to]
        )
        n = 0
        for uid, join in receivers:
            conn = online.get(uid)
            # a member who joined at or after this seq does not see it (it may have joined in the same batch)
            if conn is not None and join < seq and uid != sender and not conn.closing:
                conn.queue(frame)
                n += 1
        self.gateway.kick()
        return n
