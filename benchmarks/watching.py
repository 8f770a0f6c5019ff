"""Watching benchmark: what reading the server's /metrics costs it, and what that does to the latency it reports.

    python -m benchmarks.watching                       # 0.1 core (root), 10 members, 40 msg/s, 20 s × 3 repeats
    python -m benchmarks.watching --seconds 5 --repeat 1        # smoke run

Part one, on an idle server: its CPU per /metrics request (:func:`record.machine.process_cpu_seconds`, over
``--scrapes`` requests of each kind, interleaved; medians) for a full render, for the two series ``chatbench``'s
sampler asks for (``drivers.admin.SAMPLED_SERIES``) and for the seven a capacity step reads
(``drivers.admin.CAPACITY_SERIES``), each by ``name[]``. Part two: a server held to ``--server-cpu-quota`` cores (a
cgroup; root) serves one group of ``--members`` connected members; two of them send ``--rate`` messages/s for
``--seconds``, paced, while nobody reads /metrics, while a reader renders it in full once a second, and while a
reader asks for the sampler's two series once a second — the three interleaved, ``--repeat`` rounds. Each window's
latency is send to receipt of every delivery (sender and receivers share this host's clock), in an HDR histogram;
the table gives medians over the rounds. A render holds the server's event loop: at 0.1 core ~4 ms of CPU is ~40 ms
of wall time, every push waiting behind it.

One record (record/schema.py, docs/results.md) under ``--results-dir`` (default ``results/``):
``bench-watching-<run id>.json``, kind ``benchmark``. ``details``: ``scrape_cpu_ms`` (median ms per request, by
what was asked), ``windows`` (each window's watcher, p50/p90/p99/p99.9 in ms and deliveries),
``p99_ms`` (median p99 by watcher). Invalid when a window lost deliveries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from hdrh.histogram import HdrHistogram
from rich.table import Table

import record
from benchmarks.common import FAILURES, GID, BenchError, console, server_modes, write_records
from drivers.admin import CAPACITY_SERIES, SAMPLED_SERIES
from drivers.client import ChatClient, Frame
from harness.procs import SECRET, ServerProcess
from record.machine import process_cpu_seconds
from reference_server.protocol import user_token

SCENARIO: Final = "bench-watching"
SAMPLER_SERIES: Final = tuple(SAMPLED_SERIES.values())  # what chatbench's sampler asks for
ASKS: Final[dict[str, tuple[str, ...]]] = {"full": (), "sampler (2 series)": SAMPLER_SERIES,
                                            "capacity step (7 series)": CAPACITY_SERIES}
WATCHERS: Final = ("nobody", "full render 1/s", "2 series 1/s")


def scrape_costs(srv: ServerProcess, scrapes: int) -> dict[str, float]:
    """Median server CPU ms per request of each kind, the kinds interleaved (a drift hits them alike)."""
    assert srv.admin is not None
    cost: dict[str, list[float]] = {name: [] for name in ASKS}
    for i in range(scrapes + 5):
        for name, names in ASKS.items():
            cpu0 = process_cpu_seconds(srv.pid)
            srv.admin.metrics_text(names)
            if i >= 5:  # the first few warm the server's code paths
                cost[name].append((process_cpu_seconds(srv.pid) - cpu0) * 1000)
    return {name: round(statistics.median(v), 3) for name, v in cost.items()}


def window(srv: ServerProcess, clients: list[ChatClient], hist: list[HdrHistogram], watcher: str,
           args: argparse.Namespace) -> dict[str, Any]:
    assert srv.admin is not None
    admin = srv.admin
    h = HdrHistogram(1, 60_000_000, 3)
    hist[0] = h
    stop = threading.Event()

    def watch(names: Sequence[str]) -> None:
        while not stop.wait(1.0):
            admin.metrics_text(names)

    reader = None
    if watcher != "nobody":
        reader = threading.Thread(target=watch, args=((() if watcher.startswith("full") else SAMPLER_SERIES),),
                                  daemon=True)
        reader.start()
    n = int(args.rate * args.seconds)
    t0 = time.time()
    for i in range(n):
        time.sleep(max(0.0, t0 + i / args.rate - time.time()))
        clients[i % 2].send_nowait(GID, "w", cts=int(time.time() * 1e6))
    expected = n * (args.members - 1)
    deadline = time.monotonic() + 30
    while h.get_total_count() < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    if reader is not None:
        reader.join(5)
    p = {f"p{q:g}": round(h.get_value_at_percentile(q) / 1000, 3) for q in (50, 90, 99, 99.9)}
    return {"watcher": watcher, **p, "deliveries": h.get_total_count(), "expected": expected}


def run(args: argparse.Namespace, windows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    with ServerProcess("--send-rate", "0", "--sqlite-synchronous=normal") as idle:
        info["scrape_cpu_ms"] = scrape_costs(idle, args.scrapes)
        console.print("server CPU per /metrics request: " + ", ".join(
            f"{k} {v:.2f} ms" for k, v in info["scrape_cpu_ms"].items()))
    quota = args.server_cpu_quota if args.server_cpu_quota > 0 else None
    with ServerProcess("--send-rate", "0", "--sqlite-synchronous=normal", cpu_quota=quota) as srv:
        assert srv.admin is not None
        info["server"] = server_modes(srv.admin)
        uids = list(range(1, args.members + 1))
        srv.admin.create_users(1, args.members)
        srv.admin.create_groups({GID: uids})
        hist = [HdrHistogram(1, 60_000_000, 3)]

        def receiver(uid: int) -> Callable[[Frame], None]:
            def on(frame: Frame) -> None:
                cts = frame.get("cts")
                if cts and frame.get("from") != uid:
                    hist[0].record_value(max(1, int(time.time() * 1e6) - int(cts)))
            return on

        clients = [ChatClient(srv.ws_url, u, user_token(SECRET, u), heartbeat_s=10.0,
                              on_message=receiver(u))  # heartbeats: the server closes idle connections
                   for u in uids]
        try:
            for c in clients:
                c.connect()
            for r in range(args.repeat):
                for watcher in WATCHERS:
                    w = window(srv, clients, hist, watcher, args)
                    windows.append(w)
                    closed = [c for c in clients if c.closed]
                    if closed:
                        raise BenchError(f"{len(closed)} members' connections closed (uid {closed[0].uid}: "
                                         f"{closed[0].close_code} {closed[0].close_reason})")
                    console.print(f"round {r + 1}/{args.repeat}, {watcher}: p50 {w['p50']:.1f} ms, p99 "
                                  f"{w['p99']:.1f} ms, p99.9 {w['p99.9']:.1f} ms, {w['deliveries']:,} deliveries")
        finally:
            for c in clients:
                c.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.watching", description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--rate", type=float, default=40.0, help="messages/s (default 40)")
    p.add_argument("--seconds", type=float, default=20.0, help="per window (default 20)")
    p.add_argument("--repeat", type=int, default=3, help="rounds of the three watchers (default 3)")
    p.add_argument("--scrapes", type=int, default=200, help="requests per kind in part one (default 200)")
    p.add_argument("--server-cpu-quota", type=float, default=0.1,
                   help="cores for the server in part two (default 0.1; needs root; 0: unrestricted)")
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="where the record goes (default results/; never overwritten)")
    args = p.parse_args(argv)
    if args.members < 3 or args.rate <= 0 or args.seconds <= 0 or args.repeat < 1 or args.scrapes < 1:
        p.error("--members must be >= 3, --rate and --seconds > 0, --repeat and --scrapes >= 1")
    if args.server_cpu_quota > 0 and os.geteuid() != 0:
        p.error("--server-cpu-quota needs root (a cgroup); pass --server-cpu-quota 0 to run unrestricted")
    rec = record.new("benchmark", SCENARIO, {k: v for k, v in vars(args).items() if k != "results_dir"})
    windows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    error: str | None = None
    try:
        run(args, windows, info)
    except KeyboardInterrupt:
        error = "interrupted"
    except FAILURES as exc:
        error = f"benchmark failed: {exc}"
    p99 = {w: statistics.median(x["p99"] for x in windows if x["watcher"] == w)
           for w in WATCHERS if any(x["watcher"] == w for x in windows)}
    rec["server_modes"] = info.get("server", {})
    rec["details"] = {"scrape_cpu_ms": info.get("scrape_cpu_ms", {}), "windows": windows, "p99_ms": p99}
    invalid = [f"{w['watcher']}: {w['expected'] - w['deliveries']:,} of {w['expected']:,} deliveries missing"
               for w in windows if w["deliveries"] < w["expected"]]
    if len(windows) < args.repeat * len(WATCHERS):
        invalid.append(f"{len(windows)} of {args.repeat * len(WATCHERS)} windows ran")
    if error:
        invalid.append(error)
    record.finish(rec, invalid)
    table = Table(title=f"watching: server at {args.server_cpu_quota or 'unrestricted'} core, {args.members} "
                        f"members, {args.rate:g} msg/s — medians of {args.repeat} × {args.seconds:g} s")
    for col in ("watcher", "p50 ms", "p99 ms", "p99.9 ms"):
        table.add_column(col, justify="left" if col == "watcher" else "right")
    for w in p99:
        rows = [x for x in windows if x["watcher"] == w]
        table.add_row(w, *(f"{statistics.median(x[k] for x in rows):.1f}" for k in ("p50", "p99", "p99.9")))
    console.print(table)
    for reason in rec["metrics"]["invalid_reasons"]:
        console.print(f"[red]{reason}[/red]")
    write_records(args.results_dir, [(rec, f"{SCENARIO}-{rec['run_id']}")])
    if error is not None:
        return 130 if error == "interrupted" else 2
    return 0 if rec["metrics"]["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
