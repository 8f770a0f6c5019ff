"""Fan-out benchmark: deliveries per server-CPU-second for one sender broadcasting to a big group.

    python -m benchmarks.fanout                       # 10,000 receivers, 200 messages, 3 repeats (~2 min)
    python -m benchmarks.fanout --members 1000 --messages 20 --repeat 1   # smoke run, a few seconds
    python -m benchmarks.fanout --cluster K ...       # the same against a cluster: benchmarks/fanout_cluster.py

What it does:

1. starts ``python -m reference_server`` (:class:`harness.procs.ServerProcess`) on loopback ports it binds
   itself, with a fresh database in a temp dir, ``--send-rate 0 --idle-timeout-s 600``, pinned to core 0
   (``--server-core``), in its own session, SIGTERMed by the kernel should this process die;
2. provisions users 1..N+1 and group 1 holding all of them (N receivers + the sender, uid N+1);
3. starts a receiver process pinned to core 1 (``--receiver-core``) that holds the N connections with a
   :class:`drivers.fast_receiver.FastReceiver` (:class:`benchmarks.common.ReceiverProc`); this process (the
   sender, one :class:`drivers.client.ChatClient`) is pinned to the same core: its share is a few system calls
   per message;
4. sends a few unmeasured warm-up messages, measures the server's idle CPU for a second, then runs each mode
   ``--repeat`` times, interleaved:

   * ``paced``: send one message, wait for its ack and for all N deliveries, then the next: every delivery
     is its own socket write, no coalescing possible;
   * ``burst``: send ``--burst`` messages in one write without waiting for acks, then wait for all of their
     deliveries: the server coalesces several frames per socket write;

   The window of each run is exactly the broadcast: the server's CPU and the receiver's CPU are read right
   before the first send and right after the last delivery arrived; connection set-up is outside it. Server
   CPU is :func:`record.machine.process_cpu_seconds` (the threads' schedstat on-CPU nanoseconds; psutil's 10 ms
   ticks where schedstat is missing); psutil's figure is kept beside it and a warning says if they disagree by
   more than 10%.
5. after each run the receiver verifies every connection received exactly the messages sent so far and the
   last seq; the server's ``chat_deliveries_total`` delta is cross-checked. The benchmark stops at the first
   incomplete run.
6. prints a table and writes one result record per mode (record/schema.py, docs/results.md) under
   ``--results-dir`` (default ``results/``, never overwritten): ``bench-fanout-<run id>.json``, the run id
   ending in the mode.

A record (kind ``benchmark``, scenario ``bench-fanout``): ``parameters`` are the workload (members, messages,
mode, burst, warm-up, receiver sampling, pinning); ``config.server_args`` the extra server flags;
``server_modes`` the modes the server reported. ``metrics`` holds the server figures of a window as the median
of the repetitions (``server_cpu_s``, ``server_deliveries``, ``server_messages_accepted``, the derived
``deliveries_per_server_cpu_s``, ``server_cpu_us_per_message``, ``*_writes_per_message``), the medians of
``server_cpu_us_per_delivery``, ``receiver_cpu_s``, ``receiver_cpu_share``, ``wall_s``, and the delivery counts
summed over the windows (``expected_deliveries``, ``delivered``, ``lost``, ``duplicated``, ``complete``).
``details``: ``runs`` (every window's raw figures), ``connect``, ``warmup``, ``idle``, ``server``,
``warnings``, ``repeats``. A record is invalid (``metrics.valid`` false, exit 1) when a window's deliveries were
incomplete or fewer windows ran than asked for.

The server and the receiver are stopped by PID (SIGTERM, then SIGKILL) on success, error or Ctrl-C.
All traffic is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from rich.markup import escape
from rich.table import Table

import record
from benchmarks.common import (
    ACK_TIMEOUT,
    FAILURES,
    GID,
    MAX_MEMBERS,
    MODES,
    Bench,
    BenchError,
    Node,
    ReceiverProc,
    Window,
    available_core,
    console,
    delivery_counts,
    incomplete_reason,
    median,
    medians,
    on_sigterm_interrupt,
    pinned,
    server_modes,
    uninterrupted,
    warnings_of,
    write_records,
)
from drivers.client import ChatClient
from harness.procs import SECRET, ServerProcess
from reference_server.protocol import user_token

TARGET_RATE: Final = 100_000  # deliveries per server-CPU-second
SCENARIO: Final = "bench-fanout"


class Embedded:
    """What this run started; stop() ends each by PID: sender, receiver, server."""

    def __init__(self) -> None:
        self.server: ServerProcess | None = None
        self.rx: ReceiverProc | None = None
        self.sender: ChatClient | None = None
        self.exit_code: int | None = None

    def stop(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        if self.rx is not None:
            self.rx.stop()
            self.rx = None
        if self.server is not None:
            self.exit_code = self.server.stop()


def run(args: argparse.Namespace, procs: Embedded, windows: list[Window], info: dict[str, Any]) -> None:
    """Start, provision, connect, warm up, then the measured windows (appended to ``windows`` as they end, so an
    interrupted benchmark still records what it measured)."""
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
    info["server"] = {"cmd": server.cmd, "pid": server.pid, "ready_line": server.ready_line}
    info["server_modes"] = server_modes(server.admin)
    t0 = time.perf_counter()
    server.admin.create_users(1, n + 1)
    server.admin.create_groups({GID: list(range(1, n + 2))})
    info["provision_s"] = time.perf_counter() - t0
    console.print(f"provisioned {n + 1:,} users and group {GID} in {info['provision_s']:.2f} s; "
                  f"connecting {n:,} receivers (core {args.receiver_core}) ...")
    rx = procs.rx = ReceiverProc(server.ws_url, 1, n, SECRET, core=args.receiver_core, concurrency=args.concurrency,
                                 sample_every=args.sample_every)
    connect = info["connect"] = rx.connected()
    console.print(f"{n:,} receivers connected in {connect['seconds']:.2f} s ({connect['retries']} retries)")
    procs.sender = ChatClient(server.ws_url, n + 1, user_token(SECRET, n + 1), heartbeat_s=None,
                              request_timeout=ACK_TIMEOUT, connect_timeout=60)
    procs.sender.connect()
    bench = Bench([Node("server", server.pid, server.admin)], [rx], procs.sender, timeout=args.timeout)
    warm = bench.warmup(args.warmup)
    info["warmup"] = {"messages": args.warmup, "verify": warm}
    if not warm["ok"]:
        raise BenchError(f"warm-up deliveries incomplete: {warm}")
    time.sleep(0.5)  # let the connect/warm-up aftermath settle
    info["idle"] = bench.idle(1.0)
    for rep in range(args.repeat):
        for mode in args.modes:
            w = bench.run(mode, rep, args.messages, 1 if mode == "paced" else args.burst)
            windows.append(w)
            r = w.run
            state = "[green]complete[/green]" if r.complete else "[red]INCOMPLETE[/red]"
            console.print(
                f"  {mode:5s} #{rep + 1}: {r.deliveries_received:,} deliveries, server CPU {r.server_cpu_s:.3f} s "
                f"→ {r.deliveries_received / r.server_cpu_s if r.server_cpu_s else 0:,.0f}/CPU-s, "
                f"receiver {100 * r.receiver_cpu_share:.0f}% of its core, wall {r.wall_s:.2f} s, {state}")
            if not r.complete:
                return


def build_record(args: argparse.Namespace, mode: str, windows: list[Window], info: dict[str, Any],
                 run_id: str, started_s: float, error: str | None) -> dict[str, Any]:
    """One mode's record: the medians of its windows in metrics, every window in details."""
    runs = [w.run for w in windows]
    params = {"members": args.members, "messages": args.messages, "mode": mode,
              "burst": 1 if mode == "paced" else args.burst, "warmup": args.warmup, "sample_every": args.sample_every,
              "server_core": pinned(args.server_core), "receiver_core": pinned(args.receiver_core)}
    rec = record.new("benchmark", SCENARIO, params, run_id=f"{run_id}-{mode}", started_s=started_s,
                     server_modes=info.get("server_modes"))
    rec["config"] = {"server_args": list(args.server_arg)}
    m = rec["metrics"]
    m.update(medians([w.server_figures() for w in windows]))
    m["server_cpu_source"] = "schedstat, the server process, each broadcast window; median of the windows"
    cpu, deliveries = m.get("server_cpu_s"), m.get("server_deliveries")
    m["server_cpu_us_per_delivery"] = cpu / deliveries * 1e6 if cpu is not None and deliveries else None
    m["receiver_cpu_s"] = median(r.receiver_cpu_s for r in runs)
    m["receiver_cpu_share"] = median(r.receiver_cpu_share for r in runs)
    m["wall_s"] = median(r.wall_s for r in runs)
    m.update(delivery_counts(runs))
    warnings = warnings_of(runs)
    rec["details"] = {"runs": [asdict(r) for r in runs], "repeats": args.repeat, "warnings": warnings,
                      **{k: v for k, v in info.items() if k != "server_modes"}}
    invalid = [incomplete_reason(r) for r in runs if not r.complete]
    if len(runs) < args.repeat:
        invalid.append(f"{len(runs)} of {args.repeat} windows ran")
    if error:
        invalid.append(error)
    return record.finish(rec, invalid)


def print_table(records: list[dict[str, Any]]) -> None:
    p = records[0]["parameters"]
    table = Table(title=f"fan-out: {p['members']:,} receivers, {p['messages']} messages per window — median "
                        "\\[all windows]")
    for col in ("mode", "deliveries/window", "server CPU s", "deliveries / server-CPU-s", "µs / delivery", "sys %",
                "receiver core", "wall s", "valid"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for rec in records:
        m, runs, mode = rec["metrics"], rec["details"]["runs"], rec["parameters"]["mode"]
        rates = [r["deliveries_received"] / r["server_cpu_s"] if r["server_cpu_s"] else 0.0 for r in runs]
        sys_share = median(r["server_sys_s"] / r["server_cpu_s_psutil"] if r["server_cpu_s_psutil"] else 0.0
                           for r in runs) or 0.0
        table.add_row(
            mode if mode == "paced" else f"{mode} (k={rec['parameters']['burst']})",
            f"{m['server_deliveries'] or 0:,.0f}", f"{m['server_cpu_s'] or 0:.3f}",
            f"[bold]{m['deliveries_per_server_cpu_s'] or 0:,.0f}[/bold] "
            + escape("[" + ", ".join(f"{v:,.0f}" for v in rates) + "]"),
            f"{m['server_cpu_us_per_delivery'] or 0:.2f}", f"{100 * sys_share:.0f}%",
            f"{100 * (m['receiver_cpu_share'] or 0):.0f}% "
            + escape("[" + ", ".join(f"{100 * r['receiver_cpu_share']:.0f}%" for r in runs) + "]"),
            f"{m['wall_s'] or 0:.2f}", "[green]yes[/green]" if m["valid"] else "[red]NO[/red]")
    console.print(table)


def report(records: list[dict[str, Any]]) -> None:
    if records:
        print_table(records)
    for rec in records:
        m, mode = rec["metrics"], rec["parameters"]["mode"]
        for w in rec["details"]["warnings"]:
            console.print(f"[yellow]warning: {escape(w)}[/yellow]")
        rate = m["deliveries_per_server_cpu_s"] or 0.0
        if not m["valid"]:
            console.print(f"{mode}: [red]not a valid figure: {escape('; '.join(m['invalid_reasons']))}[/red]")
            continue
        verdict = "[green]meets[/green]" if rate >= TARGET_RATE else "[red]below[/red]"
        console.print(f"{mode}: median {rate:,.0f} deliveries per server-CPU-second — {verdict} the target of "
                      f"{TARGET_RATE:,}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout",
        description="Deliveries per server-CPU-second for a broadcast from one sender to a big group whose "
                    "connections are held by a fast receiver process.",
        epilog="With --cluster K: the cluster benchmark (python -m benchmarks.fanout --cluster K --help).")
    p.add_argument("--members", type=int, default=10_000, help="receivers in the group (default 10000)")
    p.add_argument("--messages", type=int, default=200, help="messages per window (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="windows per mode (default 3)")
    p.add_argument("--burst", type=int, default=10, help="messages per write in burst mode (default 10)")
    p.add_argument("--modes", default="paced,burst", help="comma-separated: paced, burst (default both)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured paced messages first (default 5)")
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="where the records go (default results/; never overwritten)")
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
    if not args.modes or any(m not in MODES for m in args.modes) or len(set(args.modes)) != len(args.modes):
        p.error(f"--modes must name some of {', '.join(MODES)}, each once")
    if not 1 <= args.members <= MAX_MEMBERS:
        p.error(f"--members must be in 1..{MAX_MEMBERS} (one receiver process, 20,000 open files per process)")
    if args.messages < 1 or args.repeat < 1 or args.burst < 1 or args.warmup < 0:
        p.error("--messages, --repeat and --burst must be >= 1, --warmup >= 0")
    args.server_core = available_core(args.server_core)
    args.receiver_core = available_core(args.receiver_core)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--cluster" or a.startswith("--cluster=") for a in argv):
        from benchmarks.fanout_cluster import main as cluster_main

        return cluster_main(argv)
    args = parse_args(argv)
    on_sigterm_interrupt()
    run_id, started = record.new_run_id(), time.time()
    procs = Embedded()
    windows: list[Window] = []
    info: dict[str, Any] = {}
    error: str | None = None
    try:
        try:
            run(args, procs, windows, info)
        finally:
            uninterrupted(procs.stop)
            info.setdefault("server", {})["exit_code"] = procs.exit_code
            raised = sys.exc_info()[1]
            interrupted = isinstance(raised, KeyboardInterrupt)
            if (server := procs.server) is not None:
                if raised is not None and not interrupted:
                    console.print(f"[dim]server log tail:\n{escape(server.log_tail(30))}[/dim]")
                keep = args.keep_tmp or (raised is not None and not interrupted)  # a failure to look into
                server.cleanup(keep=keep)
                if keep:
                    console.print(f"server temp dir kept: {server.db_path.parent}")
    except KeyboardInterrupt:
        console.print("[red]interrupted; server and receiver stopped[/red]")
        error = "interrupted"
    except FAILURES as exc:
        console.print(f"[red]benchmark failed: {escape(str(exc))}[/red]")
        error = f"benchmark failed: {exc}"
    except Exception as exc:
        console.print_exception()
        error = f"benchmark failed: {type(exc).__name__}: {exc}"
    records = [build_record(args, mode, [w for w in windows if w.run.mode == mode], info, run_id, started, error)
               for mode in args.modes if any(w.run.mode == mode for w in windows)]
    report(records)
    write_records(args.results_dir, [(rec, f"{SCENARIO}-{rec['run_id']}") for rec in records])
    if error is not None:
        return 130 if error == "interrupted" else 2
    return 0 if len(records) == len(args.modes) and all(r["metrics"]["valid"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
