"""The result record: one schema, one builder, one reader; the documentation is the schema's."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import record
from record import schema

REPO = Path(__file__).resolve().parents[2]


def test_docs_are_generated_from_the_schema() -> None:
    assert (REPO / "docs" / "results.md").read_text() == schema.markdown(), \
        "docs/results.md is stale: python -m record --doc > docs/results.md"


def test_every_documented_field_is_unique_and_typed() -> None:
    paths = [f.path for f in schema.FIELDS]
    assert len(paths) == len(set(paths))
    assert all(f.type and f.doc for f in schema.FIELDS)


def test_builder_output_passes_and_derives_once() -> None:
    r = record.new("benchmark", "bench-x", {"members": 10})
    r["metrics"].update({"server_cpu_s": 2.0, "server_deliveries": 1000.0, "server_messages_accepted": 10.0})
    record.finish(r)
    assert record.problems(r) == []
    m = r["metrics"]
    assert m["deliveries_per_server_cpu_s"] == 500.0
    assert m["server_cpu_us_per_message"] == pytest.approx(200_000.0)
    assert m["valid"] is True and m["invalid_reasons"] == []


def test_reasons_make_a_record_invalid() -> None:
    r = record.finish(record.new("swarm", "s", {}), ["nothing was sent"])
    assert r["metrics"]["valid"] is False
    assert r["metrics"]["invalid_reasons"] == ["nothing was sent"]


def test_server_figures_come_from_counter_deltas() -> None:
    before = {"chat_messages_accepted_total": 5.0, "chat_storage_writes_total{kind=body}": 5.0,
              "chat_storage_writes_total{kind=index}": 50.0, "process_cpu_seconds_total": 1.0}
    after = {"chat_messages_accepted_total": 15.0, "chat_storage_writes_total{kind=body}": 15.0,
             "chat_storage_writes_total{kind=index}": 150.0, "process_cpu_seconds_total": 1.5,
             "chat_deliveries_total": 900.0}
    r = record.new("swarm", "s", {})
    r["metrics"].update(record.server_figures(after, before))
    record.finish(r)
    m = r["metrics"]
    assert m["storage_writes_per_message"] == 11.0  # (10 body + 100 index) / 10 messages
    assert m["deliveries_per_server_cpu_s"] == 1800.0
    assert record.problems(r) == []


def test_a_writer_cannot_add_an_undocumented_field(tmp_path: Path) -> None:
    r = record.finish(record.new("swarm", "s", {}))
    r["metrics"]["made_up_figure"] = 1
    with pytest.raises(record.RecordError, match=r"undocumented field metrics\.made_up_figure"):
        record.write(tmp_path, r, "x")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_missing_fields_and_bad_kinds_are_named() -> None:
    r = record.finish(record.new("swarm", "s", {}))
    del r["run_id"]
    r["kind"] = "other"
    found = record.problems(r)
    assert "missing field run_id" in found
    assert any("kind 'other'" in p for p in found)


def test_runtime_keys_match_their_placeholders() -> None:
    assert schema.schema_path("metrics.by_profile.3g.lost") == "metrics.by_profile.<profile>.lost"
    assert (schema.schema_path("metrics.by_profile.3g.injected_stalls")
            == "metrics.by_profile.<profile>.injected_<fault>")
    assert schema.schema_path("histograms.delivery_latency_us@wifi") == "histograms.<name>"
    assert schema.schema_path("metrics.by_profile.3g.made_up") is None
    assert schema.schema_path("metrics.ledger.made_up") is None


def test_the_reader_refuses_what_is_not_a_record(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b"[1, 2]")
    (tmp_path / "b.json").write_bytes(b"{not json")
    for name in ("a.json", "b.json"):
        with pytest.raises(record.RecordError):
            record.load(tmp_path / name)
    assert record.load_all([tmp_path]) == []  # a directory skips what is not a record


def test_committed_baseline_records_are_valid_records() -> None:
    files = sorted((REPO / "benchmarks" / "baseline").glob("*.json"))
    assert files
    for f in files:
        data = orjson.loads(f.read_bytes())
        assert record.problems(data) == [], f.name


def test_unit_tests_never_import_locust() -> None:
    """Importing locust monkey-patches the process with gevent; after ssl is imported that recurses (seen once
    as a RecursionError deep in a unit test). The unit suite must stay free of it."""
    import sys

    assert "locust" not in sys.modules


def test_disk_bytes_per_message_is_absent_not_zero_when_the_server_cannot_read_it() -> None:
    """A server without /proc/self/io exports no chat_disk_written_bytes_total: the figure is None, not 0."""
    from record.build import derive, server_figures

    before = {"chat_messages_accepted_total": 10.0, "chat_disk_written_bytes_total": 4096.0}
    after = {"chat_messages_accepted_total": 30.0, "chat_disk_written_bytes_total": 86016.0}
    m: dict[str, object] = {**server_figures(after, before)}
    derive(m)
    assert m["disk_bytes_per_message"] == 4096.0
    m = {**server_figures({"chat_messages_accepted_total": 30.0}, {"chat_messages_accepted_total": 10.0})}
    derive(m)
    assert m["disk_bytes_per_message"] is None
    assert m["storage_writes_per_message"] == 0.0  # a counter every server has, without samples: truly 0


def test_written_bytes_reads_proc_io_and_says_none_when_it_cannot(tmp_path: Path) -> None:
    from reference_server.metrics import read_written_bytes

    io = tmp_path / "io"
    io.write_text("rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 0\nwrite_bytes: 12288\n"
                  "cancelled_write_bytes: 0\n")
    assert read_written_bytes(str(io)) == 12288.0
    io.write_text("rchar: 10\n")
    assert read_written_bytes(str(io)) is None
    assert read_written_bytes(str(tmp_path / "missing")) is None


def test_the_side_closer_to_its_limit_is_judged_on_averages_over_one_window() -> None:
    """A generator whose busiest process averaged 30 % of a core over the traffic window is further from its limit
    than a server at 40 %, whatever its highest sample; with two processes, the busiest one counts."""
    r = record.new("swarm", "s", {})
    m = r["metrics"]
    m.update({"server_cpu_s": 4.0, "server_deliveries": 1000.0, "server_processes": 1, "delivered": 1000,
              "server_cpu_window_s": [100.0, 110.0], "generator_cpu_ratio": 0.85,  # a peak sample
              "generator_cpu_samples": {"w1": [[100.0, 1.0], [105.0, 2.0], [110.0, 4.0]],  # 3 s: 30 %
                                        "w2": [[100.0, 0.0], [110.0, 1.0]]}})  # 10 %
    record.generator_cpu(m, 100.0, 110.0)
    record.finish(r)
    assert record.problems(r) == []
    assert m["generator_cpu_s"] == pytest.approx(4.0) and m["generator_cpu_busiest_ratio"] == pytest.approx(0.3)
    assert m["server_cpu_ratio"] == pytest.approx(0.4) and m["limit_side"] == "server"
    m["generator_cpu_samples"]["w2"] = [[100.0, 0.0], [104.0, 0.1], [110.0, 5.1]]  # now the busiest: 51 %
    record.generator_cpu(m, 100.0, 110.0)
    record.finish(r)
    assert m["generator_cpu_busiest_ratio"] == pytest.approx(0.51) and m["limit_side"] == "generator"
    old = record.new("swarm", "s", {})  # a record from before the busiest average: its highest sample
    old["metrics"].update({"server_cpu_s": 4.0, "server_cpu_window_s": [100.0, 110.0], "generator_cpu_ratio": 0.45})
    assert record.finish(old)["metrics"]["limit_side"] == "generator"
