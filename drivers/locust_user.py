"""ChatUser: an abstract Locust user that speaks the chat protocol through :class:`ChatClient`, with every
delivery checked by the process's ledger (:mod:`drivers.ledger`) and measured in HDR histograms.

``--receive-engine batch`` (the default, DEFAULT_RECEIVE_ENGINE): the member's ChatClient is a
:class:`drivers.engine.EngineClient` — the process's receive engine holds every member's connection in one event
loop in a real thread and applies pushes to the ledger in batches (:mod:`drivers.batchledger`); ``client``: a
ChatClient with its own receive greenlet, every push through :meth:`ReceiverLedger.on_push`. Requests,
reconnects, catch-up and the end-of-run reconciliation are the same either way.

Request events (type ``WS``) are fired for connect, reconnect, catch-up, send→ack, sync and read. Deliveries
are not Locust events (one event per frame costs about a third of the receive throughput): they go to the
ledger and appear in Locust's statistics as ``HDR`` summary rows, merged across workers (drivers/swarm.py).

User ids: user k of worker w is ``w * UID_BLOCK + k + 1``; the scenario's provisioning on the master creates
``ceil(users / workers)`` ids per worker block (Locust gives each worker the floor or the ceiling of an even
share), so uids never collide across processes or hosts.

Sending: :meth:`ChatUser.send` is closed-model (blocks for the ack). :meth:`ChatUser.run_schedule` is the open
model: messages leave at the schedule's intended times whatever the acks do, carry the intended time as
``cts`` (so delivery and send→ack latency count from it), and slots the generator could not keep are counted in
``missed_send_slots`` instead of being sent late in a catch-up burst.
"""

from __future__ import annotations

from locust import User, events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

import itertools
import logging
import math
import random
import resource
import time
from argparse import ArgumentParser, ArgumentTypeError
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Final

import gevent

from drivers import autorate, netproxy, swarm
from drivers.admin import AdminClient, front_gateway
from drivers.client import ChatClient, ChatClientError
from drivers.clock import CLOCK
from drivers.engine import DEFAULT_RECEIVE_ENGINE, PUMP_MISSING, RECEIVE_ENGINES, EngineClient, engine_for
from drivers.ledger import Frame, ReceiverLedger, now_us
from drivers.profiles import DIRECT, assign, parse_mix
from drivers.schedule import LiveSchedule, Schedule
from drivers.shapes import PhasedShape
from reference_server import protocol

log = logging.getLogger("chatbench.swarm")

REQUEST_TYPE = "WS"
UID_BLOCK = 1_000_000
#: the uid block of members that never connect (scenarios' --offline-members): above any worker's block
OFFLINE_BLOCK = 4_000
#: file descriptors a generator process may need besides one socket per member (Locust's ZeroMQ sockets, logs,
#: the interpreter's files — about 15 at rest — plus room for reconnect churn): a process holds at most its
#: open-file limit minus this many members (19,000 at this machine's 20,000)
FD_MARGIN: Final = 1_000
#: what a scheduled send carries (and a seeded history message)
SEND_BODY: Final = "x"
_local_index = itertools.count()
is_coordinator = swarm.is_coordinator


def _options(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("chatbench")
    g.add_argument("--admin-url", env_var="CHATBENCH_ADMIN_URL", default="http://127.0.0.1:8766",
                   help="the server's admin plane")
    g.add_argument("--server-metrics-urls", env_var="CHATBENCH_SERVER_METRICS_URLS", default="",
                   help="comma-separated admin URLs of every server process whose /metrics the swarm reads and "
                   "sums (a cluster's logic node and gateways; default: --admin-url alone)")
    g.add_argument("--admin-token", env_var="CHATBENCH_ADMIN_TOKEN", default=protocol.DEV_ADMIN_TOKEN,
                   help="bearer token of the admin plane")
    g.add_argument("--chat-secret", env_var="CHATBENCH_SECRET", default=protocol.DEV_SECRET,
                   help="server secret the user tokens are derived from")
    g.add_argument("--results-dir", env_var="CHATBENCH_RESULTS_DIR", default="results",
                   help="where the result bundle (JSON, append-only) is written at the end of a run")
    g.add_argument("--chatbench-out", env_var="CHATBENCH_OUT", default="",
                   help="also write the bundle to this file (for chatbench run)")
    g.add_argument("--front-url", env_var="CHATBENCH_FRONT_URL", default="",
                   help="a cluster's front (GET → the least-loaded gateway's ws:// URL), asked at every (re)connect; "
                   "--host is used when empty")
    g.add_argument("--run-id", env_var="CHATBENCH_RUN_ID", default="",
                   help="the run's id in the bundle and the metrics' run_id label (default: UTC time + random)")
    g.add_argument("--metrics-port", type=int, env_var="CHATBENCH_METRICS_PORT", default=0,
                   help="serve the chatbench_ generator metrics for Prometheus on this port (master; 0 = off)")
    g.add_argument("--quiet-s", type=float, env_var="CHATBENCH_QUIET_S", default=2.0,
                   help="at the end: seconds between stopping the senders and reconciling the ledgers")
    g.add_argument("--repair-grace-s", type=float, env_var="CHATBENCH_REPAIR_GRACE_S", default=1.0,
                   help="a seq hole older than this is repaired with sync (a reordered push fills it sooner)")
    g.add_argument("--fanout-settle-s", type=float, env_var="CHATBENCH_FANOUT_SETTLE_S", default=30.0,
                   help="a message's fan-out is completed this long after its send (parts arriving later are "
                   "counted as late_parts); the same rule whether or not anyone scrapes the metrics")
    g.add_argument("--max-connect-failures", type=float, env_var="CHATBENCH_MAX_CONNECT_FAILURES", default=0.001,
                   help="a run whose initial connects failed more often than this fraction is invalid")
    g.add_argument("--clock-interval-s", type=float, env_var="CHATBENCH_CLOCK_INTERVAL_S", default=5.0,
                   help="workers re-estimate their clock offset to the master this often (drivers/clock.py)")
    g.add_argument("--clock-bound-ms", type=float, env_var="CHATBENCH_CLOCK_BOUND_MS", default=1.0,
                   help="a run whose clock offsets are known less precisely than this, or drift more, is invalid")
    g.add_argument("--no-clock-correction", action="store_true", env_var="CHATBENCH_NO_CLOCK_CORRECTION",
                   help="measure and report the workers' clock offsets but do not correct timestamps by them")
    c = parser.add_argument_group("chatbench capacity search (drivers/capacity.py)")
    c.add_argument("--capacity", env_var="CHATBENCH_CAPACITY", default="", metavar="SLO",
                   help="search the highest arrival rate that holds this SLO, e.g. 'p99<200ms,lost=0' (scenarios "
                   "that support it: large_group_burst, many_groups); empty: a fixed load")
    c.add_argument("--capacity-vary", env_var="CHATBENCH_CAPACITY_VARY", default="rate",
                   help="what the search moves: rate (messages per second over all senders) or, where the scenario "
                   "offers it, groups (many_groups: groups sending at once, each at --group-rate) or members "
                   "(large_group_burst: the size of the group --rate goes to)")
    c.add_argument("--capacity-start", type=float, env_var="CHATBENCH_CAPACITY_START", default=10.0,
                   help="first level (messages per second, groups or members)")
    c.add_argument("--capacity-growth", type=float, env_var="CHATBENCH_CAPACITY_GROWTH", default=2.0,
                   help="bracketing: the level is multiplied by this until a step fails")
    c.add_argument("--capacity-resolution", type=float, env_var="CHATBENCH_CAPACITY_RESOLUTION", default=0.1,
                   help="bisection stops when the first failure is within this fraction above the last hold")
    c.add_argument("--capacity-max", type=float, env_var="CHATBENCH_CAPACITY_MAX", default=100_000.0,
                   help="never ask for a higher level than this")
    c.add_argument("--capacity-step-s", type=float, env_var="CHATBENCH_CAPACITY_STEP_S", default=8.0,
                   help="seconds each level is judged (after --capacity-warm-s)")
    c.add_argument("--capacity-warm-s", type=float, env_var="CHATBENCH_CAPACITY_WARM_S", default=3.0,
                   help="seconds after a level change that are not judged (backlog of the previous level)")
    c.add_argument("--capacity-confirm-s", type=float, env_var="CHATBENCH_CAPACITY_CONFIRM_S", default=30.0,
                   help="the level found is held this long and must hold again (0: no confirm phase)")
    c.add_argument("--capacity-retry", type=int, choices=[0, 1], env_var="CHATBENCH_CAPACITY_RETRY", default=1,
                   help="1: a short step that fails is held once more at its level, and only a failed retry counts "
                   "(one stall fails a step of a few dozen messages); 0: the first failure counts")
    g.add_argument("--flush-timeout-s", type=float, env_var="CHATBENCH_FLUSH_TIMEOUT_S", default=90.0,
                   help="how long the master waits for the workers' final data at the end of a run")
    g.add_argument("--profile-mix", env_var="CHATBENCH_PROFILE_MIX", default="", type=_profile_mix,
                   help="weak networks: NAME:PERCENT,... of the members connect through an impairing proxy of that "
                   "profile (drivers/profiles.py: wifi, 4g, 3g, 2g, subway, lossy), e.g. 3g:20,wifi:30; the rest "
                   "connect directly (profile 'direct'); metrics are split by profile")
    g.add_argument("--heartbeat-s", type=float, env_var="CHATBENCH_HEARTBEAT_S", default=0.0,
                   help="seconds between heartbeat pings (0: the scenario's ChatUser.heartbeat_s)")
    g.add_argument("--pong-timeout-s", type=float, env_var="CHATBENCH_PONG_TIMEOUT_S", default=0.0,
                   help="a heartbeat unanswered this long marks the connection dead → reconnect (0: the "
                   "scenario's ChatUser.pong_timeout_s)")
    g.add_argument("--backoff-jitter", choices=["full", "none"], env_var="CHATBENCH_BACKOFF_JITTER", default="full",
                   help="reconnect backoff: full jitter, or none (every client waits exactly base·2ⁿ: the herd)")
    g.add_argument("--receive-engine", type=_receive_engine, choices=list(RECEIVE_ENGINES),
                   env_var="CHATBENCH_RECEIVE_ENGINE", default=DEFAULT_RECEIVE_ENGINE,
                   help="how members receive: batch (every connection of the process in one uvloop + picows event "
                   "loop in a real thread, read by a compiled pump, pushes applied to the ledger in batches: "
                   "drivers/engine.py; Linux) or client (a ChatClient and its greenlet per member, every push through "
                   "the ledger one by one)")


def _receive_engine(name: str) -> str:
    """argparse type of --receive-engine: batch where its pump is not built stops at the command line, saying why."""
    if name == "batch" and PUMP_MISSING is not None:
        raise ArgumentTypeError(f"{PUMP_MISSING}; use --receive-engine client")
    return name


def _profile_mix(spec: str) -> str:
    """argparse type of --profile-mix: a bad mix stops Locust at the command line with the reason."""
    try:
        parse_mix(spec)
    except ValueError as exc:
        raise ArgumentTypeError(str(exc)) from None
    return spec


def _start_metrics(environment: Environment, **_: Any) -> None:
    port = swarm.option(environment, "metrics_port", 0)
    if port and is_coordinator(environment):
        from drivers.metrics import start_exporter

        scenario = Path(str(swarm.option(environment, "locustfile", "") or "")).stem
        start_exporter(port, swarm.totals, lambda: swarm.run.run_id, scenario, lambda: _phases(environment),
                       lambda: autorate.STATE.level)


def _phases(environment: Environment) -> list[tuple[str, bool]]:
    """The phased shape's phases and which one runs now (the ``chatbench_phase`` gauge); [] for other shapes."""
    shape, opts = environment.shape_class, environment.parsed_options
    if not isinstance(shape, PhasedShape) or opts is None:
        return []
    current = shape.phase
    return [(ph.name, ph.name == current) for ph in shape.phases(opts)]


def _reset_uids(**_: Any) -> None:
    global _local_index
    _local_index = itertools.count()  # a new run (web UI) numbers its users from the start again


_engine_lag: list[gevent.Greenlet] = []


def _watch_engine(environment: Environment, **_: Any) -> None:
    """A generator process with the receive engine: the engine's lateness (how long a readable descriptor waits to
    be read: Engine.probe) goes into the process's health beside the gevent loop's, so a late engine invalidates
    the run as a late gevent loop does."""
    for g in _engine_lag:
        g.kill(block=False)
    _engine_lag.clear()
    if isinstance(environment.runner, MasterRunner) or \
            swarm.option(environment, "receive_engine", DEFAULT_RECEIVE_ENGINE) != "batch":
        return
    engine = engine_for(swarm.ledger)

    def watch() -> None:
        shipped = time.monotonic()
        unstamped = engine.unstamped_reads
        while not swarm.run.flushed:
            gevent.sleep(swarm.Health.TICK_S)  # a probe as often as the gevent loop's own lag is probed
            if not engine.running:
                continue
            engine.probe()
            # every tick, not every ship: a count moved at INTERVAL_S would leave the last interval's out of the
            # final report
            now_unstamped = engine.unstamped_reads
            swarm.run.health.unstamped_reads += now_unstamped - unstamped
            unstamped = now_unstamped
            if time.monotonic() - shipped >= swarm.Health.INTERVAL_S:
                swarm.run.health.lag_ms.append((CLOCK.time(), engine.lag_ms()))
                shipped = time.monotonic()

    _engine_lag.append(gevent.spawn(watch))


events.init_command_line_parser.add_listener(_options)
events.test_start.add_listener(_reset_uids)
events.test_start.add_listener(_watch_engine)
events.test_start.add_listener(lambda environment, **_: check_open_files(environment))
events.init.add_listener(_start_metrics)
swarm.register()


def worker_index(env: Environment) -> int:
    return max(int(getattr(env.runner, "worker_index", 0)), 0)


def worker_count(env: Environment) -> int:
    return int(env.runner.worker_count) if isinstance(env.runner, MasterRunner) else 1


def planned_uids(env: Environment, users: int) -> list[int]:
    """Every uid the swarm's users can take, for provisioning on the coordinator."""
    workers = worker_count(env)
    per_worker = math.ceil(users / workers)
    if env.parsed_options is not None:
        env.parsed_options.members_per_process = per_worker  # reaches the workers with the spawn message
        check_open_files(env)  # a LocalRunner checks itself here; workers at their test start
    return [w * UID_BLOCK + k + 1 for w in range(workers) for k in range(per_worker)]


def check_open_files(env: Environment) -> bool:
    """Fail early — before any member connects — when this process's open-file limit (RLIMIT_NOFILE, soft) is below
    the members it will hold (``members_per_process``, planned by the coordinator) plus :data:`FD_MARGIN`: log the
    limit and the fix, and stop this process with exit code 1 (a worker leaves the run, which the master then marks
    invalid: a worker lost). True when the limit suffices (or nothing is planned yet, or on the master)."""
    members = int(swarm.option(env, "members_per_process", 0) or 0)
    if not members or isinstance(env.runner, MasterRunner):
        return True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = members + FD_MARGIN
    if soft >= need:
        return True
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    log.critical(
        "this generator process would hold %d members (one socket each) but its open-file limit RLIMIT_NOFILE is "
        "%d (soft; hard %s): it needs at least %d (members + %d). Raise it before starting Locust — `ulimit -n %d` "
        "in the shell (up to the hard limit; above it: /etc/security/limits.conf, LimitNOFILE= in a systemd unit, "
        "`--ulimit nofile=%d:%d` for docker) — or spread the members over more worker processes (at most %d per "
        "process at this limit)", members, soft, hard_text, need, FD_MARGIN, need, need, need, max(soft - FD_MARGIN, 0))
    env.process_exit_code = 1
    assert env.runner is not None
    gevent.spawn(env.runner.quit)
    return False


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
    """One chat member on one connection, its deliveries checked by the ledger. Subclass it; ``--host ws://...``."""

    abstract = True
    #: seconds between heartbeats (None: none; the server closes connections silent for idle_timeout_s)
    heartbeat_s: ClassVar[float | None] = 25.0
    #: seconds to wait for a reply before a request fails
    request_timeout: ClassVar[float] = 10.0
    #: seconds to wait for the WebSocket handshake and hello
    connect_timeout: ClassVar[float] = 15.0
    #: reconnect with exponential backoff and full jitter: attempt n first waits uniform(0, min(cap, base · 2ⁿ))
    reconnect_base_s: ClassVar[float] = 0.5
    reconnect_cap_s: ClassVar[float] = 30.0
    reconnect_attempts: ClassVar[int] = 8
    #: reconnect by itself when the connection drops (4001 slow consumer, 1006, ...)
    auto_reconnect: ClassVar[bool] = True
    #: dead-connection detection: a heartbeat unanswered this long ends the connection (a half-open one sends no
    #: FIN); auto_reconnect then brings it back. None: off
    pong_timeout_s: ClassVar[float | None] = 10.0
    #: backoff with full jitter (True) or none (False: every client waits exactly min(cap, base · 2ⁿ))
    reconnect_jitter: ClassVar[bool] = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host or not self.host.startswith(("ws://", "wss://")):
            raise ValueError(f"ChatUser needs --host ws://HOST:PORT (the server's WebSocket URL), got {self.host!r}")
        index = next(_local_index)
        self.uid = worker_index(environment) * UID_BLOCK + index + 1
        secret = swarm.option(environment, "chat_secret", protocol.DEV_SECRET)
        self.token = protocol.user_token(secret, self.uid)
        self.ledger: ReceiverLedger = swarm.ledger.receiver(self.uid)
        # the run's options override the scenario's class defaults
        self._heartbeat_s = swarm.option(environment, "heartbeat_s", 0.0) or self.heartbeat_s
        self._pong_timeout_s = swarm.option(environment, "pong_timeout_s", 0.0) or self.pong_timeout_s
        self._jitter = self.reconnect_jitter and swarm.option(environment, "backoff_jitter", "full") != "none"
        #: network profile (drivers/profiles.py) this member connects through; ``direct``: no proxy
        self.profile = DIRECT
        mix = netproxy.mix(environment)
        if mix:
            self.profile = self.choose_profile(mix, index)
            self.ledger.profile = self.profile
            swarm.ledger.profile(self.profile)["counts"]["members"] += 1
        self.client: ChatClient | None = None
        self.hello: Frame = {}
        self.offline = False  # taken offline on purpose (go_offline); no auto-reconnect

    # -- lifecycle
    def on_start(self) -> None:
        try:
            self.hello = self._timed("connect", self._open)
        except Exception:
            # per profile too: a weak network's failed connects are part of its measure (drivers/bundle.py)
            self.ledger.count("connect_failures")
            raise
        swarm.users[self.uid] = self

    def on_stop(self) -> None:
        swarm.users.pop(self.uid, None)
        self._close()

    def choose_profile(self, mix: dict[str, float], index: int) -> str:
        """This member's network profile in a ``--profile-mix`` run (override to pin e.g. senders to direct)."""
        return assign(mix, index)

    def _url(self) -> str:
        """The gateway to connect to: the profile's impairing proxy, the cluster front's pick, or --host."""
        if self.profile != DIRECT:
            return netproxy.url(self.environment, self.profile)
        front = swarm.option(self.environment, "front_url", "")
        if front:
            return front_gateway(front, self.connect_timeout)
        assert self.host is not None
        return self.host

    def _open(self) -> Frame:
        pong_timeout_s = self._pong_timeout_s if self._heartbeat_s else None
        client: ChatClient
        if swarm.option(self.environment, "receive_engine", DEFAULT_RECEIVE_ENGINE) == "batch":
            # the process's receive engine holds the connection; pushes reach self.ledger in batches
            client = EngineClient(self._url(), self.uid, self.token, receiver=self.ledger,
                                  engine=engine_for(swarm.ledger), on_hello=self.ledger.on_connect,
                                  on_frame=self._on_frame, heartbeat_s=self._heartbeat_s,
                                  request_timeout=self.request_timeout, connect_timeout=self.connect_timeout,
                                  pong_timeout_s=pong_timeout_s)
        else:
            client = ChatClient(self._url(), self.uid, self.token, on_message=self.ledger.on_push,
                                on_hello=self.ledger.on_connect, on_frame=self._on_frame,
                                heartbeat_s=self._heartbeat_s, request_timeout=self.request_timeout,
                                connect_timeout=self.connect_timeout, pong_timeout_s=pong_timeout_s)
        hello = client.connect()
        self.client = client
        return hello

    def _on_frame(self, frame: Frame) -> None:
        """Frames that are neither pushes nor replies: the ``offline`` frame (buffer modes), late replies."""
        if frame.get("op") == "offline":
            self.ledger.on_offline(frame)

    def _close(self) -> None:
        client = self.client
        if client is not None:
            self.ledger.on_disconnect()
            client.close()

    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.closed

    def go_offline(self) -> None:
        """Close the connection on purpose (e.g. a reconnect storm); :meth:`reconnect` brings it back."""
        self.offline = True
        self._close()

    def reconnect(self, *, backoff: bool = True) -> bool:
        """Connect again (after a backoff with full jitter, if ``backoff``), then catch up every group by sync.

        Fires ``reconnect`` (handshake + hello) and ``catchup`` (start of the successful attempt → every group
        synced up to the reconnect's hello.max) request events; counts ``reconnects``, ``reconnect_failures``
        and the catch-up figures.
        """
        if self.client is not None and self.client.dead:
            self.ledger.count("dead_connections")
        self._close()
        started = now_us()
        for attempt in range(self.reconnect_attempts):
            if backoff:
                ceiling = min(self.reconnect_cap_s, self.reconnect_base_s * 2**attempt)
                gevent.sleep(random.uniform(0, ceiling) if self._jitter else ceiling)
            started = now_us()  # catch-up time counts from the successful attempt, not from the backoff
            try:
                self.hello = self._timed("reconnect", self._open, raise_connect=True)
                break
            except Exception:
                if not backoff:
                    gevent.sleep(random.uniform(0, self.reconnect_base_s))
        else:
            self.ledger.count("reconnect_failures")
            return False
        self.ledger.count("reconnects")
        self.offline = False
        t0 = time.perf_counter()
        ok = self.ledger.catch_up(self.timed_sync, started)
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name="catchup", response_time=(now_us() - started) / 1000,
            response_length=0, exception=None if ok else ChatClientError("catch-up incomplete"),
            context={"uid": self.uid, "sync_s": time.perf_counter() - t0},
        )
        return ok

    @property
    def wants_reconnect(self) -> bool:
        """The connection dropped by itself, ``auto_reconnect`` is set and the run goes on."""
        return self.auto_reconnect and not self.offline and self.client is not None and self.client.closed \
            and not swarm.run.stopping

    def ensure_connected(self) -> None:
        """Reconnect (with catch-up) if the connection dropped by itself and ``auto_reconnect`` is set."""
        if self.wants_reconnect:
            self.reconnect()

    def reconcile(self, rl: ReceiverLedger, cutoff_us: int) -> None:
        """End of run (called by the swarm): sync every group's tail and run the unread oracle."""
        client = self.client
        if client is None:
            return
        rl.reconcile(client.sync, cutoff_us)
        try:
            rl.check_unread(client.unread, client.read)
        except ChatClientError:
            swarm.ledger.counts["unread_skipped"] += 1

    # -- requests, each a Locust request event; each returns the reply, or None when the request failed
    def send(self, gid: int, body: str, to: list[int] | None = None) -> Frame | None:
        """Closed model: send and wait for the ack."""
        client = self.client
        if client is None or swarm.run.stopping:
            return None
        cts = now_us()
        reply: Frame | None = self._timed("send", lambda: client.send(gid, body, to=to, cts=cts))
        if reply is not None:
            swarm.ledger.on_ack(self.uid, reply, cts, to is not None)
        else:
            swarm.ledger.counts["send_failed"] += 1
        return reply

    def send_at(self, gid: int, body: str, cts: int, to: list[int] | None = None) -> None:
        """Open model: send now without waiting, with ``cts`` = the intended send time; the ack is recorded later."""
        client = self.client
        if client is None or client.closed:
            swarm.ledger.counts["send_failed"] += 1
            return
        t0 = time.perf_counter()
        private = to is not None

        def on_ack(reply: Frame) -> None:
            exc = None
            if reply.get("op") == "ack":
                swarm.ledger.on_ack(self.uid, reply, cts, private)
            else:
                swarm.ledger.counts["send_failed"] += 1
                exc = ChatClientError(f"{reply.get('code')}: {reply.get('msg', '')}")
            self.environment.events.request.fire(
                request_type=REQUEST_TYPE, name="send", response_time=(time.perf_counter() - t0) * 1000,
                response_length=0, exception=exc, context={"uid": self.uid},
            )

        try:
            client.send_nowait(gid, body, cts=cts, on_ack=on_ack, to=to)
        except ChatClientError:
            swarm.ledger.counts["send_failed"] += 1

    def run_schedule(self, gid: int | Callable[[], int], schedule: Schedule | LiveSchedule, body: str = SEND_BODY,
                     to: Callable[[], list[int] | None] | None = None) -> None:
        """Send on ``schedule`` until it ends or the run stops (open model; see the module doc).

        ``gid`` may be a callable, called per slot (e.g. a random group of the user's).
        """
        counts = swarm.ledger.counts
        for slot_us, burst in schedule.slots():
            while True:
                if swarm.run.stopping:
                    return
                wait = slot_us / 1e6 - CLOCK.time()
                if wait <= 0:
                    break
                gevent.sleep(min(wait, 0.5))
            late_s = CLOCK.time() - slot_us / 1e6
            if late_s > schedule.tolerance_s:
                counts["missed_send_slots"] += burst
                gevent.sleep(0)  # a generator far behind still lets the hub run (the run's stop, the reports)
                continue
            if not self.connected:
                self.ensure_connected()
                if not self.connected:
                    counts["missed_send_slots"] += burst
                    continue
            for _ in range(burst):
                self.send_at(gid() if callable(gid) else gid, body, slot_us, to() if to is not None else None)

    def sync(self, gid: int, after: int, limit: int = 100) -> Frame | None:
        client = self.client
        if client is None:
            return None
        reply: Frame | None = self._timed("sync", lambda: client.sync(gid, after, limit))
        return reply

    def timed_sync(self, gid: int, after: int, limit: int) -> Frame:
        """sync for the ledger: a Locust request event, and raises on failure (the ledger counts it)."""
        client = self.client
        if client is None:
            raise ChatClientError("not connected")
        reply: Frame = self._timed("sync", lambda: client.sync(gid, after, limit), raise_any=True)
        return reply

    def read(self, gid: int, seq: int) -> Frame | None:
        client = self.client
        if client is None:
            return None
        reply: Frame | None = self._timed("read", lambda: client.read(gid, seq))
        if reply is not None:
            self.ledger.note_read(reply)
        return reply

    def _timed(self, name: str, call: Callable[[], Any], *, raise_connect: bool = False,
               raise_any: bool = False) -> Any:
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
        if exc is not None and (raise_any or raise_connect or name == "connect"):
            raise exc
        return result


def until_dropped(seconds: float) -> Callable[[ChatUser], float]:
    """A ``wait_time`` for members whose task, between sends, only keeps their connection (``ensure_connected``):
    the user waits until its connection ends — its task then runs at once and reconnects — or ``seconds`` pass.

    Against ``constant(2)``: no wake-up every 2 s for each of 10,000 receivers (~6 % of a core in gevent's hub and
    Locust's task loop, measured in large_group_burst), and a dropped member reconnects when it drops, as a real
    client would, not up to 2 s later. The wait is inside wait_time, where Locust's state is WAITING: a stop kills
    it at once, as it would a sleep. A connection closed for good (offline on purpose, the run stopping, no
    auto-reconnect) waits ``seconds``, so a user with nothing to wait for does not spin."""

    def wait(user: ChatUser) -> float:
        if user.wants_reconnect:
            return 0.0
        client = user.client
        if client is None or client.closed:
            return seconds
        client.wait_closed(seconds)
        return 0.0

    return wait


def stopping() -> bool:
    """True once the run is ending: senders stop (the ledgers are being reconciled)."""
    return swarm.run.stopping


def on_worker(env: Environment) -> bool:
    return isinstance(env.runner, WorkerRunner)


def offline_uids(n: int) -> list[int]:
    """``n`` uids no swarm user takes (the block after every worker's): members that never connect."""
    return [OFFLINE_BLOCK * UID_BLOCK + k + 1 for k in range(n)]


def provision_group(env: Environment, gid: int = 0, offline: int = 0, history: int = 0) -> None:
    """The one-group scenarios' setup (coordinator, test start): create ``--members`` users and one group of all
    of them (``opts.chat_group``: ``gid``, or a new random one) plus ``offline`` members that never connect, and
    pick ``--senders`` of them (``opts.sender_uids``). ``history``: that many messages stored in the group first,
    read by everyone (the server's tables at a stated size: write diffusion's index grows with it)."""
    opts = env.parsed_options
    assert opts is not None
    uids = planned_uids(env, opts.members) + offline_uids(offline)
    admin = admin_client(env)
    provision_users(admin, uids)
    opts.chat_group = gid or random.randrange(1, 2**62)
    admin.create_groups({opts.chat_group: uids})
    if history:
        t0 = time.monotonic()
        seeded = admin.seed_history(opts.chat_group, history, body=SEND_BODY)
        log.info("group %d: %d messages of history seeded (%d storage rows) in %.1f s", opts.chat_group, history,
                 seeded.get("storage_writes", 0), time.monotonic() - t0)
    opts.sender_uids = sender_uids(env, opts.members, opts.senders)


def sender_uids(env: Environment, users: int, senders: int) -> list[int]:
    """``senders`` uids spread evenly over the worker blocks (each worker's first users), for the options."""
    workers = worker_count(env)
    per_worker = math.ceil(users / workers)
    out = [w * UID_BLOCK + k + 1 for k in range(per_worker) for w in range(workers)
           if k * workers + w < users]
    return out[:senders]
