"""The modes benchmark end to end, small: it runs, and its exact row counts match the cost model.
No CPU figure is asserted (shared machines are noisy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_modes_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    n = 100
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.modes", "--members", str(n), "--messages", "3", "--repeat", "1",
         "--server-core", "-1", "--only", "write,per-message,buffer", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    configs = {c["name"]: c for c in orjson.loads(out.read_bytes())["configs"]}
    assert configs["storage write"]["writes_per_message"]["index"] == n
    assert configs["unread per-message"]["writes_per_message"]["unread"] == n - 1
    assert configs["offline buffer"]["writes_per_message"]["offline"] == n - 1
    assert all(c["cpu_us_per_message"]["median"] > 0 for c in configs.values())
