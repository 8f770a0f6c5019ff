"""Integration: the runner's reading of the system under test never sums part of it — a real cluster (redis-server,
a logic node, two gateways) with one gateway killed, and an embedded server whose /metrics cannot be reached."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from chatbench.runner import RunConfig, Sampler, ServerReadError, Servers
from drivers.admin import AdminClient
from drivers.subprocs import free_port
from harness.procs import ADMIN_TOKEN
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration


def test_a_dead_gateway_makes_the_reading_fail_not_partial(tmp_path: Path) -> None:
    with Servers(RunConfig(scenario="smoke", cluster=2), tmp_path) as servers:
        total, cpu = servers.read(["chat_messages_accepted_total"])
        assert total == {"chat_messages_accepted_total": 0.0}
        assert set(cpu) >= {"logic", "gateway1", "gateway2"}
        with Sampler(servers, interval_s=0.2, cpu_interval_s=0.05) as sampler:
            wait_until(lambda: len(sampler.samples) >= 2, 10, "two whole scrapes")
            gone = dict(servers.processes())["gateway2"]
            os.kill(gone.pid, signal.SIGKILL)
            killed_at = time.time()
            wait_until(lambda: gone.proc is not None and gone.proc.poll() is not None, 10, "gateway2 gone")
            wait_until(lambda: len(sampler.missed) >= 2, 10, "scrapes after the kill counted as missed")
        # every kept sample summed all three processes: none was taken once gateway2 had exited
        assert all(t < killed_at + 0.2 for t, _, _ in sampler.samples)
        assert all("gateway2 has exited" in why for why in sampler.missed)
        with pytest.raises(ServerReadError, match=r"gateway2 has exited \(-9\)") as err:
            servers.read()
        assert "gateway1" not in str(err.value) and "logic" not in str(err.value)


def test_an_unreachable_metrics_endpoint_fails_the_reading(tmp_path: Path) -> None:
    with Servers(RunConfig(scenario="smoke"), tmp_path) as servers:
        before, _ = servers.read()
        assert before.get("chat_messages_accepted_total", 0.0) == 0.0
        srv = servers.processes()[0][1]
        reachable = srv.admin
        srv.admin = AdminClient(f"http://127.0.0.1:{free_port()}", ADMIN_TOKEN, timeout=2)  # nothing listens
        try:
            with pytest.raises(ServerReadError, match=r"embedded's /metrics: .*(refused|Errno)"):
                servers.read(["chat_deliveries_total"])
        finally:
            srv.admin = reachable
        total, _ = servers.read()  # reachable again: the reading is whole
        assert "chat_deliveries_total" in total
