"""Integration: the send rate limit is a budget per user on a real server — reconnecting, or connecting again
while the first connection is still open, does not refill it (issue 13 item 4)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drivers.client import ChatClient, ServerError
from harness.procs import SECRET, ServerProcess
from reference_server.protocol import CloseCode, ErrorCode, user_token
from tests.integration.conftest import provision
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

# one token back every 20 s: no test step here takes that long, so no token comes back during the test
RATE, BURST = 0.05, 3


def outcome(c: ChatClient, body: str) -> str:
    try:
        return str(c.send(1, body)["op"])
    except ServerError as exc:
        return exc.code


def client(srv: ServerProcess, uid: int) -> ChatClient:
    c = ChatClient(srv.ws_url, uid, user_token(SECRET, uid), heartbeat_s=None)
    hello = c.connect()
    assert hello["limits"]["send_rate"] == RATE and hello["limits"]["send_burst"] == BURST  # announced as before
    return c


def test_reconnecting_does_not_refill_the_send_bucket(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--send-rate", str(RATE), "--send-burst", str(BURST))
    provision(srv, 2)
    c = client(srv, 1)
    assert [outcome(c, f"m{i}") for i in range(BURST + 1)] == ["ack"] * BURST + [ErrorCode.RATE_LIMITED]
    c.close()
    c = client(srv, 1)  # a new connection of the same user
    assert outcome(c, "again") == ErrorCode.RATE_LIMITED
    other = client(srv, 2)  # the budget is the user's, not the server's
    assert outcome(other, "mine") == "ack"
    # a second connection while the first is open replaces it (4002), with the same empty bucket
    second = client(srv, 1)
    wait_until(lambda: c.closed, 10, "the first connection closed as replaced")
    assert c.close_code == CloseCode.REPLACED
    assert outcome(second, "replaced") == ErrorCode.RATE_LIMITED
    assert [m["seq"] for m in other.sync_all(1, 0)] == list(range(1, BURST + 2))  # nothing over the budget stored
    second.close()
    other.close()
