"""The fan-out benchmark's pieces: the fast receiver's import-time layout check, and a small end-to-end run.

No throughput is asserted (shared machines are noisy): only that every delivery arrived and the figures exist.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_fast_receiver_import_checks_push_layout() -> None:
    import drivers.fast_receiver as fast_receiver

    importlib.reload(fast_receiver)  # runs _check_push_layout() against the current protocol encoders again


@pytest.mark.integration
def test_fanout_smoke_run_delivers_everything(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fanout", "--members", "1000", "--messages", "20", "--repeat", "1",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = orjson.loads(out.read_bytes())
    assert result["ok"] is True
    assert result["warmup"]["verify"]["ok"] is True
    runs = result["runs"]
    assert sorted(r["mode"] for r in runs) == ["burst", "paced"]
    for r in runs:
        v = r["verify"]
        assert r["deliveries_expected"] == 1000 * 20
        assert r["deliveries_received"] == r["deliveries_expected"], (r["mode"], v)
        assert r["server_metric_deliveries"] == r["deliveries_expected"]
        assert v["received_total"] == v["expected_total"] and v["lost"] == 0 and v["extra"] == 0, v
        assert v["ok"] is True and r["complete"] is True
        # (not server_cpu_s: psutil counts 10 ms ticks, and a small burst run may round to none)
        for key in ("deliveries_per_server_cpu_s", "server_cpu_us_per_delivery", "server_cpu_s_schedstat", "wall_s",
                    "deliveries_per_wall_s"):
            assert isinstance(r[key], float) and r[key] > 0, (r["mode"], key, r[key])
    for mode in ("paced", "burst"):
        s = result["summary"][mode]
        assert s["complete"] is True
        assert s["deliveries_per_server_cpu_s"]["median"] > 0


@pytest.mark.integration
def test_fanout_cluster_smoke_run_delivers_everything(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fanout", "--cluster", "2", "--fanout", "broadcast", "--members", "500",
         "--messages", "10", "--repeat", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = orjson.loads(out.read_bytes())
    assert result["ok"] is True
    assert result["params"]["cluster"] == 2 and result["params"]["fanout"] == ["broadcast"]
    assert result["clusters"]["broadcast"]["warmup"]["verify"]["ok"] is True
    runs = result["runs"]
    assert sorted(r["mode"] for r in runs) == ["burst", "paced"]
    for r in runs:
        v = r["verify"]
        assert r["fanout"] == "broadcast"
        assert r["deliveries_received"] == r["deliveries_expected"] == 500 * 10, (r["mode"], v)
        assert r["server_metric_deliveries"] == r["deliveries_expected"]  # counted at the gateways
        assert v["received_total"] == v["expected_total"] and v["lost"] == 0 and v["extra"] == 0, v
        assert v["ok"] is True and r["complete"] is True
        c = r["cluster"]
        assert c["model_ok"] is True, c["model_mismatches"]
        assert c["per_message"]["logic bus group"] == 1 and c["per_message"]["gateway receipts group"] == 2
        assert set(c["processes"]) == {"logic", "gateway1", "gateway2", "redis"}
        assert all(p["cpu_s"] > 0 for name, p in c["processes"].items() if name != "redis")
    assert result["summary"]["broadcast"]["paced"]["complete"] is True
