"""Mode comparison: the same measures split by configuration (fan-out, storage, unread, offline mode), and what
each configuration costs per message. Runs of different configurations can lie anywhere in the time range: the
cost panels are instant queries over the whole range, so a sequence of runs (a matrix) compares side by side."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from dashboards import promql as p
from dashboards.common import RATE_UNIT, bars, dashboard, graph, q, row

BY = "${split:csv}"
L = p.CONFIG_LEGEND


def build() -> builders.Dashboard:
    return (
        dashboard("chatbench-modes", "chatbench · Mode comparison",
                  "Fan-out, storage, unread and offline modes side by side: load, latency, and cost per message. "
                  "Choose which mode labels to split by with 'split by'.", split=True)
        .with_row(row("Load and latency by configuration"))
        .with_panel(graph(
            "Connections", "Open client connections by configuration.", "short",
            q(p.server_gauge("chat_connections", BY), L)))
        .with_panel(graph(
            "Messages accepted per second", "Durable, acked messages by configuration.", RATE_UNIT,
            q(p.server_rate("chat_messages_accepted_total", BY), L)))
        .with_panel(graph(
            "Deliveries per second", "Pushed by the server, and received by the generator, by configuration.",
            RATE_UNIT,
            q(p.server_rate("chat_deliveries_total", BY), f"pushed · {L}"),
            q(p.generator_rate("chatbench_messages_delivered_total", BY), f"received · {L}")))
        .with_panel(graph(
            "Delivery latency p99 / p99.9 (client)", "Receive − send, by configuration.", "s",
            q(p.generator_quantile(0.99, "chatbench_delivery_latency_seconds", BY), f"p99 · {L}"),
            q(p.generator_quantile(0.999, "chatbench_delivery_latency_seconds", BY), f"p99.9 · {L}")))
        .with_panel(graph(
            "Server push latency p99 / p99.9", "Accept → last socket write, by configuration.", "s",
            q(p.server_quantile(0.99, "chat_push_latency_seconds", BY), f"p99 · {L}"),
            q(p.server_quantile(0.999, "chat_push_latency_seconds", BY), f"p99.9 · {L}")))
        .with_panel(graph(
            "Fan-out completion p99 (client)", "Until the last online recipient had it, by configuration.", "s",
            q(p.generator_quantile(0.99, "chatbench_fanout_completion_seconds", BY), L)))
        .with_panel(graph(
            "Error frames", "Error frames per second by configuration and code.", RATE_UNIT,
            q(p.server_rate("chat_errors_total", f"{BY}, code"), f"{{{{code}}}} · {L}")))
        .with_panel(graph(
            "Storage writes per second", "Rows written by kind (body, index, delete, read_mark).", RATE_UNIT,
            q(p.server_rate("chat_storage_writes_total", f"{BY}, kind"), f"{{{{kind}}}} · {L}")))
        .with_panel(graph(
            "Unread merges pending", "Increments buffered by the merged unread mode, not yet written "
            "(lost on a crash).", "short",
            q(p.server_gauge("chat_unread_pending", BY), L)))
        .with_row(row("Cost per message (over the selected time range)"))
        .with_panel(bars(
            "Storage writes per message", "Rows written per accepted message, by kind: write diffusion writes one "
            "index row per member, read diffusion one body.", "short",
            q(p.per_message("chat_storage_writes_total", BY, extra_by="kind"), f"{{{{kind}}}} · {L}")))
        .with_panel(bars(
            "Disk bytes per message", "Page cache the server dirtied for storage per accepted message (its "
            "/proc/self/io write_bytes): what the rows cost the disk — write diffusion's index rows land on as many "
            "B-tree pages as there are members.", "bytes",
            q(p.per_message("chat_disk_written_bytes_total", BY), L)))
        .with_panel(bars(
            "Unread writes per message", "Unread-counter rows written per message: N−1 per-message, fewer merged, "
            "0 seq-derived.", "short",
            q(p.per_message("chat_unread_writes_total", BY), L)))
        .with_panel(bars(
            "Offline writes and drops per message", "Offline-buffer entries written, and dropped by the cap or "
            "rate limit, per message.", "short",
            q(p.per_message("chat_offline_writes_total", BY), f"written · {L}"),
            q(p.per_message("chat_offline_dropped_total", BY), f"dropped · {L}")))
        .with_panel(bars(
            "Bus messages per message", "Cluster mode: messages published between the logic node and the "
            "gateways per message (O per-user, 1 broadcast, g routed), and receipts by nodes (G for broadcast).",
            "short",
            q(p.per_message("chat_bus_messages_total", BY), f"published · {L}"),
            q(p.per_message("chat_bus_received_total", BY), f"received · {L}")))
        .with_panel(bars(
            "Deliveries per message", "Fan-out factor: deliveries pushed per accepted message.", "short",
            q(p.per_message("chat_deliveries_total", BY), L), decimals=1))
        .with_panel(bars(
            "Server CPU per delivery", "Server process CPU (user + system) per delivery pushed.", "µs",
            q(p.per_message("process_cpu_seconds_total", BY, per="chat_deliveries_total", scale=1e6), L)))
        .with_panel(bars(
            "Gateway filtering per delivery", "Members a gateway checked for a group message but does not hold, "
            "per delivery: the wasted work of broadcast fan-out (an empty gateway still walks every member list).",
            "short",
            q(p.per_message("chat_gateway_filtered_total", BY, per="chat_deliveries_total"), L)))
    )
