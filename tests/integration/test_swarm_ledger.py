"""Integration: the large_group_burst scenario under real Locust (headless, --processes 2) against a real server:
a clean run's ledger is exact and the result bundle holds every worker's final data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.procs import ADMIN_TOKEN, SECRET, ServerProcess

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run_scenario(server: ServerProcess, tmp_path: Path, *args: str, timeout: float = 150) -> dict[str, object]:
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "locust", "-f", "scenarios/large_group_burst.py", "--headless", "--processes", "2",
           "--host", server.ws_url, "--admin-url", server.admin_url, "--admin-token", ADMIN_TOKEN,
           "--chat-secret", SECRET, "--results-dir", str(results), "--only-summary", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    bundles = list(results.glob("swarm-large_group_burst-*.json"))
    assert len(bundles) == 1, out[-4000:]
    bundle: dict[str, object] = orjson.loads(bundles[0].read_bytes())
    return bundle


def test_large_group_burst_two_processes_clean(server: ServerProcess, tmp_path: Path) -> None:
    # no tail: the last deliveries happen right before the stop, so they reach the master only through the
    # workers' final data (Locust's test_stop fires before their last reports)
    b = run_scenario(server, tmp_path, "--members", "300", "--connect-rate", "300", "--senders", "4", "--rate", "20",
                     "--burst-s", "4", "--settle-s", "1", "--tail-s", "0", "--quiet-s", "1.5")
    m: dict[str, object] = b["metrics"]  # type: ignore[assignment]
    gen: dict[str, object] = b["generator"]  # type: ignore[assignment]
    assert gen["workers"] == 2 and gen["finals_missing"] == [] and len(gen["worker_ids"]) == 2  # type: ignore[arg-type]
    # the unread oracle runs only in the workers' end-of-run reconciliation: its counts reach the master only
    # with their final data (after Locust's test_stop would have fired): all 300 members were checked
    assert m["ledger"]["unread_checks"] == 300  # type: ignore[index]
    assert m["sent"] == m["server_messages_accepted"] == 80
    # every push the server made is in the bundle, and the ledger found nothing wrong
    assert m["delivered"] == m["server_deliveries"] == m["expected_deliveries"] == 80 * 299
    assert (m["lost"], m["duplicated"], m["reordered"], m["unread_mismatches"]) == (0, 0, 0, 0)
    assert m["fanout"]["complete"] == 80  # type: ignore[index]
    lat: dict[str, float] = m["delivery_latency_ms"]  # type: ignore[assignment]
    assert lat["count"] == m["delivered"]  # one latency per delivered push (each message carries its cts)
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    params: dict[str, object] = b["parameters"]  # type: ignore[assignment]
    assert (params["members"], params["senders"], params["rate"]) == (300, 4, 20)
    assert server.admin is not None and b["server_modes"] == server.admin.health()["modes"]
    for key in ("api_version", "run_id", "commit", "machine"):  # their values are the record schema's business
        assert b[key]
    assert b["requests"]["delivery [HDR]"]["count"] == 80 * 299  # type: ignore[index]


@pytest.mark.skipif(not os.environ.get("CHATBENCH_BIG"), reason="10,000 members load both cores: CHATBENCH_BIG=1")
def test_large_group_10k_members_two_processes(tmp_path: Path) -> None:
    with ServerProcess("--send-rate", "0", "--sqlite-synchronous", "normal", db_path=tmp_path / "chat.db") as srv:
        b = run_scenario(srv, tmp_path, "--members", "10000", "--connect-rate", "1000", "--senders", "10",
                         "--rate", "5", "--burst-s", "10", timeout=240)
    m: dict[str, object] = b["metrics"]  # type: ignore[assignment]
    print({k: m[k] for k in ("sent", "delivered", "expected_deliveries", "lost", "duplicated", "reordered",
                             "delivery_latency_ms", "fanout_completion_ms", "generator_cpu_ratio", "valid")})
    assert m["delivered"] == m["server_deliveries"] == m["expected_deliveries"] == m["sent"] * 9999  # type: ignore[operator]
    assert (m["lost"], m["duplicated"], m["reordered"], m["unread_mismatches"]) == (0, 0, 0, 0)


def test_offline_members_cost_the_server_and_get_no_push(server_factory: Any, tmp_path: Path) -> None:
    """--offline-members: members that never connect. Write diffusion stores an index row for each member, online
    or not, and per-message unread counts each receiver; pushes go to the online members only."""
    srv = server_factory("--storage", "write", "--unread", "per-message", "--send-rate", "0")
    online, offline = 60, 240
    b = run_scenario(srv, tmp_path, "--members", str(online), "--offline-members", str(offline), "--connect-rate",
                     "300", "--senders", "2", "--rate", "10", "--burst-s", "2", "--settle-s", "1", "--tail-s", "1")
    m: dict[str, Any] = b["metrics"]  # type: ignore[assignment]
    sent = m["sent"]
    assert sent == m["server_messages_accepted"] == 20
    assert m["storage_writes_per_message"] == 1 + online + offline  # the body and an index row per member
    assert m["unread_writes_per_message"] == online + offline - 1
    assert m["delivered"] == m["server_deliveries"] == sent * (online - 1)
    assert (m["lost"], m["duplicated"], m["reordered"], m["unread_mismatches"]) == (0, 0, 0, 0)
    assert b["parameters"]["offline_members"] == offline  # type: ignore[index]


@pytest.mark.parametrize("flag", ["--offline-members", "--history"])
def test_counts_are_counts(server: ServerProcess, flag: str) -> None:
    cmd = [sys.executable, "-m", "locust", "-f", "scenarios/large_group_burst.py", "--headless", "--host",
           server.ws_url, flag, "-5"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert f"argument {flag}: -5: a count, 0 or more" in proc.stderr
