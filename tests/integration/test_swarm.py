"""Integration: the smoke scenario under real Locust against a real server, through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("processes", [1, 2])
def test_chatbench_run_smoke(tmp_path: Path, processes: int) -> None:
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chatbench.cli", "run", "smoke", "-u", "60", "-r", "60", "-t", "6s",
         "--processes", str(processes), "--json", str(out), "--results-dir", str(tmp_path / "res"),
         "--locust-arg=--senders=2",
         "--locust-arg=--send-interval=0.5"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = orjson.loads(out.read_bytes())
    assert result["requests"]["connect"] == {**result["requests"]["connect"], "count": 60, "failures": 0}
    sends = result["requests"]["send"]
    assert sends["failures"] == 0 and sends["count"] == result["messages"] > 0
    assert result["storage_writes"]["body"] == result["messages"]  # read diffusion: one row per message
    # every push the server made reached a swarm user (the last few may race the users' shutdown)
    assert 0.95 * result["deliveries_pushed"] <= result["delivered"] <= result["deliveries_pushed"]
    lat = result["delivery_latency_ms"]  # one latency per delivered push (each message carries its cts)
    assert lat["count"] == result["delivered"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    # the receive engine stamped every read with the kernel's receive time, in every generator process
    (path,) = (tmp_path / "res").glob("*.json")
    bundle = orjson.loads(path.read_bytes())
    assert bundle["receive_stamp"] == "kernel"
    health = bundle["metrics"]["generator_health"]
    assert len(health) == processes and all(h["unstamped_reads"] == 0 for h in health.values()), health


def test_a_cluster_run_reads_every_server_process(tmp_path: Path) -> None:
    """chatbench run --cluster: the swarm's "server" is the logic node and every gateway (--server-metrics-urls):
    the deliveries it reads from them are the ones its receivers got — the logic node alone counts none."""
    proc = subprocess.run(
        [sys.executable, "-m", "chatbench.cli", "run", "large_group_burst", "--cluster", "2", "--members", "30",
         "--senders", "2", "--rate", "5", "--burst-s", "2", "--settle-s", "1", "--tail-s", "1", "--connect-rate",
         "100", "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )
    (path,) = tmp_path.glob("*.json")
    m = orjson.loads(path.read_bytes())["metrics"]
    assert proc.returncode == 0 and m["valid"], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert m["server_processes"] == 3  # the logic node and two gateways (Redis is not a server process)
    assert m["server_messages_accepted"] == m["sent"] > 0
    assert m["server_deliveries"] == m["delivered"] == m["sent"] * 29
