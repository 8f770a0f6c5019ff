"""Overview: is the run healthy? Load, latency and errors of the selected runs, server and generator side by side."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from dashboards import promql as p
from dashboards.common import RATE_UNIT, bars, dashboard, graph, info_table, q, row

BY = "run_id"


def build() -> builders.Dashboard:
    return (
        dashboard("chatbench-overview", "chatbench · Overview",
                  "Load, latency and errors of the selected runs: what the server did (chat_*) next to what the "
                  "load generator measured (chatbench_*).")
        .with_panel(info_table(
            "Server configuration", "One row per gateway: chat_server_info (the modes under test).",
            f"max by (run_id, instance, fanout, storage, unread, offline, version) ({p.INFO})"))
        .with_row(row("Load"))
        .with_panel(graph(
            "Connections", "Open client connections, summed over the run's gateways (chat_connections).", "short",
            q(p.server_gauge("chat_connections", BY), "{{run_id}}")))
        .with_panel(graph(
            "Messages per second", "Accepted (durable, acked) by the server, and sent by the generator.", RATE_UNIT,
            q(p.server_rate("chat_messages_accepted_total", BY), "accepted · {{run_id}}"),
            q(p.generator_rate("chatbench_messages_sent_total", BY), "sent · {{run_id}}")))
        .with_panel(graph(
            "Deliveries per second", "Message frames queued to online receivers by the server, and received and "
            "verified by the generator.", RATE_UNIT,
            q(p.server_rate("chat_deliveries_total", BY), "pushed · {{run_id}}"),
            q(p.generator_rate("chatbench_messages_delivered_total", BY), "received · {{run_id}}")))
        .with_row(row("Latency"))
        .with_panel(graph(
            "Delivery latency (client)", "Receive time − the sender's send time, measured by the generator (HDR, "
            "merged across workers).", "s",
            *(q(p.generator_quantile(x, "chatbench_delivery_latency_seconds", BY), f"p{label} · {{{{run_id}}}}")
              for x, label in ((0.5, "50"), (0.99, "99"), (0.999, "99.9")))))
        .with_panel(graph(
            "Server push latency", "Server accept → socket write of the message's last delivery "
            "(chat_push_latency_seconds): the server's share of fan-out.", "s",
            *(q(p.server_quantile(x, "chat_push_latency_seconds", BY), f"p{label} · {{{{run_id}}}}")
              for x, label in ((0.5, "50"), (0.99, "99"), (0.999, "99.9")))))
        .with_panel(graph(
            "Fan-out completion (client)", "Time until the last online recipient had a message.", "s",
            q(p.generator_quantile(0.5, "chatbench_fanout_completion_seconds", BY), "p50 · {{run_id}}"),
            q(p.generator_quantile(0.99, "chatbench_fanout_completion_seconds", BY), "p99 · {{run_id}}")))
        .with_panel(graph(
            "Send → ack (client)", "Send until the server's ack (the message is durable).", "s",
            q(p.generator_quantile(0.5, "chatbench_send_ack_seconds", BY), "p50 · {{run_id}}"),
            q(p.generator_quantile(0.99, "chatbench_send_ack_seconds", BY), "p99 · {{run_id}}")))
        .with_panel(graph(
            "Group commit (server)", "Duration of one storage group-commit transaction, and jobs per commit.", "s",
            q(p.server_quantile(0.5, "chat_commit_seconds", BY), "p50 · {{run_id}}"),
            q(p.server_quantile(0.99, "chat_commit_seconds", BY), "p99 · {{run_id}}")))
        .with_panel(bars(
            "Messages and deliveries in range", "Totals over the selected time range.", "short",
            q(p.server_increase("chat_messages_accepted_total", BY), "accepted · {{run_id}}"),
            q(p.server_increase("chat_deliveries_total", BY), "deliveries · {{run_id}}"), decimals=0))
        .with_row(row("Errors"))
        .with_panel(graph(
            "Error frames (server)", "Error frames sent to clients, by code (chat_errors_total).", RATE_UNIT,
            q(p.server_rate("chat_errors_total", f"{BY}, code"), "{{code}} · {{run_id}}")))
        .with_panel(graph(
            "Disconnects and refusals (server)", "Slow consumers and idle connections closed by the server; "
            "handshakes refused, by HTTP status.", RATE_UNIT,
            q(p.server_rate("chat_slow_consumer_disconnects_total", BY), "slow consumer · {{run_id}}"),
            q(p.server_rate("chat_idle_disconnects_total", BY), "idle · {{run_id}}"),
            q(p.server_rate("chat_auth_refusals_total", f"{BY}, status"), "refused {{status}} · {{run_id}}")))
        .with_panel(graph(
            "Delivery faults (client)", "Messages lost, duplicated, reordered, and unread counts that disagree with "
            "the client's truth. Anything above zero is a correctness failure.", RATE_UNIT,
            *(q(p.generator_rate(f"chatbench_{name}_total", BY), f"{label} · {{{{run_id}}}}")
              for name, label in (("messages_lost", "lost"), ("messages_duplicated", "duplicated"),
                                  ("messages_reordered", "reordered"), ("unread_mismatches", "unread mismatch")))))
    )
