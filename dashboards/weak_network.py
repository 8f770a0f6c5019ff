"""Weak network: the generator's measures split by impairment profile (the ``profile`` label the weak-network
proxy puts on the generator's series: latency, jitter, loss, bandwidth), with the server's reaction beside them."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from dashboards import promql as p
from dashboards.common import RATE_UNIT, dashboard, graph, q, row

BY = "run_id, profile"
PROFILE = 'profile=~"$profile"'
LEG = "{{profile}} · {{run_id}}"


def build() -> builders.Dashboard:
    return (
        dashboard("chatbench-weak-network", "chatbench · Weak network",
                  "Latency, loss and recovery by network impairment profile (--profile-mix); members without "
                  "impairment are profile direct. Compare direct across runs (with and without a mix) to see "
                  "whether impaired members slow everyone else.", profile=True)
        .with_row(row("Latency by profile"))
        .with_panel(graph(
            "Delivery latency", "Receive − send for members of each profile: p50, p99, p99.9.", "s",
            *(q(p.generator_quantile(x, "chatbench_delivery_latency_seconds", BY, PROFILE), f"p{label} · {LEG}")
              for x, label in ((0.5, "50"), (0.99, "99"), (0.999, "99.9")))))
        .with_panel(graph(
            "Direct members' p99", "Delivery latency p99 of the unimpaired members only: the figure impaired "
            "members must not raise (select two runs, with and without a mix).", "s",
            q(p.generator_quantile(0.99, "chatbench_delivery_latency_seconds", "run_id", 'profile="direct"'),
              "direct p99 · {{run_id}}")))
        .with_panel(graph(
            "Catch-up time p99", "From a reconnect until every missed message was synced, by profile.", "s",
            q(p.generator_quantile(0.99, "chatbench_catchup_seconds", BY, PROFILE), LEG)))
        .with_row(row("Loss and recovery by profile"))
        .with_panel(graph(
            "Deliveries", "Pushes received and verified per second, by receiving profile.", RATE_UNIT,
            q(p.generator_rate("chatbench_messages_delivered_total", BY, PROFILE), LEG)))
        .with_panel(graph(
            "Delivery faults", "Lost (repaired by sync), duplicated and reordered pushes per second, by receiving "
            "profile.", RATE_UNIT,
            q(p.generator_rate("chatbench_messages_lost_total", BY, PROFILE), f"lost · {LEG}"),
            q(p.generator_rate("chatbench_messages_duplicated_total", BY, PROFILE), f"duplicated · {LEG}"),
            q(p.generator_rate("chatbench_messages_reordered_total", BY, PROFILE), f"reordered · {LEG}")))
        .with_panel(graph(
            "Reconnects and dead connections", "Reconnections per second, and connections the heartbeat found "
            "dead (half-open: no pong in time), by profile.", RATE_UNIT,
            q(p.generator_rate("chatbench_reconnects_total", BY, PROFILE), f"reconnects · {LEG}"),
            q(p.generator_rate("chatbench_dead_connections_total", BY, PROFILE), f"dead · {LEG}")))
        .with_panel(graph(
            "Members by profile", "Members that connected through each profile (a --profile-mix run).", "none",
            q(p.generator_gauge("chatbench_profile_members", BY, PROFILE), LEG)))
        .with_panel(graph(
            "Send → ack p99 (run-wide)", "Send until the durable ack, for the whole run: a send has no receiving "
            "profile.", "s",
            q(p.generator_quantile(0.99, "chatbench_send_ack_seconds", "run_id"), "send→ack p99 · {{run_id}}")))
        .with_row(row("Server reaction"))
        .with_panel(graph(
            "Send-queue bytes (server)", "Bytes queued to slow clients.", "bytes",
            q(p.server_gauge("chat_send_queue_bytes", "run_id, instance"), "{{instance}} · {{run_id}}")))
        .with_panel(graph(
            "Slow-consumer disconnects and gap repairs (server)", "Connections closed because their queue passed "
            "its bound; sync pages served to repair gaps.", RATE_UNIT,
            q(p.server_rate("chat_slow_consumer_disconnects_total", "run_id"), "slow consumer · {{run_id}}"),
            q(p.server_rate("chat_sync_requests_total", "run_id"), "sync · {{run_id}}")))
    )
