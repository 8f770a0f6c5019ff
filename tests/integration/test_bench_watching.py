"""The watching benchmark end to end, small: its record loads, every window delivered everything it sent, and asking
/metrics for two series costs the server less than a full render (a ratio within one run, not a timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import record

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_watching_smoke_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.watching", "--seconds", "1", "--repeat", "1", "--scrapes", "20",
         "--server-cpu-quota", "0", "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = tmp_path.glob("bench-watching-*.json")
    rec = record.load(path)
    assert record.problems(rec) == [] and rec["metrics"]["valid"] is True
    d = rec["details"]
    assert [w["watcher"] for w in d["windows"]] == ["nobody", "full render 1/s", "2 series 1/s"]
    # 40 msg/s for 1 s to 9 receivers each
    assert all(w["deliveries"] == w["expected"] == 40 * 9 for w in d["windows"])
    cost = d["scrape_cpu_ms"]
    assert 0 < cost["sampler (2 series)"] < cost["full"] / 2
    assert set(d["p99_ms"]) == {"nobody", "full render 1/s", "2 series 1/s"}


@pytest.mark.integration
def test_watching_refuses_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.watching", "--members", "2", "--results-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--members must be >= 3" in proc.stderr
    assert list(tmp_path.iterdir()) == []
