"""Integration: seeded history (``POST /admin/groups/{gid}/history``) against a real server in each storage and
unread mode: the storage's own rows (write diffusion an index row per member and message, read diffusion none),
every member's read mark at the end (nothing unread, in every unread mode), visible in history, not counted as
the server's storage writes; later messages count and push as usual. Applied in chunks, each its own commit.
Hostile requests get a clear error and write nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest

from drivers.admin import AdminClient, AdminError
from drivers.client import ChatClient
from harness.procs import SECRET, ServerProcess
from record import promtext
from reference_server.admin import SEED_CHUNK_ROWS, SEED_MAX_MESSAGES, SEED_MAX_ROWS
from reference_server.protocol import DEFAULT_MAX_BODY_CHARS, user_token
from tests.integration.conftest import admin

pytestmark = pytest.mark.integration


def _storage_writes(a: AdminClient) -> float:
    return sum(v for k, v in promtext.counters(a.metrics_text(["chat_storage_writes_total"])).items()
               if k.startswith("chat_storage_writes_total"))


def _commits(a: AdminClient) -> float:
    return promtext.counters(a.metrics_text(["chat_commit_batch_size_count"]))["chat_commit_batch_size_count"]


def _rows(srv: ServerProcess, table: str) -> int:
    db = sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True)
    try:
        (n,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(n)
    finally:
        db.close()


@pytest.mark.parametrize(("storage", "unread"), [("write", "seq"), ("write", "per-message"), ("read", "seq"),
                                                 ("read", "merged")])
def test_seeded_history_is_read_by_everyone(server_factory: Callable[..., ServerProcess], storage: str,
                                            unread: str) -> None:
    srv = server_factory("--storage", storage, "--unread", unread, "--unread-flush-ms", "50",
                         "--sqlite-synchronous", "normal")
    a = admin(srv)
    a.create_users(1, 6)
    a.create_groups({1: [1, 2, 3, 4]})
    writes0 = _storage_writes(a)
    seeded = a.seed_history(1, 300, sender=2, body="x")
    rows_per_message = 1 + (4 if storage == "write" else 0)  # the body; write diffusion: every member's index row
    assert seeded == {"messages": 300, "max_seq": 300, "members": 4, "storage_writes": 300 * rows_per_message}
    assert a.group(1)["max_seq"] == 300
    assert _rows(srv, "messages") == 300
    assert _rows(srv, "inbox") == (1200 if storage == "write" else 0)
    assert _storage_writes(a) == writes0  # provisioning, not the server's storage writes

    c1 = ChatClient(srv.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None)
    hello = c1.connect()
    assert hello["groups"] == [{"gid": 1, "max": 300, "read": 300, "unread": 0}]
    page = c1.sync(1, 0, limit=5)
    assert [(m["seq"], m["from"], m["body"]) for m in page["msgs"]] == [(s, 2, "x") for s in range(1, 6)]
    # later traffic as usual: a message counts for those who have not read it, and is pushed
    c3 = ChatClient(srv.ws_url, 3, user_token(SECRET, 3), heartbeat_s=None)
    c3.connect()
    assert c3.send(1, "after")["seq"] == 301
    assert c1.unread([1])["groups"] == [{"gid": 1, "max": 301, "read": 300, "unread": 1}]
    assert c3.unread([1])["groups"][0]["unread"] == 0  # its own
    # a member has not read to the end now: a seed would leave its count wrong, so it is refused, writing nothing
    with pytest.raises(AdminError) as refused:
        a.seed_history(1, 10)
    assert refused.value.status == 409 and "has read to seq 300 of 301" in refused.value.message
    assert a.group(1)["max_seq"] == 301 and _rows(srv, "messages") == 301
    c1.read(1, 301)
    c3.read(1, 301)
    a.change_members(1, remove=[4])  # the last one behind leaves (a leave signal: seq 302)
    c1.read(1, 302)
    c3.read(1, 302)
    c2 = ChatClient(srv.ws_url, 2, user_token(SECRET, 2), heartbeat_s=None)
    c2.connect()
    c2.read(1, 302)
    assert a.seed_history(1, 5)["max_seq"] == 307  # sender: the lowest member
    assert c1.unread([1])["groups"] == [{"gid": 1, "max": 307, "read": 307, "unread": 0}]
    assert c1.sync(1, 302)["msgs"][0]["from"] == 1
    for c in (c1, c2, c3):
        c.close()


def test_seeding_a_large_group_commits_in_chunks(server_factory: Callable[..., ServerProcess]) -> None:
    members = 2_000
    srv = server_factory("--storage", "write", "--sqlite-synchronous", "normal")
    a = admin(srv)
    a.create_users(1, members)
    a.create_groups({1: list(range(1, members + 1))})
    messages = SEED_CHUNK_ROWS // members * 2 + 7  # two whole chunks and a part of a third
    commits0 = _commits(a)
    seeded = a.seed_history(1, messages)
    assert seeded["max_seq"] == messages and seeded["storage_writes"] == messages * (members + 1)
    assert _rows(srv, "inbox") == messages * members
    assert _commits(a) - commits0 == 3  # one transaction per chunk (nothing else commits here)


def test_hostile_seed_requests_write_nothing(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory()
    a = admin(srv)
    a.create_users(1, 300)
    a.create_groups({1: [1, 2], 2: [], 3: list(range(1, 301))})
    bad: list[tuple[str, dict[str, object], int, str]] = [
        ("/admin/groups/1/history", {}, 400, "'messages' must be an integer"),
        ("/admin/groups/1/history", {"messages": 0}, 400, "'messages' must be an integer"),
        ("/admin/groups/1/history", {"messages": -5}, 400, "'messages' must be an integer"),
        ("/admin/groups/1/history", {"messages": "5"}, 400, "'messages' must be an integer"),
        ("/admin/groups/1/history", {"messages": True}, 400, "'messages' must be an integer"),
        ("/admin/groups/1/history", {"messages": 2.5}, 400, "'messages' must be an integer"),
        ("/admin/groups/1/history", {"messages": SEED_MAX_MESSAGES + 1}, 400, "'messages' must be an integer"),
        ("/admin/groups/1/history", {"messages": 1, "sender": 3}, 400, "user 3 is not a member of group 1"),
        ("/admin/groups/1/history", {"messages": 1, "sender": -1}, 400, "'sender' must be a user id"),
        ("/admin/groups/1/history", {"messages": 1, "sender": "1"}, 400, "'sender' must be a user id"),
        ("/admin/groups/1/history", {"messages": 1, "body": 7}, 400, "'body' must be a string"),
        ("/admin/groups/1/history", {"messages": 1, "body": "x" * (DEFAULT_MAX_BODY_CHARS + 1)}, 400,
         "'body' must be a string"),
        ("/admin/groups/9/history", {"messages": 1}, 404, "no group 9"),
        ("/admin/groups/2/history", {"messages": 1}, 400, "group 2 has no members"),
        ("/admin/groups/3/history", {"messages": SEED_MAX_MESSAGES}, 400, "message-members per request"),
    ]
    for path, body, status, text in bad:
        with pytest.raises(AdminError) as exc:
            a.call("POST", path, body)
        assert exc.value.status == status and text in exc.value.message, (body, exc.value)
    assert SEED_MAX_MESSAGES * 300 > SEED_MAX_ROWS  # the last case is over the row bound, not the message bound
    with pytest.raises(AdminError) as not_json:
        a.request("POST", "/admin/groups/1/history", None)
    assert not_json.value.status == 400
    assert [a.group(g)["max_seq"] for g in (1, 2, 3)] == [0, 0, 0]
    assert _rows(srv, "messages") == 0
