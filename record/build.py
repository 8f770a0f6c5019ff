"""The one builder of result records: the envelope, the figures derived from raw ones, validity.

Every writer (the swarm, ``chatbench run``, the benchmarks) starts a record with :func:`new`, puts its raw
figures into ``metrics``, and ends it with :func:`finish`, which derives the per-message and per-CPU figures from
the raw ones (so each derived figure has one definition) and judges validity.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

from record.machine import git_info, machine_info
from record.promtext import delta
from record.schema import API_VERSION, KINDS

#: the server counters a record's costs come from (summed over labels and processes)
SERVER_COUNTERS: Final = (
    "chat_messages_accepted_total", "chat_deliveries_total", "chat_storage_writes_total", "chat_unread_writes_total",
    "chat_bus_messages_total", "chat_offline_dropped_total", "chat_offline_writes_total",
    "chat_slow_consumer_disconnects_total", "chat_sync_requests_total", "process_cpu_seconds_total",
    "chat_disk_written_bytes_total",
)
#: counters a server may not export (no /proc/self/io to read): absent, their figures are None, not 0
_OPTIONAL: Final = ("chat_disk_written_bytes_total",)
#: per-message costs: metrics key -> server counter
_PER_MESSAGE: Final = {
    "storage_writes_per_message": "chat_storage_writes_total",
    "unread_writes_per_message": "chat_unread_writes_total",
    "bus_messages_per_message": "chat_bus_messages_total",
    "disk_bytes_per_message": "chat_disk_written_bytes_total",
}


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def _utc(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def new(kind: str, scenario: str, parameters: dict[str, Any], *, run_id: str | None = None,
        started_s: float | None = None, server_modes: dict[str, Any] | None = None,
        parameter_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record's envelope, with empty metrics. ``parameter_defaults``: each parameter's declared default (so that
    a record from before a parameter existed can be read as having run at it)."""
    if kind not in KINDS:
        raise ValueError(f"record kind {kind!r}: choose from {', '.join(KINDS)}")
    started = time.time() if started_s is None else started_s
    git = git_info()
    out = {
        "api_version": API_VERSION, "kind": kind, "run_id": run_id or new_run_id(), "utc": _utc(started),
        "started_utc": _utc(started), "duration_s": 0.0, "commit": git["commit"], "dirty": git["dirty"],
        "machine": machine_info(), "scenario": scenario, "parameters": dict(parameters),
        "server_modes": dict(server_modes or {}), "metrics": {"valid": True, "invalid_reasons": []},
        "_started_s": started,
    }
    if parameter_defaults:
        out["parameter_defaults"] = dict(parameter_defaults)
    return out


def server_figures(after: dict[str, float], before: dict[str, float]) -> dict[str, float | None]:
    """The raw server figures of a window from two counter readings (``record.promtext.counters`` of /metrics,
    summed over processes): messages, deliveries, counters behind the per-message costs, CPU ticks."""
    if not after or not before:
        return {k: None for k in ("server_messages_accepted", "server_deliveries", "offline_dropped",
                                  "slow_consumer_disconnects", "sync_requests", "server_cpu_s")}
    d: dict[str, float | None] = {name: delta(after, before, name) for name in SERVER_COUNTERS}
    for name in _OPTIONAL:
        if not any(k == name or k.startswith(name + "{") for k in after):
            d[name] = None
    return {
        "server_messages_accepted": d["chat_messages_accepted_total"],
        "server_deliveries": d["chat_deliveries_total"],
        "offline_dropped": d["chat_offline_dropped_total"],
        "slow_consumer_disconnects": d["chat_slow_consumer_disconnects_total"],
        "sync_requests": d["chat_sync_requests_total"],
        "server_cpu_s": d["process_cpu_seconds_total"],
        **{f"_{name}": d[name] for name in _PER_MESSAGE.values()},
    }


def cpu_at(samples: Sequence[Sequence[float]], t: float) -> float:
    """Cumulative CPU seconds at epoch ``t`` from (epoch s, cumulative CPU s) samples: linear between samples,
    clipped to their span (0.0 without samples)."""
    pts = sorted((float(ts), float(c)) for ts, c in samples)
    if not pts:
        return 0.0
    if t <= pts[0][0]:
        return pts[0][1]
    for (ta, ca), (tb, cb) in itertools.pairwise(pts):
        if ta <= t <= tb:
            return ca + (cb - ca) * ((t - ta) / (tb - ta) if tb > ta else 1.0)
    return pts[-1][1]


def cpu_in_window(samples: Sequence[Sequence[float]], t0: float, t1: float) -> float:
    """CPU seconds spent between t0 and t1 (see :func:`cpu_at`)."""
    return cpu_at(samples, t1) - cpu_at(samples, t0) if t1 > t0 else 0.0


def generator_cpu(metrics: dict[str, Any], t0: float, t1: float) -> None:
    """The swarm's CPU over [t0, t1] (every generator process), beside the server's over the same window."""
    samples = metrics.get("generator_cpu_samples") or {}
    metrics["generator_cpu_s"] = sum(cpu_in_window(s, t0, t1) for s in samples.values()) if samples else None
    metrics["generator_cpu_window_s"] = [t0, t1]
    metrics["generator_cpu_busiest_ratio"] = max(cpu_in_window(s, t0, t1) for s in samples.values()) / (t1 - t0) \
        if samples and t1 > t0 else None


def derive(metrics: dict[str, Any]) -> None:
    """The derived figures, from the raw ones in ``metrics`` (the one definition of each):

    * ``deliveries_per_server_cpu_s`` = ``server_deliveries`` / ``server_cpu_s``
    * ``server_cpu_us_per_message`` = ``server_cpu_s`` / ``server_messages_accepted`` × 10⁶
    * ``*_per_message`` = the counter's delta / ``server_messages_accepted``
    * ``server_cpu_us_per_delivery`` = ``server_cpu_s`` / ``server_deliveries`` × 10⁶, and
      ``generator_cpu_us_per_delivery`` = ``generator_cpu_s`` / ``delivered`` × 10⁶: who pays more per delivery
    * ``limit_side``: the side closer to its limit — ``server`` or ``generator`` (CPU ratio of a core over the
      window: the server is one event loop, so one core is its limit; the swarm's is its busiest process's average
      over the same window, ``generator_cpu_busiest_ratio``; a record without it, the highest sample)
    """
    cpu = metrics.get("server_cpu_s")
    accepted = metrics.get("server_messages_accepted")
    deliveries = metrics.get("server_deliveries")
    metrics["deliveries_per_server_cpu_s"] = deliveries / cpu if cpu and deliveries is not None else None
    metrics["server_cpu_us_per_message"] = cpu / accepted * 1e6 if cpu is not None and accepted else None
    gen_cpu, delivered = metrics.get("generator_cpu_s"), metrics.get("delivered")
    if "generator_cpu_s" in metrics or "server_cpu_us_per_delivery" in metrics:
        metrics["server_cpu_us_per_delivery"] = cpu / deliveries * 1e6 if cpu is not None and deliveries else None
        metrics["generator_cpu_us_per_delivery"] = gen_cpu / delivered * 1e6 if gen_cpu is not None and delivered \
            else None
    window = metrics.get("server_cpu_window_s") or metrics.get("generator_cpu_window_s")
    gen_ratio = metrics.get("generator_cpu_busiest_ratio")
    if gen_ratio is None:
        gen_ratio = metrics.get("generator_cpu_ratio")
    if cpu is not None and window and window[1] > window[0] and gen_ratio is not None:
        server_ratio = cpu / (window[1] - window[0]) / max(1, int(metrics.get("server_processes") or 1))
        metrics["server_cpu_ratio"] = server_ratio
        metrics["limit_side"] = "server" if server_ratio >= gen_ratio else "generator"
    for key, counter in _PER_MESSAGE.items():
        raw = metrics.pop(f"_{counter}", None)
        if raw is not None or key not in metrics:
            metrics[key] = raw / accepted if raw is not None and accepted else metrics.get(key)


def finish(record: dict[str, Any], invalid: list[str] | None = None) -> dict[str, Any]:
    """Derive, judge and close the record: ``metrics.valid`` is false when any reason is given (or was already
    recorded); ``utc``/``duration_s`` say when it was closed."""
    m = record["metrics"]
    derive(m)
    reasons = list(dict.fromkeys([*m.get("invalid_reasons", []), *(invalid or [])]))
    m["invalid_reasons"] = reasons
    m["valid"] = not reasons
    now = time.time()
    record["utc"] = _utc(now)
    if "_started_s" in record:  # closed for the first time
        record["duration_s"] = round(now - float(record.pop("_started_s")), 6)
    return record
