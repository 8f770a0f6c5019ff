"""Routed push: the logic node keeps a registry of gateways per group (updated on every login and
logout) and publishes one bus message to each gateway that has online members of the group; that gateway
filters like broadcast. Cost per group message: g bus messages (g = gateways with members online), plus
registry churn on logins/logouts and on members added or removed while online (``chat_registry_updates_total``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from reference_server.cluster import wire
from reference_server.directory import Group
from reference_server.fanout import Fanout
from reference_server.protocol import Kind, Message

if TYPE_CHECKING:
    from reference_server.cluster.logic_node import LogicNode


class RoutedFanout(Fanout):
    name = "routed"

    def __init__(self, node: LogicNode) -> None:
        self.node = node

    def push(self, msg: Message, frame: bytes, group: Group) -> int:
        node = self.node
        if msg.kind == Kind.JOIN and msg.uids:  # the newcomers' gateways hear their join and what follows
            node.route_members(msg.gid, msg.uids, +1)
        gateways: Iterable[int] = node.group_gateways.get(msg.gid, ())
        if msg.kind == Kind.LEAVE and msg.uids:  # the removed members' gateways hear the leave, then no more
            gateways = {*gateways, *node.route_members(msg.gid, msg.uids, -1)}
        data = wire.for_group(msg, frame)
        for gw in gateways:
            node.bus.publish(wire.gateway_channel(gw), data)
        return 0
