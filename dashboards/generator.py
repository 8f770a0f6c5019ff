"""Load-generator health: is the generator, not the server, the bottleneck? A saturated generator (CPU near one
core, receive lag, missed send slots) makes a run's latencies meaningless; the run is then marked invalid."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from dashboards import promql as p
from dashboards.common import RATE_UNIT, dashboard, graph, q, row, thresholds

BY = "run_id"


def build() -> builders.Dashboard:
    cpu = graph(
        "Generator CPU", "CPU of each generator process as a fraction of one core (chatbench_generator_cpu_ratio); "
        "above 0.9 the generator is saturated.", "percentunit",
        q(f"max by (run_id, instance, worker) (chatbench_generator_cpu_ratio{{{p.GENERATOR}}})",
          "{{worker}} · {{run_id}}"), soft_max=1)
    cpu = cpu.thresholds(thresholds((None, "green"), (0.9, "red")))
    return (
        dashboard("chatbench-generator", "chatbench · Load-generator health",
                  "Generator CPU, receive lag and missed send slots next to the server's CPU: who is the "
                  "bottleneck?")
        .with_row(row("Generator"))
        .with_panel(cpu)
        .with_panel(graph(
            "Missed send slots", "Sends that could not go out at their scheduled time (open model).", RATE_UNIT,
            q(p.generator_rate("chatbench_missed_send_slots_total", BY), "{{run_id}}")))
        .with_panel(graph(
            "Receive ratio", "Deliveries the generator received per delivery the server pushed: below 1 the "
            "generator lags behind (or messages are lost).", "percentunit",
            q(f"{p.generator_rate('chatbench_messages_delivered_total', BY)} / "
              f"{p.server_rate('chat_deliveries_total', BY)}", "{{run_id}}")))
        .with_panel(graph(
            "Sent and received", "Messages sent and deliveries received by the generator per second.", RATE_UNIT,
            q(p.generator_rate("chatbench_messages_sent_total", BY), "sent · {{run_id}}"),
            q(p.generator_rate("chatbench_messages_delivered_total", BY), "received · {{run_id}}")))
        .with_panel(graph(
            "Capacity search", "The arrival rate a capacity search holds now (chatbench_capacity_level; 0 without "
            "one) against the messages the generator sent per second: each plateau is a step, the last the "
            "confirm phase (chatbench capacity).", RATE_UNIT,
            q(f"max by (run_id) (chatbench_capacity_level{{{p.GENERATOR}}})", "level · {{run_id}}"),
            q(p.generator_rate("chatbench_messages_sent_total", BY), "sent · {{run_id}}")))
        .with_row(row("Server side of the same run"))
        .with_panel(graph(
            "Server CPU", "Server process CPU in cores, per gateway.", "short",
            q(p.server_rate("process_cpu_seconds_total", f"{BY}, instance"), "{{instance}} · {{run_id}}")))
        .with_panel(graph(
            "File descriptors (server)", "Open descriptors against the per-process limit (20,000 on these "
            "machines): each connection holds one.", "short",
            q(p.server_gauge("process_open_fds", f"{BY}, instance"), "open · {{instance}}"),
            q(p.server_gauge("process_max_fds", f"{BY}, instance", agg="max"), "limit · {{instance}}")))
        .with_panel(graph(
            "Scrape health", "1 when Prometheus could scrape the target (server gateways and the Locust master).",
            "short",
            q('max by (run_id, job, instance) (up{run_id=~"$run_id"})', "{{job}} {{instance}}")))
    )
