"""The swarm's process-level machinery under Locust: one ledger per process, totals on the coordinator, the
end-of-run flush, generator self-health, the repair loop, Locust summary rows, the result bundle.

Data flow. Every generator process records into its :data:`ledger`. Workers ship ``ledger.take()`` with each
Locust worker report (every 3 s) and the master merges it into :data:`totals`; a LocalRunner merges its own.

End of run. The master's ``test_stop`` fires before the workers' last reports arrive (and on ``quit`` Locust
gives them 0.5 s). So on ``test_stopping`` — which fires on the master before it tells workers to stop, in
headless runs, shape ends and web-UI stops alike — the coordinator sends each worker a ``chatbench_flush``
message and waits (bounded) for a ``chatbench_final`` answer from every worker. A worker answering it stops its
senders, waits ``--quiet-s`` for the last deliveries, reconciles every receiver's ledger with the server (tail
losses, unread oracle), freezes the ledger and ships everything it has. Only then does ``test_stop`` settle
fan-out and write the result bundle: it holds every worker's final data, and ``finals_missing`` in the bundle
names any worker that did not answer in time (the run is then marked invalid).
"""

from __future__ import annotations

from locust import events
from locust.env import Environment
from locust.runners import LocalRunner, MasterRunner, WorkerRunner
from locust.stats import bucket_response_time

import gc
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent.pool import Pool

from drivers import autorate, clock
from drivers.clock import CLOCK
from drivers.deliveries import decode_into, new_histogram, recorded
from drivers.ledger import Ledger, now_us
from drivers.shapes import PhasedShape
from drivers.totals import Totals

if TYPE_CHECKING:
    from drivers.locust_user import ChatUser

log = logging.getLogger("chatbench.swarm")

ledger = Ledger()
totals = Totals()
#: connected ChatUsers of this process by uid (for repairs and the final reconciliation)
users: dict[int, ChatUser] = {}


class RunState:
    def __init__(self) -> None:
        self.run_id = ""
        self.started_us = 0
        self.stopping = False  # senders stop at once when set
        self.sending_stopped_us = 0
        self.flushed = False
        self.finals_missing: list[str] = []
        self.workers_seen: set[str] = set()  # every worker that connected during the run (the master's view)
        self.workers_lost: list[str] = []  # workers that went missing (no heartbeats) before the end
        self.workers = 1  # generator processes at the end of the run
        self.server_before: dict[str, float] = {}
        self.server_after: dict[str, float] = {}
        self.health: Health = Health()
        self.bundle_path = ""
        self.scenario_results: dict[str, Any] = {}  # a scenario's own figures, copied into the bundle


class Health:
    """Generator self-health of this process: CPU ratio (process CPU time / wall time) and event-loop lag."""

    INTERVAL_S = 2.0
    TICK_S = 0.05

    def __init__(self) -> None:
        self.cpu: list[tuple[float, float]] = []  # (epoch s, ratio)
        self.cpu_s: list[tuple[float, float]] = []  # (epoch s, this process's CPU seconds so far)
        self.lag_ms: list[tuple[float, float]] = []  # (epoch s, worst lateness in the interval)
        self.unstamped_reads = 0  # receive-engine reads without the kernel's stamp, since the last take
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        self.stop()
        self._greenlets = [gevent.spawn(self._cpu_loop), gevent.spawn(self._lag_loop)]

    def stop(self) -> None:
        for g in self._greenlets:
            g.kill(block=False)
        self._greenlets = []

    def _cpu_loop(self) -> None:
        wall0, cpu0 = time.monotonic(), time.process_time()
        while True:
            gevent.sleep(self.INTERVAL_S)
            wall1, cpu1 = time.monotonic(), time.process_time()
            self.cpu.append((CLOCK.time(), (cpu1 - cpu0) / max(wall1 - wall0, 1e-9)))
            self.cpu_s.append((CLOCK.time(), cpu1))
            wall0, cpu0 = wall1, cpu1

    def _lag_loop(self) -> None:
        worst = 0.0
        last_ship = time.monotonic()
        while True:
            t0 = time.monotonic()
            gevent.sleep(self.TICK_S)
            late = (time.monotonic() - t0 - self.TICK_S) * 1000
            worst = max(worst, late)
            if time.monotonic() - last_ship >= self.INTERVAL_S:
                self.lag_ms.append((CLOCK.time(), worst))
                worst = 0.0
                last_ship = time.monotonic()

    def take(self) -> dict[str, Any]:
        data = {"cpu": self.cpu, "lag_ms": self.lag_ms, "cpu_s": [*self.cpu_s, (CLOCK.time(), time.process_time())],
                "unstamped_reads": self.unstamped_reads}
        self.cpu, self.lag_ms, self.cpu_s, self.unstamped_reads = [], [], [], 0
        return data


run = RunState()


# --------------------------------------------------------------------------------------------------------------
# helpers

def is_coordinator(env: Environment) -> bool:
    """True on the process that provisions and reports: the master, or the only process."""
    return not isinstance(env.runner, WorkerRunner)


def option(env: Environment, name: str, default: Any = None) -> Any:
    return getattr(env.parsed_options, name, default) if env.parsed_options is not None else default


def ship(env: Environment) -> dict[str, Any]:
    data = ledger.take()
    data["health"] = run.health.take()
    data["clock"] = CLOCK.take()
    return data


def merge(env: Environment, data: dict[str, Any], worker: str) -> None:
    totals.merge(data, worker)
    add_summary_rows(env, data)


def add_summary_rows(env: Environment, data: dict[str, Any]) -> None:
    """Deliveries and send→ack from HDR into Locust's statistics as rows (type ``HDR``): the UI and CSV show them."""
    for name, key in (("delivery", "latency"), ("send→ack (from schedule)", "send_ack")):
        text = data[key]["hdr"]
        h = new_histogram()
        decode_into(h, text)
        total = h.get_total_count()
        if not total:
            continue
        entry = env.stats.get(name, "HDR")
        now = time.time()
        for highest_us, count in recorded(h):
            ms: Any = highest_us / 1000  # Locust annotates its stats as int; its own request events give floats
            entry.total_response_time += ms * count
            entry.response_times[bucket_response_time(round(ms))] += count
            entry.min_response_time = ms if entry.min_response_time is None else min(entry.min_response_time, ms)
            entry.max_response_time = max(entry.max_response_time, ms)
        entry.num_requests += total
        entry.num_reqs_per_sec[int(now)] += total
        entry.last_request_timestamp = now


# --------------------------------------------------------------------------------------------------------------
# background loops of every generator process

def _repair_loop(env: Environment) -> None:
    """Sync over holes older than ``--repair-grace-s``, a bounded number of users at a time."""
    pool = Pool(50)
    grace = float(option(env, "repair_grace_s", 1.0))
    while not run.stopping:
        gevent.sleep(0.5)
        due = now_us() - int(grace * 1e6)
        for rl in list(ledger.holey):  # only receivers that saw a hole: no per-user scan
            if not rl.has_holes():
                ledger.holey.discard(rl)
                continue
            user = users.get(rl.uid)
            if rl.repairing or user is None or user.client is None or user.client.closed or not rl.holes_due(due):
                continue
            pool.spawn(rl.repair, user.timed_sync, due)


def _settle_loop(env: Environment) -> None:
    """Complete fan-out of messages older than --fanout-settle-s: one rule, whoever watches (metrics only read)."""
    after = float(option(env, "fanout_settle_s", 30.0))
    while not run.flushed:
        gevent.sleep(1.0)
        totals.settle(after)


_probes: dict[int, tuple[int, int, int, int]] = {}  # probe id -> (t1, t2, t3, t4), this burst


def _clock_loop(env: Environment) -> None:
    """A worker, from its start: estimate the offset to the master's clock now and every --clock-interval-s
    (drivers/clock.py). Started with the worker, not with the run, so that the first estimate — always applied —
    is taken while nothing else runs rather than while the users connect; the options come from the master with
    each run's spawn message, so they are read at every estimate."""
    runner = env.runner
    assert isinstance(runner, WorkerRunner)
    ids = itertools.count()
    while True:
        interval = float(option(env, "clock_interval_s", 5.0))
        good_enough_us = int(float(option(env, "clock_bound_ms", 1.0)) * 1000)
        _probes.clear()
        for _ in range(clock.BURST):
            runner.send_message("chatbench_clock_ping", {"id": next(ids), "t1": clock.local_us()})
            gevent.sleep(clock.SPACING_S)
        deadline = time.monotonic() + clock.BURST_TIMEOUT_S
        while len(_probes) < clock.BURST and time.monotonic() < deadline:
            gevent.sleep(0.005)
        found = clock.estimate(_probes.values())
        if found is not None:
            CLOCK.update(*found, good_enough_us)
        gevent.sleep(interval)


def _on_clock_ping(environment: Environment, msg: Any, **_: Any) -> None:
    """The master: answer a worker's probe at once with its own clock (the reference: never corrected)."""
    t = clock.local_us()
    assert environment.runner is not None
    environment.runner.send_message("chatbench_clock_pong", {**msg.data, "t2": t, "t3": clock.local_us()},
                                    client_id=msg.node_id)


def _on_clock_pong(environment: Environment, msg: Any, **_: Any) -> None:
    t4 = clock.local_us()
    d = msg.data
    _probes[int(d["id"])] = (int(d["t1"]), int(d["t2"]), int(d["t3"]), t4)


def _local_merge_loop(env: Environment) -> None:
    while True:
        gevent.sleep(1.0)  # a LocalRunner's live figures (Prometheus, the UI rows) move every second
        if not run.flushed:
            merge(env, ship(env), "local")


def finalize_local(env: Environment, quiet_s: float) -> None:
    """Stop sending, let deliveries land, reconcile every connected receiver with the server, freeze the ledger."""
    if run.flushed:
        return
    run.stopping = True
    run.sending_stopped_us = now_us()
    gevent.sleep(quiet_s)
    pool = Pool(100)
    cutoff = run.sending_stopped_us
    for uid, user in list(users.items()):
        rl = ledger.receivers.get(uid)
        if rl is None or user.client is None or user.client.closed:
            continue
        pool.spawn(user.reconcile, rl, cutoff)
    pool.join(timeout=120)
    pool.kill()
    ledger.frozen = True
    run.flushed = True


# --------------------------------------------------------------------------------------------------------------
# Locust event listeners

_background: list[gevent.Greenlet] = []


#: how long the coordinator waits for every worker to start the ledgers of a new group
JOIN_TIMEOUT_S = 10.0
_joined: dict[int, set[str]] = {}  # gid -> workers that started its ledgers (coordinator)


def join_group(env: Environment, gid: int, uids: list[int]) -> bool:
    """The coordinator made ``uids`` members of a new group ``gid`` (a capacity search over group sizes): every
    process starts the ledgers of its receivers among them at seq 0. Returns once every worker has (False after
    JOIN_TIMEOUT_S without all of them: then a push may reach a ledger first, counted ``unexpected_group``)."""
    runner = env.runner
    if not isinstance(runner, MasterRunner):
        _join(gid, uids)
        return True
    workers = set(runner.clients.keys())
    _joined[gid] = set()
    runner.send_message("chatbench_join", {"gid": gid, "uids": uids})
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not workers <= _joined[gid] and time.monotonic() < deadline:
        gevent.sleep(0.05)
    done = workers <= _joined.pop(gid)
    if not done:
        log.warning("group %d: not every worker confirmed its ledgers within %g s", gid, JOIN_TIMEOUT_S)
    return done


def _join(gid: int, uids: list[int]) -> None:
    t = now_us()
    for uid in uids:
        r = ledger.receivers.get(uid)
        if r is not None:
            r.join(gid, t)


def _on_join(environment: Environment, msg: Any, **_: Any) -> None:
    _join(int(msg.data["gid"]), [int(u) for u in msg.data["uids"]])
    runner = environment.runner
    assert isinstance(runner, WorkerRunner)
    runner.send_message("chatbench_joined", {"gid": int(msg.data["gid"]), "worker": runner.client_id})


def _on_joined(environment: Environment, msg: Any, **_: Any) -> None:
    joined = _joined.get(int(msg.data["gid"]))
    if joined is not None:
        joined.add(str(msg.data["worker"]))


def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message("chatbench_flush", _on_flush, concurrent=True)
        runner.register_message("chatbench_clock_pong", _on_clock_pong)
        runner.register_message("chatbench_level", autorate.on_level)
        runner.register_message("chatbench_join", _on_join)
        gevent.spawn(_clock_loop, environment)  # for the worker's life: the first estimate precedes any run
    elif isinstance(runner, MasterRunner):
        runner.register_message("chatbench_final", _on_final)
        runner.register_message("chatbench_clock_ping", _on_clock_ping)
        runner.register_message("chatbench_joined", _on_joined)
        environment.events.worker_connect.add_listener(lambda client_id, **_: run.workers_seen.add(client_id))


#: the cyclic garbage collector's thresholds in a generator process (Python's: 700, 10, 10). A collection holds the
#: GIL, so it stops the gevent loop and the receive engine alike; a full one walks every live object — with a few
#: thousand members' ledgers, ~0.2–0.4 s, repeated while the heap grows (a 2,000-member many_groups run: a third of
#: the connect phase's CPU, both loops 100–440 ms late, the run invalid). Young collections every 50,000
#: allocations stay short; what lives when a process's users are spawned is frozen out of later collections.
GC_THRESHOLDS: Final = (50_000, 20, 1_000)


def _quiet_gc(**_: Any) -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def _freeze_survivors(**_: Any) -> None:
    """All users spawned: what lives now (members, ledgers, connections) lives for the run — out of the collector."""
    gc.freeze()


def _unfreeze(**_: Any) -> None:
    gc.unfreeze()  # the run ended: its objects may be collected again (the next run in the web UI starts afresh)


#: the scenarios' provisioning, in the order registered (see :func:`provisioner`)
_provisioners: list[Callable[[Environment], None]] = []


def provisioner(fn: Callable[[Environment], None]) -> Callable[[Environment], None]:
    """Register a scenario's provisioning: called on the coordinator at test start, before the run's clock, the
    phase timeline and the server's start reading begin — so creating users and groups, or seeding history, is
    not the run's time or cost however long it takes."""
    _provisioners.append(fn)
    return fn


def _on_test_start(environment: Environment, **_: Any) -> None:
    for g in _background:
        g.kill(block=False)
    _background.clear()
    run.stopping = run.flushed = False
    run.finals_missing = []
    run.workers_lost = []
    if isinstance(environment.runner, MasterRunner):
        run.workers_seen = {c.id for c in environment.runner.clients.all}
    run.workers = 1
    ledger.frozen = False
    ledger.take()  # a new run starts from zero (users of an earlier run in the web UI are gone)
    ledger.receivers.clear()
    users.clear()
    if is_coordinator(environment):
        for provision in _provisioners:
            provision(environment)
        given = option(environment, "run_id", "")  # e.g. chatbench run's id, so Prometheus labels agree
        run.run_id = given or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        run.started_us = now_us()
        run.server_after = {}
        run.scenario_results = {}
        run.bundle_path = ""
        if environment.parsed_options is not None:  # phase clock of the scenario; travels to the workers
            environment.parsed_options.chatbench_t0 = CLOCK.time()
        totals.__init__()  # type: ignore[misc]
        from drivers import bundle

        run.server_before = bundle.server_counters(environment)
        _background.append(gevent.spawn(_settle_loop, environment))
    autorate.reset(environment)
    if autorate.STATE.active and is_coordinator(environment):
        shape = environment.shape_class
        opts = environment.parsed_options
        # the first step begins with the search phase (after connect and settle), when the senders follow the level
        start_at = shape.search_start(opts) if isinstance(shape, PhasedShape) and opts is not None else 0.0
        _background.append(gevent.spawn(autorate.control, environment, totals, start_at))
    if isinstance(environment.runner, WorkerRunner):
        CLOCK.correct = not option(environment, "no_clock_correction", False)
        CLOCK.new_run()
    if not isinstance(environment.runner, MasterRunner):
        run.health.start()
        _background.append(gevent.spawn(_repair_loop, environment))
        if isinstance(environment.runner, LocalRunner):
            _background.append(gevent.spawn(_local_merge_loop, environment))


def _on_report(client_id: str, data: dict[str, Any]) -> None:
    if not run.stopping:  # from the stop on, everything goes with the final data
        data["chatbench"] = ship(_env())


def _on_worker_report(client_id: str, data: dict[str, Any]) -> None:
    if "chatbench" in data:
        merge(_env(), data["chatbench"], client_id)


def _on_flush(environment: Environment, msg: Any, **_: Any) -> None:
    finalize_local(environment, float(msg.data.get("quiet_s", 2.0)))
    data = ship(environment)
    data["final"] = True
    run.health.stop()
    assert environment.runner is not None
    environment.runner.send_message("chatbench_final", data)


def _on_final(environment: Environment, msg: Any, **_: Any) -> None:
    merge(environment, msg.data, msg.node_id)
    totals.finals.add(msg.node_id)


def _on_test_stopping(environment: Environment, **_: Any) -> None:
    if not is_coordinator(environment) or run.flushed:
        return
    quiet = float(option(environment, "quiet_s", 2.0))
    from drivers import bundle

    run.server_after = bundle.server_counters(environment)  # before the reconciliation's own requests
    # the generator is judged while deliveries land (quiet_s after the stop), not on the reconciliation's work
    totals.set_measure_until(CLOCK.time() + quiet)
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        present = {c.id for c in runner.clients.all if c.state != "missing"}
        workers = run.workers_seen | present
        # a worker removed after missing heartbeats is no longer among the clients: it was lost mid-run
        run.workers_lost = sorted(workers - present)
        workers = present
        run.workers = len(workers)
        totals.finals.clear()
        runner.send_message("chatbench_flush", {"quiet_s": quiet})
        deadline = time.monotonic() + quiet + float(option(environment, "flush_timeout_s", 90.0))
        while not workers <= totals.finals and time.monotonic() < deadline:
            gevent.sleep(0.1)
        run.finals_missing = sorted(workers - totals.finals)
        run.flushed = True
        if run.finals_missing:
            log.error("no final data from workers %s: the bundle misses their last reports", run.finals_missing)
    else:
        finalize_local(environment, quiet)
        merge(environment, ship(environment), "local")
    run.health.stop()


def _on_test_stop(environment: Environment, **_: Any) -> None:
    if not is_coordinator(environment) or not run.run_id or run.bundle_path:
        return
    from drivers import bundle

    totals.settle()
    result = bundle.build(environment, totals, run)
    run.bundle_path = str(bundle.write(environment, result))
    bundle.print_summary(result, run.bundle_path)


_environment: list[Environment] = []


def _remember_env(environment: Environment, **_: Any) -> None:
    _environment[:] = [environment]


def _env() -> Environment:
    return _environment[0]


def register() -> None:
    """Add the listeners once per process (scenarios import this module through drivers.locust_user)."""
    if getattr(register, "done", False):
        return
    register.done = True  # type: ignore[attr-defined]
    events.init.add_listener(_remember_env)
    events.init.add_listener(_on_init)
    events.init.add_listener(_quiet_gc)
    events.spawning_complete.add_listener(_freeze_survivors)
    events.test_start.add_listener(_on_test_start)
    events.report_to_master.add_listener(_on_report)
    events.worker_report.add_listener(_on_worker_report)
    events.test_stopping.add_listener(_on_test_stopping)
    events.test_stop.add_listener(_on_test_stop)
    events.test_stop.add_listener(_unfreeze)
