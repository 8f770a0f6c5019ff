"""Routed push: the logic node keeps a registry of gateways per group (updated on every login and
logout) and publishes one bus message to each gateway that has online members of the group; that gateway
filters like broadcast. Cost per group message: g bus messages (g = gateways with members online), plus
registry churn on logins/logouts and on members added or removed while online (``chat_registry_updates_total``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reference_server.fanout import Fanout
from reference_server.protocol import Kind, Message
from reference_server.roles import Routes


class RoutedFanout(Fanout):
    name = "routed"

    def __init__(self, routes: Routes) -> None:
        self.routes = routes

    def push(self, msg: Message, frame: bytes, members: Mapping[int, int]) -> int:
        routes = self.routes
        if msg.kind == Kind.JOIN and msg.uids:  # the newcomers' gateways hear their join and what follows
            routes.route_members(msg.gid, msg.uids, +1)
        gateways: Iterable[int] = routes.group_gateways.get(msg.gid, ())
        if msg.kind == Kind.LEAVE and msg.uids:  # the removed members' gateways hear the leave, then no more
            gateways = {*gateways, *routes.route_members(msg.gid, msg.uids, -1)}
        routes.to_gateways(gateways, msg, frame)
        return 0
