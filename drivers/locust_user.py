"""ChatUser: an abstract Locust user that speaks the chat protocol through :class:`ChatClient`.

Request events (type ``WS``) are fired for connect, send→ack, sync and read. Deliveries are not Locust
events: they go to the process's :class:`DeliveryRecorder` (HDR, µs), merged across workers through Locust's
worker reports and summarised at the end of the run.

User ids: user k of worker w is ``w * UID_BLOCK + k + 1``; the scenario's provisioning on the master creates
``ceil(users / workers)`` ids per worker block (Locust gives each worker the floor or the ceiling of an even
share), so uids never collide across processes or hosts.
"""

from __future__ import annotations

from locust import User, events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

import itertools
import logging
import math
import time
from argparse import ArgumentParser
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from drivers.admin import AdminClient
from drivers.client import ChatClient
from drivers.deliveries import DeliveryRecorder
from reference_server import protocol

log = logging.getLogger("chatbench.swarm")

REQUEST_TYPE = "WS"
UID_BLOCK = 1_000_000
recorder = DeliveryRecorder()
_local_index = itertools.count()


def _options(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("chatbench")
    g.add_argument("--admin-url", env_var="CHATBENCH_ADMIN_URL", default="http://127.0.0.1:8766",
                   help="the server's admin plane")
    g.add_argument("--admin-token", env_var="CHATBENCH_ADMIN_TOKEN", default="chatbench-dev-admin",
                   help="bearer token of the admin plane")
    g.add_argument("--chat-secret", env_var="CHATBENCH_SECRET", default="chatbench-dev-secret",
                   help="server secret the user tokens are derived from")
    g.add_argument("--chatbench-out", env_var="CHATBENCH_OUT", default="",
                   help="write the swarm's results (JSON) to this file when Locust quits")


def _report(client_id: str, data: dict[str, Any]) -> None:
    data["chatbench_deliveries"] = recorder.snapshot_and_reset()


def _merge(client_id: str, data: dict[str, Any]) -> None:
    if "chatbench_deliveries" in data:
        recorder.merge(data["chatbench_deliveries"])


def _write_results(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    if not is_coordinator(environment) or opts is None or not opts.chatbench_out:
        return
    requests = {}
    for (name, _method), entry in environment.stats.entries.items():
        requests[name] = {
            "count": entry.num_requests, "failures": entry.num_failures,
            "p50_ms": entry.get_response_time_percentile(0.5), "p99_ms": entry.get_response_time_percentile(0.99),
            "avg_ms": entry.avg_response_time,
        }
    result = {
        "delivered": recorder.delivered,
        "latency_clamped": recorder.clamped,
        "delivery_latency_ms": recorder.summary_ms(),
        "delivery_latency_hdr": recorder.latency.encode().decode(),
        "requests": requests,
    }
    with open(opts.chatbench_out, "wb") as f:
        f.write(orjson.dumps(result, option=orjson.OPT_INDENT_2))


events.init_command_line_parser.add_listener(_options)
events.quitting.add_listener(_write_results)
events.report_to_master.add_listener(_report)
events.worker_report.add_listener(_merge)


def worker_index(env: Environment) -> int:
    return max(int(getattr(env.runner, "worker_index", 0)), 0)


def worker_count(env: Environment) -> int:
    return int(env.runner.worker_count) if isinstance(env.runner, MasterRunner) else 1


def is_coordinator(env: Environment) -> bool:
    """True on the process that provisions and reports: the master, or the only process."""
    return not isinstance(env.runner, WorkerRunner)


def planned_uids(env: Environment, users: int) -> list[int]:
    """Every uid the swarm's users can take, for provisioning on the coordinator."""
    workers = worker_count(env)
    per_worker = math.ceil(users / workers)
    return [w * UID_BLOCK + k + 1 for w in range(workers) for k in range(per_worker)]


def admin_client(env: Environment) -> AdminClient:
    opts = env.parsed_options
    assert opts is not None, "run under locust: the chatbench options come from its command line"
    return AdminClient(opts.admin_url, opts.admin_token)


def provision_users(admin: AdminClient, uids: list[int]) -> None:
    """Create the uids (idempotent), one request per contiguous run."""
    for _, run in itertools.groupby(enumerate(uids), key=lambda p: p[1] - p[0]):
        ids = [u for _, u in run]
        admin.create_users(ids[0], len(ids))


class ChatUser(User):
    """One chat member on one connection. Subclass it; set ``host`` to the server's ws:// URL."""

    abstract = True
    #: seconds between heartbeats (None: none; the server closes connections silent for idle_timeout_s)
    heartbeat_s: ClassVar[float | None] = 25.0
    #: seconds to wait for a reply before a request fails
    request_timeout: ClassVar[float] = 10.0

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host or not self.host.startswith(("ws://", "wss://")):
            raise ValueError(f"ChatUser needs --host ws://HOST:PORT (the server's WebSocket URL), got {self.host!r}")
        self.uid = worker_index(environment) * UID_BLOCK + next(_local_index) + 1
        secret = environment.parsed_options.chat_secret if environment.parsed_options else "chatbench-dev-secret"
        self.client = ChatClient(
            self.host, self.uid, protocol.user_token(secret, self.uid), on_message=self.on_push,
            heartbeat_s=self.heartbeat_s, request_timeout=self.request_timeout,
        )
        self.hello: dict[str, Any] = {}

    # -- lifecycle
    def on_start(self) -> None:
        self.hello = self._timed("connect", self.client.connect)

    def on_stop(self) -> None:
        self.client.close()

    # -- deliveries (receive thread): one clock read, one histogram record
    def on_push(self, frame: dict[str, Any]) -> None:
        recorder.record(protocol.now_us() - frame["cts"])

    # -- requests, each a Locust request event
    # each returns the reply, or None when the request failed (the failure is in Locust's statistics)
    def send(self, gid: int, body: str) -> dict[str, Any] | None:
        reply: dict[str, Any] | None = self._timed("send", lambda: self.client.send(gid, body))
        return reply

    def sync(self, gid: int, after: int) -> dict[str, Any] | None:
        reply: dict[str, Any] | None = self._timed("sync", lambda: self.client.sync(gid, after))
        return reply

    def read(self, gid: int, seq: int) -> dict[str, Any] | None:
        reply: dict[str, Any] | None = self._timed("read", lambda: self.client.read(gid, seq))
        return reply

    def _timed(self, name: str, call: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result: Any = None
        exc: BaseException | None = None
        try:
            result = call()
        except Exception as e:  # reported to Locust, not raised: one failed request must not kill the user
            exc = e
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=name, response_time=(time.perf_counter() - t0) * 1000,
            response_length=0, exception=exc, context={"uid": self.uid},
        )
        if exc is not None and name == "connect":
            raise exc
        return result
