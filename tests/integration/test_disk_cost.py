"""Integration: what a storage design costs the disk, beside the rows it writes. Real servers on real SQLite files:
write diffusion's index rows land on as many B-tree pages as the group has members, so each message dirties far
more page cache (``chat_disk_written_bytes_total``, the server's /proc/self/io write_bytes) than read diffusion's
one body row."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drivers.client import ChatClient
from harness.procs import ServerProcess
from record.promtext import counters
from reference_server.metrics import DISK_WRITTEN
from tests.integration.conftest import admin, provision

pytestmark = pytest.mark.integration
SERIES = DISK_WRITTEN + "_total"


def disk_bytes_per_message(srv: ServerProcess, client: ChatClient, messages: int) -> float:
    a = admin(srv)
    client.send(1, "warm-up")  # the first commit creates the tables' pages
    before = counters(a.metrics_text([SERIES]))[SERIES]
    for i in range(messages):
        client.send(1, f"m{i}")  # acked: committed (and fsynced, synchronous full)
    return (counters(a.metrics_text([SERIES]))[SERIES] - before) / messages


def test_write_diffusion_dirties_more_disk_per_message_than_read(
        server_factory: Callable[..., ServerProcess], connect: Callable[..., ChatClient]) -> None:
    members, messages = 1_000, 20
    per: dict[str, float] = {}
    for storage in ("write", "read"):
        srv = server_factory("--storage", storage, "--send-rate", "0")
        provision(srv, members)
        per[storage] = disk_bytes_per_message(srv, connect(1, srv), messages)
    # read diffusion: the body row, its WAL frame and index page: a few pages a message
    assert 4096 <= per["read"] < 64 * 4096, per
    # write diffusion: 1,000 index rows a message, spread over the index's pages
    assert per["write"] > 5 * per["read"], per  # ~12 × here after 20 messages; more as the index spreads


def test_the_series_is_named_and_readable_alone(server: ServerProcess) -> None:
    """The capacity sampler and Prometheus can ask for it by name (the registry describes it)."""
    got = counters(admin(server).metrics_text([SERIES]))
    assert list(got) == [SERIES] and got[SERIES] >= 0
