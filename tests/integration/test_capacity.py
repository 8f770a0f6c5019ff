"""chatbench capacity end to end: a server held to a tenth of a core by a cgroup has a capacity the search finds,
a generator held to a tenth of a core makes the answer generator-bound (invalid, exit non-zero), and the group-count
and group-size axes search in whole numbers of their own units."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="CPU quotas need root (cgroups)")]

# p99<250ms, not tighter: a server held to 0.1 core batches more as the load grows, so its p99 rises slowly from
# ~30 ms at 40 msg/s to ~100 ms at 160 and 200–250 ms at 500–700, then steeply (1.7 s at 1,280); a 100 ms
# ceiling sits where the throttling's jitter decides whether a level holds
SEARCH = ["large_group_burst", "--members", "10", "--senders", "2", "--connect-rate", "100",
          "--slo", "p99<250ms,lost=0", "--step-s", "3", "--warm-s", "1", "--confirm-s", "4",
          "--server-arg=--send-rate", "--server-arg=0", "--server-arg=--sqlite-synchronous=normal"]


def capacity(tmp: Path, *args: str, search: list[str] = SEARCH) -> tuple[subprocess.CompletedProcess[str],
                                                                         dict[str, object]]:
    proc = subprocess.run([sys.executable, "-m", "chatbench.cli", "capacity", *search, *args, "--results-dir",
                           str(tmp)], cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "COLUMNS": "200"})
    files = sorted(tmp.glob("*.json"))
    assert len(files) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, orjson.loads(files[0].read_bytes())


def whole_capacity(proc: subprocess.CompletedProcess[str], m: dict[str, Any], axis: tuple[str, str], lo: int,
                   hi: int) -> dict[str, Any]:
    """A valid, confirmed answer in whole levels of ``axis`` (vary, unit), within [lo, hi] — below the first failure,
    or ``hi`` when none failed —, every step at a whole level in that range: the answer."""
    c: dict[str, Any] = m["capacity"]
    assert proc.returncode == 0 and m["valid"], proc.stdout[-3000:]
    assert (c["vary"], c["unit"]) == axis and c["confirmed"] is True
    assert float(c["capacity"]).is_integer() and lo <= c["capacity"] <= hi
    assert c["capacity"] < (c["first_failed"] or hi + 1)
    assert all(float(s["level"]).is_integer() and lo <= s["level"] <= hi for s in c["steps"])
    return c


def test_a_server_held_to_a_tenth_of_a_core_has_a_capacity(tmp_path: Path) -> None:
    proc, bundle = capacity(tmp_path, "--start", "40", "--resolution", "0.25", "--server-cpu-quota", "0.1")
    m = bundle["metrics"]
    c = m["capacity"]  # type: ignore[index]
    assert proc.returncode == 0 and m["valid"], proc.stdout[-3000:]  # type: ignore[index]
    assert c["generator_bound"] is False and c["confirmed"] is True
    steps = c["steps"]
    # narrowed to the resolution: the nearest failure above the capacity (a step, or a confirm a level above it
    # held a short step but not) is within 25 % — or, after k failed confirms, within the last one's walk-down
    above = min(s["level"] for s in steps if not s["held"] and s["level"] > c["capacity"])
    k = sum(1 for s in steps if s["phase"] == "confirm" and not s["held"])
    assert c["capacity"] < c["first_failed"] and above <= c["capacity"] * 1.25 ** (2 ** max(k - 1, 0)) + 1e-9
    failed = min((s for s in steps if not s["held"] and s["phase"] != "confirm"), key=lambda s: s["level"])
    # the server was the limit: near its quota at the first failure, the generator far from its own
    assert failed["server_cpu"] >= 0.07 and failed["generator_cpu"] < 0.9 and not failed["generator_limits"]
    # after each failure but the last step the server was let drain at level 0 until quiet: no step inherits the
    # backlog of an overload before it
    for step in steps[:-1]:
        if not step["held"]:
            assert step["drain_s"] is not None and step["drain_s"] >= 1.0, step
        else:
            assert step["drain_s"] is None
    assert bundle["config"]["server_cpu_quota"] == 0.1  # type: ignore[index]
    assert "capacity bracket 40.0 msg/s" in proc.stdout  # live progress, step by step
    assert "(drained in " in proc.stdout
    assert "server_cpu=0.1 cores" in proc.stdout or "capacity msg/s" in proc.stdout


def test_a_generator_that_breaks_first_makes_the_answer_generator_bound(tmp_path: Path) -> None:
    proc, bundle = capacity(tmp_path, "--start", "800", "--growth", "4", "--resolution", "0.5",
                            "--generator-cpu-quota", "0.1")
    m = bundle["metrics"]
    c = m["capacity"]  # type: ignore[index]
    assert c["generator_bound"] is True and c["capacity"] is None
    assert proc.returncode != 0 and not m["valid"]  # type: ignore[index]
    assert any("generator-bound" in r for r in m["invalid_reasons"])  # type: ignore[index]


def test_many_groups_searches_how_many_groups_may_send_at_once(tmp_path: Path) -> None:
    """--vary groups: the level is how many groups send at once (each at --group-rate, from one member of it); the
    capacity is a whole number of them, in groups, not messages/s. Unrestricted (at 0.1 core all 105 groups held
    with p99 172 ms against the 250 ms ceiling: a confirm there is the throttle's jitter, as for the group size)."""
    groups = ["many_groups", "--vary", "groups", "--members", "200", "--small-groups", "100", "--medium-groups", "5",
              "--medium-size", "50", "--group-rate", "2", "--connect-rate", "200", "--slo", "p99<250ms,lost=0",
              "--start", "10", "--step-s", "3", "--warm-s", "1", "--confirm-s", "4",
              "--server-arg=--send-rate", "--server-arg=0", "--server-arg=--sqlite-synchronous=normal"]
    proc, bundle = capacity(tmp_path, search=groups)
    m = bundle["metrics"]
    # between one group and all 105; below the first failure, or all of them when none failed
    c = whole_capacity(proc, m, ("groups", "active groups"), 1, 105)  # type: ignore[arg-type]
    steps = c["steps"]
    held = [s for s in steps if s["held"] and s["phase"] != "confirm"]
    assert held and all(s["sent"] > 0 for s in held)
    assert "capacity bracket 10.0 groups" in proc.stdout and "capacity groups" in proc.stdout


def test_an_axis_the_scenario_does_not_offer_is_refused(tmp_path: Path) -> None:
    proc, bundle = capacity(tmp_path, "--vary", "groups", "--confirm-s", "0")
    m = bundle["metrics"]
    assert proc.returncode != 0 and not m["valid"]  # type: ignore[index]
    assert m["capacity"]["error"] == "--capacity-vary groups: this scenario offers members, rate"  # type: ignore[index]
    assert "capacity search refused" in proc.stdout


def test_large_group_burst_searches_the_group_size(tmp_path: Path) -> None:
    """--vary members: the level is the size of the group --rate goes to, a fresh group of the first N members per
    step; every receiver's ledger starts at the group's first seq (none first met in a push), and every delivery
    is accounted for. The server is not held to a quota here: at 0.1 core its p99 rises with the group size without
    a knee (75 ms at 20 members, 160–200 at 160, 280–360 at 190, at 150 msg/s), so whether a level near the
    ceiling holds its confirm is the throttle's jitter; unrestricted, every level up to all 300 holds."""
    members = ["large_group_burst", "--vary", "members", "--members", "300", "--senders", "2", "--rate", "50",
               "--connect-rate", "300", "--slo", "p99<250ms,lost=0", "--start", "20", "--step-s", "3", "--warm-s",
               "1", "--confirm-s", "4", "--server-arg=--send-rate", "--server-arg=0",
               "--server-arg=--sqlite-synchronous=normal"]
    proc, bundle = capacity(tmp_path, search=members)
    m = bundle["metrics"]
    # from the smallest group with a receiver besides the 2 senders to all 300, below the first failure
    whole_capacity(proc, m, ("members", "members"), 3, 300)  # type: ignore[arg-type]
    ledger = m["ledger"]  # type: ignore[index]
    assert ledger["unexpected_group"] == 0
    assert (m["lost"], m["duplicated"], m["reordered"]) == (0, 0, 0)  # type: ignore[index]
    assert m["delivered"] == m["server_deliveries"] > 0  # type: ignore[index]
    assert "capacity bracket 20.0 members" in proc.stdout
