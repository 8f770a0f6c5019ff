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
from reference_server.admin import build_app
from reference_server.config import ServerConfig
from reference_server.gateway import Gateway
from reference_server.logic import ChatLogic
from reference_server.metrics import ServerMetrics
from reference_server.protocol import CloseCode
from reference_server.store import Store

log = logging.getLogger("chat.server")


def server_version() -> str:
    try:
        return version("chatbench")
    except PackageNotFoundError:
        return "dev"


class ChatServer:
    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.loop = loop
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.metrics = ServerMetrics(registry, version=server_version(), modes=config.modes())
        st = storage.create(config.storage)
        self.store = Store(
            config.db_path, synchronous=config.sqlite_synchronous, max_batch=config.max_batch, storage=st,
            unread=unread.create(config.unread, st), offline=offline.create(config.offline), metrics=self.metrics,
        )
        self.logic = ChatLogic(config, self.metrics, self.store)
        self.gateway = Gateway(config, self.metrics, self.logic, loop)
        self.logic.fanout = fanout.create(config.fanout, self.gateway)
        self.store.online = self.gateway.online.__contains__
        self._runner: web.AppRunner | None = None
        self.admin_port = 0

    async def start(self) -> None:
        self.store.start(self.loop)
        await self.gateway.start()
        self._runner = web.AppRunner(build_app(self), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.admin_port, backlog=1024)
        await site.start()
        self.admin_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def shutdown(self) -> None:
        t0 = time.monotonic()
        self.logic.accepting = False
        self.gateway.stop_accepting()
        # the writer finishes every queued job; their replies are queued on the loop right after
        await self.loop.run_in_executor(None, self.store.stop)
        await asyncio.sleep(0)
        self.gateway.flush()
        n = len(self.gateway.online)
        self.gateway.close_all(CloseCode.GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while self.gateway.online and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._runner is not None:
            await self._runner.cleanup()
        self.store.close()
        log.info("shut down in %.2f s; closed %d connections with 1001", time.monotonic() - t0, n)


async def serve(config: ServerConfig) -> None:
    loop = asyncio.get_running_loop()
    server = ChatServer(config, loop)
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    modes = " ".join(f"{k}={v}" for k, v in config.modes().items())
    # one parseable line: harnesses wait for it
    print(f"chatbench server ready ws=ws://{config.host}:{server.gateway.port} "
          f"admin=http://{config.host}:{server.admin_port} {modes} db={config.db_path}", flush=True)
    await stop.wait()
    log.info("signal received: shutting down")
    await server.shutdown()
