"""Modes benchmark: rows written and server CPU per message for each storage, unread and offline mode.

    python -m benchmarks.modes                        # N = 10,000 members, 20 messages × 3 repeats per mode
    python -m benchmarks.modes --members 1000 --messages 5 --repeat 1     # smoke run

For each configuration (the default ``read/seq/pull`` and each other mode with the rest at default) it starts
``python -m reference_server`` (:class:`harness.procs.ServerProcess`, pinned to ``--server-core``), provisions
N users in one group, connects only the sender (uid 1; the N − 1 others are offline, so the offline modes buffer
for every one of them and fan-out is a walk over the members with nobody to push to), sends a few unmeasured
messages, then ``--repeat`` windows of ``--messages`` paced sends (each waits for its ack). A window's server CPU
is :func:`record.machine.process_cpu_seconds` (schedstat, all threads) from before the first send until the
last ack — and, in the merged unread mode, until its flush has written every pending change
(``chat_unread_pending`` back to 0; the flush timer is set to 100 ms). Rows per message come from the server's
exact counters (``chat_storage_writes_total{kind}``, ``chat_unread_writes_total``, ``chat_offline_writes_total``).
CPU per message is reported as the median of the windows, with the spread: other processes share these 2 cores,
so a spread over 25 % of the median is flagged — as ``rising`` when every window cost more than the one before
(the cost grows with the rows already stored: write diffusion and the offline buffer add ~N rows per message),
else as ``noisy``. JSON goes to ``--out`` (default
``results/bench-modes-<UTC>.json``, never overwritten).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from rich.console import Console
from rich.table import Table

from drivers.bundle import write_new
from drivers.client import ChatClient
from harness.procs import SECRET, ServerProcess
from record.machine import git_info, machine_info, process_cpu_seconds
from record.promtext import counters as server_counters
from record.promtext import delta
from reference_server.protocol import user_token

GID: Final = 1
NOISY: Final = 0.25
CONFIGS: Final[dict[str, tuple[str, ...]]] = {
    "default read/seq/pull": (),
    "storage write": ("--storage", "write"),
    "storage hybrid (threshold 1000)": ("--storage", "hybrid", "--hybrid-threshold", "1000"),
    "unread per-message": ("--unread", "per-message"),
    "unread merged": ("--unread", "merged", "--unread-flush-ms", "100"),
    "offline buffer": ("--offline", "buffer"),
    "offline rate-limited (10,000/s)": ("--offline", "rate-limited", "--offline-rate", "10000"),
}
console = Console() if sys.stdout.isatty() else Console(width=200)


def window(srv: ServerProcess, sender: ChatClient, messages: int, merged: bool) -> dict[str, Any]:
    assert srv.admin is not None
    before = server_counters(srv.admin.metrics_text())
    time.sleep(0.05)
    cpu0 = process_cpu_seconds(srv.pid)
    for i in range(messages):
        sender.send(GID, f"modes benchmark message {i:06d} " + "x" * 40)
    if merged:
        while server_counters(srv.admin.metrics_text()).get("chat_unread_pending", 0.0) > 0:
            time.sleep(0.02)
    cpu1 = process_cpu_seconds(srv.pid)
    after = server_counters(srv.admin.metrics_text())
    per = {k: delta(after, before, name) / messages for k, name in (
        ("storage", "chat_storage_writes_total"), ("unread", "chat_unread_writes_total"),
        ("offline", "chat_offline_writes_total"), ("offline_dropped", "chat_offline_dropped_total"))}
    per["index"] = delta(after, before, "chat_storage_writes_total{kind=index}") / messages
    return {"cpu_us_per_message": (cpu1 - cpu0) / messages * 1e6, "writes_per_message": per}


def run_config(name: str, flags: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    n = args.members
    with ServerProcess("--send-rate", "0", "--idle-timeout-s", "600", *flags, cpu=args.server_core, port=0,
                       admin_port=0, new_session=True, die_with_parent=True) as srv:
        assert srv.admin is not None
        srv.admin.timeout = 120
        srv.admin.create_users(1, n)
        srv.admin.create_groups({GID: list(range(1, n + 1))})
        with ChatClient(srv.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None, request_timeout=60) as sender:
            for i in range(args.warmup):
                sender.send(GID, f"warm-up {i}")
            runs = [window(srv, sender, args.messages, "merged" in flags) for _ in range(args.repeat)]
    cpu = [r["cpu_us_per_message"] for r in runs]
    med = statistics.median(cpu)
    writes = {k: statistics.median(r["writes_per_message"][k] for r in runs) for k in runs[0]["writes_per_message"]}
    spread = (max(cpu) - min(cpu)) > NOISY * med
    rising = len(cpu) > 1 and all(a < b for a, b in itertools.pairwise(cpu))
    flag = ("rising" if rising else "noisy") if spread else "no"
    return {"name": name, "flags": list(flags), "runs": runs, "cpu_us_per_message": {"median": med, "all": cpu},
            "writes_per_message": writes, "flag": flag}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.modes", description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, default=10_000)
    p.add_argument("--messages", type=int, default=20, help="paced messages per window (default 20)")
    p.add_argument("--repeat", type=int, default=3, help="windows per mode (default 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--server-core", type=int, default=0, help="CPU for the server (-1: no pinning)")
    p.add_argument("--only", default="", help="comma-separated substrings of configuration names to run")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.server_core = None if args.server_core < 0 else args.server_core
    if (args.warmup + args.messages * args.repeat) >= 1000:
        p.error("the offline buffer's per-user cap is 1000: keep warmup + messages × repeat below it")
    result: dict[str, Any] = {"benchmark": "modes", "schema": 1, "params": vars(args), "machine": machine_info(),
                              "git": git_info(), "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "configs": []}
    only = [s for s in args.only.split(",") if s]
    for name, flags in CONFIGS.items():
        if only and not any(s in name for s in only):
            continue
        console.print(f"{name} ...")
        result["configs"].append(run_config(name, flags, args))
    table = Table(title=f"modes: {args.members:,} members (1 online), {args.messages} paced messages × "
                        f"{args.repeat} — median [all]")
    for col in ("configuration", "storage rows/msg", "of which index", "unread rows/msg", "offline rows/msg",
                "offline dropped/msg", "server CPU µs/msg", "spread"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for c in result["configs"]:
        w, cpu = c["writes_per_message"], c["cpu_us_per_message"]
        table.add_row(c["name"], f"{w['storage']:,.1f}", f"{w['index']:,.1f}", f"{w['unread']:,.1f}",
                      f"{w['offline']:,.1f}", f"{w['offline_dropped']:,.1f}",
                      f"{cpu['median']:,.0f} [{', '.join(f'{v:,.0f}' for v in cpu['all'])}]",
                      c["flag"] if c["flag"] == "no" else f"[yellow]{c['flag']}[/yellow]")
    console.print(table)
    out = args.out or f"results/bench-modes-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    path = write_new(Path(out).parent, Path(out).stem, orjson.dumps(result, option=orjson.OPT_INDENT_2))
    console.print(f"result written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
