"""chatbench compare without sockets: check parsing, exact counters, significance for times, incomparable runs,
and the CLI gate over the committed baseline (benchmarks/baseline) with a regression injected into a copy."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from chatbench import bundles
from chatbench.cli import main as chatbench_main
from chatbench.compare import Check, compare, mann_whitney_worse

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "benchmarks" / "baseline"


def bundle(storage: str = "read", unread: str = "seq", p99: float = 10.0, writes: float = 1.0,
           members: int = 100, api_version: int = 1) -> dict[str, Any]:
    return {"api_version": api_version, "scenario": "large_group_burst",
            "parameters": {"members": members, "admin_url": "http://127.0.0.1:1234", "chatbench_t0": 1.0},
            "config": {"fanout": "local", "storage": storage, "unread": unread, "offline": "pull",
                       "cluster_gateways": 0},
            "metrics": {"delivery_latency_ms": {"p50": p99 / 3, "p99": p99}, "storage_writes_per_message": writes,
                        "unread_writes_per_message": 0.0, "lost": 0, "valid": True}}


def test_check_parsing() -> None:
    c = Check.parse("p99:10%")
    assert (c.measure.name, c.allowed, c.relative, c.measure.kind) == ("p99", 0.10, True, "time")
    c = Check.parse("storage_writes_per_message:0")
    assert (c.allowed, c.relative, c.measure.kind) == (0.0, False, "count")
    assert Check.parse("fanout.incomplete:2").measure.path == ("fanout", "incomplete")
    for bad in ("p99", "p99:ten%", "p99:-1", ":5", "p 99:1"):
        with pytest.raises(ValueError):
            Check.parse(bad)


def test_counter_regression_is_exact_and_every_line_is_reported() -> None:
    base = bundles.groups([bundle("write", writes=101.0), bundle("read", writes=1.0)])
    cand = bundles.groups([bundle("write", writes=202.0), bundle("read", writes=1.0)])
    out = compare(base, cand, [Check.parse("storage_writes_per_message:0"), Check.parse("lost:0")])
    assert out.compared == 2
    assert len(out.failures) == 1
    line = out.failures[0]
    assert "REGRESSION" in line and "storage=write" in line and "storage_writes_per_message" in line
    assert "101 → 202" in line and "+100.0%" in line


def test_times_need_repetitions_and_significance() -> None:
    slow = [bundle(p99=v) for v in (20.0, 21.0, 22.0, 23.0, 24.0)]
    fast = [bundle(p99=v) for v in (10.0, 11.0, 12.0, 13.0, 14.0)]
    check = [Check.parse("p99:10%")]
    assert compare(bundles.groups(fast), bundles.groups(slow), check).failures  # 5 vs 5, p = 0.004
    assert not compare(bundles.groups(slow), bundles.groups(fast), check).failures  # faster: fine
    one = compare(bundles.groups(fast[:1]), bundles.groups(slow[:1]), check)  # 1 vs 1: cannot be significant
    assert not one.failures and any("too few" in w for w in one.warnings)
    mixed = [bundle(p99=v) for v in (9.0, 25.0, 11.0, 23.0, 12.0)]  # overlaps: over the limit, not significant
    assert not compare(bundles.groups(fast), bundles.groups(mixed), check).failures
    p = mann_whitney_worse([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], higher_is_better=False)
    assert p == pytest.approx(0.05)  # exact: 1 / C(6, 3)


def test_incomparable_parameters_are_marked_not_compared() -> None:
    out = compare(bundles.groups([bundle(members=100)]), bundles.groups([bundle(members=500, writes=9.0)]),
                  [Check.parse("storage_writes_per_message:0")])
    assert out.compared == 0 and not out.failures
    assert any("parameters.members: 100 ≠ 500" in w for w in out.warnings)
    out = compare(bundles.groups([bundle()]), bundles.groups([bundle(api_version=2)]), [])
    assert any("api_version: 1 ≠ 2" in w for w in out.warnings)


def test_two_configurations_compare_against_each_other() -> None:
    out = compare(bundles.groups([bundle("read")]), bundles.groups([bundle("write", writes=101.0)]), [])
    assert out.compared == 1
    row = next(r for r in out.pairs[0].rows if r.measure.name == "storage_writes_per_message")
    assert (row.base, row.cand, row.status) == (1.0, 101.0, "worse")


def test_cli_gate_on_the_committed_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The baseline compared with itself passes; a copy whose write-diffusion run wrote twice the rows fails
    (the regression is injected by editing the copied bundle's counters, not by a server switch)."""
    files = sorted(BASELINE.glob("*.json"))
    assert files, "benchmarks/baseline is empty: make baseline"
    checks = ["--check", "storage_writes_per_message:0,unread_writes_per_message:0,bus_messages_per_message:0",
              "--check", "lost:0"]
    assert chatbench_main(["compare", "--baseline", str(BASELINE), str(BASELINE), *checks]) == 0
    cand = tmp_path / "cand"
    cand.mkdir()
    for f in files:
        data = orjson.loads(f.read_bytes())
        if data["config"]["storage"] == "write":
            data = copy.deepcopy(data)
            data["metrics"]["storage_writes_per_message"] *= 2
        (cand / f.name).write_bytes(orjson.dumps(data))
    capsys.readouterr()
    assert chatbench_main(["compare", "--baseline", str(BASELINE), str(cand), *checks]) == 1
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if line.startswith("REGRESSION")]
    writes = sum(1 for f in files if orjson.loads(f.read_bytes())["config"]["storage"] == "write")
    assert len(failing) == writes and all("storage_writes_per_message" in line for line in failing), out
    # other parameters: incomparable, so nothing can be checked -> its own exit code
    other = tmp_path / "other.json"
    data = orjson.loads(files[0].read_bytes())
    data["parameters"]["members"] += 1
    other.write_bytes(orjson.dumps(data))
    assert chatbench_main(["compare", str(files[0]), str(other), *checks]) == 3
    assert "INCOMPARABLE" in capsys.readouterr().out


def test_server_histogram_quantiles_are_bucket_bounds_over_the_run() -> None:
    """From two real /metrics scrapes of a prometheus-client histogram: the run's part only, summed over
    processes, each quantile reported as the upper bound of its bucket."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from record.promtext import bucket_quantiles
    from record.promtext import counters as server_counters

    def scrape(observations: list[float]) -> dict[str, float]:
        reg = CollectorRegistry()
        h = Histogram("chat_push_latency_seconds", "x", buckets=(0.001, 0.01, 0.1, 1.0), registry=reg)
        for v in observations:
            h.observe(v)
        return server_counters(generate_latest(reg).decode())

    before = scrape([0.5] * 1000)  # before the run: slow, must not count
    after = scrape([0.5] * 1000 + [0.0005] * 980 + [0.05] * 20)
    second = scrape([0.0005] * 1000)  # a second process, all of it during the run
    both = {k: after[k] + second[k] for k in after}
    assert bucket_quantiles(after, before, "chat_push_latency_seconds", (0.5, 0.98, 0.99)) == \
        {"p50": 1.0, "p98": 1.0, "p99": 100.0}
    assert bucket_quantiles(both, before, "chat_push_latency_seconds", (0.99, 0.999)) == {"p99": 1.0, "p99.9": 100.0}
    assert bucket_quantiles(before, before, "chat_push_latency_seconds") == {}
    slow = scrape([0.5] * 1000 + [5.0] * 20)  # beyond the largest bucket (1 s): no bound, not "≤ inf"
    assert bucket_quantiles(slow, before, "chat_push_latency_seconds", (0.99,)) == {"p99": None}


def test_against_pairs_each_configuration_with_the_one_that_differs_on_that_axis(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--against storage=read over one result set: write/seq is compared with read/seq and write/per-message with
    read/per-message (never across unread modes); a bad axis is refused with the reason."""
    runs = [bundle("read", "seq"), bundle("write", "seq", writes=101.0), bundle("read", "per-message", writes=1.0),
            bundle("write", "per-message", writes=202.0)]
    for i, b in enumerate(runs):
        (tmp_path / f"{i}.json").write_bytes(orjson.dumps(b))
    assert chatbench_main(["compare", str(tmp_path), "--against", "storage=read",
                           "--check", "storage_writes_per_message:150"]) == 1
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "storage=read unread=seq (baseline, 1 runs) vs storage=write unread=seq (1 runs)" in out
    assert "storage=read unread=per-message (baseline, 1 runs) vs storage=write unread=per-message (1 runs)" in out
    assert "storage_writes_per_message: 1 → 202" in out and "1 check(s) failed" in out  # only 202 − 1 > 150
    assert chatbench_main(["compare", str(tmp_path), "--against", "colour=red"]) == 2
    assert "--against wants AXIS=VALUE" in capsys.readouterr().out


def _bench(mode: str, cpu_s: float) -> dict[str, Any]:
    import record

    r = record.new("benchmark", "bench-fanout", {"members": 200, "mode": mode},
                   server_modes={"fanout": "local", "storage": "read", "unread": "seq", "offline": "pull"})
    r["metrics"].update({"server_cpu_s": cpu_s, "server_deliveries": 1000.0, "server_messages_accepted": 5.0,
                         "lost": 0, "duplicated": 0, "storage_writes_per_message": 1.0})
    return record.finish(r)


def test_benchmark_and_swarm_records_go_through_one_reader_and_compare(tmp_path: Path, capsys: Any) -> None:
    import record

    a, b = tmp_path / "a", tmp_path / "b"
    for d, slower in ((a, 1.0), (b, 1.5)):  # one invocation writes a paced and a burst record into one directory
        record.write(d, _bench("paced", 0.02 * slower), "paced")
        record.write(d, _bench("burst", 0.005 * slower), "burst")
    swarm = orjson.loads(sorted(BASELINE.glob("*.json"))[0].read_bytes())
    record.write(a, swarm, "swarm")
    loaded = record.load_all([a])
    assert sorted(r["kind"] for r in loaded) == ["benchmark", "benchmark", "swarm"]
    assert chatbench_main(["compare", str(a), str(b), "--check", "storage_writes_per_message:0"]) == 0
    out = capsys.readouterr().out
    # paced pairs with paced and burst with burst (each its own workload), not one with the other
    assert "bench-fanout[paced]" in out and "bench-fanout[burst]" in out and "INCOMPARABLE" not in out
    assert "-33.3%" in out  # deliveries per server CPU-second: 50,000 → 33,333 (paced) and 200,000 → 133,333


def test_a_record_from_before_an_option_compares_at_its_default() -> None:
    """Adding a scenario option must not make every stored baseline incomparable: a record without it is read as
    having run at the default the newer records declare — and only then (not at another value, not when the
    newer records disagree on the default, not across scenarios)."""
    def newer(history: int, default: int = 0, scenario: str = "large_group_burst") -> dict[str, Any]:
        b = bundle("write", writes=101.0)
        b["scenario"] = scenario
        b["parameters"]["history"] = history
        b["parameter_defaults"] = {"members": 10_000, "history": default}
        return b

    check = [Check.parse("storage_writes_per_message:0")]
    old, new = bundle("write", writes=101.0), newer(0)
    assert bundles.differences(bundles.comparability(old), bundles.comparability(new)) == ["parameters.history: "
                                                                                          "(unset) ≠ 0"]
    bundles.fill_defaults([old, new])
    assert old["parameters"]["history"] == 0 and old["_filled"] == ["history"]
    assert old["parameters"]["members"] == 100  # present parameters are never touched
    out = compare(bundles.groups([old]), bundles.groups([new]), check)
    assert out.compared == 1 and not out.failures
    (warning,) = out.warnings  # what was assumed is said
    assert warning.startswith("ASSUMED [") and warning.endswith("read at their declared defaults: history=0")
    assert bundles.config(old)["workload"] == bundles.config(new)["workload"]  # one group when loaded together

    old, other = bundle("write", writes=101.0), newer(500)  # ran at another value: still incomparable
    bundles.fill_defaults([old, other])
    out = compare(bundles.groups([old]), bundles.groups([other]), check)
    assert out.compared == 0 and any("parameters.history: 0 ≠ 500" in w for w in out.warnings)

    old = bundle("write", writes=101.0)  # the default changed between the newer records: nothing to assume
    bundles.fill_defaults([old, newer(0), newer(5, default=5)])
    assert "history" not in old["parameters"] and "_filled" not in old

    old = bundle("write", writes=101.0)  # another scenario's defaults say nothing of this one
    bundles.fill_defaults([old, newer(0, scenario="many_groups")])
    assert "history" not in old["parameters"]


def test_cli_compare_reads_an_older_baseline_at_the_candidates_defaults(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI, baseline and candidates loaded apart: the baseline's records gain the option the
    candidates declare; the gate then checks (and catches a regression) instead of finding nothing comparable."""
    base, cand = tmp_path / "base", tmp_path / "cand"
    base.mkdir()
    cand.mkdir()
    (base / "a.json").write_bytes(orjson.dumps({**bundle("write", writes=101.0), "kind": "swarm"}))
    b = {**bundle("write", writes=202.0), "kind": "swarm", "parameter_defaults": {"history": 0}}
    b["parameters"] = {**b["parameters"], "history": 0}
    (cand / "b.json").write_bytes(orjson.dumps(b))
    capsys.readouterr()
    assert chatbench_main(["compare", "--baseline", str(base), str(cand), "--check",
                           "storage_writes_per_message:0"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "101 → 202" in out and "incomparable" not in out.lower(), out
    assert "read at their declared defaults: history=0" in out, out


def test_a_scenario_whose_workload_changed_is_not_compared_with_its_older_records() -> None:
    """A scenario that changes what it sends without a new option raises its SCENARIO_VERSION: its older records
    (no version: 1) are then incomparable, while a record at version 1 still compares with them."""
    check = [Check.parse("storage_writes_per_message:0")]
    old = bundle("write", writes=101.0)
    newer = {**bundle("write", writes=202.0), "scenario_version": 2}
    out = compare(bundles.groups([old]), bundles.groups([newer]), check)
    assert out.compared == 0 and not out.failures
    assert any("scenario_version: 1 ≠ 2" in w for w in out.warnings), out.warnings
    same = {**bundle("write", writes=202.0), "scenario_version": 1}
    out = compare(bundles.groups([old]), bundles.groups([same]), check)
    assert out.compared == 1 and out.failures  # compared, and its regression caught


def test_latencies_stamped_by_the_kernel_are_not_compared_with_latencies_stamped_when_read() -> None:
    """A record of the receive engine's pump stamps deliveries when the kernel received them; older records (no
    ``receive_stamp``: when read) carry the generator's lateness in every latency, so the two do not compare —
    while two kernel-stamped records do, and a benchmark record is not concerned."""
    check = [Check.parse("p99:0%")]
    old = bundle("write", p99=50.0)
    kernel = {**bundle("write", p99=10.0), "receive_stamp": "kernel"}
    out = compare(bundles.groups([old]), bundles.groups([kernel]), check)
    assert out.compared == 0 and not out.failures
    assert any("receive_stamp: read ≠ kernel" in w for w in out.warnings), out.warnings
    worse = {**bundle("write", p99=90.0), "receive_stamp": "kernel"}
    out = compare(bundles.groups([kernel]), bundles.groups([worse]), check)
    assert out.compared == 1
    assert bundles.comparability({**old, "kind": "benchmark"}).get("receive_stamp") is None


def test_parameter_defaults_come_from_locusts_parser_and_a_parser_that_fails_only_loses_them() -> None:
    """In a subprocess (importing Locust monkey-patches the process): a real default is read; a Locust whose parser
    cannot be built leaves the record without defaults and says so, rather than losing the record."""
    import subprocess
    import sys

    read = ("from drivers.bundle import parameter_defaults; import orjson, sys; "
            "sys.stdout.write(orjson.dumps(parameter_defaults(['web_port', 'no_such_option'])).decode())")
    proc = subprocess.run([sys.executable, "-c", read], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout) == {"web_port": 8089}  # Locust's declared default; unknown names left out
    broken = ("import locust.argument_parser as a\n"
              "def fail(**_): raise TypeError('get_parser() got an unexpected keyword argument')\n"
              "a.get_parser = fail\n" + read)
    proc = subprocess.run([sys.executable, "-c", broken], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout) == {}
    assert "parameter defaults not recorded" in proc.stderr and "unexpected keyword" in proc.stderr
