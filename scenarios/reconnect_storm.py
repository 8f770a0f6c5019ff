"""Reconnect storm: members of one group stay online while ``--senders`` keep talking (staggered, at even gaps);
then ``--offline-pct`` % of the members drop at once, traffic continues for ``--offline-s`` seconds, and they all
come back — at the same instant (``--reconnect all``) or with exponential backoff (``--reconnect backoff``; full
jitter, or none with ``--backoff-jitter none``: every member waits exactly the same and the herd arrives at once) —
and catch up with ``sync`` from their last seq.

Phases: ``connect``, ``steady``, ``offline``, ``storm`` (reconnects and catch-up), ``tail``. Look at, in the
bundle's ``scenario_results``: the reconnect rate (reconnects per second over the storm, and in its busiest
second: ``reconnects_peak_per_s``), catch-up time
(reconnect start → every group synced up to the reconnect's ``hello.max``; also ``catchup_ms`` in the metrics),
catch-up completeness, and the server's peaks during the storm against the steady phase (CPU, sync requests/s).
``lost`` must stay 0: messages missed while offline are caught up, not lost.

    locust -f scenarios/reconnect_storm.py --headless --processes 2 --host ws://127.0.0.1:8765 \\
        --members 4000 --offline-pct 50 --reconnect backoff

Every flag has an environment variable (``RS_MEMBERS``, ``RS_OFFLINE_PCT``, ...).
"""

from __future__ import annotations

from locust import constant, events, task
from locust.env import Environment

import math
import random
import time
from argparse import ArgumentParser, Namespace
from typing import Any, Final

import gevent

from drivers import swarm
from drivers.bundle import ServerSampler
from drivers.locust_user import ChatUser, is_coordinator, provision_group
from drivers.schedule import Schedule, per_sender, phase_among
from drivers.shapes import Phase, PhasedShape, window

#: the workload version (records of different versions are not compared): 2 = the senders staggered, 2026-12-07
SCENARIO_VERSION: Final = 2


@events.init_command_line_parser.add_listener
def _options(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("reconnect_storm")
    g.add_argument("--members", type=int, default=2000, env_var="RS_MEMBERS", help="members (= Locust users)")
    g.add_argument("--connect-rate", type=float, default=500, env_var="RS_CONNECT_RATE")
    g.add_argument("--senders", type=int, default=5, env_var="RS_SENDERS")
    g.add_argument("--rate", type=float, default=10, env_var="RS_RATE", help="messages per second, all senders")
    g.add_argument("--offline-pct", type=float, default=30, env_var="RS_OFFLINE_PCT",
                   help="percentage of the (non-sending) members that go offline")
    g.add_argument("--steady-s", type=float, default=3, env_var="RS_STEADY_S")
    g.add_argument("--offline-s", type=float, default=5, env_var="RS_OFFLINE_S")
    g.add_argument("--storm-s", type=float, default=10, env_var="RS_STORM_S")
    g.add_argument("--tail-s", type=float, default=3, env_var="RS_TAIL_S")
    g.add_argument("--reconnect", choices=["all", "backoff"], default="all", env_var="RS_RECONNECT",
                   help="all at once, or exponential backoff with full jitter")
    g.add_argument("--backoff-base-s", type=float, default=0.5, env_var="RS_BACKOFF_BASE_S")
    g.add_argument("--backoff-cap-s", type=float, default=8, env_var="RS_BACKOFF_CAP_S")


def phases(opts: Namespace) -> list[Phase]:
    return [Phase("connect", math.ceil(opts.members / opts.connect_rate) + 2), Phase("steady", opts.steady_s),
            Phase("offline", opts.offline_s), Phase("storm", opts.storm_s), Phase("tail", opts.tail_s)]


class Shape(PhasedShape):
    def phases(self, opts: Namespace) -> list[Phase]:
        return phases(opts)


_sampler: list[ServerSampler] = []


@swarm.provisioner
def _provision(environment: Environment) -> None:
    provision_group(environment)
    sampler = ServerSampler(environment)
    sampler.start()
    _sampler[:] = [sampler]


@events.test_stopping.add_listener
def _storm_results(environment: Environment, **_: Any) -> None:
    if not is_coordinator(environment) or not _sampler:
        return
    opts = environment.parsed_options
    sampler = _sampler.pop()
    sampler.stop()
    steady, storm = window(phases(opts), opts, "steady"), window(phases(opts), opts, "storm")
    reconnects = environment.stats.get("reconnect", "WS")
    catchup = environment.stats.get("catchup", "WS")
    swarm.run.scenario_results.update({
        "reconnect_mode": opts.reconnect,
        "reconnects": reconnects.num_requests - reconnects.num_failures,
        "reconnect_failures": reconnects.num_failures,
        "reconnects_per_s": (reconnects.num_requests - reconnects.num_failures) / max(
            (reconnects.last_request_timestamp or storm[0]) - storm[0], 1e-3),
        # the herd: the busiest second of reconnect completions (Locust's per-second counts, merged across workers)
        "reconnects_peak_per_s": max(reconnects.num_reqs_per_sec.values(), default=0),
        "catchup_incomplete": catchup.num_failures,
        "server_peak_steady": sampler.window_peak(*steady),
        "server_peak_storm": sampler.window_peak(*storm),
        "server_samples": sampler.samples,
    })


class Member(ChatUser):
    wait_time = constant(0.5)

    def on_start(self) -> None:
        super().on_start()
        opts = self.environment.parsed_options
        self.reconnect_base_s = opts.backoff_base_s
        self.reconnect_cap_s = opts.backoff_cap_s
        self.gid = opts.chat_group
        self.sending = self.uid in set(opts.sender_uids)
        # the senders' slots evenly through each interval (drivers/schedule.py), as in every run of this scenario
        self.phase = phase_among(self.uid, opts.sender_uids) if self.sending else 0.0
        self.drops = not self.sending and random.Random(self.uid).random() * 100 < opts.offline_pct
        self.done = False

    @task
    def live(self) -> None:
        opts = self.environment.parsed_options
        if self.sending:
            self.sending = False
            start, _ = window(phases(opts), opts, "steady")
            _, end = window(phases(opts), opts, "tail")
            self.run_schedule(self.gid, Schedule(rate=per_sender(opts.rate, opts.senders), start=start,
                                                 duration=end - 1 - start, phase=self.phase))
            return
        if not self.drops or self.done:
            self.ensure_connected()
            return
        off_at, _ = window(phases(opts), opts, "offline")
        back_at, _ = window(phases(opts), opts, "storm")
        if time.time() < off_at:
            return
        if self.connected and not self.offline:
            self.go_offline()
        gevent.sleep(max(back_at - time.time(), 0))
        self.done = True
        self.reconnect(backoff=opts.reconnect == "backoff")
