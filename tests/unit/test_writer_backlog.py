"""``chat_writer_backlog``: the jobs queued for the writer or in the transaction it is applying — what a capacity
search waits on after an overload (a group commit of heavy messages moves no counter for seconds)."""

from __future__ import annotations

import threading
from pathlib import Path

from reference_server.store import Barrier, Writer
from tests.integration.waiting import wait_until
from tests.unit.modes_harness import Harness


class Held(Barrier):
    """A job whose transaction waits until the test lets it go."""

    def __init__(self, go: threading.Event, started: threading.Event) -> None:
        super().__init__(lambda: None)
        self.go, self.started = go, started

    def apply(self, w: Writer) -> None:
        self.started.set()
        assert self.go.wait(10)


def test_the_backlog_counts_queued_jobs_and_the_transaction_in_progress(tmp_path: Path) -> None:
    h = Harness(tmp_path / "chat.db")
    go, started = threading.Event(), threading.Event()
    try:
        h.store.submit(Held(go, started))
        assert started.wait(5)
        for _ in range(3):
            h.store.submit(Barrier(lambda: None))
        assert h.store.backlog() == 4  # one in the transaction, three waiting behind it
        assert h.registry.get_sample_value("chat_writer_backlog") == 4
        go.set()
        wait_until(lambda: h.store.backlog() == 0, 5, "the writer to catch up")
        assert h.registry.get_sample_value("chat_writer_backlog") == 0
    finally:
        go.set()
        h.close()
