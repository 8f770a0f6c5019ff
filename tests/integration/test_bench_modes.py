"""The modes benchmark end to end, small: one result record per configuration, which the reader loads, whose exact
row counts match the cost model (each mode writes its own rows, the defaults of the other stages none). No CPU
figure is asserted (shared machines are noisy), only that the one window's is the one reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import record

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_modes_smoke_run(tmp_path: Path) -> None:
    n, messages = 100, 3
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.modes", "--members", str(n), "--messages", str(messages), "--repeat", "1",
         "--server-core", "-1", "--only", "write,per-message,buffer", "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = {}
    for path in tmp_path.glob("*.json"):
        rec = record.load(path)
        assert record.problems(rec) == [], path
        assert rec["kind"] == "benchmark" and rec["scenario"] == "bench-modes"
        assert rec["metrics"]["valid"] is True, rec["metrics"]["invalid_reasons"]
        records[rec["details"]["configuration"]] = rec
    assert sorted(records) == ["offline buffer", "storage write", "unread per-message"]
    # the same workload for every configuration: compare sets them side by side, told apart by the server's modes
    assert len({repr(rec["parameters"]) for rec in records.values()}) == 1
    modes = {name: (r["server_modes"]["storage"], r["server_modes"]["unread"], r["server_modes"]["offline"])
             for name, r in records.items()}
    assert modes == {"storage write": ("write", "seq", "pull"), "unread per-message": ("read", "per-message", "pull"),
                     "offline buffer": ("read", "seq", "buffer")}
    # per message to n members, only the sender online: write diffusion stores a body and n index rows, read
    # diffusion (the default) the body alone; per-message unread counts n − 1 receivers, the buffer n − 1 offline
    keys = ("storage_writes_per_message", "index_writes_per_message", "unread_writes_per_message",
            "offline_writes_per_message", "offline_dropped_per_message")
    none = dict(zip(keys, (1, 0, 0, 0, 0), strict=True))
    want = {"storage write": {**none, "storage_writes_per_message": 1 + n, "index_writes_per_message": n},
            "unread per-message": {**none, "unread_writes_per_message": n - 1},
            "offline buffer": {**none, "offline_writes_per_message": n - 1}}
    for name, rec in records.items():
        m = rec["metrics"]
        assert {k: m[k] for k in keys} == want[name], name
        assert m["server_messages_accepted"] == messages and m["server_deliveries"] == 0
        (window,) = rec["details"]["windows"]
        assert {k: window[k] for k in keys} == want[name], name
        assert m["server_cpu_s"] > 0
        assert m["server_cpu_us_per_message"] == pytest.approx(m["server_cpu_s"] / messages * 1e6)
        assert window["cpu_us_per_message"] == pytest.approx(m["server_cpu_us_per_message"])
