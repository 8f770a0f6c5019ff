"""The swarm's result record (schema: record/schema.py, docs/results.md), one JSON file per run, append-only under
``--results-dir``.

Written by the coordinator at the end of a run, after every worker's final data arrived (see drivers/swarm.py).
Server-side costs come from the server's ``/metrics`` (admin plane) read at test start and when the run begins
to stop (before the ledgers' reconciliation adds its own sync/read requests); they are the whole server's, so
they are exact only when nothing else loads it meanwhile. ``process_cpu_seconds_total`` counts 10 ms ticks.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import record
from drivers import admin
from drivers.admin import from_options
from drivers.ledger import now_us
from drivers.profiles import DIRECT
from drivers.totals import Totals
from record.promtext import delta

if TYPE_CHECKING:  # no locust import at run time: importing locust monkey-patches the process with gevent
    from locust.env import Environment

    from drivers.swarm import RunState

log = logging.getLogger(__name__)


def server_counters(env: Environment, names: Sequence[str] = ()) -> dict[str, float]:
    """The server's /metrics (only ``names``, if given), flattened, or {} if the admin plane cannot be read."""
    return admin.server_counters(env.parsed_options, names)


def _server_modes(env: Environment) -> dict[str, Any]:
    admin = from_options(env.parsed_options)
    if admin is None:
        return {}
    with contextlib.suppress(Exception):
        return dict(admin.health().get("modes", {}))
    return {}


#: options that differ between otherwise identical runs (addresses, files, per-run ids, clocks): not parameters
RUN_SPECIFIC_OPTIONS: Final = frozenset({
    "admin_url", "server_metrics_urls", "front_url", "run_id", "chat_group", "chatbench_out", "chatbench_t0",
    "results_dir", "metrics_port", "flush_timeout_s", "sender_uids", "members_per_process",
})


def scenario_parameters(env: Environment) -> dict[str, Any]:
    """The scenario's (non-Locust) options that define the run, secrets and run-specific plumbing left out."""
    from locust.argument_parser import default_args_dict

    opts = vars(env.parsed_options) if env.parsed_options is not None else {}
    defaults = default_args_dict()
    return {k: v for k, v in sorted(opts.items())
            if k not in defaults and k not in RUN_SPECIFIC_OPTIONS and "token" not in k and "secret" not in k
            and isinstance(v, str | int | float | bool)}


def parameter_defaults(names: Sequence[str]) -> dict[str, Any]:
    """Each of ``names``' default as the scenario declares it now (Locust's parser with every scenario option, no
    config file read): a later record compares with one from before an option existed as if that run had used the
    option's default (chatbench.bundles.fill_defaults). {} if Locust's parser cannot be built (then the record has
    no defaults, as records before them, and a warning says why)."""
    from locust.argument_parser import get_parser

    try:
        parser = get_parser(default_config_files=[])
    except Exception as exc:  # a Locust whose parser API changed: the record is still written, without defaults
        log.warning("parameter defaults not recorded: Locust's argument parser could not be built (%s)", exc)
        return {}
    out = {}
    for name in names:
        value = parser.get_default(name)
        if isinstance(value, str | int | float | bool):
            out[name] = value
    return out


def build(env: Environment, totals: Totals, run: RunState) -> dict[str, Any]:
    opts = env.parsed_options
    from drivers.shapes import PhasedShape

    if isinstance(env.shape_class, PhasedShape) and opts is not None:
        totals.set_measure_from(env.shape_class.measured_from(opts))
    parameters = scenario_parameters(env)
    out = record.new("swarm", getattr(opts, "chatbench_scenario", "") or _scenario_name(env),
                     parameters, run_id=run.run_id, started_s=run.started_us / 1e6,
                     server_modes=_server_modes(env), parameter_defaults=parameter_defaults(list(parameters)))
    out["scenario_version"] = scenario_version(env)
    # the batch engine reads through the pump, which stamps each read with the kernel's receive time
    out["receive_stamp"] = "kernel" if getattr(opts, "receive_engine", None) == "batch" else "read"
    metrics = out["metrics"]
    metrics.update(totals.metrics())
    # server costs up to the end of the traffic: taken when the run began stopping, before the reconciliation
    metrics.update(record.server_figures(run.server_after or server_counters(env), run.server_before))
    # the swarm's CPU over the window of the server figures: from the test start until it began stopping
    t1 = (run.sending_stopped_us or now_us()) / 1e6
    metrics["server_cpu_window_s"] = [run.started_us / 1e6, t1]
    record.generator_cpu(metrics, run.started_us / 1e6, t1)
    requests = {}
    for (name, method), entry in env.stats.entries.items():
        requests[name if method != "HDR" else f"{name} [HDR]"] = {
            "type": method, "count": entry.num_requests, "failures": entry.num_failures,
            "p50_ms": entry.get_response_time_percentile(0.5), "p99_ms": entry.get_response_time_percentile(0.99),
        }
    invalid = planned_work_reasons(metrics, requests, run, float(getattr(opts, "max_connect_failures", 0.001)))
    if getattr(opts, "capacity", ""):
        from drivers import autorate

        invalid = capacity_result(metrics, invalid, dict(autorate.STATE.answer))
    invalid += clock_reasons(metrics["clock"], bool(run.workers_seen), float(getattr(opts, "clock_bound_ms", 1.0)),
                             bool(getattr(opts, "no_clock_correction", False)))
    metrics["clock"]["corrected"] = not getattr(opts, "no_clock_correction", False)
    out.update({
        "generator": {
            "host": env.host,
            "workers": run.workers,
            "worker_ids": sorted(totals.health),
            "finals_missing": run.finals_missing,
            "workers_lost": run.workers_lost,
            "final_report_deliveries": totals.final_delivered,
            "users": getattr(opts, "num_users", None),
            "spawn_rate": getattr(opts, "spawn_rate", None),
        },
        "scenario_results": dict(run.scenario_results),
        "requests": requests,
        "histograms": totals.histograms(),
    })
    return record.finish(out, invalid)


def planned_work_reasons(metrics: dict[str, Any], requests: dict[str, dict[str, Any]], run: RunState,
                         max_connect_failures: float) -> list[str]:
    """Why the run did not do the work it planned, or the generator was the limit (empty: valid)."""
    out = list(metrics["generator_saturated_reasons"])
    connect = requests.get("connect", {"count": 0, "failures": 0})
    attempts = int(connect["count"])  # Locust counts every request, failed ones too
    # a member on an impairing profile (--profile-mix) connects through its stalls and resets: a connect that fails
    # there is the profile's measure (metrics.by_profile.<p>.connect_failures), not work the run failed to do
    impaired = sum(int(p.get("connect_failures", 0)) for name, p in metrics.get("by_profile", {}).items()
                   if name != DIRECT)
    failures = max(0, int(connect["failures"]) - impaired)
    if attempts == 0:
        out.append("no user connected (no connect attempt recorded)")
    elif failures > max_connect_failures * (attempts - impaired):
        out.append(f"{failures} of {attempts - impaired} connects failed (> {max_connect_failures:.1%})"
                   + (f"; {impaired} more on impairing network profiles" if impaired else ""))
    if metrics["sent"] == 0:
        out.append("nothing was sent")
    if metrics["expected_deliveries"] == 0 and metrics["delivered"] == 0:
        out.append("no delivery was expected")
    if run.workers_lost:
        out.append(f"workers lost mid-run (missed heartbeats): {run.workers_lost}")
    if run.finals_missing:
        out.append(f"no final data from workers {run.finals_missing}")
    if metrics["latency_clamped"]:
        out.append(f"{metrics['latency_clamped']} latencies outside the HDR range (negative after clock "
                   "correction, or longer than the histogram holds)")
    return out


def capacity_result(metrics: dict[str, Any], invalid: list[str], answer: dict[str, Any]) -> list[str]:
    """A capacity search's answer ({}: it did not finish) into the metrics. The generator's health is judged per
    step there (a step that overloads the server may overload nothing else), so the whole-run saturation reasons
    give way to its verdict."""
    metrics["capacity"] = answer or {"capacity": None}
    saturated = set(metrics["generator_saturated_reasons"])
    out = [r for r in invalid if r not in saturated]
    if not answer:
        out.append("the capacity search did not finish")
    elif "error" in answer:
        out.append(f"no capacity search: {answer['error']}")
    elif answer["generator_bound"]:
        out.append(f"generator-bound at {answer['generator_bound_at']:,.1f} {answer['short_unit']}: the generator, "
                   f"not the server, broke first ({'; '.join(answer['failed_because'])})")
    elif answer.get("stopped"):
        out.append(f"capacity search stopped: {answer['stopped']}")
    elif answer["capacity"] is None and not answer.get("below_minimum"):
        out.append("no capacity found: " + ("; ".join(answer["failed_because"]) or "no level held"))
    return out


def clock_reasons(clock: dict[str, Any], had_workers: bool, bound_ms: float, uncorrected: bool) -> list[str]:
    """Why cross-process latencies cannot be trusted to ``bound_ms`` (empty: they can). ``had_workers``: a master
    with worker processes (they must have estimated their offsets)."""
    out = []
    if had_workers and not clock["workers"]:
        out.append("no clock offset estimate from any worker")
    for worker, c in clock["workers"].items():
        if c["bound_ms"] > bound_ms:
            out.append(f"{worker}: clock offset known only to ±{c['bound_ms']:.3f} ms > {bound_ms:g} ms")
        if c["drift_ms"] > bound_ms:
            out.append(f"{worker}: clock offset drifted {c['drift_ms']:.3f} ms > {bound_ms:g} ms during the run")
        if uncorrected and abs(c["offset_ms"]) > bound_ms:
            out.append(f"{worker}: clock {c['offset_ms']:+.3f} ms off the master's and latencies not corrected "
                       "(--no-clock-correction)")
    return out


def scenario_version(env: Environment) -> int:
    """The workload version of the scenario the users come from: its module's ``SCENARIO_VERSION`` (1 without)."""
    versions = {int(getattr(sys.modules.get(cls.__module__), "SCENARIO_VERSION", 1)) for cls in env.user_classes}
    return max(versions, default=1)


def _scenario_name(env: Environment) -> str:
    files = getattr(env.parsed_options, "locustfile", "") or ""
    return Path(str(files).split(",")[0]).stem


def write(env: Environment, result: dict[str, Any]) -> Path:
    """Write the record under ``--results-dir`` (never overwriting); also to ``--chatbench-out`` (the CLI's
    hand-off file, the same record)."""
    opts = env.parsed_options
    directory = Path(getattr(opts, "results_dir", "results") or "results")
    path = record.write(directory, result, f"swarm-{result['scenario']}-{result['run_id']}")
    out = getattr(opts, "chatbench_out", "")
    if out:
        Path(out).write_bytes(record.dumps(result))
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
        f"  generator CPU max {m['generator_cpu_ratio']:.0%}"
        + (f"; CPU µs per delivery: server {m['server_cpu_us_per_delivery']:.2f}, swarm "
           f"{m['generator_cpu_us_per_delivery']:.2f}" if m.get("generator_cpu_us_per_delivery") is not None
           and m.get("server_cpu_us_per_delivery") is not None else "") + f"; bundle {path}",
        "  clocks: " + (", ".join(f"{w} {c['offset_ms']:+.3f} ms ±{c['bound_ms']:.3f} (drift {c['drift_ms']:.3f})"
                                  for w, c in m["clock"]["workers"].items()) or m["clock"]["reference"])
        + ("" if m["clock"].get("corrected", True) else " — NOT corrected"),
        *([f"  capacity: {_capacity_line(m['capacity'])}"] if "capacity" in m else []),
        "  RUN VALID" if m["valid"] else "  RUN INVALID: " + "; ".join(m["invalid_reasons"]),
    ]
    print("\n".join(lines), flush=True)


def _capacity_line(c: dict[str, Any]) -> str:
    unit = c.get("short_unit", "")
    if c.get("error"):
        return str(c["error"])
    if c.get("capacity") is not None:
        return (f"{c['capacity']:,.1f} {unit} held ({c['slo']}); first failed {c['first_failed'] or '—'}: "
                f"{'; '.join(c['failed_because']) or 'nothing failed up to --capacity-max'}")
    if c.get("generator_bound"):
        return f"generator-bound at {c['generator_bound_at']:,.1f} {unit}"
    return "none found"


class ServerSampler:
    """Samples the server's counters every ``interval_s`` (a greenlet on the coordinator): per-second rates of
    CPU, sync requests and accepted messages, to show spikes (e.g. during a reconnect storm). It asks for those
    three series only: a full /metrics render would cost the server ~4 ms of its loop every second."""

    SERIES = ("process_cpu_seconds_total", "chat_sync_requests_total", "chat_messages_accepted_total")

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

        prev, t_prev = server_counters(self.env, self.SERIES), time.time()
        while True:
            gevent.sleep(self.interval_s)
            cur, t = server_counters(self.env, self.SERIES), time.time()
            dt = max(t - t_prev, 1e-9)
            if cur and prev:
                def rate(key: str, cur: dict[str, float] = cur, prev: dict[str, float] = prev, dt: float = dt) -> float:
                    return delta(cur, prev, key) / dt

                self.samples.append({"t": t, "cpu_ratio": rate("process_cpu_seconds_total"),
                                     "sync_per_s": rate("chat_sync_requests_total"),
                                     "accepted_per_s": rate("chat_messages_accepted_total")})
            prev, t_prev = cur, t

    def window_peak(self, start: float, end: float) -> dict[str, float]:
        inside = [s for s in self.samples if start <= s["t"] <= end + self.interval_s]
        return {k: max((s[k] for s in inside), default=0.0) for k in ("cpu_ratio", "sync_per_s", "accepted_per_s")}
