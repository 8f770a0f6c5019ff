"""Fan-out benchmark: deliveries per server-CPU-second for one sender broadcasting to a big group.

    python -m benchmarks.fanout                       # 10,000 receivers, 200 messages, 3 repeats (~2 min)
    python -m benchmarks.fanout --members 1000 --messages 20 --repeat 1   # smoke run, a few seconds

What it does:

1. starts ``python -m reference_server`` (:class:`harness.procs.ServerProcess`) on loopback ports it binds
   itself, with a fresh database in a temp dir, ``--send-rate 0 --idle-timeout-s 600``, pinned to core 0
   (``--server-core``), in its own session, SIGTERMed by the kernel should this process die;
2. provisions users 1..N+1 and group 1 holding all of them (N receivers + the sender, uid N+1);
3. starts a receiver process pinned to core 1 (``--receiver-core``) that holds the N connections with a
   :class:`drivers.fast_receiver.FastReceiver` and answers a small control protocol over a pipe;
   this process (the sender, one :class:`drivers.client.ChatClient`) is pinned to the same core: its share
   is a few system calls per message;
4. sends a few unmeasured warm-up messages, measures the server's idle CPU for a second, then runs each mode
   ``--repeat`` times, interleaved:

   * ``paced``: send one message, wait for its ack and for all N deliveries, then the next: every delivery
     is its own socket write, no coalescing possible;
   * ``burst``: send ``--burst`` messages in one write without waiting for acks, then wait for all of their
     deliveries: the server coalesces several frames per socket write;

   The window of each run is exactly the broadcast: the server's CPU and the receiver's CPU are read right
   before the first send and right after the last delivery arrived; connection set-up is outside it. Server
   CPU is user+sys of the whole process from /proc/PID/stat (psutil; 10 ms ticks) and, for the headline
   figure, :func:`record.machine.process_cpu_seconds` (the threads' schedstat on-CPU nanoseconds: the same
   quantity, exact; psutil's figure is used when schedstat is missing). Both are in the JSON; a warning says
   if they disagree by more than 10%.
5. after each run the receiver verifies every connection received exactly the messages sent so far and the
   last seq; the server's ``chat_deliveries_total`` delta is cross-checked. Incomplete deliveries make the
   benchmark fail (exit 1) after writing its result.
6. prints a table and writes JSON (machine, git commit, parameters, every raw figure) to ``--out``
   (default ``results/bench-fanout-<UTC timestamp>.json``; an existing file is never overwritten).

Cluster mode (docs/cluster.md), the same measurement over a real redis-server, one logic node and K gateways::

    python -m benchmarks.fanout --cluster 2 --fanout per-user,broadcast,routed --members 10000 --messages 100
    python -m benchmarks.fanout --cluster 3 --empty-gateways 1 --fanout broadcast,routed

* ``--cluster K`` starts a :class:`harness.cluster.Cluster` per ``--fanout`` mode (repeatable or a comma
  list; default all three) instead of the embedded server. The N receivers are split over gateways 1..K-E
  (``--empty-gateways E`` leaves the last E without any), one receiver process per gateway holding its share of
  connections to that gateway; the sender is on gateway 1. Nothing is pinned by default (1 + K + 1 server
  processes and K receivers share the machine's cores); ``--server-core``/``--receiver-core`` still pin.
* "Server CPU" is the sum over the logic node, every gateway and redis-server (schedstat, exact per process
  however the cores are shared), over the same window; each process's share is reported too, as µs per
  delivery. The window closes when the last delivery arrived: a gateway without receivers may still be
  finishing the last message's member walk then (at most one message of its work is left out).
* After each window the nodes' /metrics deltas (read once they settle) give the bus counters per group
  message — published by kind at the logic node, receipts at the gateways, members filtered per gateway,
  registry reads, deliveries per gateway — and each is checked against the model (per-user: O push messages
  and N registry reads; broadcast: 1 publish, K receipts, every gateway walks the member list; routed: g
  messages, g = gateways with online members). A mismatch fails the benchmark like a lost delivery.
* The JSON adds ``params.cluster``, ``params.fanout``, ``params.empty_gateways``,
  ``params.receivers_per_gateway``, ``clusters.<fanout>`` (PIDs, commands, connect, warm-up, idle CPU per
  process, exit codes), per run ``fanout`` and ``cluster`` (per-process CPU, per-message counters, model,
  mismatches); ``summary`` is keyed by fan-out mode, then paced/burst, with ``processes``, ``per_message``,
  ``model`` and ``model_ok`` added.

The server and the receiver are stopped by PID (SIGTERM, then SIGKILL) on success, error or Ctrl-C.
All traffic is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, Final

import orjson
import psutil  # type: ignore[import-untyped, unused-ignore]
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drivers.admin import AdminClient, AdminError
from drivers.bundle import write_new
from drivers.client import ChatClient, ChatClientError
from drivers.fast_receiver import FastReceiver
from harness.cluster import Cluster
from harness.procs import SECRET, ServerProcess, ServerStartError
from record.machine import git_info, machine_info, process_cpu_seconds
from record.promtext import counters as server_counters
from record.promtext import delta
from reference_server.protocol import user_token

GID: Final = 1
TARGET_RATE: Final = 100_000  # deliveries per server-CPU-second
MAX_MEMBERS: Final = 19_000  # one receiver process; 20,000 open files per process
RECEIVER_BUSY: Final = 0.90  # receiver CPU share of its core above which it may be the bottleneck
MODES: Final = ("paced", "burst")
FANOUTS: Final = ("per-user", "broadcast", "routed")  # cluster mode (docs/cluster.md)
ACK_TIMEOUT: Final = 60.0

# wide enough for the table when the output is a file or a pipe (rich defaults to 80 columns there)
console = Console() if sys.stdout.isatty() else Console(width=200)


class BenchError(Exception):
    """Set-up or run failure (not a measurement result)."""


class _Incomplete(Exception):
    """A batch's deliveries did not all arrive in time (a measurement result: the run is incomplete)."""


FAILURES: Final = (BenchError, ServerStartError, AdminError, ChatClientError)


@dataclass(frozen=True, slots=True)
class CpuSample:
    user: float
    sys: float
    sched: float  # record.machine.process_cpu_seconds (schedstat, ns precision; 0.0 where missing)

    @property
    def total(self) -> float:
        return self.user + self.sys


def cpu_sample(proc: psutil.Process) -> CpuSample:
    t = proc.cpu_times()
    return CpuSample(t.user, t.system, process_cpu_seconds(proc.pid))


# --------------------------------------------------------------------------------------------------
# The receiver process: a FastReceiver driven over a pipe.
#   parent -> child: ("wait", total, timeout) | ("verify", per_conn, max_seq) | ("close",)
#   child -> parent: ("ready", connect_report, counters) | ("waited", ok, total) | ("verified", report)
#                    | ("closed", counters) | ("failed", text)


def receiver_main(ctrl: Connection, params: dict[str, Any]) -> None:
    """Entry point of the receiver process (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    core = params.get("core")
    if core is not None:
        os.sched_setaffinity(0, {core})
    import uvloop

    try:
        uvloop.run(_receiver_loop(ctrl, params))
    except Exception as exc:
        with contextlib.suppress(OSError):
            ctrl.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise


async def _receiver_loop(ctrl: Connection, p: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    fd = ctrl.fileno()

    def readable() -> None:
        try:
            while ctrl.poll():
                inbox.put_nowait(ctrl.recv())
        except (EOFError, OSError):
            loop.remove_reader(fd)
            inbox.put_nowait(("eof",))

    loop.add_reader(fd, readable)
    rx = FastReceiver(p["url"], expect_gid=p["gid"], sample_every=p["sample_every"])
    report = await rx.connect_all(range(p["first_uid"], p["first_uid"] + p["count"]), p["secret"],
                                  concurrency=p["concurrency"])
    ctrl.send(("ready", report.as_dict(), rx.counters()))
    while True:
        cmd = await inbox.get()
        op = cmd[0]
        if op == "wait":
            ok = await rx.wait_for(cmd[1], cmd[2])
            ctrl.send(("waited", ok, rx.total))
        elif op == "verify":
            ctrl.send(("verified", rx.verify(cmd[1], cmd[2]).as_dict()))
        elif op in ("close", "eof"):
            await rx.close_all(5.0)
            if op == "close":
                ctrl.send(("closed", rx.counters()))
            return


class ReceiverProc:
    def __init__(self, params: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=receiver_main, args=(child, params), name="fanout-receiver", daemon=True)
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def recv(self, timeout: float) -> tuple[Any, ...]:
        if not self.conn.poll(timeout):
            raise BenchError(f"receiver did not answer within {timeout:g} s (alive: {self.proc.is_alive()})")
        try:
            msg: tuple[Any, ...] = self.conn.recv()
        except EOFError:
            raise BenchError(f"receiver process ended (exit {self.proc.exitcode})") from None
        if msg[0] == "failed":
            raise BenchError(f"receiver failed: {msg[1]}")
        return msg

    def call(self, msg: tuple[Any, ...], timeout: float) -> tuple[Any, ...]:
        self.conn.send(msg)
        return self.recv(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask it to close its connections; then SIGTERM, then SIGKILL, by PID."""
        if self.proc.is_alive():
            with contextlib.suppress(OSError, BenchError, EOFError):
                self.call(("close",), timeout)
            self.proc.join(2.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(3.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


# --------------------------------------------------------------------------------------------------
# One measured window


@dataclass(slots=True)
class Run:
    mode: str
    repeat: int
    messages: int
    burst: int
    deliveries_expected: int
    deliveries_received: int = 0
    server_cpu_s: float = 0.0
    server_user_s: float = 0.0
    server_sys_s: float = 0.0
    server_cpu_s_schedstat: float = 0.0
    receiver_cpu_s: float = 0.0
    receiver_sys_s: float = 0.0
    receiver_cpu_share: float = 0.0
    sender_cpu_s: float = 0.0
    wall_s: float = 0.0
    deliveries_per_server_cpu_s: float = 0.0
    server_cpu_us_per_delivery: float = 0.0
    deliveries_per_wall_s: float = 0.0
    server_metric_deliveries: float = 0.0
    server_metric_accepted: float = 0.0
    complete: bool = False
    verify: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Node:
    """A server-side process whose CPU is measured; admin serves its /metrics (None: no metrics, e.g. Redis)."""

    name: str
    pid: int
    admin: AdminClient | None


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the cluster's members sit: receivers[i] connections on gateway i+1 (0 on the empty ones); the
    sender on gateway 1."""

    fanout: str
    gateways: int
    receivers: tuple[int, ...]

    @property
    def online(self) -> int:
        return sum(self.receivers)

    @property
    def with_members(self) -> int:
        """g: gateways holding online members of the group (the sender's gateway 1 always does)."""
        return sum(1 for i, n in enumerate(self.receivers) if n > 0 or i == 0)

    def model(self) -> dict[str, float]:
        """Per group message, what docs/cluster.md says each counter must show (exact counts)."""
        o, k, g, size = self.online, self.gateways, self.with_members, self.online + 1  # group: receivers + sender
        m: dict[str, float] = {
            "logic bus push": o if self.fanout == "per-user" else 0,
            "logic bus group": {"per-user": 0, "broadcast": 1, "routed": g}[self.fanout],
            "gateway receipts push": o if self.fanout == "per-user" else 0,
            "gateway receipts group": {"per-user": 0, "broadcast": k, "routed": g}[self.fanout],
            "registry reads": o if self.fanout == "per-user" else 0,  # every receiver is online here
            "deliveries": o,
        }
        for i, n in enumerate(self.receivers, 1):
            walks = self.fanout == "broadcast" or (self.fanout == "routed" and (n > 0 or i == 1))
            m[f"gateway{i} deliveries"] = n
            m[f"gateway{i} filtered"] = size - n if walks else 0  # members it checked but does not hold
        return m


def _merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One DeliveryReport dict over several receiver processes (counts summed, ok only if all are)."""
    if len(reports) == 1:
        return reports[0]
    out = dict(reports[0])
    for key, value in reports[0].items():
        if key == "ok":
            out[key] = all(r[key] for r in reports)
        elif key == "examples":
            out[key] = [ex for r in reports for ex in r[key]][:20]
        elif key != "expected_per_connection" and isinstance(value, int):
            out[key] = sum(r[key] for r in reports)
    return out


class Bench:
    """Sends with this process's ChatClient, waits on the receiver process(es), measures windows.

    ``nodes``: the server-side processes (embedded: the server; cluster: logic, gateways, redis), whose CPU is
    summed as "server CPU" and, in a cluster, also reported one by one; ``rxs``: each receiver process with the
    number of connections it holds."""

    def __init__(self, args: argparse.Namespace, nodes: list[Node], rxs: list[tuple[ReceiverProc, int]],
                 sender: ChatClient, layout: Layout | None = None) -> None:
        self.args, self.nodes, self.rxs, self.sender, self.layout = args, nodes, rxs, sender, layout
        admin = nodes[0].admin
        assert admin is not None
        self.admin = admin
        self.n = sum(count for _, count in rxs)
        self.sent = 0  # messages sent so far (each must reach every receiver)
        self.last_seq = 0
        self.node_ps = [psutil.Process(node.pid) for node in nodes]
        self.rx_ps = [psutil.Process(rx.pid) for rx, _ in rxs]
        self.self_ps = psutil.Process()

    def _deliver(self, count: int, burst: int) -> None:
        """Send count messages in batches of burst (one write each); after each batch wait for its acks and all
        deliveries."""
        timeout = self.args.timeout
        i = 0
        while i < count:
            k = min(burst, count - i)
            acks = self.sender.send_many(GID, [f"fanout message {self.sent + j + 1:08d} " + "x" * 40 for j in range(k)])
            self.last_seq = max(self.last_seq, *(ack["seq"] for ack in acks))
            self.sent += k
            i += k
            for rx, conns in self.rxs:  # every receiver waits at once
                rx.conn.send(("wait", self.sent * conns, timeout))
            answers = [rx.recv(timeout + 10) for rx, _ in self.rxs]
            if not all(ok for _, ok, _ in answers):
                total = sum(t for _, _, t in answers)
                raise _Incomplete(f"after message {self.sent}: receiver has {total} of {self.sent * self.n} "
                                  f"deliveries after {timeout:g} s")

    def warmup(self, count: int) -> dict[str, Any]:
        if count:
            self._deliver(count, 1)
        return self._verify()

    def _verify(self) -> dict[str, Any]:
        reports = []
        for rx, _ in self.rxs:
            _, report = rx.call(("verify", self.sent, self.last_seq if self.sent else None), 60)
            assert isinstance(report, dict)
            reports.append(report)
        return _merge_reports(reports)

    def _samples(self) -> list[CpuSample]:
        return [cpu_sample(ps) for ps in self.node_ps]

    def idle(self, seconds: float) -> dict[str, Any]:
        a, t0 = self._samples(), time.perf_counter()
        time.sleep(seconds)
        b, t1 = self._samples(), time.perf_counter()
        out: dict[str, Any] = {
            "seconds": t1 - t0, "server_cpu_s": sum(y.total - x.total for x, y in zip(a, b, strict=True)),
            "server_cpu_s_schedstat": sum(y.sched - x.sched for x, y in zip(a, b, strict=True))}
        if self.layout is not None:
            out["processes_cpu_s"] = {n.name: y.sched - x.sched for n, x, y in zip(self.nodes, a, b, strict=True)}
        return out

    def _metrics(self) -> dict[str, dict[str, float]]:
        return {node.name: server_counters(node.admin.metrics_text()) for node in self.nodes if node.admin is not None}

    def _settled_metrics(self, timeout: float = 5.0) -> dict[str, dict[str, float]]:
        """Cluster: /metrics of every node once two reads 0.1 s apart agree (a gateway that holds no receiver
        may still be walking the last message's member list when the last delivery arrives)."""
        deadline = time.monotonic() + timeout
        last = self._metrics()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self._metrics()
            if all(_counts(now[k]) == _counts(last[k]) for k in now):
                return now
            last = now
        return last

    def run(self, mode: str, repeat: int) -> tuple[Run, dict[str, Any]]:
        """One measured window. The second value holds the cluster figures ({} for the embedded server)."""
        m = self.args.messages
        burst = 1 if mode == "paced" else self.args.burst
        r = Run(mode=mode, repeat=repeat, messages=m, burst=burst, deliveries_expected=m * self.n)
        before = self._metrics()
        time.sleep(0.05)  # let the server finish with the scrape's connection before the window opens
        sent0 = self.sent
        s0, x0, me0 = self._samples(), [cpu_sample(p) for p in self.rx_ps], self.self_ps.cpu_times()
        t0 = time.perf_counter()
        error: _Incomplete | None = None
        try:
            self._deliver(m, burst)
        except _Incomplete as exc:
            error = exc
        t1 = time.perf_counter()
        s1, x1, me1 = self._samples(), [cpu_sample(p) for p in self.rx_ps], self.self_ps.cpu_times()
        after = self._metrics() if self.layout is None else self._settled_metrics()
        r.wall_s = t1 - t0
        r.server_user_s = sum(b.user - a.user for a, b in zip(s0, s1, strict=True))
        r.server_sys_s = sum(b.sys - a.sys for a, b in zip(s0, s1, strict=True))
        r.server_cpu_s = sum(b.total - a.total for a, b in zip(s0, s1, strict=True))
        r.server_cpu_s_schedstat = sum(b.sched - a.sched for a, b in zip(s0, s1, strict=True))
        r.receiver_cpu_s = sum(b.total - a.total for a, b in zip(x0, x1, strict=True))
        r.receiver_sys_s = sum(b.sys - a.sys for a, b in zip(x0, x1, strict=True))
        # the busiest receiver process's share of one core (there is one receiver outside a cluster)
        r.receiver_cpu_share = max((b.total - a.total) / r.wall_s for a, b in zip(x0, x1, strict=True)) \
            if r.wall_s > 0 else 0.0
        r.sender_cpu_s = (me1.user + me1.system) - (me0.user + me0.system)
        r.server_metric_deliveries = sum(delta(after[k], before[k], "chat_deliveries_total") for k in after)
        r.server_metric_accepted = sum(delta(after[k], before[k], "chat_messages_accepted_total") for k in after)
        r.verify = self._verify()
        r.deliveries_received = int(r.verify["received_total"]) - sent0 * self.n
        # prefer the nanosecond schedstat figure when available (psutil's /proc/PID/stat has 10 ms ticks)
        cpu = r.server_cpu_s_schedstat if r.server_cpu_s_schedstat > 0 else r.server_cpu_s
        if cpu > 0:
            r.deliveries_per_server_cpu_s = r.deliveries_received / cpu
            r.server_cpu_us_per_delivery = cpu / max(r.deliveries_received, 1) * 1e6
        r.deliveries_per_wall_s = r.deliveries_received / r.wall_s if r.wall_s > 0 else 0.0
        r.complete = (error is None and bool(r.verify["ok"]) and r.deliveries_received == r.deliveries_expected
                      and int(r.server_metric_deliveries) == r.deliveries_expected)
        if error is not None:
            r.verify.setdefault("examples", []).insert(0, str(error))
        extra = {} if self.layout is None else self._cluster_figures(r, s0, s1, before, after)
        return r, extra

    def _cluster_figures(self, r: Run, s0: list[CpuSample], s1: list[CpuSample],
                         before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
        """Per-process CPU over the window, and the bus counters per group message checked against the model."""
        assert self.layout is not None
        deliveries = max(r.deliveries_received, 1)
        processes = {}
        for node, a, b in zip(self.nodes, s0, s1, strict=True):
            sched, ticks = b.sched - a.sched, b.total - a.total
            cpu = sched if sched > 0 else ticks
            processes[node.name] = {"pid": node.pid, "cpu_s": cpu, "cpu_s_psutil": ticks, "user_s": b.user - a.user,
                                    "sys_s": b.sys - a.sys, "cpu_us_per_delivery": cpu / deliveries * 1e6}
        m = r.messages

        def d(node: str, name: str) -> float:
            return delta(after[node], before[node], name) / m

        gws = [node.name for node in self.nodes if node.name.startswith("gateway")]
        per_message: dict[str, float] = {
            "logic bus push": d("logic", "chat_bus_messages_total{kind=push}"),
            "logic bus group": d("logic", "chat_bus_messages_total{kind=group}"),
            "logic bus reply": d("logic", "chat_bus_messages_total{kind=reply}"),
            "gateway bus request": sum(d(g, "chat_bus_messages_total{kind=request}") for g in gws),
            "gateway receipts push": sum(d(g, "chat_bus_received_total{kind=push}") for g in gws),
            "gateway receipts group": sum(d(g, "chat_bus_received_total{kind=group}") for g in gws),
            "registry reads": d("logic", "chat_registry_reads_total"),
            "deliveries": sum(d(g, "chat_deliveries_total") for g in gws),
            "filtered": sum(d(g, "chat_gateway_filtered_total") for g in gws),
        }
        for g in gws:
            per_message[f"{g} receipts group"] = d(g, "chat_bus_received_total{kind=group}")
            per_message[f"{g} deliveries"] = d(g, "chat_deliveries_total")
            per_message[f"{g} filtered"] = d(g, "chat_gateway_filtered_total")
        model = self.layout.model()
        mismatches = [f"{key}: {per_message[key]:g} per message, the model says {want:g}"
                      for key, want in model.items() if round(per_message[key] * m) != round(want * m)]
        return {"fanout": self.layout.fanout, "processes": processes, "per_message": per_message, "model": model,
                "model_ok": not mismatches, "model_mismatches": mismatches}


def _counts(metrics: dict[str, float]) -> dict[str, float]:
    """The counters the model checks (not gauges or the scrape's own figures)."""
    return {k: v for k, v in metrics.items()
            if k.startswith(("chat_bus_", "chat_gateway_filtered", "chat_registry_reads", "chat_deliveries"))}


# --------------------------------------------------------------------------------------------------
# Reporting


def _stat(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "all": values}


def summarize(runs: list[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        rs = [r for r in runs if r.mode == mode]
        if not rs:
            continue
        rates = [r.deliveries_per_server_cpu_s for r in rs]
        out[mode] = {
            "runs": len(rs),
            "complete": all(r.complete for r in rs),
            "deliveries_per_run": [r.deliveries_received for r in rs],
            "deliveries_per_server_cpu_s": _stat(rates),
            "server_cpu_s": _stat([r.server_cpu_s_schedstat or r.server_cpu_s for r in rs]),
            "server_cpu_s_psutil": [r.server_cpu_s for r in rs],
            "server_sys_fraction": {"median": statistics.median(
                r.server_sys_s / r.server_cpu_s if r.server_cpu_s else 0.0 for r in rs)},
            "server_cpu_us_per_delivery": _stat([r.server_cpu_us_per_delivery for r in rs]),
            "receiver_cpu_share": _stat([r.receiver_cpu_share for r in rs]),
            "receiver_cpu_s": [r.receiver_cpu_s for r in rs],
            "wall_s": _stat([r.wall_s for r in rs]),
            "deliveries_per_wall_s": {"median": statistics.median(r.deliveries_per_wall_s for r in rs)},
            "meets_target": all(r.complete for r in rs) and statistics.median(rates) >= TARGET_RATE,
        }
    return out


def print_table(summary: dict[str, Any], params: dict[str, Any]) -> None:
    table = Table(title=(f"fan-out: {params['members']:,} receivers, {params['messages']} messages × "
                         f"{params['repeat']} repeats — median \\[all runs]"))
    for col, justify in (("mode", "left"), ("deliveries/run", "right"), ("server CPU s", "right"),
                         ("deliveries / server-CPU-s", "right"), ("µs / delivery", "right"),
                         ("sys %", "right"), ("receiver core", "right"), ("wall s", "right"),
                         ("deliveries / wall-s", "right"), ("complete", "center")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for mode, s in summary.items():
        rate, share = s["deliveries_per_server_cpu_s"], s["receiver_cpu_share"]
        table.add_row(
            mode if mode == "paced" else f"{mode} (k={params['burst']})",
            f"{s['deliveries_per_run'][0]:,}",
            f"{s['server_cpu_s']['median']:.3f}",
            f"[bold]{rate['median']:,.0f}[/bold] " + escape("[" + ", ".join(f"{v:,.0f}" for v in rate["all"]) + "]"),
            f"{s['server_cpu_us_per_delivery']['median']:.2f}",
            f"{100 * s['server_sys_fraction']['median']:.0f}%",
            f"{100 * share['median']:.0f}% " + escape("[" + ", ".join(f"{100 * v:.0f}%" for v in share["all"]) + "]"),
            f"{s['wall_s']['median']:.2f}",
            f"{s['deliveries_per_wall_s']['median']:,.0f}",
            "[green]yes[/green]" if s["complete"] else "[red]NO[/red]",
        )
    console.print(table)


def report(args: argparse.Namespace, runs: list[Run], result: dict[str, Any]) -> int:
    """Summary, table, warnings and verdicts into result and onto the console; the exit code."""
    summary = result["summary"] = summarize(runs)
    print_table(summary, result["params"])
    warnings: list[str] = result["warnings"]
    _warn(runs, warnings)
    for w in warnings:
        console.print(f"[yellow]warning: {w}[/yellow]")
    for mode, s in summary.items():
        rate = s["deliveries_per_server_cpu_s"]["median"]
        if not s["complete"]:
            console.print(f"{mode}: [red]deliveries incomplete: {rate:,.0f} deliveries per server-CPU-second is not "
                          "a valid figure[/red]")
            continue
        verdict = "[green]meets[/green]" if rate >= TARGET_RATE else "[red]below[/red]"
        console.print(f"{mode}: median {rate:,.0f} deliveries per server-CPU-second — {verdict} the target of "
                      f"{TARGET_RATE:,}")
    incomplete = [r for r in runs if not r.complete]
    _print_incomplete(incomplete)
    result["ok"] = not incomplete and len(runs) == args.repeat * len(args.modes)
    return 0 if result["ok"] else 1


def summarize_cluster(runs: list[tuple[Run, dict[str, Any]]]) -> dict[str, Any]:
    """summarize() of one fan-out mode's runs, plus per process CPU and per-message counters (medians)."""
    out = summarize([r for r, _ in runs])
    for mode, s in out.items():
        rs = [(r, x) for r, x in runs if r.mode == mode]
        names = list(rs[0][1]["processes"])
        s["processes"] = {name: {
            "cpu_us_per_delivery": _stat([x["processes"][name]["cpu_us_per_delivery"] for _, x in rs]),
            "cpu_s": _stat([x["processes"][name]["cpu_s"] for _, x in rs]),
        } for name in names}
        s["per_message"] = {key: statistics.median(x["per_message"][key] for _, x in rs)
                            for key in rs[0][1]["per_message"]}
        s["model"] = rs[0][1]["model"]
        s["model_ok"] = all(x["model_ok"] for _, x in rs)
    return out


def print_cluster_tables(summary: dict[str, Any], params: dict[str, Any]) -> None:
    k, e = params["cluster"], params["empty_gateways"]
    where = f"over {k - e} of {k} gateways ({e} empty)" if e else f"over {k} gateways"
    cpu = Table(title=(f"cluster fan-out: {params['members']:,} receivers {where}, {params['messages']} messages × "
                       f"{params['repeat']} repeats — server CPU µs per delivery, median \\[all runs]"))
    first = next(iter(next(iter(summary.values())).values()))
    names = list(first["processes"])
    for col in ("fan-out", "mode", "deliveries/run", "total µs", *names, "deliveries / server-CPU-s",
                "receiver core (max)", "wall s", "complete"):
        cpu.add_column(col, justify="left" if col in ("fan-out", "mode") else "right")
    for fanout, modes in summary.items():
        for mode, s in modes.items():
            us = s["server_cpu_us_per_delivery"]
            cpu.add_row(
                fanout, mode if mode == "paced" else f"{mode} (k={params['burst']})",
                f"{s['deliveries_per_run'][0]:,}",
                f"[bold]{us['median']:.2f}[/bold] " + escape("[" + ", ".join(f"{v:.2f}" for v in us["all"]) + "]"),
                *(f"{s['processes'][n]['cpu_us_per_delivery']['median']:.2f}" for n in names),
                f"{s['deliveries_per_server_cpu_s']['median']:,.0f}",
                f"{100 * s['receiver_cpu_share']['median']:.0f}%",
                f"{s['wall_s']['median']:.2f}",
                "[green]yes[/green]" if s["complete"] else "[red]NO[/red]",
            )
    console.print(cpu)
    bus = Table(title="bus counters per group message (measured / model)")
    gws = [n for n in names if n.startswith("gateway")]
    keys = ["logic bus push", "logic bus group", "gateway receipts push", "gateway receipts group", "registry reads",
            "deliveries",
            *(f"{g} filtered" for g in gws)]
    for col in ("fan-out", "mode", *keys, "model"):
        bus.add_column(col, justify="left" if col in ("fan-out", "mode") else "right")
    for fanout, modes in summary.items():
        for mode, s in modes.items():
            cells = []
            for key in keys:
                got, want = s["per_message"][key], s["model"][key]
                cell = f"{got:,.6g}" if got == want else f"[red]{got:,.6g} / {want:,.6g}[/red]"
                cells.append(cell)
            bus.add_row(fanout, mode, *cells, "[green]ok[/green]" if s["model_ok"] else "[red]MISMATCH[/red]")
    console.print(bus)


def _warn(runs: list[Run], warnings: list[str], label: str = "") -> None:
    for r in runs:
        if r.receiver_cpu_share > RECEIVER_BUSY:
            warnings.append(f"{label}{r.mode} #{r.repeat + 1}: receiver used {100 * r.receiver_cpu_share:.0f}% of "
                            "its core during the window: it may be the bottleneck (wall-clock figures understate "
                            "the server)")
        if r.server_cpu_s > 0 and abs(r.server_cpu_s - r.server_cpu_s_schedstat) > max(0.05, 0.1 * r.server_cpu_s):
            warnings.append(f"{label}{r.mode} #{r.repeat + 1}: psutil CPU {r.server_cpu_s:.3f} s and schedstat "
                            f"{r.server_cpu_s_schedstat:.3f} s disagree")


def _print_incomplete(runs: list[Run], label: str = "") -> None:
    for r in runs:
        if r.complete:
            continue
        v = r.verify
        console.print(f"[red]{label}{r.mode} #{r.repeat + 1}: deliveries INCOMPLETE: {r.deliveries_received:,} of "
                      f"{r.deliveries_expected:,} (server counted {r.server_metric_deliveries:,.0f}); lost "
                      f"{v.get('lost')}, extra {v.get('extra')}, wrong max seq {v.get('wrong_max_seq')}, "
                      f"disconnected {v.get('disconnected')}[/red]")
        for ex in v.get("examples", [])[:5]:
            console.print(f"[red]    {ex}[/red]")


def report_cluster(args: argparse.Namespace, runs: dict[str, list[tuple[Run, dict[str, Any]]]],
                   result: dict[str, Any]) -> int:
    """report() for --cluster: per fan-out mode; also fails on a bus counter that contradicts the model."""
    summary = result["summary"] = {fanout: summarize_cluster(rs) for fanout, rs in runs.items() if rs}
    if summary:
        print_cluster_tables(summary, result["params"])
    warnings: list[str] = result["warnings"]
    for fanout, rs in runs.items():
        _warn([r for r, _ in rs], warnings, f"{fanout} ")
    for w in warnings:
        console.print(f"[yellow]warning: {w}[/yellow]")
    ok = True
    for fanout, rs in runs.items():
        _print_incomplete([r for r, _ in rs], f"{fanout} ")
        for r, x in rs:
            for mismatch in x["model_mismatches"]:
                console.print(f"[red]{fanout} {r.mode} #{r.repeat + 1}: {mismatch}[/red]")
        ok = ok and len(rs) == args.repeat * len(args.modes) and all(r.complete and x["model_ok"] for r, x in rs)
    result["ok"] = ok and len(runs) == len(args.fanout)
    return 0 if result["ok"] else 1


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout",
        description="Deliveries per server-CPU-second for a broadcast from one sender to a big group whose "
                    "connections are held by a fast receiver process.",
    )
    p.add_argument("--members", type=int, default=10_000, help="receivers in the group (default 10000)")
    p.add_argument("--messages", type=int, default=200, help="messages per run (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode (default 3)")
    p.add_argument("--burst", type=int, default=10, help="messages per batch in burst mode (default 10)")
    p.add_argument("--modes", default="paced,burst", help="comma-separated: paced, burst (default both)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured paced messages first (default 5)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON result path (default results/bench-fanout-<UTC timestamp>.json; never overwritten)")
    p.add_argument("--server-core", type=int, default=None,
                   help="CPU for the server (default 0; -1 = no pinning); with --cluster: for the logic node and "
                        "the gateways (default: no pinning)")
    p.add_argument("--receiver-core", type=int, default=None,
                   help="CPU for the receiver(s) and this sender process (default 1; -1 = no pinning; with "
                        "--cluster default: no pinning)")
    p.add_argument("--cluster", type=int, default=None, metavar="K",
                   help="start a cluster (redis-server, a logic node, K gateways) instead of the embedded server; "
                        "the receivers are split over the gateways, the sender is on gateway 1")
    p.add_argument("--fanout", action="append", default=None, metavar="MODE",
                   help=f"with --cluster: fan-out mode(s), repeatable or comma-separated: {', '.join(FANOUTS)} "
                        "(default all three; each gets its own cluster)")
    p.add_argument("--empty-gateways", type=int, default=0, metavar="E",
                   help="with --cluster: leave the last E of the K gateways without receivers (default 0)")
    p.add_argument("--concurrency", type=int, default=500, help="concurrent handshakes while connecting")
    p.add_argument("--sample-every", type=int, default=997, help="fully parse every Nth push frame (default 997)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one batch's deliveries")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the server (repeatable), e.g. --server-arg=--sqlite-synchronous=normal")
    p.add_argument("--keep-tmp", action="store_true", help="keep the server's temp dir (db, log)")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes must name some of {', '.join(MODES)}")
    if args.cluster is None:
        if args.fanout is not None or args.empty_gateways:
            p.error("--fanout and --empty-gateways need --cluster K")
        if not 1 <= args.members <= MAX_MEMBERS:
            p.error(f"--members must be in 1..{MAX_MEMBERS} (one receiver process, 20,000 open files per process)")
        args.server_core = 0 if args.server_core is None else args.server_core
        args.receiver_core = 1 if args.receiver_core is None else args.receiver_core
    else:
        args.fanout = [f.strip() for arg in (args.fanout or [",".join(FANOUTS)]) for f in arg.split(",") if f.strip()]
        if not args.fanout or any(f not in FANOUTS for f in args.fanout) or len(set(args.fanout)) != len(args.fanout):
            p.error(f"--fanout must name some of {', '.join(FANOUTS)}, each once")
        if args.cluster < 1 or not 0 <= args.empty_gateways < args.cluster:
            p.error("--cluster K needs K >= 1 and 0 <= --empty-gateways < K")
        used = args.cluster - args.empty_gateways
        if not used <= args.members <= used * MAX_MEMBERS:
            p.error(f"--members must be in {used}..{used * MAX_MEMBERS} ({MAX_MEMBERS} receivers per gateway: one "
                    "receiver process per gateway, 20,000 open files per process)")
        # 1 + K + 1 server processes and K receivers on a few cores: pinning would only measure the contention
        args.server_core = -1 if args.server_core is None else args.server_core
        args.receiver_core = -1 if args.receiver_core is None else args.receiver_core
    if args.messages < 1 or args.repeat < 1 or args.burst < 1 or args.warmup < 0:
        p.error("--messages, --repeat and --burst must be >= 1, --warmup >= 0")
    if args.out is not None and args.out.exists():
        p.error(f"{args.out} exists; results are never overwritten")
    available = os.sched_getaffinity(0)
    for name in ("server_core", "receiver_core"):
        core = getattr(args, name)
        if core < 0:
            setattr(args, name, None)
        elif core not in available:
            console.print(f"[yellow]warning: core {core} not available ({sorted(available)}); not pinning[/yellow]")
            setattr(args, name, None)
    return args


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Procs:
    """What this run started; stop() ends each of them by PID, in order: sender, receiver(s), server (or the
    cluster: gateways, logic node, redis-server)."""

    server: ServerProcess | None = None
    cluster: Cluster | None = None
    sender: ChatClient | None = None

    def __init__(self) -> None:
        self.rxs: list[ReceiverProc] = []

    def stop(self, result: dict[str, Any]) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        while self.rxs:
            self.rxs.pop().stop()
        if self.server is not None:
            result.setdefault("server", {})["exit_code"] = self.server.stop()
        if self.cluster is not None:
            self.cluster.stop()
            codes = {"logic": self.cluster.logic.stop() if self.cluster.logic is not None else None}
            codes.update({f"gateway{i}": gw.stop() for i, gw in enumerate(self.cluster.gateways, 1)})
            if self.cluster.redis is not None and self.cluster.redis.proc is not None:
                codes["redis"] = self.cluster.redis.proc.returncode
            result.setdefault("exit_codes", {}).update(codes)

    def cleanup_cluster(self, keep: bool, show_logs: bool) -> None:
        """After stop(): the cluster's logs on failure, then its temp dir (unless keep)."""
        c = self.cluster
        if c is None:
            return
        if show_logs:
            for name, node in (("logic", c.logic), *((f"gateway{i}", g) for i, g in enumerate(c.gateways, 1))):
                if node is not None:
                    console.print(f"[dim]{name} log tail:\n{escape(node.log_tail(15))}[/dim]")
        if keep:
            console.print(f"cluster temp dir kept: {c.tmp}")
        else:
            shutil.rmtree(c.tmp, ignore_errors=True)
        self.cluster = None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    out_path: Path = args.out or Path("results") / f"bench-fanout-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    n = args.members
    params = {
        "members": n, "messages": args.messages, "repeat": args.repeat, "burst": args.burst, "modes": args.modes,
        "warmup": args.warmup, "server_core": args.server_core, "receiver_core": args.receiver_core,
        "sender_core": args.receiver_core, "concurrency": args.concurrency, "sample_every": args.sample_every,
        "server_args": args.server_arg, "gid": GID, "sender_uid": n + 1, "target_rate": TARGET_RATE,
    }
    if args.cluster is not None:
        params.update({"cluster": args.cluster, "fanout": args.fanout, "empty_gateways": args.empty_gateways,
                       "receivers_per_gateway": list(split_receivers(n, args.cluster, args.empty_gateways))})
    result: dict[str, Any] = {
        "benchmark": "fanout", "schema": 1, "ok": False,
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "description": "deliveries per server-CPU-second, one sender broadcasting to a group whose receivers are "
                       "held by a FastReceiver process; CPU over exactly the broadcast window"
                       + ("" if args.cluster is None else "; cluster: server CPU is logic node + gateways + "
                          "redis-server, also reported per process, with the bus counters per group message"),
        "machine": machine_info(), "git": git_info(), "params": params, "warnings": [],
    }
    procs = Procs()
    code = 2
    try:
        try:
            code = _run(args, result, procs) if args.cluster is None else _run_cluster(args, result, procs)
        finally:
            # a second Ctrl-C must not cut the clean-up short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                procs.stop(result)
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, _sigterm)
            raised = sys.exc_info()[1]
            interrupted = isinstance(raised, KeyboardInterrupt)
            if (server := procs.server) is not None:
                if code != 0 and not interrupted:
                    console.print(f"[dim]server log tail:\n{escape(server.log_tail(30))}[/dim]")
                keep = args.keep_tmp or (raised is not None and not interrupted)  # a failure to look into
                server.cleanup(keep=keep)
                if keep:
                    console.print(f"server temp dir kept: {server.db_path.parent}")
            if procs.cluster is not None:
                procs.cleanup_cluster(keep=args.keep_tmp or (raised is not None and not interrupted),
                                      show_logs=code != 0 and not interrupted)
    except KeyboardInterrupt:
        console.print("[red]interrupted; server and receiver stopped[/red]")
        result["error"] = "interrupted"
        code = 130
    except FAILURES as exc:
        console.print(f"[red]benchmark failed: {escape(str(exc))}[/red]")
        result["error"] = str(exc)
        code = 2
    except Exception as exc:
        console.print_exception()
        result["error"] = f"{type(exc).__name__}: {exc}"
        code = 2
    result["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if code != 130 or result.get("runs"):
        path = write_new(out_path.parent, out_path.stem, orjson.dumps(result, option=orjson.OPT_INDENT_2))
        console.print(f"result written to {path}")
    return code


def _run(args: argparse.Namespace, result: dict[str, Any], procs: Procs) -> int:
    n = args.members
    if args.receiver_core is not None:
        os.sched_setaffinity(0, {args.receiver_core})  # the sender shares the receiver's core
    server = procs.server = ServerProcess(
        "--send-rate", "0", "--idle-timeout-s", "600", *args.server_arg, cpu=args.server_core, port=0, admin_port=0,
        new_session=True, die_with_parent=True)
    console.print(f"starting server (core {args.server_core}) ...")
    server.start(timeout=60.0)
    assert server.admin is not None
    server.admin.timeout = 120.0
    result["server"] = {"cmd": server.cmd, "pid": server.pid, "ready_line": server.ready_line}
    t0 = time.perf_counter()
    server.admin.create_users(1, n + 1)
    server.admin.create_groups({GID: list(range(1, n + 2))})
    result["provision_s"] = time.perf_counter() - t0
    console.print(f"provisioned {n + 1:,} users and group {GID} in {result['provision_s']:.2f} s; "
                  f"connecting {n:,} receivers (core {args.receiver_core}) ...")
    rx = ReceiverProc({
        "url": server.ws_url, "gid": GID, "first_uid": 1, "count": n, "secret": SECRET, "core": args.receiver_core,
        "concurrency": args.concurrency, "sample_every": args.sample_every,
    })
    procs.rxs.append(rx)
    _, connect, _ = rx.recv(timeout=max(120.0, n / 50))
    result["connect"] = connect
    if connect["connected"] != n:
        raise BenchError(f"receiver connected {connect['connected']} of {n}: {connect['errors']}")
    console.print(f"{n:,} receivers connected in {connect['seconds']:.2f} s ({connect['retries']} retries)")
    procs.sender = ChatClient(server.ws_url, n + 1, user_token(SECRET, n + 1), heartbeat_s=None,
                              request_timeout=ACK_TIMEOUT, connect_timeout=60)
    procs.sender.connect()
    bench = Bench(args, [Node("server", server.pid, server.admin)], [(rx, n)], procs.sender)

    warm = bench.warmup(args.warmup)
    result["warmup"] = {"messages": args.warmup, "verify": warm}
    if not warm["ok"]:
        raise BenchError(f"warm-up deliveries incomplete: {warm}")
    time.sleep(0.5)  # let the connect/warm-up aftermath settle
    result["idle"] = bench.idle(1.0)

    runs: list[Run] = []
    result["runs"] = []  # filled as runs finish: an interrupted benchmark still writes what it measured
    for rep in range(args.repeat):
        for mode in args.modes:
            r, _ = bench.run(mode, rep)
            runs.append(r)
            result["runs"].append(asdict(r))
            state = "[green]complete[/green]" if r.complete else "[red]INCOMPLETE[/red]"
            console.print(
                f"  {mode:5s} #{rep + 1}: {r.deliveries_received:,} deliveries, "
                f"server CPU {r.server_cpu_s_schedstat:.3f} s "
                f"→ {r.deliveries_per_server_cpu_s:,.0f}/CPU-s ({r.server_cpu_us_per_delivery:.2f} µs each), "
                f"receiver {100 * r.receiver_cpu_share:.0f}% of its core, wall {r.wall_s:.2f} s, {state}"
            )
            if not r.complete:
                break
        if runs and not runs[-1].complete:
            break
    return report(args, runs, result)


def split_receivers(n: int, k: int, empty: int) -> tuple[int, ...]:
    """n receivers over gateways 1..k-empty as evenly as possible (the first ones get the remainder); the last
    `empty` gateways get none."""
    used = k - empty
    return tuple(n // used + (1 if i < n % used else 0) for i in range(used)) + (0,) * empty


def _run_cluster(args: argparse.Namespace, result: dict[str, Any], procs: Procs) -> int:
    """--cluster: for each fan-out mode, a fresh cluster; receivers split over the gateways; runs as _run."""
    n, k = args.members, args.cluster
    counts = split_receivers(n, k, args.empty_gateways)
    if args.receiver_core is not None:
        os.sched_setaffinity(0, {args.receiver_core})  # the sender shares the receivers' core
    cpus = None if args.server_core is None else [args.server_core]
    result["runs"] = []  # filled as runs finish: an interrupted benchmark still writes what it measured
    result["clusters"] = {}
    runs: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for fanout in args.fanout:
        info: dict[str, Any] = {}
        result["clusters"][fanout] = info
        cluster = procs.cluster = Cluster(k, "--send-rate", "0", "--idle-timeout-s", "600", *args.server_arg,
                                          fanout=fanout, cpus=cpus)
        console.print(f"[bold]{fanout}[/bold]: starting redis-server, a logic node and {k} gateways "
                      f"({'core ' + str(args.server_core) if cpus else 'not pinned'}) ...")
        cluster.start()
        assert cluster.logic is not None and cluster.redis is not None and cluster.redis.proc is not None
        cluster.admin.timeout = 120.0
        nodes = [Node("logic", cluster.logic.pid, cluster.logic.admin),
                 *(Node(f"gateway{i}", gw.pid, gw.admin) for i, gw in enumerate(cluster.gateways, 1)),
                 Node("redis", cluster.redis.proc.pid, None)]
        info["processes"] = {node.name: {"pid": node.pid} for node in nodes}
        info["processes"]["logic"]["cmd"] = cluster.logic.cmd
        for i, gw in enumerate(cluster.gateways, 1):
            info["processes"][f"gateway{i}"].update(cmd=gw.cmd, ws_url=gw.ws_url, receivers=counts[i - 1])
        t0 = time.perf_counter()
        cluster.admin.create_users(1, n + 1)
        cluster.admin.create_groups({GID: list(range(1, n + 2))})
        info["provision_s"] = time.perf_counter() - t0
        console.print(f"provisioned {n + 1:,} users and group {GID} in {info['provision_s']:.2f} s; connecting "
                      f"{n:,} receivers ({' + '.join(f'{c:,}' for c in counts)} on gateways 1..{k}) ...")
        rxs: list[tuple[ReceiverProc, int]] = []
        first = 1
        for gw, count in zip(cluster.gateways, counts, strict=True):
            if count:
                rx = ReceiverProc({
                    "url": gw.ws_url, "gid": GID, "first_uid": first, "count": count, "secret": SECRET,
                    "core": args.receiver_core, "concurrency": args.concurrency, "sample_every": args.sample_every,
                })
                procs.rxs.append(rx)
                rxs.append((rx, count))
                first += count
        info["connect"] = []
        for rx, count in rxs:
            _, connect, _ = rx.recv(timeout=max(120.0, n / 50))
            info["connect"].append(connect)
            if connect["connected"] != count:
                raise BenchError(f"receiver connected {connect['connected']} of {count}: {connect['errors']}")
        console.print(f"{n:,} receivers connected in {max(c['seconds'] for c in info['connect']):.2f} s "
                      f"({sum(c['retries'] for c in info['connect'])} retries)")
        procs.sender = ChatClient(cluster.gateways[0].ws_url, n + 1, user_token(SECRET, n + 1), heartbeat_s=None,
                                  request_timeout=ACK_TIMEOUT, connect_timeout=60)
        procs.sender.connect()
        time.sleep(0.3)  # gateways publish registry changes in 50 ms batches (routed, per-user)
        bench = Bench(args, nodes, rxs, procs.sender, Layout(fanout, k, counts))
        warm = bench.warmup(args.warmup)
        info["warmup"] = {"messages": args.warmup, "verify": warm}
        if not warm["ok"]:
            raise BenchError(f"{fanout}: warm-up deliveries incomplete: {warm}")
        time.sleep(0.5)
        info["idle"] = bench.idle(1.0)
        runs[fanout] = []
        for rep in range(args.repeat):
            for mode in args.modes:
                r, extra = bench.run(mode, rep)
                runs[fanout].append((r, extra))
                result["runs"].append({"fanout": fanout, **asdict(r), "cluster": extra})
                state = "[green]complete[/green]" if r.complete else "[red]INCOMPLETE[/red]"
                model = "[green]model ok[/green]" if extra["model_ok"] else "[red]MODEL MISMATCH[/red]"
                per = ", ".join(f"{name} {p['cpu_us_per_delivery']:.2f}" for name, p in extra["processes"].items())
                console.print(f"  {fanout} {mode:5s} #{rep + 1}: {r.deliveries_received:,} deliveries, server CPU "
                              f"{r.server_cpu_s_schedstat:.3f} s → {r.server_cpu_us_per_delivery:.2f} µs each "
                              f"({per}), wall {r.wall_s:.2f} s, {state}, {model}")
                if not r.complete:
                    break
            if runs[fanout] and not runs[fanout][-1][0].complete:
                break
        procs.stop(info)
        procs.cleanup_cluster(keep=args.keep_tmp, show_logs=False)
    return report_cluster(args, runs, result)


if __name__ == "__main__":
    sys.exit(main())
