"""The ``chatbench`` command.

    chatbench serve [server flags]      run the reference server (same flags as python -m reference_server)
    chatbench run SCENARIO [options]    start a server (or --cluster K), run a scenario headless against it,
                                        write one result bundle under results/, print a summary
                                        (--prometheus: and a Prometheus scraping both, its data kept)
    chatbench matrix SCENARIO --storage a,b --unread a,b --repeat R    every combination, a summary table
    chatbench matrix weak_network --network 3g:20,subway:10 --network clean:30 --repeat 4   mix vs control
    chatbench capacity SCENARIO --slo 'p99<200ms,lost=0' --storage write,read --repeat 3
                                        the highest arrival rate each configuration holds inside the SLO
    chatbench compare A.json B.json | --baseline DIR RESULTS | RESULTS --against AXIS=VALUE  [--check p99:10%]
                                        deltas; regression gate
    chatbench report RESULTS... -o report.html    one self-contained HTML page with plots
    chatbench dashboards push --url U   upload the generated Grafana dashboards (create/overwrite, one folder)

``run`` orchestrates processes and reads what they publish (the server's /metrics, the swarm's result file);
it never reaches into their internals. Everything it starts it stops, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import itertools
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chatbench import bundles
from chatbench.prom import PrometheusProcess
from chatbench.runner import RunConfig, RunOutcome, bundle_stem, execute, scenario_path, started
from dashboards.promql import SERVER_JOB, SWARM_JOB
from drivers.subprocs import free_port
from harness.cluster import DEFAULT_FANOUT, Cluster
from harness.cpuquota import CpuQuotaError, check_cores
from record.promtext import delta

ROOT = Path(__file__).resolve().parent.parent
# logs and pipes get wide tables too (rich assumes 80 columns when stdout is not a terminal)
console = Console(width=int(os.environ.get("COLUMNS", "0") or 0) or (None if sys.stdout.isatty() else 160))


def _quota(*, zero_ok: bool) -> Any:
    """argparse type for a CPU quota in cores (0 = none, where zero_ok): refused before anything starts."""
    def parse(text: str) -> float:
        try:
            value = float(text)
            return value if zero_ok and value == 0 else check_cores(value)
        except (ValueError, CpuQuotaError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def run_options(r: argparse.ArgumentParser) -> None:
    """What run and matrix share: the scenario, the generator, the process layout, where bundles go."""
    r.add_argument("scenario", help="scenario name (scenarios/NAME.py) or a locustfile path; flags chatbench does "
                   "not know go to the scenario (e.g. --members 500)")
    r.add_argument("--users", "-u", type=int, default=300)
    r.add_argument("--spawn-rate", "-r", type=float, default=200)
    r.add_argument("--duration", "-t", default="30s")
    r.add_argument("--processes", type=int, default=1, help="Locust processes generating load")
    r.add_argument("--cluster", type=int, default=0, metavar="K",
                   help="run a cluster: Redis + a logic node + K gateways (default 0: the embedded server)")
    r.add_argument("--server-arg", action="append", default=[], help="extra server flag (repeatable)")
    r.add_argument("--locust-arg", action="append", default=[], help="extra locust flag (repeatable)")
    r.add_argument("--results-dir", default=str(ROOT / "results"), help="where result bundles go (append-only)")
    r.add_argument("--server-cpu-quota", type=_quota(zero_ok=True), action="append", default=[], metavar="CORES",
                   help="hold the embedded server to this fraction of a core (a cgroup quota; root); matrix and "
                   "capacity: repeat for one more axis value (0 = no quota)")
    r.add_argument("--generator-cpu-quota", type=_quota(zero_ok=False), default=None, metavar="CORES",
                   help="hold the swarm to this many cores (a cgroup quota; root): a generator that is the limit, on "
                   "purpose (to see that a run says so)")
    r.add_argument("--accept-invalid", action="store_true",
                   help="exit 0 even when a run is invalid (it did not do its planned work, or the generator was the "
                   "limit); the bundle says why either way")


def cmd_matrix(args: argparse.Namespace) -> int:
    from chatbench.matrix import run_matrix, summary_table

    axes = matrix_axes(args)
    t0 = time.monotonic()
    paths = run_matrix(run_config(args), axes, args.repeat, console)
    if not paths:
        console.print("[red]no run of the matrix produced a result bundle[/]")
        return 2
    loaded = bundles.load_all(paths)
    console.print(summary_table(loaded, f"chatbench matrix: {args.scenario}, {len(paths)} runs in "
                                        f"{time.monotonic() - t0:.0f} s"))
    if args.report:
        from chatbench import report

        report.write(paths, Path(args.report), f"chatbench matrix: {args.scenario}")
        console.print(f"report: {args.report}")
    return matrix_exit(args, axes, loaded)


def matrix_exit(args: argparse.Namespace, axes: dict[str, list[Any]], loaded: list[dict[str, Any]]) -> int:
    """1 when a combination produced no bundle, or a run is invalid (unless --accept-invalid); each named."""
    invalid = [b for b in loaded if not b["metrics"].get("valid")]
    for b in invalid:
        console.print(f"[red]invalid run {b['run_id']}: {'; '.join(b['metrics'].get('invalid_reasons', []))}[/]")
    if len(loaded) != args.repeat * len(list(itertools.product(*axes.values()))):
        return 1
    return 1 if invalid and not args.accept_invalid else 0


def matrix_axes(args: argparse.Namespace) -> dict[str, list[Any]]:
    """The configuration axes of matrix and capacity: comma-separated modes, each --network mix, each quota."""
    axes: dict[str, list[Any]] = {a: [v for v in getattr(args, a).split(",") if v]
                                  for a in ("fanout", "storage", "unread", "offline") if getattr(args, a)}
    if args.network:  # each a whole mix (it has commas of its own)
        axes["network"] = list(dict.fromkeys(args.network))
    if len(args.server_cpu_quota) > 1:
        axes["server_cpu_quota"] = [q or None for q in dict.fromkeys(args.server_cpu_quota)]
    return axes


def cmd_capacity(args: argparse.Namespace) -> int:
    from chatbench.capacity import capacity_table, locust_args, progress_line
    from chatbench.matrix import run_matrix

    try:
        extra = locust_args(args)
    except ValueError as e:
        console.print(f"[red]{escape(str(e))}[/]")
        return 2
    axes = matrix_axes(args)
    base = replace(run_config(args), locust_args=(*run_config(args).locust_args, *extra))
    t0 = time.monotonic()
    paths = run_matrix(base, axes, args.repeat, console, on_line=lambda line: progress_line(console, line))
    if not paths:
        console.print("[red]no capacity run produced a result bundle[/]")
        return 2
    loaded = bundles.load_all(paths)
    console.print(capacity_table(loaded, f"chatbench capacity: {args.scenario} ({args.slo}), {len(paths)} runs in "
                                         f"{time.monotonic() - t0:.0f} s"))
    if args.report:
        from chatbench import report

        report.write(paths, Path(args.report), f"chatbench capacity: {args.scenario} ({args.slo})")
        console.print(f"report: {args.report}")
    return matrix_exit(args, axes, loaded)


def cmd_compare(args: argparse.Namespace) -> int:
    from chatbench.compare import Check, compare, print_outcome

    against: tuple[str, str] | None = None
    try:
        checks = [Check.parse(c) for text in args.check for c in text.split(",") if c.strip()]
        if args.against:
            axis, sep, value = args.against.partition("=")
            if not sep or axis not in bundles.AXES:
                raise ValueError(f"--against wants AXIS=VALUE with AXIS one of {', '.join(bundles.AXES)}, "
                                 f"got {args.against!r}")
            if args.baseline is not None or not args.results:
                raise ValueError("--against splits one set of RESULTS; it takes no --baseline")
            against = (axis, value)
            loaded = bundles.load_all(args.results)
            base = [b for b in loaded if bundles.config(b)[axis] == value]
            cand = [b for b in loaded if bundles.config(b)[axis] != value]
        elif args.baseline is not None:
            base, cand = bundles.load_all([args.baseline]), bundles.load_all(args.results)
        elif len(args.results) == 2:
            base, cand = bundles.load_all(args.results[:1]), bundles.load_all(args.results[1:])
        else:
            console.print("[red]compare BASE CANDIDATE, compare --baseline DIR RESULTS..., or compare RESULTS... "
                          "--against AXIS=VALUE[/]")
            return 2
    except (ValueError, OSError) as e:
        console.print(f"[red]{e}[/]")
        return 2
    bundles.fill_defaults(base + cand)  # both sides read at the defaults either side's records name
    if not base or not cand:
        what = f"matching {args.against}" if against else "in the baseline"
        console.print(f"[red]no result bundles {what if not base else 'in the candidates'}[/]")
        return 2
    outcome = compare(bundles.groups(base), bundles.groups(cand), checks, alpha=args.alpha, against=against)
    print_outcome(outcome, console)
    for line in outcome.warnings:
        console.print(f"[yellow]{escape(line)}[/]", highlight=False)
    for line in outcome.failures:
        console.print(f"[bold red]{escape(line)}[/]", highlight=False)
    if checks and outcome.compared == 0:
        console.print("[red]nothing comparable to check: every pairing is incomparable or has no baseline[/]")
        return 3
    if outcome.failures:
        console.print(f"[bold red]{len(outcome.failures)} check(s) failed[/]")
        return 1
    if checks:
        console.print(f"[green]{len(checks)} check(s) passed over {outcome.compared} configuration(s)[/]")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from chatbench import report

    n = report.write(args.results, args.output, args.title)
    console.print(f"report of {n} runs: {args.output}")
    return 0


def cmd_serve(argv: list[str]) -> int:
    """Embedded: become the server. ``--cluster``: start Redis (or use --redis-url), a logic node and K
    gateways here, print where they are, and stop them all on Ctrl-C / SIGTERM."""
    if "--cluster" not in argv:
        os.execv(sys.executable, [sys.executable, "-m", "reference_server", *argv])
    p = argparse.ArgumentParser(prog="chatbench serve --cluster", add_help=True)
    p.add_argument("--cluster", action="store_true")
    p.add_argument("--gateways", type=int, default=2, help="gateway processes (each holds <= ~19,990 sockets)")
    p.add_argument("--fanout", default=DEFAULT_FANOUT, choices=["per-user", "broadcast", "routed"])
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


def run_config(args: argparse.Namespace, **modes: str) -> RunConfig:
    return RunConfig(scenario=args.scenario, fanout=modes.get("fanout", args.fanout),
                     storage=modes.get("storage", args.storage), unread=modes.get("unread", args.unread),
                     offline=modes.get("offline", args.offline), cluster=args.cluster, users=args.users,
                     spawn_rate=args.spawn_rate, duration=args.duration, processes=args.processes,
                     server_args=tuple(args.server_arg), locust_args=tuple(args.locust_arg + args.passthrough),
                     results_dir=Path(args.results_dir),
                     server_cpu_quota=(args.server_cpu_quota[0] or None) if args.server_cpu_quota else None,
                     generator_cpu_quota=args.generator_cpu_quota)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    locustfile = scenario_path(cfg.scenario)
    run_id = f"{locustfile.stem}-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}"
    prom: PrometheusProcess | None = None
    with started(cfg) as (servers, tmp), contextlib.ExitStack() as stack:
        for role, srv in servers.processes():
            console.print(f"[bold]{role}[/] pid {srv.pid} {srv.ws_url} admin {srv.admin_url}")
        console.print(f"[bold]modes[/] {servers.admin.health()['modes']}")
        swarm_metrics = ["--run-id", run_id]  # the bundle's id = the run_id label Prometheus puts on everything
        if args.prometheus:
            targets = {SERVER_JOB: [f"127.0.0.1:{srv.admin_port}" for _, srv in servers.processes()]}
            port = free_port()
            swarm_metrics += ["--metrics-port", str(port)]
            targets[SWARM_JOB] = [f"127.0.0.1:{port}"]
            prom = stack.enter_context(PrometheusProcess(targets, data_dir=prometheus_dir(args, run_id),
                                                         labels={"run_id": run_id}))
            console.print(f"[bold]prometheus[/] pid {prom.pid} {prom.url} run_id={run_id} data {prom.data_dir}")
        size = "its LoadTestShape sets users and duration" if has_shape(locustfile) \
            else f"{cfg.users} users for {cfg.duration}"
        console.print(f"[bold]swarm[/] {locustfile.name}: {size}"
                      f"{f' over {cfg.processes} processes' if cfg.processes > 1 else ''}")
        outcome = execute(cfg, servers, tmp, swarm_metrics)
        if outcome.bundle is not None and prom is not None:
            time.sleep(1.5)  # one more scrape, so the TSDB holds the final counters
    if outcome.bundle is None:
        console.print(outcome.locust_output[-4000:])
        console.print(f"[red]the swarm wrote no results (locust exit {outcome.locust_rc})[/]")
        return 2
    outcome.path = bundles.write(cfg.results_dir, outcome.bundle, bundle_stem(outcome.bundle))
    result = summary(args, outcome)
    if prom is not None:
        result["run_id"] = run_id
        result["prometheus"] = {"data_dir": str(prom.data_dir), "run_id": run_id}
        console.print(f"Prometheus data kept in {prom.data_dir} (series labelled run_id={run_id}); "
                      f"look again: chatbench prometheus {prom.data_dir}")
    console.print(f"result bundle: {outcome.path}")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    m = outcome.bundle["metrics"]
    if not m.get("valid"):
        console.print(f"[bold red]RUN INVALID[/]: {'; '.join(m.get('invalid_reasons', []))}"
                      + (" (accepted: --accept-invalid)" if args.accept_invalid else ""))
        if not args.accept_invalid:
            return 1
    return 0 if outcome.locust_rc == 0 else 1


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


def has_shape(locustfile: Path) -> bool:
    """Whether the scenario defines a LoadTestShape (Locust then ignores -u/-t): a class deriving from *Shape."""
    tree = ast.parse(locustfile.read_text(), str(locustfile))
    return any(isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("Shape") for b in node.bases)
               for node in tree.body)


def summary(args: argparse.Namespace, outcome: RunOutcome) -> dict[str, Any]:
    """Print the run's table; return the summary ``--json`` writes (the bundle is the full record)."""
    assert outcome.bundle is not None
    before, after, m = outcome.before, outcome.after, outcome.bundle["metrics"]
    # after is None when the servers could not be read after the run (the bundle is invalid and says why)
    messages = delta(after, before, "chat_messages_accepted_total") if after is not None else None
    deliveries = delta(after, before, "chat_deliveries_total") if after is not None else None
    cpu = m["server_cpu_s"]  # schedstat, ns resolution, every server process (None: unknown)
    writes = {kind: delta(after, before, f"chat_storage_writes_total{{kind={kind}}}")
              for kind in ("body", "index", "delete", "read_mark")} if after is not None else {}
    t = Table(title=f"chatbench run: {args.scenario}", show_header=True, header_style="bold")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("messages accepted (server)", "unknown" if messages is None else f"{messages:,.0f}")
    t.add_row("deliveries pushed (server)", "unknown" if deliveries is None else f"{deliveries:,.0f}")
    t.add_row("deliveries received (swarm)", f"{m['delivered']:,}")
    for k, v in m["delivery_latency_ms"].items():
        t.add_row(f"delivery latency {k}", f"{v:,.0f}" if k == "count" else f"{v:.3f} ms")
    push = m.get("server_push_latency_ms_le") or {}
    if push:
        t.add_row("server push latency (accept → write) p50 / p99 / p99.9",
                  " / ".join("above the last bucket" if v is None else f"≤ {v:g}" for v in push.values()) + " ms")
    for k, v in m["fanout_completion_ms"].items():
        if k != "count":
            t.add_row(f"fan-out completion {k}", f"{v:.3f} ms")
    for name, r in outcome.bundle["requests"].items():
        t.add_row(f"{name}: requests / failures", f"{r['count']:,} / {r['failures']:,}")
        if name == "send":
            t.add_row("send→ack p50 / p99", f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms")
    t.add_row("lost / duplicated / reordered", f"{m['lost']} / {m['duplicated']} / {m['reordered']}")
    for name, prof in m.get("by_profile", {}).items():  # --profile-mix runs (weak networks)
        lat = prof["delivery_latency_ms"]
        t.add_row(f"profile {name}: members / reconnects / dead", f"{prof.get('members', 0)} / "
                  f"{prof.get('reconnects', 0)} / {prof.get('dead_connections', 0)}")
        if lat:
            t.add_row(f"profile {name}: latency p50 / p99", f"{lat['p50']:.1f} / {lat['p99']:.1f} ms")
        injected = {k.removeprefix("injected_"): v for k, v in prof.items() if k.startswith("injected_")}
        if injected:  # what the impairing proxy did to this profile's connections
            t.add_row(f"profile {name}: proxy did", ", ".join(f"{k} {v:,}" for k, v in sorted(injected.items())))
    t.add_row("server CPU (schedstat, all processes, traffic window)",
              "unknown" if cpu is None else f"{cpu:.3f} s over {outcome.elapsed_s:.0f} s")
    if m.get("deliveries_per_server_cpu_s"):
        t.add_row("deliveries per server CPU-second", f"{m['deliveries_per_server_cpu_s']:,.0f}")
    if m.get("generator_cpu_us_per_delivery") is not None and m.get("server_cpu_us_per_delivery") is not None:
        t.add_row("CPU µs per delivery: server / swarm (same window)",
                  f"{m['server_cpu_us_per_delivery']:.2f} / {m['generator_cpu_us_per_delivery']:.2f}")
    if m.get("limit_side"):
        busiest = m.get("generator_cpu_busiest_ratio")
        t.add_row("closer to its limit", f"{m['limit_side']} (server {m['server_cpu_ratio']:.0%} of a core a process, "
                  "swarm's busiest " + (f"{busiest:.0%}, peak " if busiest is not None else "")
                  + f"{m['generator_cpu_ratio']:.0%})")
    for kind, n in writes.items():
        if n:
            t.add_row(f"storage writes: {kind}", f"{n:,.0f}" + (f" ({n / messages:.2f}/msg)" if messages else ""))
    for key in ("storage_writes_per_message", "unread_writes_per_message", "bus_messages_per_message"):
        if m.get(key) is not None:
            t.add_row(key.replace("_", " "), f"{m[key]:.2f}")
    if m.get("disk_bytes_per_message") is not None:
        t.add_row("disk bytes per message (server's page cache dirtied for storage)",
                  f"{m['disk_bytes_per_message']:,.0f}")
    for key, v in outcome.bundle.get("scenario_results", {}).items():  # the scenario's own scalar figures
        if isinstance(v, bool | str):
            t.add_row(f"scenario: {key}", str(v))
        elif isinstance(v, int | float):
            t.add_row(f"scenario: {key}", f"{v:,.0f}" if float(v).is_integer() else f"{v:,.3f}")
    clock = m.get("clock") or {}
    for worker, c in (clock.get("workers") or {}).items():
        t.add_row(f"clock offset {worker} (to the master)", f"{c['offset_ms']:+.3f} ms ±{c['bound_ms']:.3f}, "
                  f"drift {c['drift_ms']:.3f}" + ("" if clock.get("corrected", True) else ", not corrected"))
    t.add_row("run valid", "yes" if m.get("valid") else "NO: " + "; ".join(m.get("invalid_reasons", [])))
    t.add_row("locust exit code", str(outcome.locust_rc))
    console.print(t)
    return {"scenario": args.scenario, "messages": messages, "deliveries_pushed": deliveries,
            "delivered": m["delivered"], "delivery_latency_ms": m["delivery_latency_ms"],
            "by_profile": m.get("by_profile", {}),
            "requests": outcome.bundle["requests"], "server_cpu_s": cpu, "storage_writes": writes,
            "elapsed_s": outcome.elapsed_s, "locust_exit_code": outcome.locust_rc, "bundle_path": str(outcome.path)}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return cmd_serve(argv[1:])
    p = argparse.ArgumentParser(prog="chatbench", description="benchmark large-group chat designs")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the reference server (flags: python -m reference_server --help)")
    r = sub.add_parser("run", help="start a server, run a scenario against it, write one result bundle, summarize")
    run_options(r)
    r.add_argument("--storage", default=None, help="storage mode (default: the server's)")
    r.add_argument("--unread", default=None, help="unread mode (default: the server's)")
    r.add_argument("--offline", default=None, help="offline mode (default: the server's)")
    r.add_argument("--fanout", default=None, help="local (embedded); per-user, broadcast or routed (--cluster); "
                   "default: the server's (embedded), broadcast (--cluster)")
    r.add_argument("--json", default="", help="also write the summary as JSON to this file")
    r.add_argument("--prometheus", action="store_true",
                   help="also run a Prometheus (the `prometheus` binary) scraping the server (and the swarm) every "
                        "second; its TSDB is kept next to the results (FILE.prometheus/ beside --json FILE, else "
                        "results/RUN_ID.prometheus/)")
    mx = sub.add_parser("matrix", help="run every combination of modes, repeated; a summary table at the end")
    run_options(mx)
    for axis in ("fanout", "storage", "unread", "offline"):
        mx.add_argument(f"--{axis}", default="", help=f"comma-separated {axis} modes (default: the server's)")
    mx.add_argument("--network", action="append", default=[], metavar="MIX",
                    help="a network profile mix (--profile-mix of the swarm, e.g. 3g:20,subway:10 or clean:30) as "
                    "one more axis; repeat for each mix to compare")
    mx.add_argument("--repeat", type=int, default=1, help="repetitions of every combination (interleaved)")
    mx.add_argument("--report", default="", help="also write the HTML report of this matrix to this file")
    ca = sub.add_parser("capacity", help="search how far each configuration goes before it breaks an SLO (one run "
                        "per configuration and repeat; the level moves inside the run)")
    run_options(ca)
    for axis in ("fanout", "storage", "unread", "offline"):
        ca.add_argument(f"--{axis}", default="", help=f"comma-separated {axis} modes (default: the server's)")
    ca.add_argument("--network", action="append", default=[], metavar="MIX", help="a network profile mix (axis)")
    ca.add_argument("--slo", required=True, help="e.g. 'p99<200ms,lost=0' (p50/p90/p99/p999<N ms, lost=N, closes=N)")
    ca.add_argument("--vary", default="rate", choices=["rate", "members", "groups"],
                    help="what the search moves: the arrival rate (messages/s over all senders; default), or "
                    "groups: how many groups send at once, each at the scenario's --group-rate (many_groups), or "
                    "members: the size of the group --rate goes to, a fresh group per step (large_group_burst)")
    ca.add_argument("--start", type=float, default=10.0, help="first level (default 10 msg/s, or 10 groups)")
    ca.add_argument("--growth", type=float, default=2.0, help="bracketing factor (default 2)")
    ca.add_argument("--resolution", type=float, default=0.1, help="stop bisecting within this fraction (0.1)")
    ca.add_argument("--max", type=float, default=100_000.0, help="never above this level")
    ca.add_argument("--step-s", type=float, default=8.0, help="seconds each level is judged (8)")
    ca.add_argument("--warm-s", type=float, default=3.0, help="seconds after a change not judged (3)")
    ca.add_argument("--confirm-s", type=float, default=30.0, help="the level found is held again this long (30)")
    ca.add_argument("--retry", type=int, choices=[0, 1], default=1,
                    help="1 (default): a failed step is held once more, only a failed retry counts; 0: no retry")
    ca.add_argument("--repeat", type=int, default=1, help="searches per configuration: a range, and significance")
    ca.add_argument("--report", default="", help="also write the HTML report to this file")
    cp = sub.add_parser("compare", help="deltas between result bundles; regression checks (non-zero exit)")
    cp.add_argument("results", nargs="*", type=Path,
                    help="BASE CANDIDATE (files or directories); with --baseline: the candidates only")
    cp.add_argument("--baseline", type=Path, default=None, help="baseline bundles (a directory or a file)")
    cp.add_argument("--against", default="", metavar="AXIS=VALUE",
                    help="one set of RESULTS: its runs with AXIS=VALUE are the baseline, every other configuration "
                    "is compared with the one that differs only on AXIS (e.g. network=clean:40, storage=read)")
    cp.add_argument("--check", action="append", default=[], metavar="MEASURE:LIMIT",
                    help="e.g. p99:10%% or storage_writes_per_message:0 (repeatable; comma-separated allowed)")
    cp.add_argument("--alpha", type=float, default=0.05, help="significance level for times (Mann-Whitney U)")
    rp = sub.add_parser("report", help="one self-contained HTML page with plots comparing the configurations")
    rp.add_argument("results", nargs="+", type=Path, help="result bundles or directories of them")
    rp.add_argument("-o", "--output", type=Path, default=Path("report.html"))
    rp.add_argument("--title", default="chatbench report")
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
    args, unknown = p.parse_known_args(argv)
    if unknown and args.command not in ("run", "matrix", "capacity"):
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    for token in unknown:  # a flag of another chatbench command would reach the scenario, and Locust, as another
        flag = token.split("=", 1)[0]
        others = [name for name, cmd in sub.choices.items() if name != args.command and flag in _flags(cmd)]
        if flag.startswith("--") and others:
            p.error(f"{flag} is a flag of `chatbench {' / '.join(others)}`, not of `chatbench {args.command}`")
    args.passthrough = unknown  # run/matrix: unknown flags go to the scenario (e.g. --members 500)
    if args.command == "compare":
        return cmd_compare(args)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "dashboards":
        return cmd_dashboards_push(args)
    if args.command == "prometheus":
        return cmd_prometheus(args)
    if args.command in ("run", "matrix", "capacity"):
        try:
            if args.command == "capacity":
                return cmd_capacity(args)
            return cmd_run(args) if args.command == "run" else cmd_matrix(args)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: everything started was stopped[/]")
            return 130
        except CpuQuotaError as e:
            console.print(f"[red]chatbench {args.command}: {escape(str(e))}[/]")
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
