"""Every server metric, defined once, built against an injected registry.

Hot paths increment counters once per message or per batch, never once per delivery; derived state
(connections, queued bytes, pending merges) is read by a collector at scrape time. The configuration is
the ``chat_server_info`` info metric, joined in PromQL, not a label on every series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# accept → last socket write of a message's fan-out: from tens of µs to a minute under storms. Dense exponential
# buckets (each 1.2 × the one below, 50 µs … 60 s: 78 bounds) so a quantile read from them is true to a factor
# of 1.2 anywhere in the range (a 10k-member fan-out's p50 and p99 differ by less than coarse buckets can show).
PUSH_LATENCY_BUCKETS = tuple(float(f"{50e-6 * 1.2 ** k:.4g}") for k in range(78))
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry, *, version: str, modes: dict[str, str]) -> None:
        self.registry = registry
        info = Info("chat_server", "Server configuration (value is always 1)", registry=registry)
        info.info({"version": version, **modes})
        self.messages_accepted = Counter(
            "chat_messages_accepted", "Messages acked (durable, seq assigned)", registry=registry
        )
        self.deliveries = Counter(
            "chat_deliveries", "Message frames queued to online receivers' connections", registry=registry
        )
        self.push_latency = Histogram(
            "chat_push_latency_seconds", "Server accept to the socket write of the message's last delivery",
            buckets=PUSH_LATENCY_BUCKETS, registry=registry,
        )
        self.storage_writes = Counter(
            "chat_storage_writes", "Storage rows written, by kind", ["kind"], registry=registry
        )
        self.unread_writes = Counter("chat_unread_writes", "Unread-counter rows written", registry=registry)
        # chat_unread_pending: a scrape-time gauge, see track_unread_pending
        self.offline_writes = Counter("chat_offline_writes", "Offline-buffer entries written", registry=registry)
        self.offline_dropped = Counter(
            "chat_offline_dropped", "Offline-buffer entries dropped (cap or rate limit)", registry=registry
        )
        self.bus_messages = Counter(
            "chat_bus_messages", "Messages published on the cluster bus, by kind (push, group, reply, request, "
            "control)", ["kind"], registry=registry,
        )
        self.bus_received = Counter(
            "chat_bus_received", "Bus messages a node received, by kind", ["kind"], registry=registry
        )
        self.gateway_filtered = Counter(
            "chat_gateway_filtered", "Members a gateway checked for a group message but does not hold (wasted work)",
            registry=registry,
        )
        self.registry_updates = Counter(
            "chat_registry_updates", "Online-registry changes (user → gateway, group → gateways) on login/logout",
            registry=registry,
        )
        self.registry_reads = Counter(
            "chat_registry_reads", "Receivers looked up in the central online registry (per-user fan-out)",
            registry=registry,
        )
        self.member_batches = Counter(
            "chat_gateway_member_batches", "Member-list batches a gateway fetched for its filter", registry=registry
        )
        self.hold_overflows = Counter(
            "chat_gateway_hold_overflows", "Times a gateway's group messages held while member lists load passed "
            "gateway_hold_bytes: it dropped them and told its clients to resume by seq (4003)", registry=registry
        )
        self.redis_reconnects = Counter(
            "chat_redis_reconnects", "Times this node lost Redis and reconnected", registry=registry
        )
        self.slow_consumer_disconnects = Counter(
            "chat_slow_consumer_disconnects", "Connections closed because their send queue passed its bound",
            registry=registry,
        )
        self.resume_disconnects = Counter(
            "chat_resume_disconnects", "Connections a cluster gateway closed (4003) because it may have missed bus "
            "messages for them (a Redis outage, a pub/sub reconnect, a dropped publish)", registry=registry,
        )
        self.idle_disconnects = Counter(
            "chat_idle_disconnects", "Connections closed after idle_timeout without inbound frames", registry=registry
        )
        self.protocol_violations = Counter(
            "chat_protocol_violations", "Client WebSocket protocol violations, by reason (counted, not logged)",
            ["reason"], registry=registry,
        )
        self.sync_requests = Counter("chat_sync_requests", "Sync (pull by seq) requests served", registry=registry)
        self.requests = Counter("chat_requests", "Client requests by op", ["op"], registry=registry)
        self.errors = Counter("chat_errors", "Error frames sent, by code", ["code"], registry=registry)
        self.auth_refusals = Counter(
            "chat_auth_refusals", "WebSocket handshakes refused, by HTTP status", ["status"], registry=registry
        )
        self.commit_seconds = Histogram(
            "chat_commit_seconds", "Duration of one group-commit transaction", buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "chat_checkpoint_seconds", "Duration of one WAL checkpoint by the checkpoint thread",
            buckets=COMMIT_BUCKETS, registry=registry,
        )
        self.commit_batch = Histogram(
            "chat_commit_batch_size", "Jobs per group-commit transaction", buckets=BATCH_BUCKETS, registry=registry
        )
        if read_written_bytes() is not None:  # no /proc/self/io (not Linux, or hidden): no series, not a false 0
            registry.register(_DiskWritten())

    def track_unread_pending(self, read: Callable[[], float]) -> None:
        """``chat_unread_pending``: unread-counter changes accepted but not yet written (merged mode's buffer,
        Σ|merged change|; what a crash now would lose). 0 in the other modes."""
        self.add_gauges("chat_unread_pending", "Unread-counter changes accepted but not yet written", read)

    def add_gauges(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Register a gauge whose value is read at scrape time (derived state off the hot path)."""
        self.registry.register(_ScrapeGauge(name, doc, read))


DISK_WRITTEN: Final = "chat_disk_written_bytes"


def read_written_bytes(path: str = "/proc/self/io") -> float | None:
    """``write_bytes`` of ``/proc/self/io``: bytes of page cache this process dirtied for a storage device (the
    database file, its WAL, checkpoints), counted when a page first turns dirty — a page rewritten before it
    reaches the disk counts once. None when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"write_bytes:"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


class _DiskWritten(Collector):
    """``chat_disk_written_bytes_total``, read at scrape time: what each storage design costs the disk, beside
    the rows it writes (write diffusion's rows land on as many B-tree pages as there are members)."""

    DOC: Final = "Bytes of page cache this process dirtied for storage (/proc/self/io write_bytes)"

    def collect(self) -> Iterator[Metric]:
        value = read_written_bytes()
        if value is not None:
            yield CounterMetricFamily(DISK_WRITTEN, self.DOC, value=value)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(DISK_WRITTEN, self.DOC)


class _ScrapeGauge(Collector):
    def __init__(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._name, self._doc, self._read = name, doc, read

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._doc, value=self._read())

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._doc)
