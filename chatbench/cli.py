"""The ``chatbench`` command.

    chatbench serve [server flags]      run the reference server (same flags as python -m reference_server)
    chatbench run SCENARIO [options]    start a server, run a scenario headless against it, print a summary

``run`` orchestrates processes and reads what they publish (the server's /metrics, the swarm's result file);
it never reaches into their internals. Everything it starts it stops, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from chatbench.machine import process_cpu_seconds
from chatbench.procs import ADMIN_TOKEN, SECRET, ServerProcess

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
    os.execv(sys.executable, [sys.executable, "-m", "reference_server", *argv])


def cmd_run(args: argparse.Namespace) -> int:
    locustfile = scenario_path(args.scenario)
    server_args = ["--storage", args.storage, "--unread", args.unread, "--offline", args.offline,
                   "--fanout", args.fanout, *args.server_arg]
    with tempfile.TemporaryDirectory(prefix="chatbench-run-") as tmp, ServerProcess(
        *server_args, db_path=Path(tmp) / "chat.db"
    ) as srv:
        assert srv.admin is not None
        console.print(f"[bold]server[/] pid {srv.pid} {srv.ws_url} modes {srv.admin.health()['modes']}")
        out = Path(tmp) / "swarm.json"
        cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
               "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.duration, "--host", srv.ws_url,
               "--admin-url", srv.admin_url, "--admin-token", ADMIN_TOKEN, "--chat-secret", SECRET,
               "--chatbench-out", str(out), "--stop-timeout", "5", *args.locust_arg]
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
    result = summary(args, swarm, before, after, elapsed, proc.returncode)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0 if proc.returncode == 0 else 1


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
    args = p.parse_args(argv)
    if args.command == "run":
        try:
            return cmd_run(args)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: everything started was stopped[/]")
            return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
