"""Integration: the runner's reading of the system under test never sums part of it — a real cluster (redis-server,
a logic node, two gateways) with one gateway killed, and an embedded server whose /metrics cannot be reached."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import record
from chatbench.runner import RunConfig, Sampler, ServerReadError, Servers, assemble
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


def test_a_failed_end_reading_leaves_the_servers_figures_unknown_and_the_bundle_invalid(tmp_path: Path) -> None:
    """Nothing is made up from the start reading: counters, the run's CPU and the push latency are unknown, the
    bundle invalid with the reason; read after the run, the same bundle has them."""
    cfg = RunConfig(scenario="smoke")
    with Servers(cfg, tmp_path) as servers:
        before, cpu0 = servers.read()
        with Sampler(servers, interval_s=0.1, cpu_interval_s=0.05) as sampler:
            wait_until(lambda: len(sampler.samples) >= 2, 10, "two scrapes")
        end = servers.read()
        bundles = {}
        for name, reading in (("read", end), ("unread", None)):
            swarm = record.new("swarm", "smoke", {})
            swarm["metrics"]["delivered"] = 0
            bundles[name] = assemble(cfg, swarm, servers, before, cpu0, reading, sampler,
                                     "" if reading else "embedded has exited (-9)")
    got, lost = bundles["read"], bundles["unread"]
    assert set(got["server"]["counters"]) >= {"chat_messages_accepted_total", "chat_deliveries_total"}
    assert isinstance(got["metrics"]["server_cpu_s_run"], float) and got["metrics"]["server_cpu_s_run"] > 0
    assert "could not be read" not in "; ".join(got["metrics"]["invalid_reasons"])
    m = lost["metrics"]
    assert m["valid"] is False
    assert "the servers could not be read after the run: embedded has exited (-9)" in m["invalid_reasons"]
    assert lost["server"]["counters"] == {} and m["server_push_latency_ms_le"] == {}
    assert m["server_cpu_s_run"] is None and m["server_cpu_s"] is None
    assert [p["cpu_s"] for p in lost["server"]["processes"]] == [None]
    assert record.problems(lost) == []
