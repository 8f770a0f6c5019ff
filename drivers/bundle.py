"""The result bundle: one JSON file per run, append-only under ``--results-dir`` (fields: DESIGN.md "Result bundle").

Written by the coordinator at the end of a run, after every worker's final data arrived (see drivers/swarm.py).
Server-side costs come from the server's ``/metrics`` (admin plane) read at test start and when the run begins
to stop (before the ledgers' reconciliation adds its own sync/read requests); they are the whole server's, so
they are exact only when nothing else loads it meanwhile. ``process_cpu_seconds_total`` counts 10 ms ticks.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from prometheus_client.parser import text_string_to_metric_families

from drivers.admin import AdminClient
from drivers.totals import Totals

if TYPE_CHECKING:  # no locust import at run time: importing locust monkey-patches the process with gevent
    from locust.env import Environment

    from drivers.swarm import RunState

API_VERSION: Final = 1
_SERVER_SERIES: Final = (
    "chat_messages_accepted_total", "chat_deliveries_total", "chat_storage_writes_total", "chat_unread_writes_total",
    "chat_bus_messages_total", "chat_offline_dropped_total", "chat_offline_writes_total",
    "chat_slow_consumer_disconnects_total", "chat_sync_requests_total", "process_cpu_seconds_total",
)


def _admin(env: Environment) -> AdminClient | None:
    opts = env.parsed_options
    url = getattr(opts, "admin_url", "") if opts is not None else ""
    return AdminClient(url, getattr(opts, "admin_token", ""), timeout=10) if url else None


def server_counters(env: Environment) -> dict[str, float]:
    """Sums of the server's cost counters (over labels), or {} if the admin plane cannot be read."""
    admin = _admin(env)
    out: dict[str, float] = {}
    if admin is None:
        return out
    try:
        text = admin.metrics_text()
    except Exception:
        return out
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _SERVER_SERIES:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def _server_modes(env: Environment) -> dict[str, Any]:
    admin = _admin(env)
    if admin is None:
        return {}
    with contextlib.suppress(Exception):
        return dict(admin.health().get("modes", {}))
    return {}


#: options that differ between otherwise identical runs (addresses, files, per-run ids, clocks): not parameters
RUN_SPECIFIC_OPTIONS: Final = frozenset({
    "admin_url", "front_url", "run_id", "chat_group", "chatbench_out", "chatbench_t0", "results_dir", "metrics_port",
    "flush_timeout_s", "sender_uids",
})


def scenario_parameters(env: Environment) -> dict[str, Any]:
    """The scenario's (non-Locust) options that define the run, secrets and run-specific plumbing left out."""
    from locust.argument_parser import default_args_dict

    opts = vars(env.parsed_options) if env.parsed_options is not None else {}
    defaults = default_args_dict()
    return {k: v for k, v in sorted(opts.items())
            if k not in defaults and k not in RUN_SPECIFIC_OPTIONS and "token" not in k and "secret" not in k
            and isinstance(v, str | int | float | bool)}


def build(env: Environment, totals: Totals, run: RunState) -> dict[str, Any]:
    from chatbench.machine import git_info, machine_info

    opts = env.parsed_options
    # server costs up to the end of the traffic: taken when the run began stopping, before the reconciliation
    before, after = run.server_before, run.server_after or server_counters(env)
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in _SERVER_SERIES} if before and after else {}
    from drivers.shapes import PhasedShape

    if isinstance(env.shape_class, PhasedShape) and opts is not None:
        totals.set_measure_from(env.shape_class.measured_from(opts))
    metrics = totals.metrics()
    accepted = d.get("chat_messages_accepted_total", 0.0)
    cpu = d.get("process_cpu_seconds_total")
    server_deliveries = d.get("chat_deliveries_total", 0.0)

    def per_message(key: str) -> float | None:
        return d[key] / accepted if d and accepted else None

    metrics.update({
        "server_cpu_s": cpu,
        "server_deliveries": server_deliveries if d else None,
        "server_messages_accepted": accepted if d else None,
        "deliveries_per_server_cpu_s": server_deliveries / cpu if cpu else None,
        "storage_writes_per_message": per_message("chat_storage_writes_total"),
        "unread_writes_per_message": per_message("chat_unread_writes_total"),
        "bus_messages_per_message": per_message("chat_bus_messages_total"),
        "offline_dropped": d.get("chat_offline_dropped_total") if d else None,
        "slow_consumer_disconnects": d.get("chat_slow_consumer_disconnects_total") if d else None,
        "sync_requests": d.get("chat_sync_requests_total") if d else None,
    })
    invalid = list(metrics["generator_saturated_reasons"])
    if run.finals_missing:
        invalid.append(f"no final data from workers {run.finals_missing}")
    if metrics["latency_clamped"]:
        invalid.append(f"{metrics['latency_clamped']} latencies outside the HDR range (clock skew?)")
    metrics["valid"] = not invalid
    metrics["invalid_reasons"] = invalid
    requests = {}
    for (name, method), entry in env.stats.entries.items():
        requests[name if method != "HDR" else f"{name} [HDR]"] = {
            "type": method, "count": entry.num_requests, "failures": entry.num_failures,
            "p50_ms": entry.get_response_time_percentile(0.5), "p99_ms": entry.get_response_time_percentile(0.99),
        }
    git = git_info()
    return {
        "api_version": API_VERSION,
        "run_id": run.run_id,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started_us / 1e6)),
        "duration_s": (time.time_ns() // 1000 - run.started_us) / 1e6,
        "commit": git["commit"],
        "dirty": git["dirty"],
        "machine": machine_info(),
        "scenario": getattr(opts, "chatbench_scenario", "") or _scenario_name(env),
        "parameters": scenario_parameters(env),
        "server_modes": _server_modes(env),
        "generator": {
            "host": env.host,
            "workers": run.workers,
            "worker_ids": sorted(totals.health),
            "finals_missing": run.finals_missing,
            "final_report_deliveries": totals.final_delivered,
            "users": getattr(opts, "num_users", None),
            "spawn_rate": getattr(opts, "spawn_rate", None),
        },
        "metrics": metrics,
        "scenario_results": dict(run.scenario_results),
        "requests": requests,
        "histograms": totals.histograms(),
    }


def _scenario_name(env: Environment) -> str:
    files = getattr(env.parsed_options, "locustfile", "") or ""
    return Path(str(files).split(",")[0]).stem


def write_new(directory: Path, stem: str, data: bytes) -> Path:
    """Write ``stem.json`` (or ``stem-N.json``) under directory, a name that does not exist yet (O_EXCL): result
    files are append-only, never overwritten."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = directory / (f"{stem}.json" if i == 0 else f"{stem}-{i}.json")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    raise FileExistsError(f"{directory}/{stem}*.json: too many files of that name")


def write(env: Environment, result: dict[str, Any]) -> Path:
    """Write the bundle under ``--results-dir`` (never overwriting); also to ``--chatbench-out``."""
    opts = env.parsed_options
    directory = Path(getattr(opts, "results_dir", "results") or "results")
    data = orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    path = write_new(directory, f"swarm-{result['scenario']}-{result['run_id']}", data)
    out = getattr(opts, "chatbench_out", "")
    if out:  # the CLI's hand-off file (chatbench run): the bundle plus the keys it reads at the top level
        m = result["metrics"]
        legacy = {**result, "delivered": m["delivered"], "delivery_latency_ms": m["delivery_latency_ms"],
                  "latency_clamped": m["latency_clamped"], "bundle_path": str(path)}
        Path(out).write_bytes(orjson.dumps(legacy, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path


def print_summary(result: dict[str, Any], path: str) -> None:
    m = result["metrics"]
    lat = m["delivery_latency_ms"]
    fan = m["fanout_completion_ms"]
    lines = [
        f"chatbench {result['scenario']} run {result['run_id']}: sent {m['sent']}, delivered {m['delivered']} "
        f"(expected {m['expected_deliveries']}), lost {m['lost']}, duplicated {m['duplicated']}, "
        f"reordered {m['reordered']}, unread mismatches {m['unread_mismatches']}",
        "  delivery latency ms: " + "  ".join(f"{k}={v:.3f}" for k, v in lat.items() if k != "count"),
        "  fan-out completion ms: " + "  ".join(f"{k}={v:.3f}" for k, v in fan.items() if k != "count")
        + f"  (complete {m['fanout']['complete']}/{m['fanout']['messages']})",
        f"  generator CPU max {m['generator_cpu_ratio']:.0%}; bundle {path}",
        "  RUN VALID" if m["valid"] else "  RUN INVALID: " + "; ".join(m["invalid_reasons"]),
    ]
    print("\n".join(lines), flush=True)


class ServerSampler:
    """Samples the server's counters every ``interval_s`` (a greenlet on the coordinator): per-second rates of
    CPU, sync requests and accepted messages, to show spikes (e.g. during a reconnect storm)."""

    def __init__(self, env: Environment, interval_s: float = 1.0) -> None:
        self.env = env
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []  # {t, cpu_ratio, sync_per_s, accepted_per_s}
        self._greenlet: Any = None

    def start(self) -> None:
        import gevent

        self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _loop(self) -> None:
        import gevent

        prev, t_prev = server_counters(self.env), time.time()
        while True:
            gevent.sleep(self.interval_s)
            cur, t = server_counters(self.env), time.time()
            dt = max(t - t_prev, 1e-9)
            if cur and prev:
                def rate(key: str, cur: dict[str, float] = cur, prev: dict[str, float] = prev, dt: float = dt) -> float:
                    return (cur.get(key, 0.0) - prev.get(key, 0.0)) / dt

                self.samples.append({"t": t, "cpu_ratio": rate("process_cpu_seconds_total"),
                                     "sync_per_s": rate("chat_sync_requests_total"),
                                     "accepted_per_s": rate("chat_messages_accepted_total")})
            prev, t_prev = cur, t

    def window_peak(self, start: float, end: float) -> dict[str, float]:
        inside = [s for s in self.samples if start <= s["t"] <= end + self.interval_s]
        return {k: max((s[k] for s in inside), default=0.0) for k in ("cpu_ratio", "sync_per_s", "accepted_per_s")}
