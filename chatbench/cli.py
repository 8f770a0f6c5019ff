"""The ``chatbench`` command.

    chatbench serve [server flags]      run the reference server (same flags as python -m reference_server)
    chatbench run SCENARIO [options]    start a server, run a scenario headless against it, print a summary
                                        (--prometheus: and a Prometheus scraping both, its data kept)
    chatbench dashboards push --url U   upload the generated Grafana dashboards (create/overwrite, one folder)

``run`` orchestrates processes and reads what they publish (the server's /metrics, the swarm's result file);
it never reaches into their internals. Everything it starts it stops, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from chatbench.cluster import Cluster
from chatbench.machine import process_cpu_seconds
from chatbench.procs import ADMIN_TOKEN, SECRET, ServerProcess, free_port
from chatbench.prom import SERVER_JOB, SWARM_JOB, PrometheusProcess

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
console = Console()


def scenario_path(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".py" and path.exists():
        return path
    path = SCENARIOS / f"{name}.py"
    if not path.exists():
        known = sorted(p.stem for p in SCENARIOS.glob("*.py") if not p.stem.startswith("_"))
        raise SystemExit(f"no scenario {name!r}; known: {', '.join(known)}")
    return path


def server_counters(text: str) -> dict[str, float]:
    """Flatten the server's /metrics into name{labels} -> value for the counters a summary needs."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def delta(after: dict[str, float], before: dict[str, float], prefix: str) -> float:
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k == prefix or k.startswith(prefix + "{"))


def cmd_serve(argv: list[str]) -> int:
    """Embedded: become the server. ``--cluster``: start Redis (or use --redis-url), a logic node and K
    gateways here, print where they are, and stop them all on Ctrl-C / SIGTERM."""
    if "--cluster" not in argv:
        os.execv(sys.executable, [sys.executable, "-m", "reference_server", *argv])
    p = argparse.ArgumentParser(prog="chatbench serve --cluster", add_help=True)
    p.add_argument("--cluster", action="store_true")
    p.add_argument("--gateways", type=int, default=2, help="gateway processes (each holds <= ~19,990 sockets)")
    p.add_argument("--fanout", default="broadcast", choices=["per-user", "broadcast", "routed"])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--start-redis", action="store_true", help="start a redis-server for the cluster (default)")
    g.add_argument("--redis-url", default=None, help="use this Redis instead")
    p.add_argument("--db-path", type=Path, default=Path("var/chat.db"))
    args, server_args = p.parse_known_args(argv)
    cluster = Cluster(args.gateways, *server_args, fanout=args.fanout, redis_url=args.redis_url,
                      db_path=args.db_path.resolve())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with cluster:
        assert cluster.logic is not None
        console.print(f"[bold]cluster[/] fanout={args.fanout} redis={cluster.redis_url}")
        console.print(f"  logic node  pid {cluster.logic.pid}  admin {cluster.logic.admin_url}  "
                      f"front {cluster.front_url}")
        for i, gw in enumerate(cluster.gateways, 1):
            console.print(f"  gateway {i}   pid {gw.pid}  {gw.ws_url}  metrics {gw.admin_url}/metrics")
        stop.wait()
        console.print("stopping the cluster")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    locustfile = scenario_path(args.scenario)
    server_args = ["--storage", args.storage, "--unread", args.unread, "--offline", args.offline,
                   "--fanout", args.fanout, *args.server_arg]
    run_id = f"{locustfile.stem}-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}"
    prom: PrometheusProcess | None = None
    with tempfile.TemporaryDirectory(prefix="chatbench-run-") as tmp, ServerProcess(
        *server_args, db_path=Path(tmp) / "chat.db"
    ) as srv, contextlib.ExitStack() as stack:
        assert srv.admin is not None
        console.print(f"[bold]server[/] pid {srv.pid} {srv.ws_url} modes {srv.admin.health()['modes']}")
        out = Path(tmp) / "swarm.json"
        swarm_metrics = []
        if args.prometheus:
            targets = {SERVER_JOB: [f"127.0.0.1:{srv.admin_port}"]}
            if swarm_exports_metrics():
                port = free_port()
                swarm_metrics = ["--metrics-port", str(port)]
                targets[SWARM_JOB] = [f"127.0.0.1:{port}"]
            prom = stack.enter_context(PrometheusProcess(targets, data_dir=prometheus_dir(args, run_id),
                                                         labels={"run_id": run_id}))
            console.print(f"[bold]prometheus[/] pid {prom.pid} {prom.url} run_id={run_id} data {prom.data_dir}")
        cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
               "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.duration, "--host", srv.ws_url,
               "--admin-url", srv.admin_url, "--admin-token", ADMIN_TOKEN, "--chat-secret", SECRET,
               "--chatbench-out", str(out), "--stop-timeout", "5", *swarm_metrics, *args.locust_arg]
        if args.processes > 1:
            cmd += ["--processes", str(args.processes)]
        before = server_counters(srv.admin.metrics_text())
        cpu0 = process_cpu_seconds(srv.pid)
        t0 = time.monotonic()
        console.print(f"[bold]swarm[/] {locustfile.name}: {args.users} users for {args.duration}"
                      f"{f' over {args.processes} processes' if args.processes > 1 else ''}")
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        elapsed = time.monotonic() - t0
        after = server_counters(srv.admin.metrics_text())
        after["server_cpu_s"] = process_cpu_seconds(srv.pid) - cpu0
        if not out.exists():
            console.print(proc.stdout[-4000:])
            console.print(f"[red]the swarm wrote no results (locust exit {proc.returncode})[/]")
            return 2
        swarm = orjson.loads(out.read_bytes())
        if prom is not None:
            time.sleep(1.5)  # one more scrape, so the TSDB holds the final counters
    result = summary(args, swarm, before, after, elapsed, proc.returncode)
    if prom is not None:
        result["run_id"] = run_id
        result["prometheus"] = {"data_dir": str(prom.data_dir), "run_id": run_id}
        console.print(f"Prometheus data kept in {prom.data_dir} (series labelled run_id={run_id}); "
                      f"look again: chatbench prometheus {prom.data_dir}")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0 if proc.returncode == 0 else 1


def swarm_exports_metrics() -> bool:
    """Whether the drivers take Locust's ``--metrics-port`` (the generator's Prometheus exporter).

    Stopgap until the exporter lands: then pass the flag unconditionally and drop this check."""
    return any("--metrics-port" in p.read_text() for p in (ROOT / "drivers").glob("*.py"))


def prometheus_dir(args: argparse.Namespace, run_id: str) -> Path:
    """Next to the run's results: beside --json FILE as FILE.prometheus/, else results/RUN_ID.prometheus/."""
    if args.json:
        path = Path(args.json)
        return path.with_name(path.stem + ".prometheus")
    return ROOT / "results" / f"{run_id}.prometheus"


def cmd_prometheus(args: argparse.Namespace) -> int:
    """Serve a kept run's TSDB again (no scraping) until Ctrl-C, e.g. as a Grafana datasource."""
    with PrometheusProcess.reopen(Path(args.data_dir), port=args.port) as prom:
        console.print(f"[bold]prometheus[/] pid {prom.pid} serving {args.data_dir} at {prom.url} (Ctrl-C stops it)")
        with contextlib.suppress(KeyboardInterrupt):
            while prom.proc is not None and prom.proc.poll() is None:
                time.sleep(0.5)
    return 0


def cmd_dashboards_push(args: argparse.Namespace) -> int:
    from chatbench.grafana import push  # grafana-client is only needed here
    from dashboards import load

    if not args.token:
        console.print("[red]no token: pass --token or set GRAFANA_TOKEN (a Grafana service-account token)[/]")
        return 2
    boards = load()
    for answer in push(args.url, args.token, boards, folder=args.folder):
        console.print(f"{answer.get('status', '?')}: {answer.get('url', answer.get('uid'))} "
                      f"(version {answer.get('version')})")
    return 0


def summary(args: argparse.Namespace, swarm: dict[str, Any], before: dict[str, float], after: dict[str, float],
            elapsed: float, locust_rc: int) -> dict[str, Any]:
    messages = delta(after, before, "chat_messages_accepted_total")
    deliveries = delta(after, before, "chat_deliveries_total")
    cpu = after["server_cpu_s"]  # schedstat, ns resolution (the /metrics process collector counts 10 ms ticks)
    writes = {kind: delta(after, before, f"chat_storage_writes_total{{kind={kind}}}")
              for kind in ("body", "index", "delete", "read_mark")}
    t = Table(title=f"chatbench run: {args.scenario}", show_header=True, header_style="bold")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("messages accepted (server)", f"{messages:,.0f}")
    t.add_row("deliveries pushed (server)", f"{deliveries:,.0f}")
    t.add_row("deliveries received (swarm)", f"{swarm['delivered']:,}")
    for k, v in swarm["delivery_latency_ms"].items():
        t.add_row(f"delivery latency {k}", f"{v:.3f} ms")
    for name, r in swarm["requests"].items():
        t.add_row(f"{name}: requests / failures", f"{r['count']:,} / {r['failures']:,}")
        if name == "send":
            t.add_row("send→ack p50 / p99", f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms")
    t.add_row("server CPU", f"{cpu:.3f} s over {elapsed:.0f} s")
    if cpu > 0 and deliveries:
        t.add_row("deliveries per server CPU-second", f"{deliveries / cpu:,.0f}")
    for kind, n in writes.items():
        if n:
            t.add_row(f"storage writes: {kind}", f"{n:,.0f}" + (f" ({n / messages:.2f}/msg)" if messages else ""))
    t.add_row("locust exit code", str(locust_rc))
    console.print(t)
    return {"scenario": args.scenario, "messages": messages, "deliveries_pushed": deliveries,
            "delivered": swarm["delivered"], "delivery_latency_ms": swarm["delivery_latency_ms"],
            "requests": swarm["requests"], "server_cpu_s": cpu, "storage_writes": writes, "elapsed_s": elapsed,
            "locust_exit_code": locust_rc}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return cmd_serve(argv[1:])
    p = argparse.ArgumentParser(prog="chatbench", description="benchmark large-group chat designs")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the reference server (flags: python -m reference_server --help)")
    r = sub.add_parser("run", help="start a server, run a scenario against it, print a summary")
    r.add_argument("scenario", help="scenario name (scenarios/NAME.py) or a locustfile path")
    r.add_argument("--users", "-u", type=int, default=300)
    r.add_argument("--spawn-rate", "-r", type=float, default=200)
    r.add_argument("--duration", "-t", default="30s")
    r.add_argument("--processes", type=int, default=1, help="Locust processes generating load")
    r.add_argument("--storage", default="read")
    r.add_argument("--unread", default="seq")
    r.add_argument("--offline", default="pull")
    r.add_argument("--fanout", default="local")
    r.add_argument("--server-arg", action="append", default=[], help="extra server flag (repeatable)")
    r.add_argument("--locust-arg", action="append", default=[], help="extra locust flag (repeatable)")
    r.add_argument("--json", default="", help="also write the summary as JSON to this file")
    r.add_argument("--prometheus", action="store_true",
                   help="also run a Prometheus (the `prometheus` binary) scraping the server (and the swarm) every "
                        "second; its TSDB is kept next to the results (FILE.prometheus/ beside --json FILE, else "
                        "results/RUN_ID.prometheus/)")
    pr = sub.add_parser("prometheus", help="serve the Prometheus data a `run --prometheus` kept, to query it again")
    pr.add_argument("data_dir", help="the run's .prometheus directory")
    pr.add_argument("--port", type=int, default=None, help="listen port on 127.0.0.1 (default: a free one)")
    d = sub.add_parser("dashboards", help="Grafana dashboards (generated JSON in dashboards/json)")
    dsub = d.add_subparsers(dest="dashboards_command", required=True)
    push = dsub.add_parser("push", help="upload every dashboard to a Grafana (create or overwrite, in one folder)")
    push.add_argument("--url", required=True, help="Grafana base URL, e.g. http://127.0.0.1:3000")
    push.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN", ""),
                      help="service-account token (default: $GRAFANA_TOKEN)")
    push.add_argument("--folder", default="chatbench", help="folder title (uid 'chatbench'); created if missing")
    args = p.parse_args(argv)
    if args.command == "dashboards":
        return cmd_dashboards_push(args)
    if args.command == "prometheus":
        return cmd_prometheus(args)
    if args.command == "run":
        try:
            return cmd_run(args)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: everything started was stopped[/]")
            return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
