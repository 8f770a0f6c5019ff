"""Assembles one server process (embedded default) and runs it until SIGTERM/SIGINT.

Shutdown: stop accepting connections and sends, let the writer commit and reply to everything queued,
flush every send queue, close each connection with 1001, then close storage.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from reference_server import fanout, offline, storage, unread
from reference_server.admin import build_app, observability_app
from reference_server.cluster.bus import RedisBus
from reference_server.cluster.front import Front
from reference_server.cluster.gateway_node import GatewayNode
from reference_server.cluster.logic_node import LogicNode
from reference_server.cluster.seqs import RedisSeqs
from reference_server.config import ServerConfig
from reference_server.gateway import Gateway
from reference_server.logic import ChatLogic
from reference_server.metrics import ServerMetrics
from reference_server.protocol import CloseCode
from reference_server.store import Store
from reference_server.unread.counters import RedisCounters

log = logging.getLogger("chat.server")


def server_version() -> str:
    try:
        return version("chatbench")
    except PackageNotFoundError:
        return "dev"


def new_metrics(config: ServerConfig) -> ServerMetrics:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return ServerMetrics(registry, version=server_version(), modes=config.modes())


async def start_http(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


class ChatServer:
    """The embedded server (sockets and logic in one process) or, with ``role=logic``, a cluster's logic node."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop,
                 metrics: ServerMetrics | None = None) -> None:
        self.config = config
        self.loop = loop
        self.metrics = metrics or new_metrics(config)
        st = storage.create(config.storage, config)
        counting = unread.create(config.unread, st, config)
        if config.role == "logic":  # the cluster's counter store is Redis
            counting.counters = RedisCounters(config.redis_url, on_reconnect=self.metrics.redis_reconnects.inc)
        self.store = Store(
            config.db_path, synchronous=config.sqlite_synchronous, max_batch=config.max_batch, storage=st,
            unread=counting, offline=offline.create(config.offline, config),
            metrics=self.metrics, unread_repair=config.unread_repair,
        )
        self.logic = ChatLogic(config, self.metrics, self.store)
        self.gateway: Gateway | None = None
        self.node: LogicNode | None = None
        self.front: Front | None = None
        if config.role == "logic":
            bus = RedisBus(config.redis_url, self.metrics, name="logic")
            self.node = LogicNode(self.logic, bus, self.metrics)
            self.front = Front(bus.redis)
            self.logic.fanout = fanout.create(config.fanout, node=self.node)
            self.store.online = self.node.conns.__contains__
            self.store.seqs = RedisSeqs(config.redis_url, on_reconnect=self.metrics.redis_reconnects.inc)
            self.store.directory.on_members_changed = self.node.members_changed
        else:
            self.gateway = Gateway(config, self.metrics, self.logic, loop)
            self.logic.fanout = fanout.create(config.fanout, gateway=self.gateway)
            self.store.online = self.gateway.online.__contains__
        self.store.publish = self.logic.publish
        self._runner: web.AppRunner | None = None
        self.admin_port = 0

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.gateway.port}" if self.gateway is not None else "none"

    def health(self) -> tuple[bool, dict[str, object]]:
        ok = self.logic.accepting and self.store.failed is None
        info: dict[str, object] = {"status": "ok" if ok else "stopping", "role": self.config.role,
                                   "modes": self.config.modes()}
        if self.gateway is not None:
            info.update(connections=len(self.gateway.online), ws_port=self.gateway.port)
        if self.node is not None:
            info.update(connections=len(self.node.conns), gateways=sorted(self.node.gateways))
        return ok, info

    async def start(self) -> None:
        self.store.start(self.loop)
        if self.node is not None:
            await self.node.start()
        if self.gateway is not None:
            await self.gateway.start()
        self._runner, self.admin_port = await start_http(build_app(self), self.config.host, self.config.admin_port)

    async def shutdown(self) -> None:
        t0 = time.monotonic()
        self.logic.accepting = False
        if self.gateway is not None:
            self.gateway.stop_accepting()
        # the writer finishes every queued job; their replies are queued on the loop right after
        await self.loop.run_in_executor(None, self.store.stop)
        await asyncio.sleep(0)
        n = 0
        if self.gateway is not None:
            self.gateway.flush()
            n = len(self.gateway.online)
            self.gateway.close_all(CloseCode.GOING_AWAY, "server shutting down")
            deadline = time.monotonic() + self.config.shutdown_grace_s
            while self.gateway.online and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if self.node is not None:
            await self.node.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        self.store.close()
        log.info("shut down in %.2f s; closed %d connections with 1001", time.monotonic() - t0, n)


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
                    "connections": len(self.node.gateway.online), "ws_port": self.node.gateway.port}

    async def start(self) -> None:
        await self.node.start()
        self._runner, self.admin_port = await start_http(
            observability_app(self.metrics.registry, self.health), self.config.host, self.config.admin_port)

    async def shutdown(self) -> None:
        self.stopping = True
        gw = self.node.gateway
        gw.stop_accepting()
        gw.flush()
        n = len(gw.online)
        gw.close_all(CloseCode.GOING_AWAY, "gateway shutting down")
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while gw.online and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.node.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("gateway %d shut down; closed %d connections with 1001", self.node.gw, n)


async def serve(config: ServerConfig) -> None:
    loop = asyncio.get_running_loop()
    server: ChatServer | GatewayServer = (
        GatewayServer(config, loop) if config.role == "gateway" else ChatServer(config, loop)
    )
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    modes = " ".join(f"{k}={v}" for k, v in config.modes().items())
    # one parseable line: harnesses wait for it
    print(f"chatbench server ready ws={server.ws_url} admin=http://{config.host}:{server.admin_port} "
          f"role={config.role} {modes} db={config.db_path}", flush=True)
    await stop.wait()
    log.info("signal received: shutting down")
    await server.shutdown()
