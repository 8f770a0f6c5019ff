"""Reconnect storm: many clients drop and come back at once (a gateway restarted, a network blip). Shows the
connection curve, the catch-up load it causes (sync pulls, offline buffers, send queues) and how fast and how
completely clients caught up."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from dashboards import promql as p
from dashboards.common import RATE_UNIT, dashboard, graph, q, restart_annotation, row

BY = "run_id"


def build() -> builders.Dashboard:
    return (
        dashboard("chatbench-reconnect", "chatbench · Reconnect storm",
                  "Connections dropping and returning, the catch-up work the server does, and how complete the "
                  "clients' catch-up was.", annotations=(restart_annotation(),))
        .with_row(row("Connections"))
        .with_panel(graph(
            "Connections per gateway", "Open connections on each gateway.", "short",
            q(p.server_gauge("chat_connections", f"{BY}, instance"), "{{instance}} · {{run_id}}")))
        .with_panel(graph(
            "Connection change per second", "Net connections gained (+) or lost (−) per second.", RATE_UNIT,
            q(f"sum by ({BY}) ({p.server(f'deriv(chat_connections{{{p.SERVER}}}{p.RATE})')})", "{{run_id}}")))
        .with_panel(graph(
            "Reconnects (client)", "Reconnections made by the generator's clients.", RATE_UNIT,
            q(p.generator_rate("chatbench_reconnects_total", BY), "{{run_id}}")))
        .with_panel(graph(
            "Handshakes refused (server)", "WebSocket handshakes refused, by HTTP status (401 bad token, 403 no "
            "such user, 503 overloaded).", RATE_UNIT,
            q(p.server_rate("chat_auth_refusals_total", f"{BY}, status"), "{{status}} · {{run_id}}")))
        .with_row(row("Catch-up load"))
        .with_panel(graph(
            "Catch-up requests (server)", "Sync (pull by seq) pages served, and unread queries, per second.",
            RATE_UNIT,
            q(p.server_rate("chat_sync_requests_total", BY), "sync · {{run_id}}"),
            q(p.server_rate("chat_requests_total", f"{BY}, op", 'op="unread"'), "unread · {{run_id}}")))
        .with_panel(graph(
            "Offline buffer (server)", "Offline-buffer entries written and dropped per second.", RATE_UNIT,
            q(p.server_rate("chat_offline_writes_total", BY), "written · {{run_id}}"),
            q(p.server_rate("chat_offline_dropped_total", BY), "dropped · {{run_id}}")))
        .with_panel(graph(
            "Send-queue bytes (server)", "Bytes queued to clients (ours plus the transports' buffers): a backlog "
            "that grows while reconnecting clients catch up.", "bytes",
            q(p.server_gauge("chat_send_queue_bytes", f"{BY}, instance"), "{{instance}} · {{run_id}}")))
        .with_panel(graph(
            "Server CPU", "Server process CPU, in cores.", "short",
            q(p.server_rate("process_cpu_seconds_total", f"{BY}, instance"), "{{instance}} · {{run_id}}")))
        .with_panel(graph(
            "Slow-consumer and idle disconnects (server)", "Connections closed by the server during the storm.",
            RATE_UNIT,
            q(p.server_rate("chat_slow_consumer_disconnects_total", BY), "slow consumer · {{run_id}}"),
            q(p.server_rate("chat_idle_disconnects_total", BY), "idle · {{run_id}}")))
        .with_row(row("Catch-up outcome (client)"))
        .with_panel(graph(
            "Catch-up time", "From reconnect until the client had every message it missed.", "s",
            q(p.generator_quantile(0.5, "chatbench_catchup_seconds", BY), "p50 · {{run_id}}"),
            q(p.generator_quantile(0.99, "chatbench_catchup_seconds", BY), "p99 · {{run_id}}")))
        .with_panel(graph(
            "Lost and duplicated", "Messages never recovered, or delivered twice, around reconnects.", RATE_UNIT,
            q(p.generator_rate("chatbench_messages_lost_total", BY), "lost · {{run_id}}"),
            q(p.generator_rate("chatbench_messages_duplicated_total", BY), "duplicated · {{run_id}}")))
        .with_panel(graph(
            "Unread mismatches", "Unread counts the server reported that disagree with the client's truth after "
            "reconnecting.", RATE_UNIT,
            q(p.generator_rate("chatbench_unread_mismatches_total", BY), "{{run_id}}")))
    )
