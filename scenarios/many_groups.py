"""Many groups: thousands of small and medium groups at once, every member in several of them, messages arriving
at an aggregate rate (open model, Poisson) into random groups — "a million groups at once", scaled to one
machine. Group membership is drawn at random (seeded) when the run starts; a member finds its groups in ``hello``.

Phases: ``connect``, ``settle``, ``send`` (``--send-s``), ``tail``; then the run stops and writes its bundle.
With ``--capacity SLO`` the send phase is a capacity search (drivers/capacity.py; ``chatbench capacity``) over the
arrival rate (``--capacity-vary rate``) or over how many groups send at once (``--capacity-vary groups``: the first
N groups of a seeded order, each at ``--group-rate`` messages/s from one member of it).
Look at: delivery latency and fan-out completion with many concurrent small fan-outs (per-message overheads
dominate, not per-delivery ones), ``lost`` must stay 0, send→ack under the aggregate rate, missed send slots.

    locust -f scenarios/many_groups.py --headless --processes 2 --host ws://127.0.0.1:8765 \\
        --members 2000 --small-groups 2000 --medium-groups 100 --rate 200

Every flag has an environment variable (``MG_MEMBERS``, ``MG_RATE``, ...).
"""

from __future__ import annotations

from locust import events, task
from locust.env import Environment

import math
import random
from argparse import ArgumentParser, ArgumentTypeError, Namespace

from drivers import autorate, swarm
from drivers.locust_user import ChatUser, admin_client, planned_uids, provision_users, until_dropped
from drivers.schedule import LiveSchedule, Schedule, per_sender
from drivers.shapes import Phase, PhasedShape, window


@events.init_command_line_parser.add_listener
def _options(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("many_groups")
    g.add_argument("--members", type=int, default=2000, env_var="MG_MEMBERS", help="members (= Locust users)")
    g.add_argument("--connect-rate", type=float, default=500, env_var="MG_CONNECT_RATE")
    g.add_argument("--connect-s", type=_seconds, default=None, env_var="MG_CONNECT_S",
                   help="seconds of the connect phase (default: members / connect-rate, rounded up, + 2)")
    g.add_argument("--small-groups", type=int, default=2000, env_var="MG_SMALL_GROUPS")
    g.add_argument("--small-size", type=int, default=8, env_var="MG_SMALL_SIZE")
    g.add_argument("--medium-groups", type=int, default=100, env_var="MG_MEDIUM_GROUPS")
    g.add_argument("--medium-size", type=int, default=200, env_var="MG_MEDIUM_SIZE")
    g.add_argument("--rate", type=float, default=200, env_var="MG_RATE", help="messages per second, all groups")
    g.add_argument("--send-s", type=float, default=10, env_var="MG_SEND_S")
    g.add_argument("--settle-s", type=float, default=3, env_var="MG_SETTLE_S")
    g.add_argument("--tail-s", type=float, default=3, env_var="MG_TAIL_S")
    g.add_argument("--seed", type=int, default=1, env_var="MG_SEED", help="membership draw")
    g.add_argument("--group-rate", type=float, default=0.1, env_var="MG_GROUP_RATE",
                   help="--capacity-vary groups: messages per second each sending group sends")


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise ArgumentTypeError(f"{text}: seconds, more than 0")
    return value


def _groups(opts: Namespace) -> float:
    return float(opts.small_groups + opts.medium_groups)


#: --capacity-vary groups: the level is how many groups send at once, each at --group-rate
GROUPS = autorate.Axis("groups", "active groups", "groups", True, lambda o, level: level * float(o.group_rate),
                       _groups)
autorate.offer(autorate.RATE, GROUPS)


def phases(opts: Namespace) -> list[Phase]:
    connect_s = opts.connect_s if opts.connect_s is not None else math.ceil(opts.members / opts.connect_rate) + 2
    connect = [Phase("connect", connect_s), Phase("settle", opts.settle_s)]
    if opts.capacity:
        return [*connect, Phase("search", math.inf)]
    return [*connect, Phase("send", opts.send_s), Phase("tail", opts.tail_s)]


class Shape(PhasedShape):
    def phases(self, opts: Namespace) -> list[Phase]:
        return phases(opts)


@swarm.provisioner
def _provision(environment: Environment) -> None:
    opts = environment.parsed_options
    assert opts is not None
    uids = planned_uids(environment, opts.members)
    admin = admin_client(environment)
    provision_users(admin, uids)
    rng = random.Random(opts.seed)
    base = random.randrange(1, 2**60)
    sizes = [opts.small_size] * opts.small_groups + [opts.medium_size] * opts.medium_groups
    groups = {base + i: rng.sample(uids, min(size, len(uids))) for i, size in enumerate(sizes)}
    items = list(groups.items())
    for i in range(0, len(items), 500):
        admin.create_groups(dict(items[i:i + 500]))
    if opts.capacity and opts.capacity_vary == GROUPS.name:
        # the order groups start sending in, and the member of each that sends (the workers get both)
        order = list(groups)
        rng.shuffle(order)
        opts.group_order = order
        opts.group_senders = [groups[gid][0] for gid in order]


class Member(ChatUser):
    wait_time = until_dropped(30)  # after its sends a member only keeps its connection: it wakes when it drops

    def on_start(self) -> None:
        super().on_start()
        self.gids = [g["gid"] for g in self.hello.get("groups", [])]
        self.sent = False

    @task
    def talk(self) -> None:
        self.ensure_connected()
        if self.sent or not self.gids:
            return
        self.sent = True
        opts = self.environment.parsed_options
        if opts.capacity:
            self._search(opts)
            return
        start, end = window(phases(opts), opts, "send")
        self.run_schedule(lambda: random.choice(self.gids),
                          Schedule(rate=per_sender(opts.rate, opts.members), start=start, duration=end - start,
                                   poisson=True))

    def _search(self, opts: Namespace) -> None:
        """A capacity search: send at the level the coordinator sets, until the search ends."""
        start, _ = window(phases(opts), opts, "search")
        if opts.capacity_vary != GROUPS.name:  # the arrival rate, shared by every member
            self.run_schedule(lambda: random.choice(self.gids),
                              LiveSchedule(lambda: autorate.rate(opts.members), start))
            return
        mine = [(i, gid) for i, (gid, uid) in enumerate(zip(opts.group_order, opts.group_senders, strict=True))
                if uid == self.uid]  # (place in the order, gid) of the groups this member sends to
        if not mine:
            return

        def active() -> list[int]:
            return [gid for i, gid in mine if i < autorate.STATE.level]

        def rate() -> float:
            return float(opts.group_rate) * len(active())

        # the level may drop between a slot's rate and its group: then the member's first group takes the message
        self.run_schedule(lambda: random.choice(active() or [mine[0][1]]), LiveSchedule(rate, start))
