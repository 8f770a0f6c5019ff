"""Cluster fan-out benchmark (docs/cluster.md): the fan-out benchmark over a real redis-server, one logic node
and K gateways, once per fan-out mode.

    python -m benchmarks.fanout --cluster 2 --fanout per-user,broadcast,routed --members 10000 --messages 100
    python -m benchmarks.fanout --cluster 3 --empty-gateways 1 --fanout broadcast,routed
    python -m benchmarks.fanout_cluster --cluster 2 ...        # the same program

* ``--cluster K`` starts a :class:`harness.cluster.Cluster` per ``--fanout`` mode (repeatable or a comma
  list; default all three). The N receivers are split over gateways 1..K-E (``--empty-gateways E`` leaves the
  last E without any), one receiver process per gateway holding its share of connections to that gateway
  (:class:`benchmarks.common.ReceiverProc`); the sender is on gateway 1. Nothing is pinned by default (1 + K + 1
  server processes and K receivers share the machine's cores); ``--server-core``/``--receiver-core`` pin.
* Each window is measured as in ``benchmarks/fanout.py`` (:class:`benchmarks.common.Bench`): paced and burst,
  ``--repeat`` times, interleaved, every delivery verified. "Server CPU" is the sum over the logic node, every
  gateway and redis-server (schedstat, exact per process however the cores are shared) over the same window;
  each process's share is reported too. The window closes when the last delivery arrived: a gateway without
  receivers may still be finishing the last message's member walk then (at most one message of its work is
  left out).
* After each window the nodes' /metrics deltas (read once they settle) give the bus counters per group
  message — published by kind at the logic node, receipts at the gateways, members filtered per gateway,
  registry reads, deliveries per gateway — and each is checked against the model (per-user: O push messages
  and N registry reads; broadcast: 1 publish, K receipts, every gateway walks the member list; routed: g
  messages, g = gateways with online members). A mismatch makes the record invalid, like a lost delivery.

One result record per fan-out mode and paced/burst mode (record/schema.py, docs/results.md), under
``--results-dir`` (default ``results/``, never overwritten): ``bench-fanout-cluster-<run id>.json``, the run id
ending in ``<fanout>-<mode>``. Kind ``benchmark``, scenario ``bench-fanout-cluster``; ``parameters`` as in the
embedded benchmark plus ``empty_gateways``; ``config.cluster_gateways`` = K (the ``cluster`` axis of
``chatbench compare``) and ``config.server_args``; ``server_modes`` as the logic node reports them. ``metrics``:
the embedded benchmark's figures (server CPU summed over the processes), the bus counters per message
(``bus_published_<kind>_per_message``, ``bus_received_<kind>_per_message``, ``bus_registry_reads_per_message``,
``deliveries_per_message``, ``gateway_filtered_per_message``, ``bus_messages_per_message`` at the logic node and
``bus_messages_per_message_all_processes``) and ``processes.<logic|gateway<i>|redis>`` (``cpu_s``,
``cpu_us_per_delivery``; per gateway its ``deliveries``, ``gateway_filtered`` and ``bus_received_group`` per
message), each the median of the windows. ``details``: ``runs``, ``model`` (what each counter must be),
``model_mismatches``, ``processes`` (PIDs, commands), ``connect``, ``warmup``, ``idle``, ``exit_codes``,
``receivers_per_gateway``, ``warnings``, ``repeats``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
from harness.cluster import Cluster
from harness.procs import SECRET
from reference_server.protocol import user_token

FANOUTS: Final = ("per-user", "broadcast", "routed")
SCENARIO: Final = "bench-fanout-cluster"
#: the bus counters summed over the cluster, in the order the table shows them (the model checks most)
TOTALS: Final = ("bus_published_push", "bus_published_group", "bus_published_reply", "bus_published_request",
                 "bus_received_push", "bus_received_group", "bus_registry_reads", "deliveries", "gateway_filtered")
#: the bus table's columns
COLUMNS: Final = {"bus_published_push": "logic: push published", "bus_published_group": "logic: group published",
                  "bus_received_push": "gateways: push received", "bus_received_group": "gateways: group received",
                  "bus_registry_reads": "registry reads", "deliveries": "deliveries", "gateway_filtered": "filtered"}
#: the counters shown per gateway
PER_GATEWAY: Final = ("bus_received_group", "deliveries", "gateway_filtered")


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
        """Per group message, what docs/cluster.md says each counter must show (exact counts); keys as in
        :func:`per_message`."""
        o, k, g, size = self.online, self.gateways, self.with_members, self.online + 1  # group: receivers + sender
        per_user = self.fanout == "per-user"
        m: dict[str, float] = {
            "bus_published_push": o if per_user else 0,
            "bus_published_group": {"per-user": 0, "broadcast": 1, "routed": g}[self.fanout],
            "bus_received_push": o if per_user else 0,
            "bus_received_group": {"per-user": 0, "broadcast": k, "routed": g}[self.fanout],
            "bus_registry_reads": o if per_user else 0,  # every receiver is online here
            "deliveries": o,
        }
        for i, n in enumerate(self.receivers, 1):
            walks = self.fanout == "broadcast" or (self.fanout == "routed" and (n > 0 or i == 1))
            m[f"gateway{i}.deliveries"] = n
            m[f"gateway{i}.gateway_filtered"] = size - n if walks else 0  # members it checked but does not hold
        return m


def split_receivers(n: int, k: int, empty: int) -> tuple[int, ...]:
    """n receivers over gateways 1..k-empty as evenly as possible (the first ones get the remainder); the last
    `empty` gateways get none."""
    used = k - empty
    return tuple(n // used + (1 if i < n % used else 0) for i in range(used)) + (0,) * empty


def per_message(w: Window, gateways: list[str]) -> dict[str, float]:
    """A window's counters per group message: the cluster's totals, and ``gateway<i>.<counter>`` per gateway."""
    m = w.run.messages

    def d(node: str, name: str) -> float:
        return w.delta(node, name) / m

    def gws(name: str) -> float:
        return sum(d(g, name) for g in gateways)

    out = {
        "bus_published_push": d("logic", "chat_bus_messages_total{kind=push}"),
        "bus_published_group": d("logic", "chat_bus_messages_total{kind=group}"),
        "bus_published_reply": d("logic", "chat_bus_messages_total{kind=reply}"),
        "bus_published_request": gws("chat_bus_messages_total{kind=request}"),
        "bus_received_push": gws("chat_bus_received_total{kind=push}"),
        "bus_received_group": gws("chat_bus_received_total{kind=group}"),
        "bus_registry_reads": d("logic", "chat_registry_reads_total"),
        "deliveries": gws("chat_deliveries_total"),
        "gateway_filtered": gws("chat_gateway_filtered_total"),
    }
    for g in gateways:
        out[f"{g}.bus_received_group"] = d(g, "chat_bus_received_total{kind=group}")
        out[f"{g}.deliveries"] = d(g, "chat_deliveries_total")
        out[f"{g}.gateway_filtered"] = d(g, "chat_gateway_filtered_total")
    return out


def mismatches(w: Window, measured: dict[str, float], model: dict[str, float]) -> list[str]:
    m, r = w.run.messages, w.run
    return [f"{r.mode} #{r.repeat + 1}: {key} {measured[key]:g} per message, the model says {want:g}"
            for key, want in model.items() if round(measured[key] * m) != round(want * m)]


def _counts(metrics: dict[str, float]) -> dict[str, float]:
    """The counters the model checks (not gauges or the scrape's own figures): /metrics has settled when these
    stop changing."""
    return {k: v for k, v in metrics.items()
            if k.startswith(("chat_bus_", "chat_gateway_filtered", "chat_registry_reads", "chat_deliveries"))}


class ClusterProcs:
    """What one fan-out mode's run started; stop() ends each by PID: sender, receivers, gateways, logic node,
    redis-server."""

    def __init__(self) -> None:
        self.cluster: Cluster | None = None
        self.rxs: list[ReceiverProc] = []
        self.sender: ChatClient | None = None
        self.exit_codes: dict[str, int | None] = {}

    def stop(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        while self.rxs:
            self.rxs.pop().stop()
        c = self.cluster
        if c is not None:
            c.stop()
            self.exit_codes = {"logic": c.logic.stop() if c.logic is not None else None,
                               **{f"gateway{i}": gw.stop() for i, gw in enumerate(c.gateways, 1)}}
            if c.redis is not None and c.redis.proc is not None:
                self.exit_codes["redis"] = c.redis.proc.returncode

    def cleanup(self, keep: bool, show_logs: bool) -> None:
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


def run(args: argparse.Namespace, fanout: str, procs: ClusterProcs, windows: list[Window],
        info: dict[str, Any]) -> None:
    """One fan-out mode: a fresh cluster, receivers split over the gateways, then the measured windows (appended
    to ``windows`` as they end)."""
    n, k = args.members, args.cluster
    counts = split_receivers(n, k, args.empty_gateways)
    cpus = None if args.server_core is None else [args.server_core]
    cluster = procs.cluster = Cluster(k, "--send-rate", "0", "--idle-timeout-s", "600", *args.server_arg,
                                      fanout=fanout, cpus=cpus)
    console.print(f"[bold]{fanout}[/bold]: starting redis-server, a logic node and {k} gateways "
                  f"({'core ' + str(args.server_core) if cpus else 'not pinned'}) ...")
    cluster.start()
    assert cluster.logic is not None and cluster.redis is not None and cluster.redis.proc is not None
    cluster.admin.timeout = 120.0
    info["server_modes"] = server_modes(cluster.admin)
    nodes = [Node("logic", cluster.logic.pid, cluster.logic.admin),
             *(Node(f"gateway{i}", gw.pid, gw.admin) for i, gw in enumerate(cluster.gateways, 1)),
             Node("redis", cluster.redis.proc.pid, None)]
    processes: dict[str, dict[str, Any]] = {node.name: {"pid": node.pid} for node in nodes}
    processes["logic"]["cmd"] = cluster.logic.cmd
    for i, gw in enumerate(cluster.gateways, 1):
        processes[f"gateway{i}"].update(cmd=gw.cmd, ws_url=gw.ws_url, receivers=counts[i - 1])
    info["processes"] = processes
    t0 = time.perf_counter()
    cluster.admin.create_users(1, n + 1)
    cluster.admin.create_groups({GID: list(range(1, n + 2))})
    info["provision_s"] = time.perf_counter() - t0
    console.print(f"provisioned {n + 1:,} users and group {GID} in {info['provision_s']:.2f} s; connecting "
                  f"{n:,} receivers ({' + '.join(f'{c:,}' for c in counts)} on gateways 1..{k}) ...")
    first = 1
    for gw, count in zip(cluster.gateways, counts, strict=True):
        if count:
            procs.rxs.append(ReceiverProc(gw.ws_url, first, count, SECRET, core=args.receiver_core,
                                          concurrency=args.concurrency, sample_every=args.sample_every))
            first += count
    connect = info["connect"] = [rx.connected() for rx in procs.rxs]
    console.print(f"{n:,} receivers connected in {max(c['seconds'] for c in connect):.2f} s "
                  f"({sum(c['retries'] for c in connect)} retries)")
    procs.sender = ChatClient(cluster.gateways[0].ws_url, n + 1, user_token(SECRET, n + 1), heartbeat_s=None,
                              request_timeout=ACK_TIMEOUT, connect_timeout=60)
    procs.sender.connect()
    time.sleep(0.3)  # gateways publish registry changes in 50 ms batches (routed, per-user)
    bench = Bench(nodes, procs.rxs, procs.sender, timeout=args.timeout, settle=_counts)
    warm = bench.warmup(args.warmup)
    info["warmup"] = {"messages": args.warmup, "verify": warm}
    if not warm["ok"]:
        raise BenchError(f"{fanout}: warm-up deliveries incomplete: {warm}")
    time.sleep(0.5)
    info["idle"] = bench.idle(1.0)
    layout = Layout(fanout, k, counts)
    gateways = [f"gateway{i}" for i in range(1, k + 1)]
    for rep in range(args.repeat):
        for mode in args.modes:
            w = bench.run(mode, rep, args.messages, 1 if mode == "paced" else args.burst)
            windows.append(w)
            r = w.run
            bad = mismatches(w, per_message(w, gateways), layout.model())
            state = "[green]complete[/green]" if r.complete else "[red]INCOMPLETE[/red]"
            model = "[red]MODEL MISMATCH[/red]" if bad else "[green]model ok[/green]"
            deliveries = max(r.deliveries_received, 1)
            per = ", ".join(f"{name} {p['cpu_s'] / deliveries * 1e6:.2f}" for name, p in r.processes.items())
            console.print(f"  {fanout} {mode:5s} #{rep + 1}: {r.deliveries_received:,} deliveries, server CPU "
                          f"{r.server_cpu_s:.3f} s → {r.server_cpu_s / deliveries * 1e6:.2f} µs each ({per}), "
                          f"wall {r.wall_s:.2f} s, {state}, {model}")
            if not r.complete:
                return


def build_record(args: argparse.Namespace, fanout: str, mode: str, windows: list[Window], info: dict[str, Any],
                 run_id: str, started_s: float, error: str | None) -> dict[str, Any]:
    """One (fan-out, mode) record: the medians of its windows in metrics, every window in details."""
    k = args.cluster
    counts = split_receivers(args.members, k, args.empty_gateways)
    gateways = [f"gateway{i}" for i in range(1, k + 1)]
    model = Layout(fanout, k, counts).model()
    runs = [w.run for w in windows]
    params = {"members": args.members, "messages": args.messages, "mode": mode,
              "burst": 1 if mode == "paced" else args.burst, "warmup": args.warmup, "sample_every": args.sample_every,
              "empty_gateways": args.empty_gateways, "server_core": pinned(args.server_core),
              "receiver_core": pinned(args.receiver_core)}
    rec = record.new("benchmark", SCENARIO, params, run_id=f"{run_id}-{fanout}-{mode}", started_s=started_s,
                     server_modes=info.get("server_modes"))
    rec["config"] = {"cluster_gateways": k, "server_args": list(args.server_arg)}
    m = rec["metrics"]
    figures = []
    for w in windows:
        f = w.server_figures()
        accepted = f["server_messages_accepted"]
        logic_bus, all_bus = w.delta("logic", "chat_bus_messages_total"), f.pop("_chat_bus_messages_total")
        f["_chat_bus_messages_total"] = logic_bus  # bus_messages_per_message: the logic node's
        f["bus_messages_per_message_all_processes"] = all_bus / accepted if all_bus is not None and accepted else None
        figures.append(f)
    m.update(medians(figures))
    m["server_cpu_source"] = ("schedstat, logic node + gateways + redis-server, each broadcast window; median of "
                              "the windows")
    cpu, deliveries = m.get("server_cpu_s"), m.get("server_deliveries")
    m["server_cpu_us_per_delivery"] = cpu / deliveries * 1e6 if cpu is not None and deliveries else None
    m["receiver_cpu_s"] = median(r.receiver_cpu_s for r in runs)
    m["receiver_cpu_share"] = median(r.receiver_cpu_share for r in runs)
    m["wall_s"] = median(r.wall_s for r in runs)
    m.update(delivery_counts(runs))
    measured = [per_message(w, gateways) for w in windows]
    per = medians(measured)
    m.update({f"{key}_per_message": per[key] for key in TOTALS})
    processes: dict[str, dict[str, float | None]] = {}
    for name in runs[0].processes:
        p_cpu = median(r.processes[name]["cpu_s"] for r in runs)
        processes[name] = {"cpu_s": p_cpu,
                           "cpu_us_per_delivery": p_cpu / deliveries * 1e6 if p_cpu is not None and deliveries
                           else None}
        if name in gateways:
            processes[name].update({f"{c}_per_message": per[f"{name}.{c}"] for c in PER_GATEWAY})
    m["processes"] = processes
    bad = [text for w, x in zip(windows, measured, strict=True) for text in mismatches(w, x, model)]
    rec["details"] = {"runs": [asdict(r) for r in runs], "repeats": args.repeat, "model": model,
                      "model_mismatches": bad, "receivers_per_gateway": list(counts),
                      "warnings": warnings_of(runs, f"{fanout} "),
                      **{key: v for key, v in info.items() if key != "server_modes"}}
    invalid = [f"{fanout} {incomplete_reason(r)}" for r in runs if not r.complete]
    invalid += [f"{fanout} bus counters contradict the model: {text}" for text in bad]
    if len(runs) < args.repeat:
        invalid.append(f"{fanout}: {len(runs)} of {args.repeat} windows ran")
    if error:
        invalid.append(error)
    return record.finish(rec, invalid)


def print_tables(records: list[dict[str, Any]], k: int) -> None:
    p = records[0]["parameters"]
    e = p["empty_gateways"]
    where = f"over {k - e} of {k} gateways ({e} empty)" if e else f"over {k} gateways"
    cpu = Table(title=(f"cluster fan-out: {p['members']:,} receivers {where}, {p['messages']} messages per window — "
                       "server CPU µs per delivery, median \\[all windows]"))
    names = list(records[0]["metrics"]["processes"])
    for col in ("fan-out", "mode", "deliveries/window", "total µs", *names, "deliveries / server-CPU-s",
                "receiver core (max)", "wall s", "valid"):
        cpu.add_column(col, justify="left" if col in ("fan-out", "mode") else "right")
    for rec in records:
        m, runs, mode = rec["metrics"], rec["details"]["runs"], rec["parameters"]["mode"]
        each = [r["server_cpu_s"] / r["deliveries_received"] * 1e6 if r["deliveries_received"] else 0.0 for r in runs]
        cpu.add_row(
            rec["server_modes"].get("fanout", "?"),
            mode if mode == "paced" else f"{mode} (k={rec['parameters']['burst']})",
            f"{m['server_deliveries'] or 0:,.0f}",
            f"[bold]{m['server_cpu_us_per_delivery'] or 0:.2f}[/bold] "
            + escape("[" + ", ".join(f"{v:.2f}" for v in each) + "]"),
            *(f"{m['processes'][n]['cpu_us_per_delivery'] or 0:.2f}" for n in names),
            f"{m['deliveries_per_server_cpu_s'] or 0:,.0f}", f"{100 * (m['receiver_cpu_share'] or 0):.0f}%",
            f"{m['wall_s'] or 0:.2f}", "[green]yes[/green]" if m["valid"] else "[red]NO[/red]")
    console.print(cpu)
    bus = Table(title="bus counters per group message (measured / model)")
    gws = [n for n in names if n.startswith("gateway")]
    keys = [key for key in TOTALS if key in COLUMNS]
    for col in ("fan-out", "mode", *(COLUMNS[key] for key in keys), *(f"{g} filtered" for g in gws), "model"):
        bus.add_column(col, justify="left" if col in ("fan-out", "mode") else "right")
    for rec in records:
        m, model = rec["metrics"], rec["details"]["model"]
        cells = []
        for key, got in [*((key, m[f"{key}_per_message"]) for key in keys),
                         *((f"{g}.gateway_filtered", m["processes"][g]["gateway_filtered_per_message"]) for g in gws)]:
            want = model.get(key)
            cells.append(f"{got:,.6g}" if want is None or got == want else f"[red]{got:,.6g} / {want:,.6g}[/red]")
        bus.add_row(rec["server_modes"].get("fanout", "?"), rec["parameters"]["mode"], *cells,
                    "[red]MISMATCH[/red]" if rec["details"]["model_mismatches"] else "[green]ok[/green]")
    console.print(bus)


def report(records: list[dict[str, Any]], k: int) -> None:
    if records:
        print_tables(records, k)
    for rec in records:
        for w in rec["details"]["warnings"]:
            console.print(f"[yellow]warning: {escape(w)}[/yellow]")
        for reason in rec["metrics"]["invalid_reasons"]:
            console.print(f"[red]{escape(reason)}[/red]")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout --cluster K",
        description="Server CPU per delivery, per process, and the bus counters per message, for a broadcast from "
                    "one sender to a big group whose receivers are spread over the gateways of a cluster.")
    p.add_argument("--cluster", type=int, required=True, metavar="K",
                   help="gateways: start redis-server, a logic node and K gateways per fan-out mode")
    p.add_argument("--fanout", action="append", default=None, metavar="MODE",
                   help=f"fan-out mode(s), repeatable or comma-separated: {', '.join(FANOUTS)} (default all three; "
                        "each gets its own cluster)")
    p.add_argument("--empty-gateways", type=int, default=0, metavar="E",
                   help="leave the last E of the K gateways without receivers (default 0)")
    p.add_argument("--members", type=int, default=10_000, help="receivers in the group (default 10000)")
    p.add_argument("--messages", type=int, default=200, help="messages per window (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="windows per mode (default 3)")
    p.add_argument("--burst", type=int, default=10, help="messages per write in burst mode (default 10)")
    p.add_argument("--modes", default="paced,burst", help="comma-separated: paced, burst (default both)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured paced messages first (default 5)")
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="where the records go (default results/; never overwritten)")
    # 1 + K + 1 server processes and K receivers on a few cores: pinning would only measure the contention
    p.add_argument("--server-core", type=int, default=-1,
                   help="CPU for the logic node and the gateways (default -1: no pinning)")
    p.add_argument("--receiver-core", type=int, default=-1,
                   help="CPU for the receivers and this sender process (default -1: no pinning)")
    p.add_argument("--concurrency", type=int, default=500, help="concurrent handshakes while connecting")
    p.add_argument("--sample-every", type=int, default=997, help="fully parse every Nth push frame (default 997)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one batch's deliveries")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for every server process (repeatable), e.g. --server-arg=--unread=per-message")
    p.add_argument("--keep-tmp", action="store_true", help="keep the cluster's temp dir (db, logs)")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes) or len(set(args.modes)) != len(args.modes):
        p.error(f"--modes must name some of {', '.join(MODES)}, each once")
    args.fanout = [f.strip() for arg in (args.fanout or [",".join(FANOUTS)]) for f in arg.split(",") if f.strip()]
    if not args.fanout or any(f not in FANOUTS for f in args.fanout) or len(set(args.fanout)) != len(args.fanout):
        p.error(f"--fanout must name some of {', '.join(FANOUTS)}, each once")
    if args.cluster < 1 or not 0 <= args.empty_gateways < args.cluster:
        p.error("--cluster K needs K >= 1 and 0 <= --empty-gateways < K")
    used = args.cluster - args.empty_gateways
    if not used <= args.members <= used * MAX_MEMBERS:
        p.error(f"--members must be in {used}..{used * MAX_MEMBERS} ({MAX_MEMBERS} receivers per gateway: one "
                "receiver process per gateway, 20,000 open files per process)")
    if args.messages < 1 or args.repeat < 1 or args.burst < 1 or args.warmup < 0:
        p.error("--messages, --repeat and --burst must be >= 1, --warmup >= 0")
    args.server_core = available_core(args.server_core)
    args.receiver_core = available_core(args.receiver_core)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    on_sigterm_interrupt()
    if args.receiver_core is not None:
        os.sched_setaffinity(0, {args.receiver_core})  # the sender shares the receivers' core
    run_id = record.new_run_id()
    records: list[dict[str, Any]] = []
    error: str | None = None
    for fanout in args.fanout:
        started = time.time()
        procs = ClusterProcs()
        windows: list[Window] = []
        info: dict[str, Any] = {}
        try:
            try:
                run(args, fanout, procs, windows, info)
            finally:
                uninterrupted(procs.stop)
                info["exit_codes"] = procs.exit_codes
                raised = sys.exc_info()[1]
                interrupted = isinstance(raised, KeyboardInterrupt)
                procs.cleanup(keep=args.keep_tmp or (raised is not None and not interrupted),
                              show_logs=raised is not None and not interrupted)
        except KeyboardInterrupt:
            console.print("[red]interrupted; cluster and receivers stopped[/red]")
            error = "interrupted"
        except FAILURES as exc:
            console.print(f"[red]benchmark failed: {escape(str(exc))}[/red]")
            error = f"benchmark failed: {exc}"
        except Exception as exc:
            console.print_exception()
            error = f"benchmark failed: {type(exc).__name__}: {exc}"
        records += [build_record(args, fanout, mode, [w for w in windows if w.run.mode == mode], info, run_id,
                                 started, error)
                    for mode in args.modes if any(w.run.mode == mode for w in windows)]
        if error is not None:
            break
    report(records, args.cluster)
    write_records(args.results_dir, [(rec, f"{SCENARIO}-{rec['run_id']}") for rec in records])
    if error is not None:
        return 130 if error == "interrupted" else 2
    planned = len(args.fanout) * len(args.modes)
    return 0 if len(records) == planned and all(r["metrics"]["valid"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
