"""Broadcast push (the lesson's answer): one publish per group message on a channel every gateway
subscribes to; each gateway filters the group's members against its own connections. Cost per group
message: 1 bus publish, G receipts, and at every gateway a pass over the member list — the filtered-away
part is ``chat_gateway_filtered_total``, the "empty gateway" cost. A join/leave signal goes as a CHANGE
message: each gateway applies it to its member copy in seq order (and pushes the leave to the removed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference_server.cluster import wire
from reference_server.directory import Group
from reference_server.fanout import Fanout
from reference_server.protocol import Message

if TYPE_CHECKING:
    from reference_server.cluster.logic_node import LogicNode


class BroadcastFanout(Fanout):
    name = "broadcast"

    def __init__(self, node: LogicNode) -> None:
        self.node = node

    def push(self, msg: Message, frame: bytes, group: Group) -> int:
        self.node.bus.publish(wire.BROADCAST_CHANNEL, wire.for_group(msg, frame))
        return 0
