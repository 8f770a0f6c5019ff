"""Fan-out benchmark: deliveries per server-CPU-second for one sender broadcasting to a big group.

    python -m benchmarks.fanout                       # 10,000 receivers, 200 messages, 3 repeats (~2 min)
    python -m benchmarks.fanout --members 1000 --messages 20 --repeat 1   # smoke run, a few seconds

What it does:

1. starts ``python -m reference_server`` (:class:`chatbench.procs.ServerProcess`) on loopback ports it binds
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
   figure, :func:`chatbench.machine.process_cpu_seconds` (the threads' schedstat on-CPU nanoseconds: the same
   quantity, exact; psutil's figure is used when schedstat is missing). Both are in the JSON; a warning says
   if they disagree by more than 10%.
5. after each run the receiver verifies every connection received exactly the messages sent so far and the
   last seq; the server's ``chat_deliveries_total`` delta is cross-checked. Incomplete deliveries make the
   benchmark fail (exit 1) after writing its result.
6. prints a table and writes JSON (machine, git commit, parameters, every raw figure) to ``--out``
   (default ``results/bench-fanout-<UTC timestamp>.json``; an existing file is never overwritten).

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

from chatbench.cli import delta, server_counters
from chatbench.machine import git_info, machine_info, process_cpu_seconds
from chatbench.procs import SECRET, ServerProcess, ServerStartError
from drivers.admin import AdminError
from drivers.client import ChatClient, ChatClientError
from drivers.fast_receiver import FastReceiver
from reference_server.protocol import user_token

GID: Final = 1
TARGET_RATE: Final = 100_000  # deliveries per server-CPU-second
MAX_MEMBERS: Final = 19_000  # one receiver process; 20,000 open files per process
RECEIVER_BUSY: Final = 0.90  # receiver CPU share of its core above which it may be the bottleneck
MODES: Final = ("paced", "burst")
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
    sched: float  # chatbench.machine.process_cpu_seconds (schedstat, ns precision; 0.0 where missing)

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


class Bench:
    """Sends with this process's ChatClient, waits on the receiver process, measures windows."""

    def __init__(self, args: argparse.Namespace, server: ServerProcess, rx: ReceiverProc, sender: ChatClient) -> None:
        assert server.admin is not None
        self.args, self.admin, self.rx, self.sender = args, server.admin, rx, sender
        self.n = args.members
        self.sent = 0  # messages sent so far (each must reach every receiver)
        self.last_seq = 0
        self.server_ps, self.rx_ps, self.self_ps = psutil.Process(server.pid), psutil.Process(rx.pid), psutil.Process()

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
            _, ok, total = self.rx.call(("wait", self.sent * self.n, timeout), timeout + 10)
            if not ok:
                raise _Incomplete(f"after message {self.sent}: receiver has {total} of {self.sent * self.n} "
                                  f"deliveries after {timeout:g} s")

    def warmup(self, count: int) -> dict[str, Any]:
        if count:
            self._deliver(count, 1)
        return self._verify()

    def _verify(self) -> dict[str, Any]:
        _, report = self.rx.call(("verify", self.sent, self.last_seq if self.sent else None), 60)
        assert isinstance(report, dict)
        return report

    def idle(self, seconds: float) -> dict[str, float]:
        a, t0 = cpu_sample(self.server_ps), time.perf_counter()
        time.sleep(seconds)
        b, t1 = cpu_sample(self.server_ps), time.perf_counter()
        return {"seconds": t1 - t0, "server_cpu_s": b.total - a.total, "server_cpu_s_schedstat": b.sched - a.sched}

    def run(self, mode: str, repeat: int) -> Run:
        m = self.args.messages
        burst = 1 if mode == "paced" else self.args.burst
        r = Run(mode=mode, repeat=repeat, messages=m, burst=burst, deliveries_expected=m * self.n)
        before = server_counters(self.admin.metrics_text())
        time.sleep(0.05)  # let the server finish with the scrape's connection before the window opens
        sent0 = self.sent
        s0, x0, me0 = cpu_sample(self.server_ps), cpu_sample(self.rx_ps), self.self_ps.cpu_times()
        t0 = time.perf_counter()
        error: _Incomplete | None = None
        try:
            self._deliver(m, burst)
        except _Incomplete as exc:
            error = exc
        t1 = time.perf_counter()
        s1, x1, me1 = cpu_sample(self.server_ps), cpu_sample(self.rx_ps), self.self_ps.cpu_times()
        after = server_counters(self.admin.metrics_text())
        r.wall_s = t1 - t0
        r.server_user_s, r.server_sys_s, r.server_cpu_s = s1.user - s0.user, s1.sys - s0.sys, s1.total - s0.total
        r.server_cpu_s_schedstat = s1.sched - s0.sched
        r.receiver_cpu_s, r.receiver_sys_s = x1.total - x0.total, x1.sys - x0.sys
        r.receiver_cpu_share = r.receiver_cpu_s / r.wall_s if r.wall_s > 0 else 0.0
        r.sender_cpu_s = (me1.user + me1.system) - (me0.user + me0.system)
        r.server_metric_deliveries = delta(after, before, "chat_deliveries_total")
        r.server_metric_accepted = delta(after, before, "chat_messages_accepted_total")
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
        return r


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
    for r in runs:
        if r.receiver_cpu_share > RECEIVER_BUSY:
            warnings.append(f"{r.mode} #{r.repeat + 1}: receiver used {100 * r.receiver_cpu_share:.0f}% of its core "
                            "during the window: it may be the bottleneck (wall-clock figures understate the server)")
        if r.server_cpu_s > 0 and abs(r.server_cpu_s - r.server_cpu_s_schedstat) > max(0.05, 0.1 * r.server_cpu_s):
            warnings.append(f"{r.mode} #{r.repeat + 1}: psutil CPU {r.server_cpu_s:.3f} s and schedstat "
                            f"{r.server_cpu_s_schedstat:.3f} s disagree")
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
    for r in incomplete:
        v = r.verify
        console.print(f"[red]{r.mode} #{r.repeat + 1}: deliveries INCOMPLETE: {r.deliveries_received:,} of "
                      f"{r.deliveries_expected:,} (server counted {r.server_metric_deliveries:,.0f}); lost "
                      f"{v.get('lost')}, extra {v.get('extra')}, wrong max seq {v.get('wrong_max_seq')}, "
                      f"disconnected {v.get('disconnected')}[/red]")
        for ex in v.get("examples", [])[:5]:
            console.print(f"[red]    {ex}[/red]")
    result["ok"] = not incomplete and len(runs) == args.repeat * len(args.modes)
    return 0 if result["ok"] else 1


def write_exclusive(path: Path, data: bytes) -> Path:
    """Write to path, or to path-1, path-2, ... if it exists: never overwrite a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path
    for i in range(1, 1000):
        try:
            with candidate.open("xb") as f:
                f.write(data)
            return candidate
        except FileExistsError:
            candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
    raise BenchError(f"could not find a free file name next to {path}")


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
    p.add_argument("--server-core", type=int, default=0, help="CPU for the server (default 0; -1 = no pinning)")
    p.add_argument("--receiver-core", type=int, default=1,
                   help="CPU for the receiver and this sender process (default 1; -1 = no pinning)")
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
    if not 1 <= args.members <= MAX_MEMBERS:
        p.error(f"--members must be in 1..{MAX_MEMBERS} (one receiver process, 20,000 open files per process)")
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
    """What this run started; stop() ends each of them by PID, in order: sender, receiver, server."""

    server: ServerProcess | None = None
    rx: ReceiverProc | None = None
    sender: ChatClient | None = None

    def stop(self, result: dict[str, Any]) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        if self.rx is not None:
            self.rx.stop()
            self.rx = None
        if self.server is not None:
            result.setdefault("server", {})["exit_code"] = self.server.stop()


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
    result: dict[str, Any] = {
        "benchmark": "fanout", "schema": 1, "ok": False,
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "description": "deliveries per server-CPU-second, one sender broadcasting to a group whose receivers are "
                       "held by a FastReceiver process; CPU over exactly the broadcast window",
        "machine": machine_info(), "git": git_info(), "params": params, "warnings": [],
    }
    procs = Procs()
    code = 2
    try:
        try:
            code = _run(args, result, procs)
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
        path = write_exclusive(out_path, orjson.dumps(result, option=orjson.OPT_INDENT_2))
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
    procs.rx = ReceiverProc({
        "url": server.ws_url, "gid": GID, "first_uid": 1, "count": n, "secret": SECRET, "core": args.receiver_core,
        "concurrency": args.concurrency, "sample_every": args.sample_every,
    })
    _, connect, _ = procs.rx.recv(timeout=max(120.0, n / 50))
    result["connect"] = connect
    if connect["connected"] != n:
        raise BenchError(f"receiver connected {connect['connected']} of {n}: {connect['errors']}")
    console.print(f"{n:,} receivers connected in {connect['seconds']:.2f} s ({connect['retries']} retries)")
    procs.sender = ChatClient(server.ws_url, n + 1, user_token(SECRET, n + 1), heartbeat_s=None,
                              request_timeout=ACK_TIMEOUT, connect_timeout=60)
    procs.sender.connect()
    bench = Bench(args, server, procs.rx, procs.sender)

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
            r = bench.run(mode, rep)
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


if __name__ == "__main__":
    sys.exit(main())
