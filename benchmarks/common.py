"""What the fan-out benchmarks share: the receiver process, CPU sampling, the measured broadcast window, and
turning repeated windows into one result record.

The receiver process holds N connections with a :class:`drivers.fast_receiver.FastReceiver` and answers a small
control protocol over a pipe::

    parent -> child: ("wait", total, timeout) | ("verify", per_conn, max_seq) | ("close",)
    child -> parent: ("ready", connect_report) | ("waited", ok, total) | ("verified", report) | ("closed",)
                     | ("failed", text)

:class:`Bench` sends with one :class:`drivers.client.ChatClient`, waits for every receiver process, and measures
one window: the CPU of every server-side process (schedstat, :func:`record.machine.process_cpu_seconds`; psutil's
10 ms ticks beside it) and of the receivers from right before the first send to right after the last delivery,
and each node's /metrics before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, Final

import psutil  # type: ignore[import-untyped, unused-ignore]
from rich.console import Console

import record
from drivers.admin import AdminClient, AdminError
from drivers.client import ChatClient, ChatClientError
from drivers.fast_receiver import FastReceiver
from harness.procs import ServerStartError
from record.machine import process_cpu_seconds
from record.promtext import add, delta
from record.promtext import counters as parse_counters

GID: Final = 1
MODES: Final = ("paced", "burst")
RECEIVER_BUSY: Final = 0.90  # receiver CPU share of its core above which it may be the bottleneck
MAX_MEMBERS: Final = 19_000  # per receiver process; 20,000 open files per process
ACK_TIMEOUT: Final = 60.0

# wide enough for the tables when the output is a file or a pipe (rich defaults to 80 columns there)
console = Console() if sys.stdout.isatty() else Console(width=200)


class BenchError(Exception):
    """Set-up or run failure (not a measurement result)."""


class Incomplete(Exception):
    """A batch's deliveries did not all arrive in time (a measurement result: the run is incomplete)."""


FAILURES: Final = (BenchError, ServerStartError, AdminError, ChatClientError)


# --------------------------------------------------------------------------------------------------
# CPU sampling


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


def cpu_s(a: CpuSample, b: CpuSample) -> float:
    """CPU between two samples: schedstat when the kernel has it, else psutil's ticks."""
    sched = b.sched - a.sched
    return sched if sched > 0 else b.total - a.total


# --------------------------------------------------------------------------------------------------
# The receiver process


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
    rx = FastReceiver(p["url"], expect_gid=GID, sample_every=p["sample_every"])
    report = await rx.connect_all(range(p["first_uid"], p["first_uid"] + p["count"]), p["secret"],
                                  concurrency=p["concurrency"])
    ctrl.send(("ready", report.as_dict()))
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
                ctrl.send(("closed",))
            return


class ReceiverProc:
    """A receiver process holding ``count`` connections (uids first_uid..) to ``url``."""

    def __init__(self, url: str, first_uid: int, count: int, secret: str, *, core: int | None, concurrency: int,
                 sample_every: int) -> None:
        self.count = count
        params = {"url": url, "first_uid": first_uid, "count": count, "secret": secret, "core": core,
                  "concurrency": concurrency, "sample_every": sample_every}
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

    def connected(self) -> dict[str, Any]:
        """Wait for the connect report; raise unless every connection is up."""
        _, report = self.recv(timeout=max(120.0, self.count / 50))
        if report["connected"] != self.count:
            raise BenchError(f"receiver connected {report['connected']} of {self.count}: {report['errors']}")
        assert isinstance(report, dict)
        return report

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


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------------
# One measured window


@dataclass(frozen=True, slots=True)
class Node:
    """A server-side process whose CPU is measured; admin serves its /metrics (None: no metrics, e.g. Redis)."""

    name: str
    pid: int
    admin: AdminClient | None


@dataclass(slots=True)
class Run:
    """One window's raw figures (``details.runs`` of a record). ``processes``: each server-side process's CPU."""

    mode: str
    repeat: int
    messages: int
    burst: int
    deliveries_expected: int
    deliveries_received: int = 0
    server_cpu_s: float = 0.0  # schedstat (psutil's ticks where schedstat is missing), every server process
    server_cpu_s_psutil: float = 0.0
    server_sys_s: float = 0.0
    processes: dict[str, dict[str, float]] = field(default_factory=dict)
    receiver_cpu_s: float = 0.0
    receiver_cpu_share: float = 0.0  # the busiest receiver process's CPU / the window's wall time
    sender_cpu_s: float = 0.0
    wall_s: float = 0.0
    complete: bool = False
    verify: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Window:
    """A window's run, and every node's /metrics counters before and after it."""

    run: Run
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]

    def delta(self, node: str, name: str) -> float:
        return delta(self.after[node], self.before[node], name)

    def server_figures(self) -> dict[str, float | None]:
        """record.server_figures over every node's counters, server_cpu_s the window's schedstat CPU."""
        before: dict[str, float] = {}
        after: dict[str, float] = {}
        for name in self.after:
            add(before, self.before[name])
            add(after, self.after[name])
        figures = record.server_figures(after, before)
        figures["server_cpu_s"] = self.run.server_cpu_s
        return figures


class Bench:
    """Sends with this process's ChatClient, waits on the receiver process(es), measures windows.

    ``nodes``: the server-side processes, whose CPU is summed as "server CPU". ``settle``: read /metrics after a
    window only once the counters it selects stop changing (a cluster gateway without receivers may still be
    walking the last message's member list when the last delivery arrives)."""

    def __init__(self, nodes: list[Node], rxs: list[ReceiverProc], sender: ChatClient, *, timeout: float,
                 settle: Callable[[dict[str, float]], dict[str, float]] | None = None) -> None:
        self.nodes, self.rxs, self.sender, self.timeout, self.settle = nodes, rxs, sender, timeout, settle
        self.n = sum(rx.count for rx in rxs)
        self.sent = 0  # messages sent so far (each must reach every receiver)
        self.last_seq = 0
        self.node_ps = [psutil.Process(node.pid) for node in nodes]
        self.rx_ps = [psutil.Process(rx.pid) for rx in rxs]
        self.self_ps = psutil.Process()

    def _deliver(self, count: int, burst: int) -> None:
        """Send count messages in batches of burst (one write each); after each batch wait for its acks and all
        deliveries."""
        i = 0
        while i < count:
            k = min(burst, count - i)
            acks = self.sender.send_many(GID, [f"fanout message {self.sent + j + 1:08d} " + "x" * 40 for j in range(k)])
            self.last_seq = max(self.last_seq, *(ack["seq"] for ack in acks))
            self.sent += k
            i += k
            for rx in self.rxs:  # every receiver waits at once
                rx.conn.send(("wait", self.sent * rx.count, self.timeout))
            answers = [rx.recv(self.timeout + 10) for rx in self.rxs]
            if not all(ok for _, ok, _ in answers):
                total = sum(t for _, _, t in answers)
                raise Incomplete(f"after message {self.sent}: receivers have {total} of {self.sent * self.n} "
                                 f"deliveries after {self.timeout:g} s")

    def warmup(self, count: int) -> dict[str, Any]:
        if count:
            self._deliver(count, 1)
        return self.verify()

    def verify(self) -> dict[str, Any]:
        reports = []
        for rx in self.rxs:
            _, report = rx.call(("verify", self.sent, self.last_seq if self.sent else None), 60)
            assert isinstance(report, dict)
            reports.append(report)
        return merge_reports(reports)

    def _samples(self) -> list[CpuSample]:
        return [cpu_sample(ps) for ps in self.node_ps]

    def idle(self, seconds: float) -> dict[str, Any]:
        """Each server process's CPU over ``seconds`` without traffic."""
        a, t0 = self._samples(), time.perf_counter()
        time.sleep(seconds)
        b, t1 = self._samples(), time.perf_counter()
        return {"seconds": t1 - t0, "processes_cpu_s": {n.name: cpu_s(x, y) for n, x, y in zip(self.nodes, a, b,
                                                                                                 strict=True)}}

    def metrics(self) -> dict[str, dict[str, float]]:
        return {node.name: parse_counters(node.admin.metrics_text()) for node in self.nodes if node.admin is not None}

    def settled_metrics(self, keep: Callable[[dict[str, float]], dict[str, float]], timeout: float = 5.0) \
            -> dict[str, dict[str, float]]:
        """/metrics of every node once two reads 0.1 s apart agree on the counters ``keep`` selects."""
        deadline = time.monotonic() + timeout
        last = self.metrics()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.metrics()
            if all(keep(now[k]) == keep(last[k]) for k in now):
                return now
            last = now
        return last

    def run(self, mode: str, repeat: int, messages: int, burst: int) -> Window:
        """One measured window of ``messages`` messages, ``burst`` per write (1: paced)."""
        r = Run(mode=mode, repeat=repeat, messages=messages, burst=burst, deliveries_expected=messages * self.n)
        before = self.metrics()
        time.sleep(0.05)  # let the server finish with the scrape's connection before the window opens
        received0 = self.sent * self.n
        s0, x0, me0 = self._samples(), [cpu_sample(p) for p in self.rx_ps], self.self_ps.cpu_times()
        t0 = time.perf_counter()
        error: Incomplete | None = None
        try:
            self._deliver(messages, burst)
        except Incomplete as exc:
            error = exc
        t1 = time.perf_counter()
        s1, x1, me1 = self._samples(), [cpu_sample(p) for p in self.rx_ps], self.self_ps.cpu_times()
        after = self.metrics() if self.settle is None else self.settled_metrics(self.settle)
        r.wall_s = t1 - t0
        r.processes = {node.name: {"cpu_s": cpu_s(a, b), "cpu_s_psutil": b.total - a.total, "user_s": b.user - a.user,
                                   "sys_s": b.sys - a.sys} for node, a, b in zip(self.nodes, s0, s1, strict=True)}
        r.server_cpu_s = sum(p["cpu_s"] for p in r.processes.values())
        r.server_cpu_s_psutil = sum(p["cpu_s_psutil"] for p in r.processes.values())
        r.server_sys_s = sum(p["sys_s"] for p in r.processes.values())
        r.receiver_cpu_s = sum(cpu_s(a, b) for a, b in zip(x0, x1, strict=True))
        r.receiver_cpu_share = max(cpu_s(a, b) / r.wall_s for a, b in zip(x0, x1, strict=True)) \
            if r.wall_s > 0 else 0.0
        r.sender_cpu_s = (me1.user + me1.system) - (me0.user + me0.system)
        r.verify = self.verify()
        r.deliveries_received = int(r.verify["received_total"]) - received0
        w = Window(r, before, after)
        server_deliveries = sum(w.delta(k, "chat_deliveries_total") for k in after)
        r.complete = (error is None and bool(r.verify["ok"]) and r.deliveries_received == r.deliveries_expected
                      and int(server_deliveries) == r.deliveries_expected)
        if error is not None:
            r.verify.setdefault("examples", []).insert(0, str(error))
        return w


def warnings_of(runs: Iterable[Run], label: str = "") -> list[str]:
    """What makes a run's figures doubtful without making them wrong."""
    out = []
    for r in runs:
        if r.receiver_cpu_share > RECEIVER_BUSY:
            out.append(f"{label}{r.mode} #{r.repeat + 1}: receiver used {100 * r.receiver_cpu_share:.0f}% of its core "
                       "during the window: it may be the bottleneck (wall-clock figures understate the server)")
        ticks = r.server_cpu_s_psutil
        if ticks > 0 and abs(ticks - r.server_cpu_s) > max(0.05, 0.1 * ticks):
            out.append(f"{label}{r.mode} #{r.repeat + 1}: psutil CPU {ticks:.3f} s and schedstat "
                       f"{r.server_cpu_s:.3f} s disagree")
    return out


def incomplete_reason(r: Run) -> str:
    v = r.verify
    reason = (f"{r.mode} #{r.repeat + 1}: deliveries incomplete: {r.deliveries_received:,} of "
              f"{r.deliveries_expected:,}; lost {v.get('lost')}, extra {v.get('extra')}, wrong max seq "
              f"{v.get('wrong_max_seq')}, disconnected {v.get('disconnected')}")
    examples = v.get("examples", [])[:3]
    return reason + (f" ({'; '.join(examples)})" if examples else "")


# --------------------------------------------------------------------------------------------------
# Records


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values, None if any is missing (a figure some window lacks is not summarised)."""
    vals = list(values)
    if not vals or any(v is None for v in vals):
        return None
    return float(statistics.median(v for v in vals if v is not None))


def medians(rows: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Key by key median over the windows' figure dicts."""
    return {k: median(row.get(k) for row in rows) for k in rows[0]} if rows else {}


def delivery_counts(runs: list[Run]) -> dict[str, Any]:
    """The delivery counts of a record, summed over its windows (lost and extra as the receivers verified them:
    each window's verify is cumulative, and a benchmark stops at its first incomplete window)."""
    return {
        "expected_deliveries": sum(r.deliveries_expected for r in runs),
        "delivered": sum(r.deliveries_received for r in runs),
        "lost": sum(int(r.verify.get("lost", 0)) for r in runs),
        "duplicated": sum(int(r.verify.get("extra", 0)) for r in runs),
        "complete": all(r.complete for r in runs),
    }


def server_modes(admin: AdminClient | None) -> dict[str, Any]:
    """The modes the server reports on /healthz."""
    if admin is None:
        return {}
    return dict(admin.health().get("modes", {}))


def pinned(core: int | None) -> int:
    """A pinning parameter: the core, or -1 for none."""
    return -1 if core is None else core


def write_records(directory: Path, records: list[tuple[dict[str, Any], str]]) -> list[Path]:
    paths = []
    for rec, stem in records:
        path = record.write(directory, rec, stem)
        console.print(f"record written to {path}" + ("" if rec["metrics"]["valid"] else " [red](invalid)[/red]"))
        paths.append(path)
    return paths


def available_core(core: int | None) -> int | None:
    """``core`` if this process may use it (None and negative: no pinning)."""
    if core is None or core < 0:
        return None
    if core not in os.sched_getaffinity(0):
        console.print(f"[yellow]warning: core {core} not available ({sorted(os.sched_getaffinity(0))}); "
                      "not pinning[/yellow]")
        return None
    return core


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def on_sigterm_interrupt() -> None:
    """SIGTERM stops a benchmark as Ctrl-C does (the clean-up still runs)."""
    signal.signal(signal.SIGTERM, _sigterm)


def uninterrupted(cleanup: Callable[[], None]) -> None:
    """Run ``cleanup`` with SIGINT and SIGTERM ignored: a second Ctrl-C must not cut it short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        cleanup()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _sigterm)
