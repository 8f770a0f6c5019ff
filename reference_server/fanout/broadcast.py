"""Broadcast push (the lesson's answer): one publish per group message on a channel every gateway
subscribes to; each gateway filters the group's members against its own connections. Cost per group
message: 1 bus publish, G receipts, and at every gateway a pass over the member list — the filtered-away
part is ``chat_gateway_filtered_total``, the "empty gateway" cost. A join/leave signal goes as a CHANGE
message: each gateway applies it to its member copy in seq order (and pushes the leave to the removed)."""

from __future__ import annotations

from collections.abc import Mapping

from reference_server.fanout import Fanout
from reference_server.protocol import Message
from reference_server.roles import Routes


class BroadcastFanout(Fanout):
    name = "broadcast"

    def __init__(self, routes: Routes) -> None:
        self.routes = routes

    def push(self, msg: Message, frame: bytes, members: Mapping[int, int]) -> int:
        self.routes.to_every_gateway(msg, frame)
        return 0
