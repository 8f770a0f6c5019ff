"""WAL checkpoints run in a thread of their own, not inside the writer's commits: the writer no longer
checkpoints at SQLite's default of 1,000 WAL pages, still does past its own bound (``WRITER_CHECKPOINT_PAGES``),
and the checkpoint thread copies the whole WAL into the database file while the writer goes on."""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path

import pytest

from reference_server import protocol, store
from tests.integration.waiting import wait_until
from tests.unit.modes_harness import Harness

MEMBERS = 50


def wal_pages(db: Path) -> int:
    """Frames the WAL file has held: its high-water mark (a reset WAL is written again from its start)."""
    c = sqlite3.connect(db)
    try:
        page = int(c.execute("PRAGMA page_size").fetchone()[0])
    finally:
        c.close()
    wal = db.with_name(db.name + "-wal")
    return max(0, (wal.stat().st_size - 32) // (page + 24)) if wal.exists() else 0


def in_database_file(db: Path, tmp: Path) -> int:
    """Messages the database file holds without its WAL (what checkpoints copied into it)."""
    copy = tmp / "copy.db"
    shutil.copyfile(db, copy)
    c = sqlite3.connect(copy)
    try:
        if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone() is None:
            return 0  # not even the schema was copied yet
        return int(c.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        c.close()


def group(tmp: Path, checkpoint_ms: float) -> Harness:
    h = Harness(tmp / "chat.db", storage="write", sqlite_checkpoint_ms=checkpoint_ms)  # a row per member
    users = list(range(1, MEMBERS + 1))
    h.provision(users, {1: users})
    h.online(1)
    return h


def send(h: Harness, n: int) -> None:
    for i in range(n):
        assert h.request(1, protocol.encode_send, 1, f"m{i}" * 20, 0)["op"] == "ack"


def test_the_writer_checkpoints_only_past_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bound = 2_000
    monkeypatch.setattr(store, "WRITER_CHECKPOINT_PAGES", bound)
    h = group(tmp_path, 3_600_000.0)  # the checkpoint thread's period is an hour: it never runs here
    try:
        db, sent = h.config.db_path, 0
        while wal_pages(db) < 1_500:  # past SQLite's default autocheckpoint of 1,000 pages
            send(h, 10)
            sent += 10
            assert sent < 5_000, "the WAL stopped growing: something checkpoints it"
        assert in_database_file(db, tmp_path) == 0  # no checkpoint copied anything: not the writer, at 1,000
        per_message = wal_pages(db) / sent
        send(h, math.ceil(2 * bound / per_message))  # twice the bound's worth: the writer checkpointed past it
        assert 1_500 <= wal_pages(db) <= bound + 50, wal_pages(db)  # + one commit's pages
        assert in_database_file(db, tmp_path) > 0
        assert h.counter("chat_checkpoint_seconds_count") == 0
    finally:
        h.close()


def test_the_checkpoint_thread_copies_the_whole_wal(tmp_path: Path) -> None:
    h = group(tmp_path, 20.0)
    try:
        send(h, 300)
        wait_until(lambda: in_database_file(h.config.db_path, tmp_path) == 300, 10,
                   "all 300 messages in the database file without its WAL")
        assert h.counter("chat_checkpoint_seconds_count") >= 1
        assert h.registry.get_sample_value("chat_wal_frames") is not None
    finally:
        h.close()
