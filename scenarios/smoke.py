"""Smoke: one group holding every simulated user; a few of them send at a steady pace, all receive.

The smallest end-to-end check that server, protocol, driver and Locust agree. Look at: the ``send`` row
(send → ack, i.e. durable) in Locust's table, the ``delivery [HDR]`` row, and the summary printed when the run
ends (ledger counts, delivery latency in µs resolution merged across processes, the result bundle's path).

    locust -f scenarios/smoke.py --headless -u 300 -r 100 -t 30s --host ws://127.0.0.1:8765 \\
        --admin-url http://127.0.0.1:8766
"""

from __future__ import annotations

from locust import constant_pacing, events, task
from locust.env import Environment

import random
from argparse import ArgumentParser

from drivers import swarm
from drivers.locust_user import (
    UID_BLOCK,
    ChatUser,
    admin_client,
    planned_uids,
    provision_users,
)


@events.init_command_line_parser.add_listener
def _options(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("smoke scenario")
    g.add_argument("--senders", type=int, default=3, env_var="SMOKE_SENDERS",
                   help="users that send (the first ones of each generator process)")
    g.add_argument("--send-interval", type=float, default=1.0, env_var="SMOKE_SEND_INTERVAL",
                   help="seconds between one sender's messages")
    g.add_argument("--chat-group", type=int, default=0, env_var="SMOKE_GROUP",
                   help="group id; 0 = a fresh one per run (set by the master, passed on to workers)")


@swarm.provisioner
def _provision(environment: Environment) -> None:
    opts = environment.parsed_options
    assert opts is not None and environment.runner is not None
    uids = planned_uids(environment, environment.runner.target_user_count or opts.num_users)
    admin = admin_client(environment)
    provision_users(admin, uids)
    if not opts.chat_group:
        opts.chat_group = random.randrange(1, 2**62)  # custom options travel to workers with the spawn message
    admin.create_groups({opts.chat_group: uids})


class Member(ChatUser):
    def on_start(self) -> None:
        super().on_start()
        opts = self.environment.parsed_options
        self.gid = opts.chat_group
        self.is_sender = (self.uid - 1) % UID_BLOCK < opts.senders
        self._pacing = constant_pacing(opts.send_interval if self.is_sender else 5.0)

    def wait_time(self) -> float:
        return float(self._pacing(self))

    @task
    def talk(self) -> None:
        self.ensure_connected()
        if self.is_sender:
            self.send(self.gid, "smoke")
