"""One benchmark run: start the server (embedded, or a cluster over Redis), wait until it is healthy, run the
scenario under Locust headless, sample the server while it runs, write one result bundle, stop everything.

What the orchestrator adds to the swarm's bundle (it alone sees every server process):

* ``metrics.server_cpu_s`` — on-CPU seconds of **every** server process (logic node and gateways in a
  cluster) from schedstat (ns), over the swarm's whole lifetime (connect, traffic, end-of-run reconciliation);
  the swarm's own figure (the admin node's 10 ms ticks, traffic window only) is kept as ``server_cpu_s_ticks``.
* ``metrics.server_cpu_us_per_message``, ``deliveries_per_server_cpu_s`` from that CPU.
* in a cluster, deliveries summed over all processes (the swarm reads only the logic node; its per-message
  costs, bus messages included, stay the logic node's over the traffic window).
* ``server``: per process role, pid and CPU; Redis CPU apart; counter deltas summed over the processes.
* ``timeseries``: every second, messages accepted/s, deliveries/s and server CPU ratio (all processes).

Only processes started here are signalled, by PID; everything is stopped also on Ctrl-C or failure.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import record
from chatbench import bundles
from drivers.admin import SAMPLED_SERIES, AdminClient
from harness.cluster import DEFAULT_FANOUT, Cluster
from harness.cpuquota import CpuQuota
from harness.procs import ADMIN_TOKEN, REPO, SECRET, ServerProcess
from record.machine import process_cpu_seconds
from record.promtext import add, bucket_quantiles, counters, delta

SCENARIOS = REPO / "scenarios"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    scenario: str
    # modes: None = the server's default (defined once, in reference_server/config.py; a cluster: broadcast)
    fanout: str | None = None
    storage: str | None = None
    unread: str | None = None
    offline: str | None = None
    cluster: int = 0  # gateways; 0 = the embedded server
    users: int = 300
    spawn_rate: float = 200
    duration: str = "30s"
    processes: int = 1
    server_args: tuple[str, ...] = ()
    locust_args: tuple[str, ...] = ()
    results_dir: Path = REPO / "results"
    server_cpu_quota: float | None = None  # cores: the embedded server in a cgroup holding it to this (root)
    generator_cpu_quota: float | None = None  # cores: the swarm held to this (a generator-bound run, on purpose)
    network: str = ""  # the members' network profile mix (the swarm's --profile-mix); "": the scenario's own

    def cluster_fanout(self) -> str | None:
        """The fan-out mode to ask for: a cluster has no ``local`` mode (None: the default of the layout)."""
        return None if self.cluster and self.fanout == "local" else self.fanout

    def mode_flags(self) -> list[str]:
        """Server flags for the modes asked for; the others stay the server's defaults."""
        modes = {"storage": self.storage, "unread": self.unread, "offline": self.offline}
        if not self.cluster:
            modes["fanout"] = self.fanout
        return [arg for name, value in modes.items() if value for arg in (f"--{name}", value)]

    def record(self) -> dict[str, Any]:
        return {"fanout": self.cluster_fanout(), "storage": self.storage, "unread": self.unread,
                "offline": self.offline, "cluster_gateways": self.cluster, "server_cpu_quota": self.server_cpu_quota,
                "generator_cpu_quota": self.generator_cpu_quota,
                "processes": self.processes,
                "users": self.users, "spawn_rate": self.spawn_rate, "duration": self.duration,
                "server_args": list(self.server_args), "locust_args": list(self.locust_args)}


@dataclass
class RunOutcome:
    bundle: dict[str, Any] | None
    path: Path | None
    locust_rc: int
    locust_output: str
    elapsed_s: float
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] | None = field(default_factory=dict)  # None: the servers could not be read after


def scenario_path(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".py" and path.exists():
        return path
    path = SCENARIOS / f"{name}.py"
    if not path.exists():
        known = sorted(p.stem for p in SCENARIOS.glob("*.py") if not p.stem.startswith("_"))
        raise SystemExit(f"no scenario {name!r}; known: {', '.join(known)}")
    return path


class ServerReadError(RuntimeError):
    """A server process could not be read (exited, or its /metrics failed)."""


class Servers:
    """The system under test for one run: one embedded server, or Redis + logic node + K gateways."""

    def __init__(self, cfg: RunConfig, tmp: Path) -> None:
        modes = cfg.mode_flags()
        self.cluster: Cluster | None = None
        self.embedded: ServerProcess | None = None
        if cfg.cluster:
            if cfg.server_cpu_quota is not None:
                raise SystemExit("--server-cpu-quota applies to the embedded server only")
            self.cluster = Cluster(cfg.cluster, *modes, *cfg.server_args, db_path=tmp / "chat.db",
                                   fanout=cfg.cluster_fanout() or DEFAULT_FANOUT)
        else:
            self.embedded = ServerProcess(*modes, *cfg.server_args, db_path=tmp / "chat.db", new_session=True,
                                          die_with_parent=True, cpu_quota=cfg.server_cpu_quota)

    def __enter__(self) -> Servers:
        if self.cluster is not None:
            self.cluster.start()
        else:
            assert self.embedded is not None
            self.embedded.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.embedded is not None:
            self.embedded.stop()

    def processes(self) -> list[tuple[str, ServerProcess]]:
        if self.cluster is not None:
            assert self.cluster.logic is not None
            return [("logic", self.cluster.logic)] + [(f"gateway{i}", g) for i, g in
                                                     enumerate(self.cluster.gateways, 1)]
        assert self.embedded is not None
        return [("embedded", self.embedded)]

    @property
    def admin(self) -> AdminClient:
        srv = self.processes()[0][1]
        assert srv.admin is not None
        return srv.admin

    @property
    def admin_url(self) -> str:
        return self.processes()[0][1].admin_url

    @property
    def ws_url(self) -> str:
        # Locust's --host; in a cluster users ask --front-url for a gateway at every (re)connect, this is a fallback
        procs = self.processes()
        return procs[1][1].ws_url if self.cluster is not None else procs[0][1].ws_url

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for _role, srv in self.processes():
            assert srv.admin is not None
            srv.admin.wait_healthy(max(deadline - time.monotonic(), 0.1))

    def read(self, names: Sequence[str] = ()) -> tuple[dict[str, float], dict[str, float]]:
        """(counters summed over every server process — only ``names``, if given —, schedstat CPU seconds per
        role). Raises :class:`ServerReadError` naming each process that could not be read (gone, or its /metrics
        unreadable): a sum without it would be a false figure."""
        total: dict[str, float] = {}
        cpu: dict[str, float] = {}
        failed: list[str] = []
        for role, srv in self.processes():
            assert srv.admin is not None
            if srv.proc is None or srv.proc.poll() is not None:
                failed.append(f"{role} has exited" + ("" if srv.proc is None else f" ({srv.proc.returncode})"))
                continue
            try:
                add(total, counters(srv.admin.metrics_text(names)))
            except Exception as exc:  # any failure of one process makes the whole reading unusable
                failed.append(f"{role}'s /metrics: {type(exc).__name__}: {exc}")
            cpu[role] = process_cpu_seconds(srv.pid)
        if failed:
            raise ServerReadError("; ".join(failed))
        if self.cluster is not None and self.cluster.redis is not None and self.cluster.redis.proc is not None:
            cpu["redis"] = process_cpu_seconds(self.cluster.redis.proc.pid)
        return total, cpu


class Sampler:
    """Samples the servers in its own thread: schedstat CPU every ``cpu_interval_s`` (free for the server), and
    the SERIES counters from /metrics every ``interval_s`` (only those: a full render would freeze the server's
    loop for ~4 ms a second, ~40 ms for a server held to 0.1 core — the sampler would move the p99 it reports)."""

    SERIES = tuple(SAMPLED_SERIES.items())

    def __init__(self, servers: Servers, interval_s: float = 1.0, cpu_interval_s: float = 0.25) -> None:
        self.servers = servers
        self.interval_s = interval_s
        self.cpu_interval_s = cpu_interval_s
        self.samples: list[tuple[float, dict[str, float], float]] = []  # (epoch s, counters, server CPU s)
        self.cpu: list[tuple[float, float]] = []  # (epoch s, server CPU s)
        self.missed: list[str] = []  # why each scrape that could not read every server process failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._cpu_sample()

    def _cpu_sample(self) -> float:
        cpu = sum(process_cpu_seconds(srv.pid) for _, srv in self.servers.processes())
        self.cpu.append((time.time(), cpu))
        return cpu

    def _loop(self) -> None:
        next_scrape = 0.0
        while True:
            if time.monotonic() >= next_scrape:
                next_scrape = time.monotonic() + self.interval_s
                try:
                    c, cpu = self.servers.read([series for _, series in self.SERIES])
                except ServerReadError as exc:  # no sample rather than a partial one; the series spans the gap
                    self.missed.append(str(exc))
                else:
                    self.samples.append((time.time(), c, sum(v for k, v in cpu.items() if k != "redis")))
            else:
                self._cpu_sample()
            if self._stop.wait(self.cpu_interval_s):
                return

    def cpu_at(self, t: float) -> float:
        """Server CPU seconds at epoch ``t``, linear between samples."""
        return record.cpu_at(self.cpu + [(ts, cpu) for ts, _, cpu in self.samples], t)

    def traffic_end(self) -> float | None:
        """Epoch of the first scrape after which neither messages nor deliveries changed (None: never quiet)."""
        last = None
        for (_, ca, _), (tb, cb, _) in itertools.pairwise(self.samples):
            if any(delta(cb, ca, name) for _, name in self.SERIES):
                last = tb
        return last

    def series(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"t_s": [], "server_cpu_ratio": [], **{name: [] for name, _ in self.SERIES}}
        if len(self.samples) < 2:
            return out
        t0 = self.samples[0][0]
        for (ta, ca, cpua), (tb, cb, cpub) in itertools.pairwise(self.samples):
            dt = max(tb - ta, 1e-9)
            out["t_s"].append(round(tb - t0, 3))
            out["server_cpu_ratio"].append(round((cpub - cpua) / dt, 4))
            for name, series in self.SERIES:
                out[name].append(round(delta(cb, ca, series) / dt, 2))
        return out


def locust_command(cfg: RunConfig, locustfile: Path, servers: Servers, out: Path, swarm_dir: Path,
                   extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
           "-u", str(cfg.users), "-r", str(cfg.spawn_rate), "-t", cfg.duration, "--host", servers.ws_url,
           "--admin-url", servers.admin_url, "--admin-token", ADMIN_TOKEN, "--chat-secret", SECRET,
           "--chatbench-out", str(out), "--results-dir", str(swarm_dir), "--stop-timeout", "5", *extra,
           *cfg.locust_args]
    if servers.cluster is not None:  # users ask the front for the least-loaded gateway at every (re)connect
        cmd += ["--front-url", servers.cluster.front_url]
        # and "the server" the swarm reads (a capacity step's CPU, closes, send queues) is every process
        cmd += ["--server-metrics-urls", ",".join(srv.admin_url for _, srv in servers.processes())]
    if cfg.processes > 1:
        cmd += ["--processes", str(cfg.processes)]
    if cfg.network:
        cmd += ["--profile-mix", cfg.network]
    return cmd


def run_locust(cmd: list[str], on_line: Callable[[str], None] | None = None,
               cpu_quota: float | None = None) -> tuple[int, str]:
    """Locust in its own session (a terminal's Ctrl-C reaches us, and we stop it by PID, in order); each output
    line also goes to ``on_line`` as it comes (live progress). ``cpu_quota``: hold the swarm (and the worker
    processes it forks) to that many cores with a cgroup — a generator that is the limit on purpose."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    quota = CpuQuota(cpu_quota, f"chatbench-swarm-{proc.pid}") if cpu_quota is not None else None
    lines: list[str] = []
    try:
        if quota is not None:
            quota.apply(proc.pid)
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        proc.wait()
        output = "".join(lines)
    except BaseException:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        if quota is not None and proc.poll() is not None:
            quota.remove()
    return proc.returncode, output


@contextlib.contextmanager
def started(cfg: RunConfig) -> Iterator[tuple[Servers, Path]]:
    with tempfile.TemporaryDirectory(prefix="chatbench-run-") as tmp, Servers(cfg, Path(tmp)) as servers:
        yield servers, Path(tmp)


def execute(cfg: RunConfig, servers: Servers, tmp: Path, extra_locust: list[str] | None = None,
            on_line: Callable[[str], None] | None = None) -> RunOutcome:
    """Run the swarm against ``servers`` (already healthy) and build the bundle; does not write it."""
    locustfile = scenario_path(cfg.scenario)
    out = tmp / "swarm.json"
    cmd = locust_command(cfg, locustfile, servers, out, tmp / "swarm-results", extra_locust or [])
    before, cpu0 = servers.read()
    t0 = time.monotonic()
    with Sampler(servers) as sampler:
        rc, output = run_locust(cmd, on_line, cfg.generator_cpu_quota)
    elapsed = time.monotonic() - t0
    end: tuple[dict[str, float], dict[str, float]] | None = None
    unread = ""
    try:
        end = servers.read()
    except ServerReadError as exc:  # the run's server counters and CPU are unknown: the bundle says so
        unread = str(exc)
    if not out.exists():
        return RunOutcome(None, None, rc, output, elapsed, before, end[0] if end else None)
    swarm = orjson.loads(out.read_bytes())
    bundle = assemble(cfg, swarm, servers, before, cpu0, end, sampler, unread)
    return RunOutcome(bundle, None, rc, output, elapsed, before, end[0] if end else None)


def assemble(cfg: RunConfig, swarm: dict[str, Any], servers: Servers, before: dict[str, float],
             cpu0: dict[str, float], end: tuple[dict[str, float], dict[str, float]] | None, sampler: Sampler,
             unread: str = "") -> dict[str, Any]:
    """``end``: the servers' (counters, CPU) read after the run; None when that failed (``unread`` says why):
    every figure taken from it is then unknown (null or empty) and the bundle invalid."""
    bundle = dict(swarm)
    bundle["config"] = cfg.record()
    bundle["scenario"] = swarm.get("scenario") or scenario_path(cfg.scenario).stem
    m = bundle["metrics"]
    after, cpu1 = end if end is not None else ({}, {})
    cpu = {role: cpu1.get(role, 0.0) - cpu0.get(role, 0.0) for role in cpu1}
    server_cpu: float | None = sum(v for k, v in cpu.items() if k != "redis") if end is not None else None
    accepted = m.get("server_messages_accepted") or (delta(after, before, "chat_messages_accepted_total")
                                                      if end is not None else None)
    m["server_cpu_s_ticks"] = m.get("server_cpu_s")
    m["server_cpu_s_run"] = server_cpu
    # the traffic window: from the measured phase (after connecting) to the last scrape that saw traffic
    t0 = float(m.get("generator_health_from") or bundle.get("parameters", {}).get("chatbench_t0") or 0.0)
    t1 = sampler.traffic_end()
    if t0 and t1 and t1 > t0:
        server_cpu = sampler.cpu_at(t1) - sampler.cpu_at(t0)
        m["server_cpu_window_s"] = [t0, t1]
        record.generator_cpu(m, t0, t1)  # the swarm's CPU over the same window
    m["server_processes"] = len(servers.processes())
    m["server_cpu_s"] = server_cpu
    if not (t0 and t1 and t1 > t0):
        m.pop("server_cpu_window_s", None)
    m["server_cpu_source"] = ("schedstat, every server process, " +
                              ("traffic window" if "server_cpu_window_s" in m else "whole swarm run"))
    if cfg.cluster and accepted and end is not None:  # every process, whole run: includes the gateways' own
        # traffic (load reports, registry); the swarm's own figures already sum every process (--server-metrics-urls)
        m["bus_messages_per_message_all_processes"] = delta(after, before, "chat_bus_messages_total") / accepted
    # where the latency comes from: the server's own part (accept → the last socket write), upper bounds
    m["server_push_latency_ms_le"] = bucket_quantiles(after, before, "chat_push_latency_seconds") \
        if end is not None else {}
    m["server_messages_accepted"] = accepted
    procs = [{"role": role, "pid": srv.pid, "cpu_s": cpu.get(role)} for role, srv in servers.processes()]
    names = ("chat_messages_accepted_total", "chat_deliveries_total", "chat_storage_writes_total",
             "chat_unread_writes_total", "chat_offline_writes_total", "chat_offline_dropped_total",
             "chat_bus_messages_total", "chat_bus_received_total", "chat_gateway_filtered_total",
             "chat_sync_requests_total", "chat_slow_consumer_disconnects_total")
    bundle["server"] = {"processes": procs, "redis_cpu_s": cpu.get("redis"),
                        "counters": {n: delta(after, before, n) for n in names} if end is not None else {}}
    bundle["timeseries"] = sampler.series()
    m["server_scrapes_missed"] = len(sampler.missed)
    return record.finish(bundle, [f"the servers could not be read after the run: {unread}"] if end is None else [])


def bundle_stem(bundle: dict[str, Any]) -> str:
    c = bundles.config(bundle)
    modes = "-".join(c[a] for a in ("storage", "unread", "offline", "fanout"))
    run_id = bundle.get("run_id") or f"{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}"
    return f"run-{bundle['scenario']}-{modes}-{run_id}"


def run_once(cfg: RunConfig, on_line: Callable[[str], None] | None = None) -> RunOutcome:
    """Start, run, stop; write the bundle under ``cfg.results_dir`` when the swarm produced one."""
    with started(cfg) as (servers, tmp):
        outcome = execute(cfg, servers, tmp, on_line=on_line)
    if outcome.bundle is not None:
        outcome.path = bundles.write(cfg.results_dir, outcome.bundle, bundle_stem(outcome.bundle))
    return outcome
