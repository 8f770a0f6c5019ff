"""Routed push: the logic node keeps a registry of gateways per group (updated on every login and
logout) and publishes one bus message to each gateway that has online members of the group; that gateway
filters like broadcast. Cost per group message: g bus messages (g = gateways with members online), plus
registry churn on logins/logouts (``chat_registry_updates_total``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference_server.cluster import wire
from reference_server.directory import Group
from reference_server.fanout import Fanout
from reference_server.protocol import Message

if TYPE_CHECKING:
    from reference_server.cluster.logic_node import LogicNode


class RoutedFanout(Fanout):
    name = "routed"

    def __init__(self, node: LogicNode) -> None:
        self.node = node

    def push(self, msg: Message, frame: bytes, group: Group) -> int:
        gateways = self.node.group_gateways.get(msg.gid)
        if gateways:
            data = wire.group(msg.gid, msg.seq, msg.sender, msg.to, frame)
            for gw in gateways:
                self.node.bus.publish(wire.gateway_channel(gw), data)
        return 0
