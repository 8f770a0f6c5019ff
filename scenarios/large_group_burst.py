"""Large group burst: one group of ``--members`` (default 10,000) members, all online — plus ``--offline-members``
that never connect (the server stores, counts and buffers for them, pushes to nobody); ``--senders`` of them send
bursts totalling ``--rate`` messages per second for ``--burst-s`` seconds (open model; the senders staggered, so
their messages arrive at even gaps: drivers/schedule.py), then the room goes quiet.

Phases: ``connect`` (members join at ``--connect-rate``), ``settle``, ``burst``, ``tail``; then the run stops by
itself and the result bundle is written. With ``--capacity SLO`` the burst is a capacity search instead: the rate
moves until the highest one that holds the SLO is found (drivers/capacity.py; ``chatbench capacity``); with
``--capacity-vary members`` the size of the group moves instead — each step a fresh group of the first N members,
``--rate`` messages/s into it.
Look at: fan-out completion (send → last of the ~10k recipients),
delivery latency p99/p99.9 under the burst, ``lost``/``duplicated``/``reordered`` (must be 0 on a sound server),
missed send slots and the generator health line (an invalid run measured the generator, not the server).

    locust -f scenarios/large_group_burst.py --headless --processes 2 --host ws://127.0.0.1:8765 \\
        --members 10000 --senders 10 --rate 10 --burst-s 10

Every flag has an environment variable (``LGB_MEMBERS``, ``LGB_RATE``, ...).
"""

from __future__ import annotations

from locust import events, task
from locust.env import Environment

import math
import random
from argparse import ArgumentParser, ArgumentTypeError, Namespace
from typing import Final

from drivers import autorate, swarm
from drivers.locust_user import ChatUser, admin_client, provision_group, sender_uids, until_dropped
from drivers.schedule import LiveSchedule, Schedule, per_sender, phase_among
from drivers.shapes import Phase, PhasedShape, window

#: the workload version (records of different versions are not compared): 2 = the senders staggered, 2026-12-07
SCENARIO_VERSION: Final = 2


@events.init_command_line_parser.add_listener
def _options(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("large_group_burst")
    g.add_argument("--members", type=int, default=10_000, env_var="LGB_MEMBERS", help="members (= Locust users)")
    g.add_argument("--offline-members", type=_count, default=0, env_var="LGB_OFFLINE_MEMBERS",
                   help="members of the group besides --members that never connect: the server stores, counts and "
                        "buffers for them (per its modes) and pushes to nobody")
    g.add_argument("--connect-rate", type=float, default=1000, env_var="LGB_CONNECT_RATE",
                   help="members connecting per second (over all processes)")
    g.add_argument("--senders", type=int, default=10, env_var="LGB_SENDERS", help="members that send")
    # 10: 100,000 deliveries/s at 10,000 members, what one generator process receives validly on a 2-core machine
    # beside the server (20 needs a second generator core: the swarm process reached 94 % CPU)
    g.add_argument("--rate", type=float, default=10, env_var="LGB_RATE", help="messages per second, all senders")
    g.add_argument("--burst-size", type=int, default=1, env_var="LGB_BURST_SIZE",
                   help="messages a sender sends together in one slot")
    g.add_argument("--burst-s", type=float, default=10, env_var="LGB_BURST_S", help="seconds of sending")
    g.add_argument("--settle-s", type=float, default=3, env_var="LGB_SETTLE_S", help="quiet seconds after connecting")
    g.add_argument("--tail-s", type=float, default=3, env_var="LGB_TAIL_S", help="quiet seconds after the burst")
    g.add_argument("--history", type=_count, default=0, env_var="LGB_HISTORY",
                   help="messages stored in the group before the run, read by everyone: the server's tables at a "
                        "stated size (write diffusion's index grows by a row per member and message); the "
                        "fresh groups of --capacity-vary members start empty")
    g.add_argument("--chat-group", type=int, default=0, env_var="LGB_GROUP",
                   help="group id; 0 = a fresh one per run (set by the master, passed on to workers)")


def _group_of(env: Environment, level: float) -> int:
    """--capacity-vary members: a fresh group of the first ``level`` members (the senders among them) for the
    step; every process starts its receivers' ledgers for it before anything is sent to it."""
    opts = env.parsed_options
    assert opts is not None
    uids = sender_uids(env, opts.members, int(level))  # the senders' order, continued: they come first
    gid = random.randrange(1, 2**62)
    admin_client(env).create_groups({gid: uids})
    swarm.join_group(env, gid, uids)
    return gid


#: --capacity-vary members: the level is the size of the group the step's messages go to (all members online)
MEMBERS = autorate.Axis("members", "members", "members", True, lambda o, level: float(o.rate),
                        lambda o: float(o.members), minimum=lambda o: float(o.senders + 1), prepare=_group_of)
autorate.offer(autorate.RATE, MEMBERS)


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise ArgumentTypeError(f"{n}: a count, 0 or more")
    return n


def phases(opts: Namespace) -> list[Phase]:
    connect = [Phase("connect", math.ceil(opts.members / opts.connect_rate) + 2), Phase("settle", opts.settle_s)]
    if opts.capacity:
        return [*connect, Phase("search", math.inf)]
    return [*connect, Phase("burst", opts.burst_s), Phase("tail", opts.tail_s)]


class Shape(PhasedShape):
    def phases(self, opts: Namespace) -> list[Phase]:
        return phases(opts)


@swarm.provisioner
def _provision(environment: Environment) -> None:
    opts = environment.parsed_options
    provision_group(environment, opts.chat_group, opts.offline_members, opts.history)


class Member(ChatUser):
    wait_time = until_dropped(30)  # receivers only keep their connection: they wake when it drops

    def on_start(self) -> None:
        super().on_start()
        opts = self.environment.parsed_options
        self.gid = opts.chat_group
        self.sending = self.uid in set(opts.sender_uids)
        # the senders' slots evenly through each interval (drivers/schedule.py)
        self.phase = phase_among(self.uid, opts.sender_uids) if self.sending else 0.0

    @task
    def talk(self) -> None:
        self.ensure_connected()
        if not self.sending:
            return
        self.sending = False
        opts = self.environment.parsed_options
        if opts.capacity:
            start, _ = window(phases(opts), opts, "search")
            if opts.capacity_vary == MEMBERS.name:  # --rate into the group of the step's size
                rate = per_sender(opts.rate, opts.senders) / opts.burst_size
                self.run_schedule(lambda: autorate.STATE.gid,
                                  LiveSchedule(lambda: rate if autorate.STATE.level > 0 else 0.0, start,
                                               burst=opts.burst_size, phase=self.phase))
                return
            self.run_schedule(self.gid, LiveSchedule(lambda: autorate.rate(opts.senders, opts.burst_size), start,
                                                     burst=opts.burst_size, phase=self.phase))
            return
        start, end = window(phases(opts), opts, "burst")
        rate = per_sender(opts.rate, opts.senders) / opts.burst_size
        self.run_schedule(self.gid, Schedule(rate=rate, start=start, duration=end - start, burst=opts.burst_size,
                                             phase=self.phase))
