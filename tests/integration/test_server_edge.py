"""Integration: the WebSocket edge and the admin plane under malformed input (issue 13 item 2) — a frame over the size
limit never reaches the logic, reserved bits close 1002, malformed ids and headers get a clear 4xx (never a 500 or
a silent drop) and nothing is logged at ERROR for them."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import orjson
import pytest

from drivers.admin import metrics_urls, server_counters
from harness.procs import ADMIN_TOKEN, SECRET, ServerProcess
from record.machine import process_cpu_seconds
from record.promtext import counters
from reference_server.protocol import CloseCode, user_token
from tests.abuse.tools import RawWS, client_frame, frames, http_status, upgrade_request, ws_target
from tests.integration.conftest import admin, provision

pytestmark = pytest.mark.integration


def hello(ws: RawWS) -> None:
    assert ws.status == 101, ws.head
    first = ws.recv_json()
    assert first is not None and first["op"] == "hello"


def errors_logged(srv: ServerProcess) -> list[str]:
    return [line for line in srv.log_path.read_text().splitlines() if " ERROR " in line or "Traceback" in line]


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "header-first"])
def test_a_frame_over_the_limit_is_not_acked_nor_stored(server_factory: Callable[..., ServerProcess],
                                                        split: bool) -> None:
    # bodies may be longer than a frame: only the frame limit stands between this send and the store
    srv = server_factory("--send-rate", "0", "--max-body-chars", "200000")
    provision(srv, 2)
    ws = RawWS(srv.port, ws_target(1))
    hello(ws)
    big = client_frame(orjson.dumps({"op": "send", "gid": 1, "body": "x" * 70_000, "rid": 1}))
    if split:  # the library sees the length first and the payload later: the payload must not be handled then
        ws.send(big[:1000])
        time.sleep(0.2)
        with contextlib.suppress(OSError):  # the server may be gone already
            ws.send(big[1000:] + frames([orjson.dumps({"op": "ping", "rid": 2})]))
    else:
        ws.send(big + frames([orjson.dumps({"op": "ping", "rid": 2})]))
    got = []
    while (frame := ws.recv_frame()) is not None:
        got.append(frame)
        if frame[0] == 0x8:
            break
    assert got and got[-1][0] == 0x8 and int.from_bytes(got[-1][1][:2], "big") == CloseCode.MESSAGE_TOO_BIG
    assert [f for f in got if f[0] == 0x1] == [], "no reply to anything after the oversized frame's header"
    ws.close()
    other = RawWS(srv.port, ws_target(2))
    hello(other)
    other.send(frames([orjson.dumps({"op": "sync", "gid": 1, "after": 0, "rid": 1})]))
    page = other.recv_json()
    assert page is not None and page["msgs"] == [] and page["max"] == 0, page
    other.close()
    assert errors_logged(srv) == []


@pytest.mark.parametrize("rsv", [4, 2, 1], ids=["rsv1", "rsv2", "rsv3"])
def test_reserved_bits_without_an_extension_close_1002(server: ServerProcess, rsv: int) -> None:
    provision(server, 1)
    ws = RawWS(server.port, ws_target(1))
    hello(ws)
    ws.send(client_frame(orjson.dumps({"op": "ping", "rid": 1}), rsv=rsv))
    frame = ws.recv_frame()
    assert frame is not None and frame[0] == 0x8, frame  # no pong: the close
    assert int.from_bytes(frame[1][:2], "big") == CloseCode.PROTOCOL_ERROR
    ws.close()
    metrics = admin(server).metrics_text()
    assert 'chat_protocol_violations_total{reason="rsv_bits"} 1.0' in metrics
    assert errors_logged(server) == []


def test_a_lone_continuation_frame_is_answered_bad_frame(server: ServerProcess) -> None:
    provision(server, 1)
    ws = RawWS(server.port, ws_target(1))
    hello(ws)
    ws.send(client_frame(b'{"op":"ping"}', opcode=0x0) + frames([orjson.dumps({"op": "ping", "rid": 5})]))
    err, pong = ws.recv_json(), ws.recv_json()
    assert err is not None and err["code"] == "bad_frame" and "rid" not in err
    assert pong is not None and pong["op"] == "pong" and pong["rid"] == 5  # the connection stays open
    ws.close()


def test_malformed_ids_and_headers_get_a_clear_4xx(server: ServerProcess) -> None:
    provision(server, 42)
    host = f"127.0.0.1:{server.port}"
    huge = "9" * 5000
    cases: list[tuple[str, bytes, int]] = [
        ("5,000-digit uid", upgrade_request(host, ws_target(huge, "ab")), 401),
        ("5,000-digit uid, its digits' token", upgrade_request(host, ws_target(huge, user_token(SECRET, 9))), 401),
        ("uid above 2^63-1", upgrade_request(host, ws_target(str(2**63), user_token(SECRET, 2**63))), 401),
        ("no token", upgrade_request(host, "/ws?uid=1"), 401),
        ("authority-like target", upgrade_request(host, "//[::1/ws"), 404),
        ("target with an IPv6 literal", upgrade_request(host, "/ws/[::1]?uid=1"), 404),
        ("non-ASCII version", upgrade_request(host, ws_target(1), version=b"1\xff3"), 400),
        ("unsupported version", upgrade_request(host, ws_target(1), version=b"12"), 400),
        ("non-ASCII in the token", upgrade_request(host, "/ws?uid=1&token=%FF%FE"), 401),
        ("no Upgrade header", upgrade_request(host, ws_target(1)).replace(b"Upgrade: websocket\r\n", b""), 400),
        ("garbage request line", b"\xff\xfe \x00\r\n\r\n", 400),
    ]
    for what, request, status in cases:
        got, body = http_status(server.port, request)
        assert got == status, (what, got, body[:200])
    # leading zeros are accepted, however many
    ws = RawWS(server.port, ws_target("0" * 5000 + "42", user_token(SECRET, 42)))
    hello(ws)
    ws.close()
    auth = f"Host: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n".encode()
    admin_cases: list[tuple[str, bytes, int]] = [
        ("token of a 5,000-digit uid", b"GET /admin/users/" + huge.encode() + b"/token HTTP/1.1\r\n" + auth, 400),
        ("5,000-digit gid", b"GET /admin/groups/" + huge.encode() + b" HTTP/1.1\r\n" + auth, 400),
        ("members of a 5,000-digit gid", b"POST /admin/groups/" + huge.encode() + b"/members HTTP/1.1\r\n" + auth +
         b"Content-Length: 11\r\n\r\n{\"add\":[1]}", 400),
        ("gid above 2^63-1", b"GET /admin/groups/9223372036854775808 HTTP/1.1\r\n" + auth, 400),
        ("non-ASCII bearer", b"GET /admin/groups/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\r\n",
         401),
        ("5,000-digit id in a body", b"POST /admin/users HTTP/1.1\r\n" + auth + b"Content-Length: 5009\r\n\r\n"
         b"{\"ids\":[" + huge.encode() + b"]}", 400),
    ]
    for what, request, status in admin_cases:
        if not request.endswith(b"\r\n\r\n") and b"Content-Length" not in request:
            request += b"\r\n"
        got, body = http_status(server.admin_port, request)
        assert got == status, (what, got, body[:200])
    assert errors_logged(server) == []


# -- issue 13 item 5: violations counted, not logged; /healthz while stopping


def unmasked(payload: bytes) -> bytes:
    return bytes((0x81, len(payload))) + payload  # a client frame without a mask: close 1002


def test_protocol_violations_are_counted_not_logged(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--max-frame-bytes", "1024")
    provision(srv, 1)
    n = 150
    for i in range(2 * n):
        ws = RawWS(srv.port, ws_target(1))
        assert ws.status == 101
        ws.send(unmasked(b'{"op":"ping"}') if i % 2 else client_frame(b"x" * 2000))
        assert ws.close_code() in (CloseCode.PROTOCOL_ERROR, CloseCode.MESSAGE_TOO_BIG)
        ws.close()
    metrics = admin(srv).metrics_text()
    assert f'chat_protocol_violations_total{{reason="protocol_error"}} {n}.0' in metrics
    assert f'chat_protocol_violations_total{{reason="frame_too_big"}} {n}.0' in metrics
    lines = [line for line in srv.log_path.read_text().splitlines() if "protocol violation" in line]
    assert len(lines) <= 2, lines  # one a minute per kind
    assert errors_logged(srv) == []
    assert srv.log_path.stat().st_size < 10_000


def test_healthz_answers_503_stopping_during_shutdown(server_factory: Callable[..., ServerProcess]) -> None:
    # a member that does not read holds the shutdown (its close waits for its socket to drain, then 2 s): the
    # admin plane answers meanwhile
    srv = server_factory("--send-rate", "0", "--max-send-queue-bytes", str(64 << 20))
    provision(srv, 2)
    slow = RawWS(srv.port, ws_target(2), rcvbuf=4096)
    assert slow.status == 101
    sender = RawWS(srv.port, ws_target(1))
    hello(sender)
    body = "y" * 4000
    sender.send(frames(orjson.dumps({"op": "send", "gid": 1, "body": body, "rid": i}) for i in range(2000)))
    acks = 0
    while acks < 2000:
        reply = sender.recv_json()
        assert reply is not None
        acks += reply.get("op") == "ack"
    assert srv.proc is not None
    srv.proc.terminate()
    seen: list[tuple[int, str]] = []
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status, payload = http_status(srv.admin_port, request, timeout=2)
        except OSError:
            break  # the admin port closed: the end of the shutdown
        if status == 0:
            break
        seen.append((status, orjson.loads(payload)["status"] if status in (200, 503) else payload[:60].decode()))
        time.sleep(0.02)
    assert (503, "stopping") in seen, seen
    assert {s for s, _ in seen} <= {200, 503}, seen
    assert srv.proc.wait(15) == 0
    slow.close()
    sender.close()


def test_metrics_asked_by_name_render_only_those_and_cost_the_server_less(server: ServerProcess) -> None:
    """/metrics?name[]=…: only the named samples (a sampler that needs two counters costs the server a fraction of
    a full render); process_cpu_seconds_total can be named too; unknown, repeated, odd or very many names are no
    error and change nothing."""
    provision(server, 2)
    a = admin(server)
    names = ("chat_messages_accepted_total", "process_cpu_seconds_total", "chat_push_latency_seconds_bucket")
    some = counters(a.metrics_text(names))
    assert {k.split("{")[0] for k in some} == set(names)
    assert len([k for k in some if k.startswith("chat_push_latency_seconds_bucket")]) > 50
    full = counters(a.metrics_text())
    assert len(full) > len(some) + 50 and not any(k.endswith("_created") for k in full)
    assert counters(a.metrics_text(["nothing_by_this_name", "chat_", "", "'\";{}", "ü" * 50])) == {}
    assert counters(a.metrics_text(["chat_deliveries_total"] * 200)).keys() == {"chat_deliveries_total"}
    many = "&".join(f"name[]=n{i}" for i in range(2_000)).encode()
    status, _ = http_status(server.admin_port, b"GET /metrics?" + many + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status in (200, 400, 414)  # aiohttp bounds the request line; either way an answer, not a hang
    cpu = process_cpu_seconds(server.pid)
    for _ in range(50):
        a.metrics_text(("chat_messages_accepted_total", "chat_deliveries_total"))
    few = process_cpu_seconds(server.pid) - cpu
    cpu = process_cpu_seconds(server.pid)
    for _ in range(50):
        a.metrics_text()
    assert few < (process_cpu_seconds(server.pid) - cpu) / 2  # typically ~1/8
    assert server.proc is not None and server.proc.poll() is None and errors_logged(server) == []


def test_the_swarm_reads_every_server_process_and_sums_them(server_factory: Callable[..., ServerProcess]) -> None:
    """--server-metrics-urls: "the server" a swarm (and a capacity step) reads is every process named — a cluster's
    gateways hold the send queues and count the closes — summed; one that cannot be read gives no figure at all,
    not a partial sum."""
    a, b = server_factory(), server_factory()
    opts = argparse.Namespace(admin_url=a.admin_url, admin_token=ADMIN_TOKEN, server_metrics_urls="")
    only_a = server_counters(opts, ["process_cpu_seconds_total"])
    opts.server_metrics_urls = f"{a.admin_url}, {b.admin_url}"
    both = server_counters(opts, ["process_cpu_seconds_total"])
    cpu_b = counters(admin(b).metrics_text(["process_cpu_seconds_total"]))["process_cpu_seconds_total"]
    assert only_a["process_cpu_seconds_total"] > 0 and cpu_b > 0
    assert both["process_cpu_seconds_total"] >= only_a["process_cpu_seconds_total"] + cpu_b - 0.05
    opts.server_metrics_urls = f"{a.admin_url},http://127.0.0.1:9"  # nothing listens on port 9
    assert server_counters(opts, ["process_cpu_seconds_total"]) == {}
    assert metrics_urls(argparse.Namespace(admin_url=a.admin_url, server_metrics_urls=" ,")) == [a.admin_url]
