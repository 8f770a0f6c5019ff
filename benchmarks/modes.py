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
CPU per message is the median of the windows, with the spread: other processes share these 2 cores, so a spread
over 25 % of the median is flagged — as ``rising`` when every window cost more than the one before (the cost
grows with the rows already stored: write diffusion and the offline buffer add ~N rows per message), else as
``noisy``.

One result record per configuration (record/schema.py, docs/results.md) under ``--results-dir`` (default
``results/``, never overwritten): ``bench-modes-<run id>.json``, the run id ending in the configuration's name.
Kind ``benchmark``, scenario ``bench-modes``; ``parameters``: members, messages, warm-up, pinning (the same for
every configuration, so ``chatbench compare`` sets configurations side by side); ``server_modes`` as the server
reports them, ``config.server_args`` the configuration's flags. ``metrics`` (medians of the windows):
``server_cpu_s``, ``server_messages_accepted``, ``server_deliveries``, the derived ``server_cpu_us_per_message``,
``storage_writes_per_message``, ``unread_writes_per_message``, and ``index_writes_per_message``,
``offline_writes_per_message``, ``offline_dropped_per_message``, ``disk_bytes_per_message`` (page cache the
server dirtied for storage, ``chat_disk_written_bytes_total``; the table shows KB). ``details``: ``configuration``
(its name), ``windows`` (each window's CPU and rows per message), ``spread`` (no, noisy or rising), ``server``. A
record is invalid when the server accepted fewer messages than were sent or the merged flush did not finish.
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from rich.markup import escape
from rich.table import Table

import record
from benchmarks.common import FAILURES, GID, available_core, console, medians, pinned, server_modes, write_records
from drivers.client import ChatClient
from harness.procs import SECRET, ServerProcess
from record.machine import process_cpu_seconds
from record.promtext import counters as server_counters
from record.promtext import delta
from reference_server.protocol import user_token

SCENARIO: Final = "bench-modes"
NOISY: Final = 0.25
FLUSH_TIMEOUT_S: Final = 10.0
CONFIGS: Final[dict[str, tuple[str, ...]]] = {
    "default read/seq/pull": (),
    "storage write": ("--storage", "write"),
    "storage hybrid (threshold 1000)": ("--storage", "hybrid", "--hybrid-threshold", "1000"),
    "unread per-message": ("--unread", "per-message"),
    "unread merged": ("--unread", "merged", "--unread-flush-ms", "100"),
    "offline buffer": ("--offline", "buffer"),
    "offline rate-limited (10,000/s)": ("--offline", "rate-limited", "--offline-rate", "10000"),
}
#: rows per message the server counts, beside the ones record.finish derives: metrics key -> counter
ROWS: Final = {
    "index_writes_per_message": "chat_storage_writes_total{kind=index}",
    "offline_writes_per_message": "chat_offline_writes_total",
    "offline_dropped_per_message": "chat_offline_dropped_total",
}


def window(srv: ServerProcess, sender: ChatClient, messages: int, merged: bool) -> dict[str, Any]:
    """One window's figures: record.server_figures with schedstat CPU, the rows of ROWS, and ``flushed``
    (merged mode: the pending changes were written before the deadline)."""
    assert srv.admin is not None
    before = server_counters(srv.admin.metrics_text())
    time.sleep(0.05)
    cpu0 = process_cpu_seconds(srv.pid)
    for i in range(messages):
        sender.send(GID, f"modes benchmark message {i:06d} " + "x" * 40)
    flushed = True
    if merged:
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while server_counters(srv.admin.metrics_text()).get("chat_unread_pending", 0.0) > 0:
            if time.monotonic() > deadline:
                flushed = False
                break
            time.sleep(0.02)
    cpu1 = process_cpu_seconds(srv.pid)
    after = server_counters(srv.admin.metrics_text())
    figures: dict[str, Any] = dict(record.server_figures(after, before))
    figures["server_cpu_s"] = cpu1 - cpu0
    figures.update({key: delta(after, before, name) / messages for key, name in ROWS.items()})
    return {"figures": figures, "flushed": flushed, "messages": messages}


def run_config(flags: Sequence[str], args: argparse.Namespace, windows: list[dict[str, Any]],
               info: dict[str, Any]) -> None:
    """Start a server with ``flags``, provision, warm up, then the windows (appended as they end)."""
    n = args.members
    with ServerProcess("--send-rate", "0", "--idle-timeout-s", "600", *flags, cpu=args.server_core, port=0,
                       admin_port=0, new_session=True, die_with_parent=True) as srv:
        assert srv.admin is not None
        srv.admin.timeout = 120
        info["server_modes"] = server_modes(srv.admin)
        info["server"] = {"cmd": srv.cmd, "pid": srv.pid}
        srv.admin.create_users(1, n)
        srv.admin.create_groups({GID: list(range(1, n + 1))})
        with ChatClient(srv.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None, request_timeout=60) as sender:
            for i in range(args.warmup):
                sender.send(GID, f"warm-up {i}")
            for _ in range(args.repeat):
                windows.append(window(srv, sender, args.messages, "merged" in flags))


def spread(cpu: list[float]) -> str:
    """``no``, ``noisy`` (max − min over NOISY of the median) or ``rising`` (noisy, every window dearer)."""
    med = statistics.median(cpu)
    if max(cpu) - min(cpu) <= NOISY * med:
        return "no"
    return "rising" if len(cpu) > 1 and all(a < b for a, b in itertools.pairwise(cpu)) else "noisy"


def build_record(args: argparse.Namespace, name: str, flags: Sequence[str], windows: list[dict[str, Any]],
                 info: dict[str, Any], run_id: str, started_s: float, error: str | None) -> dict[str, Any]:
    params = {"members": args.members, "messages": args.messages, "warmup": args.warmup,
              "server_core": pinned(args.server_core)}
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    rec = record.new("benchmark", SCENARIO, params, run_id=f"{run_id}-{slug}", started_s=started_s,
                     server_modes=info.get("server_modes"))
    rec["config"] = {"server_args": list(flags)}
    m = rec["metrics"]
    figures = [w["figures"] for w in windows]
    m.update(medians(figures))
    m["server_cpu_source"] = "schedstat, the server process, each window of paced sends; median of the windows"
    cpu = [f["server_cpu_s"] / w["messages"] * 1e6 for f, w in zip(figures, windows, strict=True)]
    rec["details"] = {
        "configuration": name, "repeats": args.repeat, "spread": spread(cpu),
        "windows": [{"cpu_us_per_message": c, **{k: f[k] for k in ROWS},
                     **{k: f[f"_{counter}"] / w["messages"] for k, counter in (
                         ("storage_writes_per_message", "chat_storage_writes_total"),
                         ("unread_writes_per_message", "chat_unread_writes_total"))}}
                    for c, f, w in zip(cpu, figures, windows, strict=True)],
        **{k: v for k, v in info.items() if k != "server_modes"}}
    invalid = [f"window {i + 1}: the server accepted {f['server_messages_accepted']:g} of {w['messages']} messages"
               for i, (f, w) in enumerate(zip(figures, windows, strict=True))
               if f["server_messages_accepted"] != w["messages"]]
    invalid += [f"window {i + 1}: merged unread changes still pending after {FLUSH_TIMEOUT_S:g} s"
                for i, w in enumerate(windows) if not w["flushed"]]
    if len(windows) < args.repeat:
        invalid.append(f"{len(windows)} of {args.repeat} windows ran")
    if error:
        invalid.append(error)
    return record.finish(rec, invalid)


def print_table(records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    table = Table(title=f"modes: {args.members:,} members (1 online), {args.messages} paced messages per window — "
                        "median \\[all windows]")
    for col in ("configuration", "storage rows/msg", "of which index", "unread rows/msg", "offline rows/msg",
                "offline dropped/msg", "disk KB/msg", "server CPU µs/msg", "spread", "valid"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for rec in records:
        m, d = rec["metrics"], rec["details"]
        table.add_row(d["configuration"], *(f"{m[k] or 0:,.1f}" for k in (
            "storage_writes_per_message", "index_writes_per_message", "unread_writes_per_message",
            "offline_writes_per_message", "offline_dropped_per_message")),
            "–" if m.get("disk_bytes_per_message") is None else f"{m['disk_bytes_per_message'] / 1000:,.1f}",
            f"{m['server_cpu_us_per_message'] or 0:,.0f} "
            + escape("[" + ", ".join(f"{w['cpu_us_per_message']:,.0f}" for w in d["windows"]) + "]"),
            d["spread"] if d["spread"] == "no" else f"[yellow]{d['spread']}[/yellow]",
            "[green]yes[/green]" if m["valid"] else "[red]NO[/red]")
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.modes", description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, default=10_000)
    p.add_argument("--messages", type=int, default=20, help="paced messages per window (default 20)")
    p.add_argument("--repeat", type=int, default=3, help="windows per mode (default 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--server-core", type=int, default=0, help="CPU for the server (-1: no pinning)")
    p.add_argument("--only", default="", help="comma-separated substrings of configuration names to run")
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="where the records go (default results/; never overwritten)")
    args = p.parse_args(argv)
    args.server_core = available_core(args.server_core)
    if args.members < 2 or args.messages < 1 or args.repeat < 1 or args.warmup < 0:
        p.error("--members must be >= 2, --messages and --repeat >= 1, --warmup >= 0")
    if (args.warmup + args.messages * args.repeat) >= 1000:
        p.error("the offline buffer's per-user cap is 1000: keep warmup + messages × repeat below it")
    only = [s for s in args.only.split(",") if s]
    run_id = record.new_run_id()
    records: list[dict[str, Any]] = []
    error: str | None = None
    for name, flags in CONFIGS.items():
        if only and not any(s in name for s in only):
            continue
        console.print(f"{name} ...")
        started = time.time()
        windows: list[dict[str, Any]] = []
        info: dict[str, Any] = {}
        try:
            run_config(flags, args, windows, info)
        except KeyboardInterrupt:
            error = "interrupted"
        except FAILURES as exc:
            error = f"benchmark failed: {exc}"
        if windows:
            records.append(build_record(args, name, flags, windows, info, run_id, started, error))
        if error is not None:
            console.print(f"[red]{escape(name)}: {escape(error)}[/red]")
            break
    if records:
        print_table(records, args)
    for rec in records:
        for reason in rec["metrics"]["invalid_reasons"]:
            console.print(f"[red]{escape(rec['details']['configuration'])}: {escape(reason)}[/red]")
    write_records(args.results_dir, [(rec, f"{SCENARIO}-{rec['run_id']}") for rec in records])
    if error is not None:
        return 130 if error == "interrupted" else 2
    return 0 if records and all(r["metrics"]["valid"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
