"""Every ``chatbench_`` generator metric, defined once, for Prometheus (names and meanings: docs/metrics.md).

The Locust master (or the only process) serves them from ``--metrics-port``. They are read from the
coordinator's :class:`drivers.totals.Totals` at scrape time by a custom collector — the hot path never touches
Prometheus — against an injected registry (tests build their own). Labels: ``run_id`` and ``scenario`` on every
series (low cardinality: one run at a time), ``worker`` on the CPU ratio, ``profile`` (network profile of the
receiving member: ``direct`` without impairment, or a name from :mod:`drivers.profiles`) on
:data:`BY_PROFILE` — one series per profile of a ``--profile-mix`` run, else one ``direct`` series. Latency
histograms come from the HDR histograms with the explicit buckets :data:`drivers.deliveries.PROMETHEUS_BUCKETS_S`.

Observer-neutral: a scrape only reads. Fan-out completion counts the messages settled so far; the coordinator
settles a message ``--fanout-settle-s`` after its send on its own timer (drivers/swarm.py), scraped or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from drivers.deliveries import PROMETHEUS_BUCKETS_S, cumulative_counts
from drivers.profiles import DIRECT
from drivers.totals import Totals

#: counter name (without ``chatbench_`` and ``_total``) -> ledger count
COUNTERS: Final = {
    "messages_sent": ("sent", "Messages acked by the server"),
    "messages_delivered": ("delivered", "Pushes received in order or filling a hole"),
    "messages_lost": ("lost", "Visible messages never pushed to an online receiver (repaired by sync)"),
    "messages_duplicated": ("duplicated", "Pushes of a seq the receiver already had"),
    "messages_reordered": ("reordered", "Pushes that arrived after a later seq of the same group"),
    "missed_send_slots": ("missed_send_slots", "Open-model send slots the generator could not keep"),
    "reconnects": ("reconnects", "Successful reconnects"),
    "dead_connections": ("dead_connections", "Connections found dead by the heartbeat (no pong in time) and replaced"),
    "unread_mismatches": ("unread_mismatches", "Unread counts where the server disagreed with the client's truth"),
}
HISTOGRAMS: Final = {
    "delivery_latency_seconds": ("latency", "Push receive time minus the sender's intended send time"),
    "fanout_completion_seconds": ("fan_last", "Send to the last online recipient of a complete message"),
    "send_ack_seconds": ("send_ack", "Intended send time to ack"),
    "catchup_seconds": ("catchup", "Reconnect start to every group synced up to the reconnect's hello"),
}
#: metrics with a ``profile`` label (the receiving member's network profile; the figure is kept per profile under
#: the same ledger key, drivers.ledger.PROFILE_COUNTERS / Totals.profiles). The others are per run: a send, a
#: fan-out or a send slot has no single receiving profile.
BY_PROFILE: Final = frozenset({"messages_delivered", "messages_lost", "messages_duplicated", "messages_reordered",
                               "reconnects", "dead_connections", "delivery_latency_seconds", "catchup_seconds"})
METRIC_NAMES: Final = (
    *(f"chatbench_{n}_total" for n in COUNTERS), *(f"chatbench_{n}" for n in HISTOGRAMS),
    "chatbench_generator_cpu_ratio", "chatbench_clock_offset_seconds", "chatbench_clock_offset_bound_seconds",
    "chatbench_capacity_level", "chatbench_profile_members", "chatbench_phase",
)


class GeneratorCollector(Collector):
    def __init__(self, totals: Totals, run_id: Callable[[], str], scenario: str,
                 phases: Callable[[], list[tuple[str, bool]]] = list, level: Callable[[], float] = float) -> None:
        self.totals = totals
        self.level = level  # a capacity search's arrival rate now (0: none)
        self.run_id = run_id
        self.scenario = scenario
        self.phases = phases  # the scenario's phases, (name, active now), in order; [] without a phased shape

    def collect(self) -> Iterator[Metric]:
        t = self.totals
        labels = ["run_id", "scenario"]
        values = [self.run_id(), self.scenario]
        profiles = sorted(t.profiles.items())
        for name, (key, doc) in COUNTERS.items():
            if name in BY_PROFILE:
                c = CounterMetricFamily(f"chatbench_{name}", doc, labels=[*labels, "profile"])
                if profiles:
                    for prof, part in profiles:
                        c.add_metric([*values, prof], float(part["counts"].get(key, 0)))
                else:
                    c.add_metric([*values, DIRECT], float(t.counts.get(key, 0)))
                yield c
                continue
            c = CounterMetricFamily(f"chatbench_{name}", doc, labels=labels)
            c.add_metric(values, float(t.counts.get(key, 0)))
            yield c
        for name, (attr, doc) in HISTOGRAMS.items():
            if name in BY_PROFILE:
                m = HistogramMetricFamily(f"chatbench_{name}", doc, labels=[*labels, "profile"])
                if profiles:
                    for prof, part in profiles:
                        _add_histogram(m, [*values, prof], part[attr].h)
                else:
                    _add_histogram(m, [*values, DIRECT], getattr(t, attr).h)
                yield m
                continue
            m = HistogramMetricFamily(f"chatbench_{name}", doc, labels=labels)
            _add_histogram(m, values, getattr(t, attr).h)
            yield m
        g = GaugeMetricFamily("chatbench_generator_cpu_ratio", "CPU time / wall time of each generator process, last "
                              "sample", labels=[*labels, "worker"])
        for worker, health in sorted(t.health.items()):
            g.add_metric([*values, worker], health["cpu_last"])
        yield g
        offset = GaugeMetricFamily("chatbench_clock_offset_seconds", "Each worker's clock offset to the master "
                                   "(reference − worker), last estimate", labels=[*labels, "worker"])
        bound = GaugeMetricFamily("chatbench_clock_offset_bound_seconds", "Error bound (±) of that offset: half the "
                                  "lowest round trip of its probe burst", labels=[*labels, "worker"])
        for worker, est in sorted(t.clock.items()):
            applied = [e for e in est if e[3]]
            if applied:
                offset.add_metric([*values, worker], applied[-1][1] / 1e6)
                bound.add_metric([*values, worker], applied[-1][2] / 1e6)
        yield offset
        yield bound
        g = GaugeMetricFamily("chatbench_capacity_level", "The arrival rate a capacity search holds now (messages per "
                              "second over all senders; 0 without a search)", labels=labels)
        g.add_metric(values, float(self.level()))
        yield g
        g = GaugeMetricFamily("chatbench_profile_members", "Members that connected through each network profile",
                              labels=[*labels, "profile"])
        for prof, part in profiles:
            g.add_metric([*values, prof], float(part["counts"].get("members", 0)))
        yield g
        g = GaugeMetricFamily("chatbench_phase", "The scenario's phases: 1 for the current one, 0 for the others",
                              labels=[*labels, "phase"])
        for phase, active in self.phases():
            g.add_metric([*values, phase], 1.0 if active else 0.0)
        yield g


def _add_histogram(m: HistogramMetricFamily, values: list[str], h: HdrHistogram) -> None:
    cum = cumulative_counts(h, PROMETHEUS_BUCKETS_S)
    total = h.get_total_count()
    buckets = [(repr(b), float(c)) for b, c in zip(PROMETHEUS_BUCKETS_S, cum, strict=True)]
    buckets.append(("+Inf", float(total)))
    m.add_metric(values, buckets, sum_value=h.get_mean_value() * total / 1e6 if total else 0.0)


def build_registry(totals: Totals, run_id: Callable[[], str], scenario: str,
                   phases: Callable[[], list[tuple[str, bool]]] = list,
                   level: Callable[[], float] = float) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(GeneratorCollector(totals, run_id, scenario, phases, level))
    return registry


def start_exporter(port: int, totals: Totals, run_id: Callable[[], str], scenario: str,
                   phases: Callable[[], list[tuple[str, bool]]] = list,
                   level: Callable[[], float] = float) -> CollectorRegistry:
    """Serve the generator metrics on 127.0.0.1:port (a daemon thread; a greenlet under Locust)."""
    registry = build_registry(totals, run_id, scenario, phases, level)
    start_http_server(port, addr="127.0.0.1", registry=registry)
    return registry
