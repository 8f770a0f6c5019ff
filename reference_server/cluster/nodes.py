"""The cluster's two kinds of process, built from the embedded server's parts.

* The logic node (``--role logic``) is a :class:`~reference_server.server.ChatServer` — storage, logic, admin
  plane — whose seqs and unread counters are in Redis, whose edge is the bus to the gateways
  (:class:`LogicNode`) and whose fan-out is one of the cluster modes; its admin port also serves the front.
* A gateway (``--role gateway``) holds client sockets only; its admin port serves /metrics and /healthz.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from reference_server import fanout
from reference_server.admin import observability_app
from reference_server.cluster.bus import RedisBus
from reference_server.cluster.counters import RedisCounters
from reference_server.cluster.front import Front
from reference_server.cluster.gateway_node import GatewayNode
from reference_server.cluster.logic_node import LogicNode
from reference_server.cluster.seqs import RedisSeqs
from reference_server.config import ServerConfig
from reference_server.protocol import CloseCode
from reference_server.roles import Node
from reference_server.server import ChatServer, new_metrics, start_http

log = logging.getLogger("chat.server")


class LogicServer(ChatServer):
    """A cluster's logic node: the one process with the store, behind K gateways."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop) -> None:
        metrics = new_metrics(config)
        reconnected = metrics.redis_reconnects.inc
        super().__init__(config, loop, metrics=metrics, counters=RedisCounters(config.redis_url, reconnected),
                         seqs=RedisSeqs(config.redis_url, reconnected))
        bus = RedisBus(config.redis_url, self.metrics, name="logic")
        self.node = LogicNode(self.logic, self.store.directory, bus, self.metrics)
        self.pick_gateway = Front(bus.redis).pick
        self.logic.fanout = fanout.create(config.fanout, routes=self.node)
        self.store.online = self.node.conns.__contains__
        self.store.directory.on_members_changed = self.node.members_changed

    @property
    def ws_url(self) -> str:
        return "none"  # clients connect to the gateways (GET /gateway names one)

    def edge_health(self) -> dict[str, object]:
        return {"connections": len(self.node.conns), "gateways": sorted(self.node.gateways)}

    async def start_edge(self) -> None:
        await self.node.start()

    def stop_accepting(self) -> None:
        pass  # the gateways hold the sockets; the logic refuses sends from now on

    async def stop_edge(self) -> int:
        await self.node.stop()  # the bus sends the last replies first
        return 0


class GatewayServer:
    """A cluster gateway node: sockets, its admin port serves only /metrics and /healthz."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.metrics = new_metrics(config)
        self.node = GatewayNode(config, self.metrics, loop, RedisBus(config.redis_url, self.metrics,
                                                                      name=f"gateway{config.gateway_id}"))
        self._runner: web.AppRunner | None = None
        self.admin_port = 0
        self.stopping = False

    @property
    def ws_url(self) -> str:
        return self.node.public_url

    def health(self) -> tuple[bool, dict[str, object]]:
        ok = not self.stopping and self.node.bus.connected.is_set()
        return ok, {"status": "ok" if ok else ("stopping" if self.stopping else "no redis"), "role": "gateway",
                    "gateway": self.node.gw, "modes": self.config.modes(),
                    "connections": len(self.node.gateway.online),
                    "max_connections": self.node.gateway.max_connections, "ws_port": self.node.gateway.port}

    async def start(self) -> None:
        await self.node.start()
        self._runner, self.admin_port = await start_http(
            observability_app(self.metrics.registry, self.health), self.config.host, self.config.admin_port,
            self.metrics)

    async def shutdown(self) -> None:
        self.stopping = True
        gw = self.node.gateway
        gw.stop_accepting()
        n = await gw.close_all(CloseCode.GOING_AWAY, "gateway shutting down", self.config.shutdown_grace_s)
        await self.node.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("gateway %d shut down; closed %d connections with 1001", self.node.gw, n)


def create(config: ServerConfig, loop: asyncio.AbstractEventLoop) -> Node:
    """The process of a cluster role (``logic`` or ``gateway``)."""
    if config.role == "logic":
        return LogicServer(config, loop)
    if config.role == "gateway":
        return GatewayServer(config, loop)
    raise ValueError(f"role {config.role!r} is not a cluster role")
