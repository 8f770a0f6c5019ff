"""Result records as the CLI compares them: group by configuration, tell comparable apart, read measures.

A record (a "bundle") is one JSON file per run; its schema is record/schema.py (docs/results.md), read and
written through :mod:`record.store`. Swarm records and benchmark records are compared the same way.

Two bundles are *comparable* when they ran the same scenario with the same parameters under the same
``api_version``; their configuration (modes, cluster size, network profile mix) is what a comparison is about, so
it is not part of that.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from drivers.bundle import RUN_SPECIFIC_OPTIONS
from drivers.deliveries import decode_into, new_histogram
from record import store
from record.store import load, write

__all__ = ["AXES", "MEASURES", "Group", "Measure", "config", "groups", "label", "load", "load_all", "write"]

#: scenario options that differ between otherwise identical runs; newer bundles leave them out already
VOLATILE_PARAMETERS: Final = RUN_SPECIFIC_OPTIONS
#: the configuration axes, in the order labels show them; ``network``: the members' network profile mix
#: (``--profile-mix``; ``direct`` without one)
#: ``workload``: the scenario and a digest of what must be equal to compare (comparability()), so that records of
#: different workloads in one directory (a benchmark's paced and burst records) form groups of their own
AXES: Final = ("fanout", "storage", "unread", "offline", "cluster", "server_cpu", "network", "workload")
#: scenario options that are a configuration axis, not a condition of comparability (``receive_engine``: how the
#: generator receives, drivers/engine.py or ChatClient — the same workload either way)
AXIS_PARAMETERS: Final = frozenset({"profile_mix", "receive_engine"})


@dataclass(frozen=True)
class Measure:
    """One figure of a bundle's ``metrics``. ``kind``: ``count`` is deterministic (compared exactly, no
    statistics); ``time`` is noisy (compared only across repetitions, with a significance test)."""

    name: str
    path: tuple[str, ...]
    unit: str
    kind: Literal["time", "count"]
    higher_is_better: bool = False

    def get(self, bundle: dict[str, Any]) -> float | None:
        value: Any = bundle.get("metrics", {})
        for key in self.path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


MEASURES: Final = (
    Measure("p50", ("delivery_latency_ms", "p50"), "ms", "time"),
    Measure("p90", ("delivery_latency_ms", "p90"), "ms", "time"),
    Measure("p99", ("delivery_latency_ms", "p99"), "ms", "time"),
    Measure("p999", ("delivery_latency_ms", "p999"), "ms", "time"),
    Measure("fanout_p50", ("fanout_completion_ms", "p50"), "ms", "time"),
    Measure("fanout_p99", ("fanout_completion_ms", "p99"), "ms", "time"),
    Measure("send_ack_p99", ("send_ack_ms", "p99"), "ms", "time"),
    # the unimpaired members of a --profile-mix run (weak networks): do the others slow them down?
    Measure("direct_p50", ("by_profile", "direct", "delivery_latency_ms", "p50"), "ms", "time"),
    Measure("direct_p99", ("by_profile", "direct", "delivery_latency_ms", "p99"), "ms", "time"),
    Measure("server_cpu_us_per_message", ("server_cpu_us_per_message",), "µs", "time"),
    Measure("deliveries_per_server_cpu_s", ("deliveries_per_server_cpu_s",), "/s", "time", higher_is_better=True),
    # a capacity search's answer (chatbench capacity): noisy like a time, so compared over repeats
    # in the search's unit (metrics.capacity.unit: messages/s, or active groups); bundles of different axes are
    # different workloads (--capacity-vary is a parameter), so never compared with each other
    Measure("capacity", ("capacity", "capacity"), "", "time", higher_is_better=True),
    Measure("storage_writes_per_message", ("storage_writes_per_message",), "", "count"),
    Measure("unread_writes_per_message", ("unread_writes_per_message",), "", "count"),
    # pages reach the disk when the kernel and the checkpoints say so: noisy like a time, compared over repeats
    Measure("disk_bytes_per_message", ("disk_bytes_per_message",), "B", "time"),
    Measure("bus_messages_per_message", ("bus_messages_per_message",), "", "count"),
    Measure("offline_dropped", ("offline_dropped",), "", "count"),
    Measure("lost", ("lost",), "", "count"),
    Measure("duplicated", ("duplicated",), "", "count"),
    Measure("reordered", ("reordered",), "", "count"),
    Measure("unread_mismatches", ("unread_mismatches",), "", "count"),
)
BY_NAME: Final = {m.name: m for m in MEASURES}


def measure(name: str) -> Measure:
    """A known measure, or any numeric ``metrics`` key (dotted for nested ones) taken as a deterministic count."""
    if name in BY_NAME:
        return BY_NAME[name]
    if not name or any(not part.isidentifier() for part in name.split(".")):
        raise ValueError(f"not a measure name: {name!r}")
    return Measure(name, tuple(name.split(".")), "", "count")


def config(bundle: dict[str, Any]) -> dict[str, str]:
    """The configuration a bundle measured: the server's modes (as it reported them; else as asked for), the
    cluster size, the members' network profile mix."""
    cfg = bundle.get("config") or {}
    modes = {**{k: v for k, v in cfg.items() if k in AXES[:4] and v}, **(bundle.get("server_modes") or {})}
    out = {axis: str(modes.get(axis, "")) for axis in AXES[:4]}
    gateways = int(cfg.get("cluster_gateways") or 0)
    out["cluster"] = f"{gateways} gateways" if gateways else "embedded"
    quota = cfg.get("server_cpu_quota")
    out["server_cpu"] = f"{quota:g} cores" if quota else "unlimited"
    out["network"] = str((bundle.get("parameters") or {}).get("profile_mix") or "direct")
    out["workload"] = workload(bundle)
    return out


def workload(bundle: dict[str, Any]) -> str:
    """``scenario:digest`` of the bundle's comparability record: equal exactly when two runs may be compared."""
    digest = hashlib.sha1(orjson.dumps(comparability(bundle), option=orjson.OPT_SORT_KEYS)).hexdigest()[:6]
    mode = (bundle.get("parameters") or {}).get("mode")  # a benchmark's paced/burst
    return f"{bundle.get('scenario')}{f'[{mode}]' if mode else ''}:{digest}"


def config_key(bundle: dict[str, Any]) -> tuple[str, ...]:
    c = config(bundle)
    return tuple(c[a] for a in AXES)


def label(key: tuple[str, ...], varying: Iterable[str] | None = None) -> str:
    """``storage=write unread=seq`` — only the axes in ``varying`` (default: all)."""
    axes = set(AXES if varying is None else varying)
    parts = [f"{a}={v}" for a, v in zip(AXES, key, strict=True) if a in axes]
    return " ".join(parts) or "default"


def varying_axes(keys: Iterable[tuple[str, ...]]) -> list[str]:
    """The axes on which these configurations differ (all axes when there is only one)."""
    keys = list(keys)
    axes = [a for i, a in enumerate(AXES) if len({k[i] for k in keys}) > 1]
    return axes or ([a for a in AXES if a not in ("cluster", "server_cpu", "network", "workload")] if keys else [])


def load_all(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Records from files and directories (record.store.load_all), older ones read at today's defaults
    (:func:`fill_defaults`)."""
    out = store.load_all(paths)
    fill_defaults(out)
    return out


def fill_defaults(loaded: list[dict[str, Any]]) -> None:
    """Give a record that lacks a parameter — its run predates the option — the default that the other records of
    its scenario name for it (``parameter_defaults``), in place, so that it compares with runs at that default
    (adding an option must keep the old behaviour as its default). Not filled when those records disagree on the
    default (it changed): then the parameter stays absent and the runs are incomparable. The names filled are
    listed in the record's ``_filled`` (not part of the record; ``compare`` says what it assumed)."""
    known: dict[Any, dict[str, set[bytes]]] = {}  # scenario -> parameter -> the defaults named for it
    for b in loaded:
        for k, v in (b.get("parameter_defaults") or {}).items():
            known.setdefault(b.get("scenario"), {}).setdefault(k, set()).add(orjson.dumps(v))
    for b in loaded:
        params = b.get("parameters")
        if not isinstance(params, dict):
            continue
        for k, values in known.get(b.get("scenario"), {}).items():
            if k not in params and len(values) == 1:
                params[k] = orjson.loads(next(iter(values)))
                b.setdefault("_filled", []).append(k)


def comparability(bundle: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two runs to be compared: api version, scenario and its workload version (absent: 1),
    how receive times were taken (absent: when read), its parameters (volatile ones out)."""
    params = {k: v for k, v in (bundle.get("parameters") or {}).items()
              if k not in VOLATILE_PARAMETERS and k not in AXIS_PARAMETERS}
    out = {"api_version": bundle.get("api_version"), "scenario": bundle.get("scenario"),
           "scenario_version": int(bundle.get("scenario_version") or 1), "parameters": params}
    if bundle.get("kind", "swarm") == "swarm":
        out["receive_stamp"] = bundle.get("receive_stamp") or "read"
    return out


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two comparability records (``parameters.members: 500 ≠ 1000``)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "(unset)"), b.get(k, "(unset)")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va} ≠ {vb}")
    return out


@dataclass
class Group:
    """The repetitions of one configuration."""

    key: tuple[str, ...]
    bundles: list[dict[str, Any]]

    def values(self, m: Measure) -> list[float]:
        return [v for b in self.bundles if (v := m.get(b)) is not None]

    def median(self, m: Measure) -> float | None:
        vals = self.values(m)
        return statistics.median(vals) if vals else None

    def comparability(self) -> dict[str, Any] | None:
        """The group's comparability record, or None if its own runs disagree."""
        records = [comparability(b) for b in self.bundles]
        return records[0] if all(r == records[0] for r in records) else None

    @property
    def invalid(self) -> int:
        return sum(1 for b in self.bundles if not b.get("metrics", {}).get("valid", True))

    def histogram(self, name: str) -> Any:
        """The HDR histogram ``name`` (e.g. ``delivery_latency_us``) merged over the repetitions."""
        h = new_histogram()
        for b in self.bundles:
            decode_into(h, (b.get("histograms") or {}).get(name, ""))
        return h


def groups(bundles: Iterable[dict[str, Any]]) -> list[Group]:
    by: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for b in bundles:
        by.setdefault(config_key(b), []).append(b)
    return [Group(k, v) for k, v in by.items()]


def cdf_points(h: Any, quantiles: Iterator[float] | None = None) -> list[tuple[float, float]]:
    """(latency ms, fraction ≤ it) at quantiles from 0.1 % to 99.99 % (log-spaced in the tail)."""
    if h.get_total_count() == 0:
        return []
    qs = list(quantiles) if quantiles is not None else _quantiles()
    return [(h.get_value_at_percentile(q * 100) / 1000, q) for q in qs]


def _quantiles() -> list[float]:
    body = [i / 100 for i in range(1, 90)]
    tail = [1 - 10 ** (-1 - i / 20) for i in range(0, 61)]  # 0.9 .. 0.9999
    return [0.001, *body, *tail, 1.0]
