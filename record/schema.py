"""The result record's schema: every field, its type, unit and meaning, defined once.

A record is one JSON object per run (one file, append-only). ``kind`` says who measured it: ``swarm`` (a Locust
swarm; ``chatbench run`` adds what only the orchestrator sees) or ``benchmark`` (``python -m benchmarks.*``).
Both have the same envelope and a ``metrics`` object; readers (compare, report, the CI gate) take any record.

Paths are dotted; ``<name>`` stands for a key chosen at run time (a profile, a worker, a request name). A field
of type ``summary`` is a latency summary in milliseconds: ``{p50, p90, p99, p999, max, count}`` (the quantiles
asked for; ``{}`` when nothing was recorded). ``docs/results.md`` is generated from this table
(``python -m record --doc``); a test checks that every field a builder writes is listed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

#: bumped when a field changes meaning or goes away; records of different versions are not compared
API_VERSION: Final = 2
KINDS: Final = ("swarm", "benchmark")


@dataclass(frozen=True)
class Field:
    path: str
    type: str  # str, int, float, bool, list, summary, dict (free-form, documented), number (int or float)
    unit: str
    doc: str
    required: bool = False


def _f(path: str, type_: str, unit: str, doc: str, required: bool = False) -> Field:
    return Field(path, type_, unit, doc, required)


_SUMMARY: Final = "summary"

FIELDS: Final[tuple[Field, ...]] = (
    # -- envelope
    _f("api_version", "int", "", "schema version of this record (see API_VERSION)", True),
    _f("kind", "str", "", "`swarm` or `benchmark`", True),
    _f("run_id", "str", "", "unique id of the run (also the `run_id` label in Prometheus)", True),
    _f("utc", "str", "ISO 8601", "when the record was written", True),
    _f("started_utc", "str", "ISO 8601", "when the run started", True),
    _f("duration_s", "float", "s", "wall time from start to the record", True),
    _f("commit", "str", "", "git HEAD of the checkout that ran (null without git)", True),
    _f("dirty", "bool", "", "the work tree had uncommitted changes (null without git)", True),
    _f("scenario", "str", "", "scenario name (swarm) or benchmark name (`bench-fanout`, `bench-modes`, ...)", True),
    _f("scenario_version", "int", "", "the scenario's workload version (its module's `SCENARIO_VERSION`), raised "
       "when the scenario changes what it sends or measures without a new option: records of different versions "
       "are incomparable (absent: 1)"),
    _f("receive_stamp", "str", "", "when a delivery's receive time was taken: `kernel` (the receive engine's "
       "pump: when the generator's kernel received the bytes, so its own lateness in reading is not in the "
       "latency) or `read` (when the generator read them); records of different stamps are incomparable (absent: "
       "`read`)"),
    _f("parameters", "dict", "", "what defines the workload; runs compare only when these are equal", True),
    _f("parameters.<name>", "str|int|float|bool", "", "one scenario or benchmark option (secrets and per-run "
       "plumbing left out)"),
    _f("parameter_defaults", "dict", "", "each parameter's declared default when the run was made: a record from "
       "before a parameter existed is read as having run at its default (`chatbench.bundles.fill_defaults`)"),
    _f("parameter_defaults.<name>", "str|int|float|bool", "", "one parameter's default"),
    _f("server_modes", "dict", "", "the server's modes as it reported them (/healthz)", True),
    _f("server_modes.<axis>", "str", "", "fanout, storage, unread or offline mode"),
    _f("machine", "dict", "", "where it ran", True),
    _f("machine.cpu_model", "str", "", "CPU model name"),
    _f("machine.cpu_count_logical", "int", "", "logical CPUs"),
    _f("machine.cpu_count_physical", "int", "", "physical cores"),
    _f("machine.cpu_affinity_available", "list", "", "CPUs this process may run on"),
    _f("machine.cpu_mhz", "float", "MHz", "current CPU frequency"),
    _f("machine.memory_bytes", "int", "bytes", "total memory"),
    _f("machine.kernel", "str", "", "kernel release"),
    _f("machine.platform", "str", "", "platform string"),
    _f("machine.python", "str", "", "Python version"),
    _f("machine.hostname", "str", "", "host name"),
    _f("machine.open_files_limit", "list", "", "[soft, hard] RLIMIT_NOFILE"),
    _f("metrics", "dict", "", "the figures of the run", True),
    _f("metrics.valid", "bool", "", "the run did the work it planned and the generator was not the limit", True),
    _f("metrics.invalid_reasons", "list", "", "why it is not valid (empty when valid)", True),
    # -- what the swarm measured
    _f("metrics.delivery_latency_ms", _SUMMARY, "ms", "receive time − sender's send time, every delivery (HDR)"),
    _f("metrics.fanout_completion_ms", _SUMMARY, "ms", "per message: accept → its last online recipient"),
    _f("metrics.fanout_first_ms", _SUMMARY, "ms", "per message: accept → its first recipient"),
    _f("metrics.fanout_recipient_p50_ms", _SUMMARY, "ms", "per message: the median recipient's latency"),
    _f("metrics.fanout_recipient_p99_ms", _SUMMARY, "ms", "per message: the p99 recipient's latency"),
    _f("metrics.fanout", "dict", "", "fan-out completion bookkeeping (counts below)"),
    _f("metrics.fanout.messages", "int", "", "messages whose fan-out was tracked"),
    _f("metrics.fanout.complete", "int", "", "messages every expected recipient got"),
    _f("metrics.fanout.incomplete", "int", "", "messages some expected recipient did not get"),
    _f("metrics.fanout.expected", "int", "", "expected deliveries (online members when sent)"),
    _f("metrics.fanout.received", "int", "", "deliveries matched to a tracked message"),
    _f("metrics.fanout.unmatched", "int", "", "deliveries of messages no sender reported"),
    _f("metrics.fanout.late_parts", "int", "", "worker parts that arrived after their message was settled"),
    _f("metrics.fanout.private", "int", "", "messages addressed to some members only"),
    _f("metrics.send_ack_ms", _SUMMARY, "ms", "intended send time (open model) → the server's ack"),
    _f("metrics.catchup_ms", _SUMMARY, "ms", "reconnect → the receiver has every message it missed"),
    _f("metrics.sent", "int", "", "messages the swarm sent and the server acked"),
    _f("metrics.delivered", "int", "", "deliveries the swarm received (each seq once per receiver; benchmarks: "
       "summed over the windows)"),
    _f("metrics.expected_deliveries", "int", "", "deliveries the swarm (benchmarks: every window) should have "
       "received"),
    _f("metrics.lost", "int", "", "expected deliveries never received, even by sync (benchmarks: summed over the "
       "windows)"),
    _f("metrics.duplicated", "int", "", "seqs received more than once by one receiver (fan-out benchmarks: frames "
       "beyond the expected ones)"),
    _f("metrics.reordered", "int", "", "seqs received after a higher seq of the same group"),
    _f("metrics.unread_mismatches", "int", "", "server unread counts that differ from the client's truth"),
    _f("metrics.latency_clamped", "int", "", "latencies outside the HDR range (negative: clock skew)"),
    _f("metrics.ledger", "dict", "", "every delivery-ledger counter, summed over receivers"),
    *(_f(f"metrics.ledger.{name}", "int", "", doc) for name, doc in (
        ("sent", "acked sends"), ("send_failed", "sends answered with an error or never acked"),
        ("delivered", "deliveries received"), ("duplicated", "duplicate seqs"), ("reordered", "out-of-order seqs"),
        ("lost", "holes not repaired by sync"), ("repaired", "holes filled by sync"),
        ("private_holes", "holes that are messages not addressed to the receiver"),
        ("own_holes", "holes that are the receiver's own messages"),
        ("overlap", "sync pages that repeated seqs already held"),
        ("in_flight_at_stop", "messages still travelling when the run stopped"),
        ("unverified_holes", "holes the end-of-run sync could not check"),
        ("repair_failed", "sync requests that failed"), ("unexpected_group", "pushes for a group not joined"),
        ("catchups", "reconnect catch-ups"), ("catchup_msgs", "messages pulled while catching up"),
        ("catchup_incomplete", "catch-ups that ended with holes"), ("reconnects", "reconnections"),
        ("reconnect_failures", "reconnections that failed"), ("unread_checks", "unread counts compared"),
        ("unread_mismatches", "unread counts that differed"), ("unread_skipped", "unread checks skipped (in flight)"),
        ("missed_send_slots", "open-model send slots missed (the sender was late)"),
        ("late_after_repair", "pushes that arrived after sync had filled their hole"),
        ("signals", "membership signals received"), ("no_cts", "pushes without a client timestamp"),
        ("offline_frames", "offline-buffer frames received"), ("offline_msgs", "messages in them"),
        ("offline_dropped_reported", "drops the server reported in offline frames"),
        ("dead_connections", "connections declared dead by the pong timeout"),
        ("connect_failures", "members' first connects that failed"),
    )),
    _f("metrics.generator_cpu_ratio", "float", "cores", "highest CPU sample of a generator process over the measured "
       "phase (generator_health_from to generator_health_until)"),
    _f("metrics.generator_health", "dict", "", "per generator process"),
    _f("metrics.generator_health.<worker>", "dict", "", "one generator process's health"),
    _f("metrics.generator_health.<worker>.cpu_max", "float", "cores", "highest CPU sample"),
    _f("metrics.generator_health.<worker>.cpu_last", "float", "cores", "last CPU sample"),
    _f("metrics.generator_health.<worker>.lag_max_ms", "float", "ms", "highest event-loop lag"),
    _f("metrics.generator_health.<worker>.samples", "int", "", "health samples taken"),
    _f("metrics.generator_health.<worker>.unstamped_reads", "int", "", "reads of the receive engine's pump that "
       "carried no kernel receive stamp and were stamped when read instead (over the whole run; 0 expected: a "
       "record whose `receive_stamp` is `kernel` holds only for reads outside this count)"),
    _f("metrics.generator_health_from", "float", "epoch s", "start of the measured phase (after connecting)"),
    _f("metrics.generator_health_until", "float", "epoch s", "end of the measured phase: the stop + quiet_s, when "
       "the last deliveries landed (the reconciliation after it is not judged); null: not stopped yet"),
    _f("metrics.generator_saturated", "bool", "", "a generator process was the limit"),
    _f("metrics.generator_saturated_reasons", "list", "", "why"),
    _f("metrics.clock", "dict", "", "generator clocks against one reference (the Locust master's; drivers/clock.py)"),
    _f("metrics.clock.reference", "str", "", "`master`, or `single process` (one clock: nothing to correct)"),
    _f("metrics.clock.corrected", "bool", "", "timestamps were corrected by the offsets (not: --no-clock-correction)"),
    _f("metrics.clock.workers", "dict", "", "per worker"),
    _f("metrics.clock.workers.<worker>", "dict", "", "one worker's clock"),
    _f("metrics.clock.workers.<worker>.offset_ms", "float", "ms", "reference − worker clock, last estimate"),
    _f("metrics.clock.workers.<worker>.bound_ms", "float", "ms", "worst error bound (± half the round trip) of "
       "the estimates applied"),
    _f("metrics.clock.workers.<worker>.drift_ms", "float", "ms", "largest − smallest offset over the run"),
    _f("metrics.clock.workers.<worker>.estimates", "int", "", "estimates applied"),
    _f("metrics.clock.workers.<worker>.rejected", "int", "", "estimates not applied: less precise than the one "
       "in use and than --clock-bound-ms (taken while an event loop was busy)"),
    _f("metrics.clock.max_abs_offset_ms", "float", "ms", "largest |offset| of any worker"),
    _f("metrics.clock.max_bound_ms", "float", "ms", "largest bound of any worker"),
    _f("metrics.clock.max_drift_ms", "float", "ms", "largest drift of any worker"),
    _f("metrics.by_profile", "dict", "", "receivers split by network profile (--profile-mix runs)"),
    _f("metrics.by_profile.<profile>", "dict", "", "one network profile's receivers"),
    _f("metrics.by_profile.<profile>.delivery_latency_ms", _SUMMARY, "ms", "the profile's delivery latency"),
    _f("metrics.by_profile.<profile>.catchup_ms", _SUMMARY, "ms", "the profile's catch-up time"),
    *(_f(f"metrics.by_profile.<profile>.{name}", "int", "", f"the profile's {name.replace('_', ' ')}")
      for name in ("members", "connect_failures", "reconnects", "reconnect_failures", "dead_connections",
                   "delivered", "lost", "duplicated", "reordered")),
    _f("metrics.by_profile.<profile>.injected_<fault>", "int", "", "what the impairing proxy did to the "
       "profile's connections (delayed, stalled, reset, ...)"),
    # -- a capacity search (--capacity SLO; drivers/capacity.py)
    _f("metrics.capacity", "dict", "", "the capacity search's answer"),
    _f("metrics.capacity.capacity", "float", "level", "the level that held the SLO for its confirm period (the "
       "highest short step that held, or one further down after failed confirms; without a confirm phase the highest "
       "that held a step); null when generator-bound or none held"),
    _f("metrics.capacity.vary", "str", "", "what the search moved: `rate` (arrival rate over all senders) or "
       "`groups` (groups sending at once, each at the scenario's --group-rate) or `members` (the size of the group "
       "the messages go to)"),
    _f("metrics.capacity.unit", "str", "", "the level's unit (`messages/s`, `active groups`, `members`): every "
       "`level` field"),
    _f("metrics.capacity.short_unit", "str", "", "the same, short (`msg/s`, `groups`, `members`)"),
    _f("metrics.capacity.error", "str", "", "why no search ran (an axis the scenario does not offer); absent "
       "otherwise"),
    _f("metrics.capacity.slo", "str", "", "the SLO, as given"),
    _f("metrics.capacity.highest_held", "float", "level", "highest level that held a step, not counting those at "
       "or above a failed confirm"),
    _f("metrics.capacity.first_failed", "float", "level", "lowest level that failed (null: none did)"),
    _f("metrics.capacity.failed_because", "list", "", "the SLO clauses it broke, or the generator's limits"),
    _f("metrics.capacity.generator_bound", "bool", "", "the generator broke first: not a server capacity"),
    _f("metrics.capacity.generator_bound_at", "float", "level", "the level where the generator broke"),
    _f("metrics.capacity.confirmed", "bool", "", "the level found held again for --capacity-confirm-s"),
    _f("metrics.capacity.below_minimum", "bool", "", "no level held down to `minimum`, the server the limit: the "
       "configuration has no capacity under the SLO (a valid answer; capacity null)"),
    _f("metrics.capacity.minimum", "float", "level", "the lowest level a step can measure (--capacity-step-s × 4 "
       "sends 20 messages)"),
    _f("metrics.capacity.resolution", "float", "", "bisection stopped within this fraction"),
    _f("metrics.capacity.stopped", "str", "", "why the search ended unanswered before it narrowed (the server "
       "still busy DRAIN_MAX_S after a failed step: a later step would judge that backlog); null: it did not"),
    _f("metrics.capacity.server_ms_per_message_first", "float", "CPU ms", "the server's CPU per message it "
       "accepted in the search's first step (null: unknown)"),
    _f("metrics.capacity.server_ms_per_message_found", "float", "CPU ms", "the same in the step that gave the "
       "capacity (its confirm); more than the first at a similar level: the server's state grew during the search, "
       "and the answer depends on when it was confirmed (null: no capacity)"),
    _f("metrics.capacity.steps", "list", "", "every step: level, phase (bracket, bisect, retry: a failed step held "
       "again, confirm), held, latency_ms {p50..p999}, deliveries, "
       "lost, closes, missed_slots, sent, generator_cpu, generator_lag_ms, server_cpu, server_ms_per_message "
       "(CPU ms per message the server accepted in the step), server_p99_ms (the server's "
       "own push p99 bound), failures, generator_limits, drain_s (after a failure: seconds at level 0 until the server "
       "was quiet, null when not waited or still busy after 60 s)"),
    # -- the server's side, from its /metrics over the traffic window
    _f("metrics.server_cpu_s", "float", "CPU s", "server CPU over the traffic window (source below)"),
    _f("metrics.server_cpu_source", "str", "", "how server_cpu_s was measured"),
    _f("metrics.server_cpu_s_ticks", "float", "CPU s", "the admin node's process_cpu_seconds_total (10 ms "
       "ticks) over the traffic window, as the swarm read it"),
    _f("metrics.server_cpu_s_run", "float", "CPU s", "schedstat CPU of every server process over the whole swarm"),
    _f("metrics.server_cpu_window_s", "list", "epoch s", "[start, end] of the traffic window"),
    _f("metrics.server_scrapes_missed", "int", "", "the sampler's scrapes that could not read every server process "
       "(none kept: the time series spans the gap)"),
    _f("metrics.server_deliveries", "float", "", "deliveries the server pushed (every process)"),
    _f("metrics.server_messages_accepted", "float", "", "messages the server accepted"),
    _f("metrics.deliveries_per_server_cpu_s", "float", "1/CPU s", "server deliveries / server CPU"),
    _f("metrics.server_cpu_us_per_message", "float", "CPU µs", "server CPU / messages accepted"),
    _f("metrics.storage_writes_per_message", "float", "", "storage rows written per accepted message"),
    _f("metrics.unread_writes_per_message", "float", "", "unread-counter writes per accepted message"),
    _f("metrics.disk_bytes_per_message", "float", "B", "bytes of page cache the server dirtied for storage (its "
       "/proc/self/io write_bytes: database, WAL, checkpoints) per accepted message; absent where unreadable"),
    _f("metrics.bus_messages_per_message", "float", "", "bus messages per accepted message (logic node)"),
    _f("metrics.bus_messages_per_message_all_processes", "float", "", "bus messages per message, every process"),
    _f("metrics.offline_dropped", "float", "", "offline-buffer entries dropped (rate-limited mode)"),
    _f("metrics.slow_consumer_disconnects", "float", "", "connections closed 4001 (send queue over its bound)"),
    _f("metrics.sync_requests", "float", "", "sync requests the server answered"),
    _f("metrics.server_processes", "int", "", "server processes whose CPU server_cpu_s sums (chatbench run)"),
    _f("metrics.server_cpu_ratio", "float", "cores", "server CPU / window / server processes: how busy one "
       "server event loop was (its limit is 1)"),
    _f("metrics.generator_cpu_samples", "dict", "", "per generator process: [[reference epoch s, CPU s so far]]"),
    _f("metrics.generator_cpu_samples.<worker>", "list", "", "one process's cumulative CPU samples"),
    _f("metrics.generator_cpu_s", "float", "CPU s", "CPU of every generator process over generator_cpu_window_s"),
    _f("metrics.generator_cpu_window_s", "list", "epoch s", "[start, end]: the server CPU's window"),
    _f("metrics.generator_cpu_busiest_ratio", "float", "cores", "the busiest generator process's CPU over "
       "generator_cpu_window_s / its wall time (an average, like server_cpu_ratio)"),
    _f("metrics.generator_cpu_us_per_delivery", "float", "CPU µs", "generator CPU / deliveries received: beside "
       "server_cpu_us_per_delivery, who pays more per delivery"),
    _f("metrics.limit_side", "str", "", "`server` or `generator`: the side whose CPU was closer to its limit over "
       "the same window (server_cpu_ratio against generator_cpu_busiest_ratio)"),
    _f("metrics.server_push_latency_ms_le", "dict", "ms", "upper bounds of the server's accept → socket write "
       "quantiles (p50, p99, p99.9; null: above the last bucket)"),
    # -- benchmarks (docs: each benchmark's docstring; server figures there are medians over the windows)
    _f("metrics.frames_per_cpu_s", "float", "1/CPU s", "push frames received per receiver CPU-second (receive: "
       "a window's frames / the median receiver CPU)"),
    _f("metrics.server_cpu_us_per_delivery", "float", "CPU µs", "server CPU / server deliveries (fan-out)"),
    _f("metrics.receiver_cpu_s", "float", "CPU s", "the receiver processes' CPU over a window (fan-out, receive)"),
    _f("metrics.receiver_cpu_share", "float", "cores", "the busiest receiver process's CPU / the window's wall time "
       "(fan-out; near 1: the receiver may be the limit)"),
    _f("metrics.complete", "bool", "", "every expected delivery arrived, in every window (benchmarks)"),
    _f("metrics.wall_s", "float", "s", "wall time of a measured window (benchmarks)"),
    _f("metrics.index_writes_per_message", "float", "", "inbox index rows per message "
       "(chat_storage_writes_total{kind=index}; modes benchmark)"),
    _f("metrics.offline_writes_per_message", "float", "", "offline-buffer rows per message (modes benchmark)"),
    _f("metrics.offline_dropped_per_message", "float", "", "offline-buffer copies dropped per message (modes "
       "benchmark)"),
    _f("metrics.deliveries_per_message", "float", "", "deliveries per group message, every gateway (cluster "
       "fan-out benchmark)"),
    _f("metrics.gateway_filtered_per_message", "float", "", "members the gateways checked but do not hold, per "
       "group message (cluster fan-out benchmark)"),
    *(_f(f"metrics.bus_{name}_per_message", "float", "", f"{doc} per group message (cluster fan-out benchmark)")
      for name, doc in (
        ("published_push", "push bus messages the logic node published"),
        ("published_group", "group bus messages the logic node published"),
        ("published_reply", "reply bus messages the logic node published"),
        ("published_request", "request bus messages the gateways published"),
        ("received_push", "push bus messages the gateways received"),
        ("received_group", "group bus messages the gateways received"),
        ("registry_reads", "registry reads at the logic node"))),
    _f("metrics.processes", "dict", "", "each server process (cluster fan-out benchmark: logic, gateway<i>, redis)"),
    _f("metrics.processes.<process>", "dict", "", "one server process"),
    _f("metrics.processes.<process>.cpu_s", "float", "CPU s", "its CPU over a window (schedstat)"),
    _f("metrics.processes.<process>.cpu_us_per_delivery", "float", "CPU µs", "its CPU / the cluster's deliveries"),
    *(_f(f"metrics.processes.<process>.{name}_per_message", "float", "", f"{doc} per group message (gateways)")
      for name, doc in (("deliveries", "its deliveries"), ("gateway_filtered", "members it checked but does not "
                        "hold"), ("bus_received_group", "group bus messages it received"))),
    # -- swarm extras
    _f("generator", "dict", "", "the load generator (swarm records)"),
    _f("generator.host", "str", "", "the ws:// URL the users were given"),
    _f("generator.workers", "int", "", "Locust worker processes (1 without --processes)"),
    _f("generator.worker_ids", "list", "", "ids of the processes that reported"),
    _f("generator.finals_missing", "list", "", "workers whose final data never arrived"),
    _f("generator.workers_lost", "list", "", "workers that went missing (no heartbeats) before the end"),
    _f("generator.final_report_deliveries", "int", "", "deliveries carried in the workers' final reports"),
    _f("generator.users", "int", "", "-u"),
    _f("generator.spawn_rate", "float", "1/s", "-r"),
    _f("scenario_results", "dict", "", "the scenario's own figures"),
    _f("scenario_results.<name>", "any", "", "one figure, named by the scenario (its docstring says what)"),
    _f("requests", "dict", "", "Locust's request statistics (whole milliseconds; the HDR figures are above)"),
    _f("requests.<name>", "dict", "", "one request kind"),
    _f("requests.<name>.type", "str", "", "request type (WS, HDR)"),
    _f("requests.<name>.count", "int", "", "requests"),
    _f("requests.<name>.failures", "int", "", "failed requests"),
    _f("requests.<name>.p50_ms", "number", "ms", "Locust's p50"),
    _f("requests.<name>.p99_ms", "number", "ms", "Locust's p99"),
    _f("histograms", "dict", "", "raw HDR histograms (µs), base64-compressed, to re-merge runs"),
    _f("histograms.<name>", "str", "", "delivery_latency_us, send_ack_us, catchup_us, fanout_completion_us, "
       "fanout_first_us, delivery_latency_us@<profile>"),
    # -- what chatbench run adds
    _f("config", "dict", "", "the configuration that ran (chatbench run/matrix; benchmarks: server_args, "
       "cluster_gateways)"),
    *(_f(f"config.{name}", t, "", doc) for name, t, doc in (
        ("fanout", "str", "fan-out mode asked for"), ("storage", "str", "storage mode asked for"),
        ("unread", "str", "unread mode asked for"), ("offline", "str", "offline mode asked for"),
        ("cluster_gateways", "int", "gateways (0: the embedded server)"),
        ("server_cpu_quota", "float", "cores the embedded server was held to by a cgroup quota (null: none)"),
        ("generator_cpu_quota", "float", "cores the swarm was held to by a cgroup quota (null: none)"),
        ("processes", "int", "Locust processes"), ("users", "int", "-u"), ("spawn_rate", "number", "-r"),
        ("duration", "str", "-t"), ("server_args", "list", "extra server flags"),
        ("locust_args", "list", "extra Locust and scenario flags"))),
    _f("server", "dict", "", "every server process (chatbench run)"),
    _f("server.processes", "list", "", "[{role, pid, cpu_s}] per process"),
    _f("server.redis_cpu_s", "float", "CPU s", "redis-server CPU (cluster)"),
    _f("server.counters", "dict", "", "counter deltas over the run, summed over the processes"),
    _f("server.counters.<chat_counter_total>", "float", "", "one server counter (docs/metrics.md)"),
    _f("timeseries", "dict", "", "every second of the run (chatbench run)"),
    *(_f(f"timeseries.{name}", "list", unit, doc) for name, unit, doc in (
        ("t_s", "s", "time since the first sample"), ("server_cpu_ratio", "cores", "server CPU"),
        ("messages_per_s", "1/s", "messages accepted"), ("deliveries_per_s", "1/s", "deliveries pushed"))),
    _f("details", "dict", "", "benchmark records: the raw per-run figures the summary came from"),
    _f("details.<name>", "any", "", "one raw figure or list (the benchmark's docstring says what)"),
)

_BY_PATH: Final = {f.path: f for f in FIELDS}
#: each field's path as a pattern: ``<name>`` matches one key chosen at run time
_PATTERNS: Final = tuple((re.compile(re.sub(r"<[a-z_]+>", "[^.]+", re.escape(f.path).replace(r"\<", "<")
                                            .replace(r"\>", ">")) + r"\Z"), f.path)
                         for f in FIELDS if "<" in f.path)
#: leaves that are dicts of free-form content: not walked into
_OPAQUE: Final = (frozenset(f.path for f in FIELDS if f.type in (_SUMMARY, "any"))
                  | {"metrics.server_push_latency_ms_le"})


def schema_path(path: str) -> str | None:
    """The FIELDS path that documents a concrete path (``metrics.by_profile.3g.lost`` →
    ``metrics.by_profile.<profile>.lost``), or None."""
    if path in _BY_PATH:
        return path
    return next((doc for pattern, doc in _PATTERNS if pattern.match(path)), None)


def leaf_paths(record: dict[str, Any]) -> list[str]:
    """Every concrete path of a record down to its documented leaves."""
    out: list[str] = []

    def walk(value: Any, path: str) -> None:
        doc = schema_path(path) if path else None
        if path:
            out.append(path)
        if isinstance(value, dict) and (doc is None or doc not in _OPAQUE):
            for k, v in value.items():
                if not str(k).startswith("_"):
                    walk(v, f"{path}.{k}" if path else str(k))

    walk(record, "")
    return out


def problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with a record: required fields missing, undocumented fields, wrong kind or version."""
    out = [f"missing field {f.path}" for f in FIELDS if f.required and _get(record, f.path) is _MISSING]
    if record.get("kind") not in KINDS:
        out.append(f"kind {record.get('kind')!r} is not one of {', '.join(KINDS)}")
    out += [f"undocumented field {p}" for p in leaf_paths(record) if schema_path(p) is None]
    return out


_MISSING: Final = object()


def _get(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def markdown() -> str:
    """docs/results.md, generated from FIELDS."""
    lines = [
        "# The result record",
        "",
        "<!-- generated by `python -m record --doc > docs/results.md` from record/schema.py; do not edit -->",
        "",
        f"API version **{API_VERSION}**. One JSON object per run, one file, append-only (never overwritten).",
        "`kind` is `swarm` (a Locust swarm; `chatbench run` adds `config`, `server`, `timeseries`) or `benchmark`",
        "(`python -m benchmarks.*`). Every reader (`chatbench compare`, `report`, the CI gate) takes both.",
        "`<name>` in a path is a key chosen at run time. A `summary` is a latency summary in milliseconds:",
        "`{p50, p90, p99, p999, max, count}` (the quantiles measured; `{}` when nothing was recorded).",
        "Records of another API version are incomparable, never compared.",
        "",
        "| field | type | unit | required | meaning |",
        "|---|---|---|---|---|",
    ]
    for f in FIELDS:
        lines.append(f"| `{f.path}` | {f.type} | {f.unit} | {'yes' if f.required else ''} | "
                     f"{f.doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
