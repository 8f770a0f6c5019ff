"""``python -m benchmarks.receive`` end to end, small: the receiver process monkey-patches before anything imports
picows (as a Locust worker), counts every frame through the swarm's receive path, and writes records whose
figures agree with what was sent. No throughput is asserted (shared machines are noisy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import record

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RECEIVERS, MESSAGES, BURST = 150, 6, 3


@pytest.mark.parametrize("receiver", ["ledger", "raw"])
def test_receive_benchmark_counts_every_frame(tmp_path: Path, receiver: str) -> None:
    extra = ["--raw"] if receiver == "raw" else []
    proc = subprocess.run([sys.executable, "-m", "benchmarks.receive", "--receivers", str(RECEIVERS), "--messages",
                           str(MESSAGES), "--burst", str(BURST), "--repeat", "2", "--server-core", "-1",
                           "--receiver-core", "-1", "--results-dir", str(tmp_path), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MonkeyPatchWarning" not in proc.stderr, proc.stderr[-3000:]
    records = {rec["parameters"]["mode"]: rec for rec in map(record.load, sorted(tmp_path.glob("*.json")))}
    assert sorted(records) == ["burst", "paced"]
    for mode, rec in records.items():
        assert record.problems(rec) == []
        m, p = rec["metrics"], rec["parameters"]
        assert (p["receiver"], p["burst"], p["engine"]) == (receiver, 1 if mode == "paced" else BURST, "batch")
        assert m["valid"] is True and m["complete"] is True, m["invalid_reasons"]
        expected = RECEIVERS * MESSAGES  # the group's members besides the sender, each message
        assert m["expected_deliveries"] == m["delivered"] == 2 * expected
        assert m["lost"] == m["duplicated"] == m["reordered"] == 0
        runs = rec["details"]["runs"]
        assert [r["frames"] for r in runs] == [expected, expected]
        assert all(r["server"]["server_deliveries"] == expected for r in runs)
        assert m["frames_per_cpu_s"] > 0 and m["receiver_cpu_s"] > 0
