"""Assembles one server process and runs it until SIGTERM/SIGINT.

:class:`ChatServer` is what every process that holds the store has: storage, logic and the admin plane. The
embedded server (the default role) gives it this process's sockets; a cluster's logic node gives it the bus
(cluster/nodes.py, which also has the gateway process). ``__main__`` picks the role, so the embedded server
never imports the cluster, nor its Redis client.

Shutdown: stop accepting connections and sends, let the writer commit and reply to everything queued,
flush every send queue, close each connection with 1001, then close storage.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

from reference_server import fanout, offline, storage, unread
from reference_server.admin import PickGateway, build_app
from reference_server.config import ServerConfig
from reference_server.gateway import Gateway, Violations
from reference_server.logic import ChatLogic
from reference_server.metrics import ServerMetrics
from reference_server.protocol import CloseCode
from reference_server.roles import Node, SeqAllocator
from reference_server.store import Store
from reference_server.unread.counters import CounterStore

log = logging.getLogger("chat.server")


def server_version() -> str:
    try:
        return version("chatbench")
    except PackageNotFoundError:
        return "dev"


def new_metrics(config: ServerConfig) -> ServerMetrics:
    # no …_created series: nothing reads them, and they are 12 % of a full render. auto_describe: collectors
    # without describe() (ProcessCollector) are found by name too, so /metrics?name[]= can ask for
    # process_cpu_seconds_total
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return ServerMetrics(registry, version=server_version(), modes=config.modes())


class _ClientHttpErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad request line, a bad header: answered 400) as an ERROR with a
    traceback: a client error. It is counted as a protocol violation instead (rate-limited log, gateway.Violations);
    errors of the server's own stay logged."""

    def __init__(self, violations: Violations) -> None:
        super().__init__()
        self.violations = violations

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            self.violations.count("http_bad_request")
            return False
        return True


async def start_http(app: web.Application, host: str, port: int,
                     metrics: ServerMetrics | None = None) -> tuple[web.AppRunner, int]:
    """The admin/observability plane; ``metrics``: count clients' malformed HTTP instead of logging each."""
    if metrics is not None:
        server_log = logging.getLogger("aiohttp.server")
        for f in [f for f in server_log.filters if isinstance(f, _ClientHttpErrors)]:
            server_log.removeFilter(f)
        server_log.addFilter(_ClientHttpErrors(Violations(metrics)))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return runner, int(runner.addresses[0][1])


class ChatServer(ABC):
    """Storage, logic and the admin plane of one process. A subclass attaches the edge its users connect
    through, and the fan-out that pushes through it."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop, *, metrics: ServerMetrics | None = None,
                 counters: CounterStore | None = None, seqs: SeqAllocator | None = None) -> None:
        """``counters``, ``seqs``: where a role keeps unread counters and allocates seqs (default: this process)."""
        self.config = config
        self.loop = loop
        self.metrics = metrics or new_metrics(config)
        st = storage.create(config.storage, config)
        self.store = Store(
            config.db_path, synchronous=config.sqlite_synchronous, max_batch=config.max_batch, storage=st,
            checkpoint_s=config.sqlite_checkpoint_ms / 1000,
            unread=unread.create(config.unread, st, config, counters), offline=offline.create(config.offline, config),
            metrics=self.metrics, unread_repair=config.unread_repair, seqs=seqs,
        )
        self.logic = ChatLogic(config, self.metrics, self.store)
        self.pick_gateway: PickGateway | None = None  # a cluster's front (GET /gateway)
        self._runner: web.AppRunner | None = None
        self.admin_port = 0

    # -- the edge, by role
    @property
    @abstractmethod
    def ws_url(self) -> str: ...

    @abstractmethod
    def edge_health(self) -> dict[str, object]: ...

    @abstractmethod
    async def start_edge(self) -> None: ...

    @abstractmethod
    def stop_accepting(self) -> None: ...

    @abstractmethod
    async def stop_edge(self) -> int:
        """After the writer's last replies: write them, close every connection (1001), stop; how many closed."""

    # -- lifecycle
    def health(self) -> tuple[bool, dict[str, object]]:
        ok = self.logic.accepting and self.store.failed is None
        status = "ok" if ok else "stopping" if not self.logic.accepting else "storage_failed"
        info: dict[str, object] = {"status": status, "role": self.config.role,
                                   "modes": self.config.modes()}
        info.update(self.edge_health())
        return ok, info

    async def start(self) -> None:
        self.store.start(self.loop)
        await self.start_edge()
        app = build_app(self.config, self.store, self.logic, self.metrics.registry, self.health, self.pick_gateway)
        self._runner, self.admin_port = await start_http(app, self.config.host, self.config.admin_port, self.metrics)

    async def shutdown(self) -> None:
        t0 = time.monotonic()
        self.logic.accepting = False
        self.stop_accepting()
        # the writer finishes every queued job; their replies are queued on the loop right after
        await self.loop.run_in_executor(None, self.store.stop)
        await asyncio.sleep(0)
        n = await self.stop_edge()
        if self._runner is not None:
            await self._runner.cleanup()
        self.store.close()
        log.info("shut down in %.2f s; closed %d connections with 1001", time.monotonic() - t0, n)


class EmbeddedServer(ChatServer):
    """The default role: one process holds the sockets, the logic and the store."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop,
                 metrics: ServerMetrics | None = None) -> None:
        super().__init__(config, loop, metrics=metrics)
        self.gateway = Gateway(config, self.metrics, self.logic, loop)
        self.logic.fanout = fanout.create(config.fanout, sockets=self.gateway)
        self.store.online = self.gateway.online.__contains__

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.gateway.port}"

    def edge_health(self) -> dict[str, object]:
        return {"connections": len(self.gateway.online), "max_connections": self.gateway.max_connections,
                "ws_port": self.gateway.port}

    async def start_edge(self) -> None:
        await self.gateway.start()

    def stop_accepting(self) -> None:
        self.gateway.stop_accepting()

    async def stop_edge(self) -> int:
        return await self.gateway.close_all(CloseCode.GOING_AWAY, "server shutting down", self.config.shutdown_grace_s)


async def serve(config: ServerConfig, make: Callable[[ServerConfig, asyncio.AbstractEventLoop], Node]) -> None:
    """Run the server ``make`` builds for this config until SIGTERM/SIGINT, then shut it down."""
    loop = asyncio.get_running_loop()
    server = make(config, loop)
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
