"""Weak network: one group whose members sit on different networks (``--profile-mix``, drivers/profiles.py); a few
direct senders talk at a steady open-model rate (their slots staggered evenly); everyone receives, impaired members
through a per-profile impairing proxy in each generator process (latency + jitter, bandwidth, stalls, disconnects,
resets, half-open connections that only the heartbeat can detect → reconnect with backoff + full jitter → catch-up by
sync).

Look at, in the bundle's ``metrics.by_profile`` (and the ``profile`` label of the chatbench_ metrics, dashboard
"Weak network"): delivery latency per profile, reconnects, dead connections (half-open ones found by the
heartbeat) and catch-up time per profile; ``lost`` must stay 0 (a drop is caught up, not lost). The question the
scenario answers: do impaired members raise the *direct* members' p99? Run it twice — with the mix and with the
same shares through the proxy unimpaired (``clean``: the control, it costs the generator's machine the same proxy
CPU) — and compare ``by_profile.direct`` (repeat each, compare medians):

    chatbench run weak_network --members 1000 --profile-mix 3g:20,subway:10,2g:5,lossy:5
    chatbench run weak_network --members 1000 --profile-mix clean:40

Every flag has an environment variable (``WN_MEMBERS``, ...). Without ``--profile-mix`` the mix above is used.
"""

from __future__ import annotations

from locust import constant, events, task
from locust.env import Environment

import math
from argparse import ArgumentParser, Namespace
from typing import Any, Final

from drivers import swarm
from drivers.locust_user import ChatUser, is_coordinator, provision_group
from drivers.profiles import DIRECT
from drivers.schedule import Schedule, per_sender, phase_among
from drivers.shapes import Phase, PhasedShape, window

DEFAULT_MIX = "3g:20,subway:10,2g:5,lossy:5"


#: the workload version (records of different versions are not compared): 2 = the senders staggered, 2026-12-07
SCENARIO_VERSION: Final = 2


@events.init_command_line_parser.add_listener
def _options(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("weak_network")
    g.add_argument("--members", type=int, default=300, env_var="WN_MEMBERS", help="members (= Locust users)")
    g.add_argument("--connect-rate", type=float, default=300, env_var="WN_CONNECT_RATE")
    g.add_argument("--senders", type=int, default=4, env_var="WN_SENDERS", help="direct (unimpaired) senders")
    g.add_argument("--rate", type=float, default=20, env_var="WN_RATE", help="messages per second, all senders")
    g.add_argument("--steady-s", type=float, default=40, env_var="WN_STEADY_S", help="seconds of traffic")
    g.add_argument("--tail-s", type=float, default=3, env_var="WN_TAIL_S")


@events.init.add_listener
def _default_mix(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is not None and not opts.profile_mix:
        opts.profile_mix = DEFAULT_MIX


def phases(opts: Namespace) -> list[Phase]:
    return [Phase("connect", math.ceil(opts.members / opts.connect_rate) + 3), Phase("steady", opts.steady_s),
            Phase("tail", opts.tail_s)]


class Shape(PhasedShape):
    def phases(self, opts: Namespace) -> list[Phase]:
        return phases(opts)


@swarm.provisioner
def _provision(environment: Environment) -> None:
    provision_group(environment)


#: requests whose failures a weak network is expected to cause (a (re)connect attempt cut by a stall or a reset, a
#: catch-up sync on a connection that dropped again); the member retries, and the ledger proves nothing was lost
EXPECTED_FAILURES = ("connect", "reconnect", "catchup", "sync")


@events.quitting.add_listener
def _exit_code(environment: Environment, **_: Any) -> None:
    """Locust exits 1 on any failed request; here only unexpected failures or a lost message fail the run."""
    if not is_coordinator(environment) or environment.process_exit_code is not None:
        return
    stats = environment.stats
    unexpected = sum(e.num_failures for e in stats.entries.values() if e.name not in EXPECTED_FAILURES)
    if unexpected == 0 and swarm.totals.counts.get("lost", 0) == 0:
        environment.process_exit_code = 0


class Member(ChatUser):
    wait_time = constant(0.5)
    heartbeat_s = 5.0
    pong_timeout_s = 5.0
    reconnect_cap_s = 8.0

    def choose_profile(self, mix: dict[str, float], index: int) -> str:
        if self.uid in set(self.environment.parsed_options.sender_uids):
            return DIRECT  # senders are unimpaired: latency differences come from the receiving side
        return super().choose_profile(mix, index)

    def on_start(self) -> None:
        try:
            super().on_start()
        except Exception:  # an impaired member's first connect can be cut (stall, reset): retry as a reconnect
            if not self.reconnect():
                raise
            swarm.users[self.uid] = self
        opts = self.environment.parsed_options
        self.gid = opts.chat_group
        self.sending = self.uid in set(opts.sender_uids)
        # the senders' slots evenly through each interval (drivers/schedule.py), as in every run of this scenario
        self.phase = phase_among(self.uid, opts.sender_uids) if self.sending else 0.0

    @task
    def live(self) -> None:
        opts = self.environment.parsed_options
        if self.sending:
            self.sending = False
            start, end = window(phases(opts), opts, "steady")
            self.run_schedule(self.gid, Schedule(rate=per_sender(opts.rate, opts.senders), start=start,
                                                 duration=end - start, phase=self.phase))
            return
        self.ensure_connected()
