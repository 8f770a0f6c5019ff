"""Start a cluster on this machine: Redis (unless given), one logic node, K gateway nodes.

Used by ``chatbench serve --cluster``, the tests and the benchmarks. Each process is the same
``python -m reference_server`` with ``--role logic`` or ``--role gateway``; docs/cluster.md shows the same
commands for gateways on other hosts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import TracebackType

from drivers.admin import AdminClient
from harness.procs import RedisProcess, ServerProcess

#: a cluster's fan-out mode unless one is asked for (it has no ``local`` mode): the lesson's answer
DEFAULT_FANOUT = "broadcast"


class Cluster:
    def __init__(self, gateways: int, *server_args: str, fanout: str = DEFAULT_FANOUT, redis_url: str | None = None,
                 db_path: Path | None = None, cpus: list[int] | None = None) -> None:
        if gateways < 1:
            raise ValueError("a cluster needs at least one gateway")
        self.tmp = Path(tempfile.mkdtemp(prefix="chatbench-cluster-")) if db_path is None else db_path.parent
        self.db_path = db_path or self.tmp / "chat.db"
        self.redis = RedisProcess() if redis_url is None else None
        self.redis_url = redis_url or (self.redis.url if self.redis else "")
        self.fanout = fanout
        self.n = gateways
        self.server_args = list(server_args)
        self.cpus = cpus
        self.logic: ServerProcess | None = None
        self.gateways: list[ServerProcess] = []

    def _cpu(self, i: int) -> int | None:
        return self.cpus[i % len(self.cpus)] if self.cpus else None

    def start(self) -> Cluster:
        try:
            if self.redis is not None:
                self.redis.start()
            common = ["--redis-url", self.redis_url, "--fanout", self.fanout, *self.server_args]
            self.logic = ServerProcess("--role", "logic", *common, db_path=self.db_path, cpu=self._cpu(0),
                                       log_path=self.tmp / "logic.log").start()
            for i in range(1, self.n + 1):
                gw = ServerProcess("--role", "gateway", "--gateway-id", str(i), *common,
                                   db_path=self.tmp / f"gw{i}.unused.db", cpu=self._cpu(i),
                                   log_path=self.tmp / f"gateway{i}.log")
                self.gateways.append(gw.start())
        except BaseException:
            self.stop()
            raise
        return self

    def start_gateway(self, i: int) -> ServerProcess:
        """(Re)start gateway i (1-based), e.g. after a kill -9."""
        common = ["--redis-url", self.redis_url, "--fanout", self.fanout, *self.server_args]
        gw = ServerProcess("--role", "gateway", "--gateway-id", str(i), *common, db_path=self.tmp / f"gw{i}.unused.db",
                           cpu=self._cpu(i), log_path=self.tmp / f"gateway{i}.log").start()
        self.gateways[i - 1] = gw
        return gw

    @property
    def admin(self) -> AdminClient:
        assert self.logic is not None and self.logic.admin is not None
        return self.logic.admin

    @property
    def front_url(self) -> str:
        """GET it for the least-loaded live gateway: {"gateway": id, "url": "ws://..."}."""
        assert self.logic is not None
        return self.logic.admin_url + "/gateway"

    def stop(self) -> None:
        for gw in self.gateways:
            gw.stop()
        if self.logic is not None:
            self.logic.stop()
        if self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
