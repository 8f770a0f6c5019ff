"""Weak networks: each impairment of the proxy does what its name says, measured through it; the client notices a
half-open connection by its heartbeat; a resume after a drop loses nothing (ledger)."""

from __future__ import annotations

import gc
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from drivers.client import ChatClient
from drivers.ledger import Ledger, now_us
from drivers.profiles import DIRECT, PROFILES, Profile, assign, parse_mix
from drivers.proxy import Impair, Pipe, Proxy
from harness.procs import REPO, SECRET, ServerProcess
from reference_server.protocol import user_token
from tests.integration.conftest import provision
from tests.integration.waiting import wait_until


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Finalize the dropped connections' objects here, not inside a later AST parse: on Python 3.11.7 a finalizer
    that logs a traceback during pytest's end-of-session import fails with "AST constructor recursion depth
    mismatch" (apparently CPython gh-106905; without this the session ends with that error after passing). The
    threads the test left (clients' receive loops, proxies) are let finish first."""
    before = set(threading.enumerate())
    yield
    for t in set(threading.enumerate()) - before:
        t.join(timeout=1)
    gc.collect()


def test_profiles_and_mix() -> None:
    assert {"wifi", "4g", "3g", "2g", "subway", "lossy"} <= set(PROFILES)
    assert all(p.doc for p in PROFILES.values())
    assert parse_mix("3g:20,wifi:80") == {"3g": 0.2, "wifi": 0.8}
    assert parse_mix("") == {}
    for bad in ("5g:10", "3g:60,wifi:60", "3g"):
        with pytest.raises(ValueError):
            parse_mix(bad)
    mix = parse_mix("3g:20,subway:10")
    for n in (10, 100, 1000):  # any prefix of the users is split within one user of the mix
        names = [assign(mix, i) for i in range(n)]
        for name, share in (("3g", 0.2), ("subway", 0.1), (DIRECT, 0.7)):
            assert abs(names.count(name) - share * n) <= 1.5, (n, name, names.count(name))


@contextmanager
def impaired(upstream: str, profile: Profile, seed: int = 1) -> Iterator[Proxy]:
    rng = random.Random(seed)
    proxy = Proxy(upstream, action_factory=lambda _p: Impair(profile, random.Random(rng.random())))
    proxy.start_in_thread()
    try:
        yield proxy
    finally:
        proxy.stop()


def the_pipe(proxy: Proxy) -> Pipe:
    wait_until(lambda: proxy.pipes, 5, "the proxy to open a connection")
    assert len(proxy.pipes) == 1
    return next(iter(proxy.pipes))


def client(url: str, uid: int, **kw: object) -> ChatClient:
    kw.setdefault("heartbeat_s", None)
    c = ChatClient(url, uid, user_token(SECRET, uid), **kw)  # type: ignore[arg-type]
    c.connect()
    return c


def wait_closed(c: ChatClient, timeout: float) -> None:
    wait_until(lambda: c.closed, timeout, f"user {c.uid}'s connection to end")


def pings_answered(srv: ServerProcess) -> int:
    """Heartbeats one client's connection had answered: a heartbeat is sent only once the one before it was
    answered, so of the pings the server counted all but the last are."""
    assert srv.admin is not None
    m = re.search(r'^chat_requests_total\{op="ping"\} (\S+)$', srv.admin.metrics_text(), re.M)
    return max(int(float(m[1])) - 1, 0) if m else 0


@pytest.mark.parametrize("kind", ["normal", "uniform", "pareto"])
def test_jitter_distributions_have_the_documented_shape(kind: str) -> None:
    """One-way delay = rtt/2 + a jitter sample: normal N(0, j), uniform U(−j, j), pareto with mean +j and a heavy
    right tail; 20,000 samples each, no sockets."""
    action = Impair(Profile("t", rtt_ms=200, jitter_ms=20, jitter=kind), rng=random.Random(7))
    xs = [action.latency(None, 0) * 1000 - 100 for _ in range(20_000)]  # type: ignore[arg-type]
    mean, sd = statistics.fmean(xs), statistics.pstdev(xs)
    if kind == "normal":
        assert abs(mean) < 0.5 and abs(sd - 20) < 0.5
    elif kind == "uniform":
        assert min(xs) >= -20 and max(xs) <= 20 and abs(mean) < 0.5 and abs(sd - 20 / 3**0.5) < 0.5
    else:
        assert min(xs) >= 0 and abs(mean - 20) < 1.0
        assert statistics.quantiles(xs, n=1000)[-1] > 5 * mean  # p99.9 far out: the occasional long delay


@pytest.mark.integration
def test_rtt_and_stall(server: ServerProcess) -> None:
    provision(server, 1)
    rtt_ms = 100.0
    with impaired(server.ws_url, Profile("t", rtt_ms=rtt_ms, jitter_ms=10)) as proxy:
        c = client(proxy.url, 1)
        samples = []
        for _ in range(30):
            t0 = time.perf_counter()
            c.ping()
            samples.append((time.perf_counter() - t0) * 1000)
        mean = statistics.fmean(samples)
        print(f"RTT set {rtt_ms:g} ms ±10 ms jitter (normal, per direction): measured mean {mean:.1f} ms, "
              f"sd {statistics.stdev(samples):.1f} ms")
        assert abs(mean - rtt_ms) <= 0.1 * rtt_ms
        assert statistics.stdev(samples) > 3  # the jitter is there

        stall_s = 1.0
        pipe = the_pipe(proxy)
        assert isinstance(pipe.action, Impair)
        action = pipe.action
        proxy.call(lambda: action.stall(stall_s))
        t0 = time.perf_counter()
        c.ping()
        took = time.perf_counter() - t0
        # the ping's way up (RTT/2) elapses inside the stall; its way back comes after it
        extra = took - rtt_ms / 2000
        print(f"stall set {stall_s:g} s: a ping sent at its start took {took:.3f} s (stall {extra:.3f} s + RTT/2)")
        assert abs(extra - stall_s) <= 0.1 * stall_s
        c.close()


def _bulk_upstream(down_bytes: int, got_up: list[tuple[float, int]]) -> tuple[socket.socket, threading.Thread]:
    """A fake WebSocket server: answers the upgrade, sends ``down_bytes`` in binary frames, counts what it gets."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn:
            req = b""
            while b"\r\n\r\n" not in req:
                req += conn.recv(4096)
            got_up.append((time.monotonic(), len(req.split(b"\r\n\r\n", 1)[1])))
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            chunk = 8192
            frame = b"\x82\x7e" + chunk.to_bytes(2, "big") + b"x" * chunk
            sender = threading.Thread(target=lambda: [conn.sendall(frame) for _ in range(down_bytes // len(frame))])
            sender.start()
            conn.settimeout(10)
            while data := conn.recv(65536):
                got_up.append((time.monotonic(), len(data)))
            sender.join()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lsock, t


def _rate(events: list[tuple[float, int]], skip: int) -> float:
    """Bytes per second after the first ``skip`` bytes (the token bucket's burst)."""
    total = 0
    start = None
    for t, n in events:
        total += n
        if start is None and total >= skip:
            start, base = t, total
    assert start is not None
    return (total - base) / (events[-1][0] - start)


@pytest.mark.integration
def test_bandwidth_both_directions() -> None:
    down_kbps, up_kbps = 4000.0, 2000.0  # 500 kB/s and 250 kB/s
    got_up: list[tuple[float, int]] = []
    lsock, srv = _bulk_upstream(1_000_000, got_up)
    prof = Profile("t", down_kbps=down_kbps, up_kbps=up_kbps, burst_bytes=16_384)
    with lsock, impaired(f"127.0.0.1:{lsock.getsockname()[1]}", prof) as proxy:
        c = socket.create_connection(("127.0.0.1", proxy.port))
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        payload = b"y" * 4096

        def upload() -> None:
            for _ in range(500_000 // len(payload)):
                c.sendall(payload)
            c.shutdown(socket.SHUT_WR)

        up = threading.Thread(target=upload)
        up.start()
        got_down: list[tuple[float, int]] = []
        c.settimeout(10)
        received = 0
        while received < 999_000 and (data := c.recv(65536)):
            received += len(data)
            got_down.append((time.monotonic(), len(data)))
        up.join()
        srv.join(10)
        c.close()
    down = _rate(got_down, 32_768) * 8 / 1000
    upr = _rate(got_up, 32_768) * 8 / 1000
    print(f"bandwidth set {down_kbps:g}/{up_kbps:g} kbit/s: measured {down:.0f} kbit/s down, {upr:.0f} kbit/s up")
    assert abs(down - down_kbps) <= 0.1 * down_kbps
    assert abs(upr - up_kbps) <= 0.1 * up_kbps


@pytest.mark.integration
def test_half_open_detected_by_heartbeat_and_drops_end(server: ServerProcess) -> None:
    provision(server, 3)
    heartbeat_s, pong_timeout_s = 0.3, 0.5
    with impaired(server.ws_url, Profile("t", rtt_ms=20)) as proxy:
        c = client(proxy.url, 1, heartbeat_s=heartbeat_s, pong_timeout_s=pong_timeout_s)
        wait_until(lambda: pings_answered(server) >= 2, 5, "two heartbeats answered")
        assert not c.closed and not c.dead
        pipe = the_pipe(proxy)

        def no_heartbeat_in_flight() -> float | None:
            t = time.perf_counter()
            return t if c.pending == 0 else None

        # from a moment with no ping in flight: the one left unanswered is sent after it, and only a whole pong
        # timeout later can the client declare the connection dead
        t0 = wait_until(no_heartbeat_in_flight, 5, "a moment between two heartbeats", interval=0.001)
        proxy.call(pipe.half_open)
        wait_closed(c, 5)
        took = time.perf_counter() - t0
        print(f"half-open detected after {took:.3f} s (heartbeat {heartbeat_s:g} s + pong timeout "
              f"{pong_timeout_s:g} s = {heartbeat_s + pong_timeout_s:g} s at most, on an idle machine)")
        assert c.dead and c.close_code == 1006 and "no pong" in c.close_reason
        assert took >= pong_timeout_s
        assert proxy.counts == {"half_open": 1}

        # a disconnect (FIN) and a reset (RST) end the connection at once, visibly
        for uid, end in ((2, Pipe.disconnect), (3, Pipe.reset)):
            c = client(proxy.url, uid)
            pipe = next(p for p in list(proxy.pipes) if p.uid == uid)
            proxy.call(lambda pipe=pipe, end=end: end(pipe))  # type: ignore[misc]
            wait_closed(c, 2)
            assert not c.dead and c.close_code == 1006, c.close_reason
            if end is Pipe.reset:
                assert "reset" in c.close_reason.lower(), c.close_reason
        assert proxy.counts == {"half_open": 1, "disconnects": 1, "resets": 1}


@pytest.mark.integration
def test_resume_after_drop_loses_nothing(server: ServerProcess) -> None:
    uids = provision(server, 6, gid=3)
    sender_uid, rx = uids[0], uids[1:]
    ledger = Ledger()
    prof = Profile("t", rtt_ms=40, jitter_ms=10, down_kbps=2000)
    beat = {"heartbeat_s": 0.2, "pong_timeout_s": 0.3}
    with impaired(server.ws_url, prof) as proxy:
        clients: dict[int, ChatClient] = {}
        for uid in rx:
            rl = ledger.receiver(uid)
            clients[uid] = client(proxy.url, uid, on_message=rl.on_push, on_hello=rl.on_connect, **beat)
        sender = client(server.ws_url, sender_uid)
        ledger.receiver(sender_uid).on_connect(sender.hello or {})
        dropped = rx[:3]
        for i in range(1, 41):
            cts = now_us()
            ledger.on_ack(sender_uid, sender.send(3, f"m{i}", cts=cts), cts, False)
            if i == 15:  # drop three receivers mid-stream: two resets, one half-open
                for uid, pipe in [(p.uid, p) for p in list(proxy.pipes)]:
                    if uid in dropped:
                        proxy.call(pipe.half_open if uid == dropped[2] else pipe.reset)
            if i == 25:  # they notice (the half-open one by its heartbeat), come back and resume from their last seq
                for uid in dropped:
                    wait_closed(clients[uid], 3)
                assert clients[dropped[2]].dead
                for uid in dropped:
                    old = clients[uid]
                    assert old.closed
                    rl = ledger.receivers[uid]
                    rl.on_disconnect()
                    started = now_us()
                    clients[uid] = c = client(proxy.url, uid, on_message=rl.on_push, on_hello=rl.on_connect, **beat)
                    assert rl.catch_up(c.sync, started)
            time.sleep(0.01)  # a stream over time (the scenario): the drops, their detection and resumes happen in it
        wait_until(lambda: all(ledger.receivers[uid].groups[3].last == 40 for uid in rx), 10,
                   "every receiver's stream (pushes and catch-ups) to reach seq 40")
        cutoff = now_us()
        for c in [*clients.values(), sender]:
            ledger.receivers[c.uid].reconcile(c.sync, cutoff)
            c.close()
    counts = ledger.take()["counts"]
    print({k: counts[k] for k in ("delivered", "lost", "catchups", "catchup_msgs", "duplicated", "reordered")})
    assert counts["lost"] == counts["duplicated"] == counts["reordered"] == 0
    assert counts["catchups"] == 3 and counts["catchup_incomplete"] == 0
    assert counts["in_flight_at_stop"] == counts["repair_failed"] == 0
    assert counts["delivered"] + counts["catchup_msgs"] == 40 * len(rx)


def chatbench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatbench.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def weak_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A matrix of two short weak_network runs: 40 % of the members on subway, and the control (clean:40)."""
    results = tmp_path_factory.mktemp("weak") / "results"
    proc = chatbench("matrix", "weak_network", "--members", "30", "--senders", "2", "--rate", "10", "--steady-s", "5",
                     "--tail-s", "1", "--network", "subway:40", "--network", "clean:40", "--results-dir", str(results),
                     "--accept-invalid", timeout=300)  # what is tested here is the per-profile split, not validity
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    by_mix = {orjson.loads(f.read_bytes())["parameters"]["profile_mix"]: f for f in results.glob("*.json")}
    return by_mix["subway:40"], by_mix["clean:40"], proc.stdout


@pytest.mark.integration
def test_weak_network_run_reports_per_profile(weak_runs: tuple[Path, Path, str]) -> None:
    """weak_network end to end through chatbench: members split by the mix, figures per profile in the bundle, the
    proxy's impairment counts beside them, nothing lost."""
    subway, _, out = weak_runs
    # the matrix's summary: one row per mix, with the direct members' p99
    assert "direct p99 ms" in out and "network=subway:40" in out and "network=clean:40" in out
    bundle = orjson.loads(subway.read_bytes())
    by = bundle["metrics"]["by_profile"]
    assert set(by) == {"direct", "subway"}
    assert by["direct"]["members"] + by["subway"]["members"] == 30
    assert 10 <= by["subway"]["members"] <= 13  # 40 % of the 28 non-senders, within one member
    # every subway member connected through the proxy at least once; direct members never did
    assert by["subway"]["injected_connections"] >= by["subway"]["members"]
    assert "injected_connections" not in by["direct"]
    for name, p in by.items():  # each profile's members got pushes, and one latency per push delivered
        assert p["delivery_latency_ms"]["count"] == p["delivered"] > 0, name
    assert sum(p["delivered"] for p in by.values()) == bundle["metrics"]["delivered"]
    assert {h for h in bundle["histograms"] if "[" in h} == {f"delivery_latency_us[{p}]" for p in by}
    assert bundle["metrics"]["lost"] == 0


@pytest.mark.integration
def test_mix_and_control_compare_and_report_by_profile(weak_runs: tuple[Path, Path, str], tmp_path: Path) -> None:
    """The profile mix is a configuration axis: the matrix's mix and its control are comparable, compared side by
    side (--against the control; the direct members' p99 among the measures), and the report draws one latency CDF
    per profile."""
    subway, clean, _ = weak_runs
    proc = chatbench("compare", str(subway.parent), "--against", "network=clean:40", "--check", "lost:0")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "incomparable" not in proc.stdout.lower()
    assert "network=clean:40" in proc.stdout and "network=subway:40" in proc.stdout
    assert "direct_p99" in proc.stdout
    report = tmp_path / "report.html"
    proc = chatbench("report", str(clean), str(subway), "-o", str(report))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = report.read_text()
    plot = html[html.index('data-plot="profile-cdf"'):]
    plot = plot[:plot.index("</svg>")]
    for legend in ("network=clean:40 · clean", "network=clean:40 · direct", "network=subway:40 · subway",
                   "network=subway:40 · direct"):
        assert legend in plot, legend
    assert plot.count('class="series') >= 4


@pytest.mark.integration
def test_any_scenario_runs_with_a_profile_mix(tmp_path: Path) -> None:
    """`chatbench run SCENARIO --profile-mix ...` for a scenario that knows nothing of profiles: the summary has a
    row per profile and what the proxy did."""
    proc = chatbench("run", "smoke", "-u", "8", "-r", "8", "-t", "5s", "--profile-mix", "wifi:50",
                     "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for row in ("profile direct: members / reconnects / dead", "profile wifi: members / reconnects / dead",
                "profile wifi: latency p50 / p99", "profile wifi: proxy did"):
        assert row in proc.stdout, row
    assert "profile direct: proxy did" not in proc.stdout


@pytest.mark.parametrize("mix, reason", [("5g:10", "unknown network profile '5g'"),
                                         ("3g:80,wifi:30", "more than 100 %"), ("3g", "want NAME:PERCENT")])
def test_a_bad_profile_mix_stops_locust_with_the_reason(mix: str, reason: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(REPO / "scenarios" / "smoke.py"), "--headless",
                           "-u", "1", "-t", "1s", "--host", "ws://127.0.0.1:9", "--profile-mix", mix],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--profile-mix" in proc.stderr and reason in proc.stderr, proc.stderr[-2000:]
