"""Integration: a real short matrix through the CLI (server + Locust swarm per run), compared, reported, and the
report rendered by headless Chromium (plots drawn, no console messages)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SCENARIO = ["large_group_burst", "--members", "60", "--senders", "3", "--rate", "10", "--burst-s", "2",
            "--settle-s", "1", "--tail-s", "1", "--connect-rate", "300"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chatbench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatbench.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def scenario_version(path: Path) -> int:
    """The ``SCENARIO_VERSION`` a scenario module declares, read from its source (importing it imports Locust)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                node.target.id == "SCENARIO_VERSION" and isinstance(node.value, ast.Constant):
            return int(node.value.value)
    return 1


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("matrix")
    results, report = tmp / "results", tmp / "report.html"
    # --accept-invalid: this tests the matrix, the table and the report; validity (a wall-clock judgement on a
    # shared machine) is tested in test_swarm and test_distributed
    proc = chatbench("matrix", *SCENARIO, "--storage", "write,read", "--unread", "seq", "--results-dir",
                     str(results), "--report", str(report), "--accept-invalid")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return results, report, proc.stdout


def test_matrix_writes_one_bundle_per_run_and_a_summary(matrix: tuple[Path, Path, str]) -> None:
    results, _, out = matrix
    files = sorted(results.glob("*.json"))
    assert len(files) == 2, out
    assert "chatbench matrix" in out and "storage=write" in out and "storage=read" in out
    bundles = [orjson.loads(f.read_bytes()) for f in files]
    # one run per configuration of the matrix, each with its own id, the same scenario parameters
    configs = sorted((b["config"]["storage"], b["config"]["unread"]) for b in bundles)
    assert configs == [("read", "seq"), ("write", "seq")]
    assert len({b["run_id"] for b in bundles}) == 2
    assert all(b["parameters"]["members"] == 60 and b["parameters"]["senders"] == 3 for b in bundles)
    declared = scenario_version(REPO / "scenarios" / "large_group_burst.py")
    for b in bundles:  # the defaults the scenario declares (scenarios/large_group_burst.py), not this run's values
        assert set(b["parameter_defaults"]) <= set(b["parameters"])
        assert (b["parameter_defaults"]["members"], b["parameter_defaults"]["history"]) == (10_000, 0)
        assert b["scenario_version"] == declared >= 2  # its module's SCENARIO_VERSION (2: staggered senders)
    for b in bundles:
        m = b["metrics"]
        for key in ("api_version", "commit", "machine", "histograms", "timeseries"):  # the record schema's business
            assert key in b, key
        assert m["delivery_latency_ms"]["count"] == m["delivered"] > 0  # one latency per delivered push
        assert m["lost"] == m["duplicated"] == m["reordered"] == 0
        assert m["server_cpu_s"] > 0 and "schedstat" in m["server_cpu_source"]
        assert b["server"]["processes"][0]["cpu_s"] >= m["server_cpu_s"] > 0
        members = b["parameters"]["members"]  # write diffusion: a body row and one index row per member
        expected = 1 + members if b["config"]["storage"] == "write" else 1
        assert m["storage_writes_per_message"] == expected
        assert m["unread_writes_per_message"] == 0  # seq-derived unread writes nothing per message


def test_compare_passes_on_itself_and_catches_an_injected_regression(matrix: tuple[Path, Path, str],
                                                                     tmp_path: Path) -> None:
    results = matrix[0]
    checks = ["--check", "storage_writes_per_message:0,unread_writes_per_message:0", "--check", "p99:50%"]
    proc = chatbench("compare", "--baseline", str(results), str(results), *checks)
    assert proc.returncode == 0, proc.stdout
    # the regression is injected by editing a copied bundle's counters (no server switch doubles writes)
    cand = tmp_path / "cand"
    shutil.copytree(results, cand)
    for f in cand.glob("*.json"):
        b = orjson.loads(f.read_bytes())
        if b["config"]["storage"] == "write":
            b["metrics"]["storage_writes_per_message"] *= 2
            f.write_bytes(orjson.dumps(b))
    proc = chatbench("compare", "--baseline", str(results), str(cand), *checks)
    assert proc.returncode == 1, proc.stdout
    assert re.search(r"^REGRESSION \[storage=write\] storage_writes_per_message: 61 → 122 .*\(\+100\.0%\)",
                     proc.stdout, re.M), proc.stdout
    # A vs B: the two configurations against each other, a table of deltas
    write, read = (next(f for f in results.glob(f"*-{s}-seq-*.json")) for s in ("write", "read"))
    proc = chatbench("compare", str(write), str(read))
    assert proc.returncode == 0 and "storage_writes_per_message" in proc.stdout and "-98.4%" in proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(matrix: tuple[Path, Path, str], tmp_path: Path) -> None:
    report = matrix[1]
    html = report.read_text()
    assert "<script src" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = proc.stdout
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # console.error/warn and uncaught exceptions all log as CONSOLE lines
    plots = re.findall(r'<svg class="plot" data-plot="([^"]+)"', dom)
    assert {"latency-cdf", "fanout", "cost-storage_writes_per_message", "cost-disk_bytes_per_message",
            "deliveries-over-time"} <= set(plots)
    # the page's own script ran after rendering and found data in every plot
    assert f'data-plots="{len(plots)}"' in dom and f'data-plots-drawn="{len(plots)}"' in dom
    assert dom.count('class="series"') >= 4 and "storage=write" in dom
