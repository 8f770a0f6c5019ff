"""The fan-out benchmarks end to end, small: the fast receiver's import-time layout check, one embedded run and one
cluster run, each writing result records that the reader loads and ``chatbench compare`` accepts.

No throughput is asserted (shared machines are noisy): that every delivery arrived, that the server's counters
are the cost model's exactly, and that the derived figures agree with the measured ones.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import record

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(out: Path, *args: str) -> dict[str, dict[str, Any]]:
    """Run ``python -m benchmarks.fanout ARGS`` into ``out``; its records by mode (checked by the reader)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fanout", *args, "--results-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [record.load(path) for path in sorted(out.glob("*.json"))]
    for rec in records:
        assert record.problems(rec) == [], rec["_path"]
        assert rec["kind"] == "benchmark"
        assert rec["metrics"]["valid"] is True and rec["metrics"]["invalid_reasons"] == []
    by_mode = {rec["parameters"]["mode"]: rec for rec in records}
    assert sorted(by_mode) == ["burst", "paced"] and len(records) == 2
    assert len({rec["run_id"].rsplit("-", 1)[0] for rec in records}) == 1  # one invocation
    return by_mode


def check_deliveries(rec: dict[str, Any], members: int, messages: int) -> None:
    m, (run,) = rec["metrics"], rec["details"]["runs"]  # one repeat: the medians are that window's figures
    assert m["expected_deliveries"] == m["delivered"] == members * messages
    assert m["lost"] == m["duplicated"] == 0 and m["complete"] is True
    assert m["server_deliveries"] == members * messages  # the server's own count agrees
    assert m["server_messages_accepted"] == messages
    v = run["verify"]
    assert v["ok"] is True and v["lost"] == v["extra"] == 0 and v["received_total"] == v["expected_total"], v
    assert run["deliveries_received"] == run["deliveries_expected"] == members * messages
    cpu = run["server_cpu_s"]
    assert cpu > 0 and m["server_cpu_s"] == cpu
    assert m["deliveries_per_server_cpu_s"] == pytest.approx(members * messages / cpu)
    assert m["server_cpu_us_per_delivery"] == pytest.approx(cpu / (members * messages) * 1e6)
    assert m["server_cpu_us_per_message"] == pytest.approx(cpu / messages * 1e6)
    assert m["wall_s"] == run["wall_s"] > 0
    # read diffusion, seq unread: one body row, no unread writes
    assert m["storage_writes_per_message"] == 1 and m["unread_writes_per_message"] == 0


def test_fast_receiver_import_checks_push_layout() -> None:
    import drivers.fast_receiver as fast_receiver

    importlib.reload(fast_receiver)  # runs _check_push_layout() against the current protocol encoders again


@pytest.mark.integration
def test_fanout_smoke_run_delivers_everything(tmp_path: Path) -> None:
    n, messages = 500, 20
    records = run_benchmark(tmp_path, "--members", str(n), "--messages", str(messages), "--repeat", "1")
    for mode, rec in records.items():
        assert rec["scenario"] == "bench-fanout"
        assert rec["server_modes"]["fanout"] == "local"
        assert rec["parameters"]["members"] == n and rec["parameters"]["burst"] == (1 if mode == "paced" else 10)
        check_deliveries(rec, n, messages)
        assert rec["metrics"]["bus_messages_per_message"] == 0
        assert rec["details"]["warmup"]["verify"]["ok"] is True
        assert list(rec["details"]["runs"][0]["processes"]) == ["server"]
    # the reader and the comparison take benchmark records as they take swarm records
    paced = records["paced"]["_path"]
    proc = subprocess.run([sys.executable, "-c", "import sys; from chatbench.cli import main; sys.exit(main())",
                           "compare", paced, paced], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deliveries_per_server_cpu_s" in proc.stdout and "incomparable" not in proc.stdout, proc.stdout


@pytest.mark.integration
def test_fanout_cluster_smoke_run_delivers_everything(tmp_path: Path) -> None:
    n, messages = 500, 10
    records = run_benchmark(tmp_path, "--cluster", "2", "--fanout", "broadcast", "--members", str(n),
                            "--messages", str(messages), "--repeat", "1")
    for rec in records.values():
        assert rec["scenario"] == "bench-fanout-cluster"
        assert rec["config"]["cluster_gateways"] == 2 and rec["server_modes"]["fanout"] == "broadcast"
        check_deliveries(rec, n, messages)  # counted at the gateways
        m = rec["metrics"]
        assert rec["details"]["model_mismatches"] == []
        # broadcast, 2 gateways with 250 receivers each, group of 501 with the sender: one group publish, a receipt
        # per gateway, each gateway walks every member and skips the 251 it does not hold
        assert (m["bus_published_group_per_message"], m["bus_received_group_per_message"]) == (1, 2)
        assert m["bus_published_push_per_message"] == m["bus_received_push_per_message"] == 0
        assert m["bus_registry_reads_per_message"] == 0
        assert (m["deliveries_per_message"], m["gateway_filtered_per_message"]) == (n, 2 * (n + 1 - n // 2))
        assert set(m["processes"]) == {"logic", "gateway1", "gateway2", "redis"}
        for gw in ("gateway1", "gateway2"):
            p = m["processes"][gw]
            assert (p["deliveries_per_message"], p["gateway_filtered_per_message"]) == (n // 2, n + 1 - n // 2)
            assert p["bus_received_group_per_message"] == 1
        assert all(p["cpu_s"] > 0 for name, p in m["processes"].items() if name != "redis")
        assert sum(p["cpu_s"] for p in m["processes"].values()) == pytest.approx(m["server_cpu_s"])
