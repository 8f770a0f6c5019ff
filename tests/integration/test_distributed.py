"""Integration: Locust's distributed engine as separate processes — a master and two workers, the workers' clocks
shifted with libfaketime, in one test each process in its own network namespace — and the runs that must be
invalid: clocks left uncorrected, nothing listening, a worker lost mid-run, a worker whose open-file limit cannot
hold its members (docs/distributed.md).

Offsets are reference − worker (drivers/clock.py): a worker whose clock runs 50 ms ahead reads −50 ms. A worker's
clock is shifted with ``DONT_FAKE_MONOTONIC=1 FAKETIME_FORCE_MONOTONIC_FIX=0 faketime -f +0.05s`` (Debian package
faketime): its wall clock moves, its monotonic clock (Locust's and gevent's timers) does not. The second variable
turns off libfaketime's "monotonic fix" (README, "Known dependency defects"): with it, every timed condition wait —
CPython's GIL hand-over between the swarm's thread and the receive engine's — ends tens of ms to seconds late.

Every wait polls a condition with a deadline; every process is started here and stopped by its PID.
"""

from __future__ import annotations

import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.procs import REPO, ServerProcess, free_port, log_tail, stop_process
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

SCENARIO = REPO / "scenarios" / "large_group_burst.py"
#: see test_shifted_clocks_are_corrected for the choice: 10 members, 4 open-model senders, 20 messages/s for 4 s
LOAD = ("--members", "10", "--senders", "4", "--rate", "20", "--burst-s", "4", "--settle-s", "0.5", "--tail-s", "0.5",
        "--connect-rate", "400", "--quiet-s", "1", "--flush-timeout-s", "15")
#: the server's durable write without an fsync per message (WAL, synchronous=normal): a few ms less of latency
#: that only adds run-to-run noise here
SERVER_ARGS = ("--sqlite-synchronous", "normal")
SHIFTS = ("+0.05s", "-0.03s")  # worker 0's clock 50 ms ahead, worker 1's 30 ms behind
TRUE_OFFSET_MS = (-50.0, 30.0)  # reference − worker
PAIRS = 2  # unshifted/shifted runs, interleaved

needs_faketime = pytest.mark.skipif(shutil.which("faketime") is None,
                                    reason="faketime is not installed (scripts/system-deps: apt-get install faketime)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc); [] once it is gone."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def terminate(pids: Sequence[int], timeout: float = 10) -> None:
    """SIGTERM processes started (indirectly) here, by PID; SIGKILL those still alive after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        living = [p for p in pids if alive(p)]
        for pid in living:
            os.kill(pid, sig)
        try:
            wait_until(lambda living=living: not any(alive(p) for p in living), timeout, f"{living} to exit")
            return
        except AssertionError:
            continue


class Proc:
    """A process started here, its output in ``log``. Under ``faketime`` — which forks the program and does not pass
    signals on — the program is faketime's child, and :meth:`stop` stops that child first."""

    def __init__(self, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.log = log
        with log.open("w") as f:
            self.popen = subprocess.Popen(list(cmd), cwd=REPO, env={**_env(), **(env or {})}, stdout=f,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=preexec)
        self.wrapped = "faketime" in cmd

    def stop(self) -> int | None:
        if self.wrapped and self.popen.poll() is None:
            terminate(children(self.popen.pid))  # faketime exits with its program
        return stop_process(self.popen, 10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


READY = re.compile(r"(\S+) \(index (\d+)\) reported as ready")


@dataclass
class Outcome:
    record: dict[str, Any]
    rc: int  # the master's exit code
    workers: list[str]  # Locust client ids, in the order the workers were given
    worker_rcs: list[int | None] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]

    def clock(self, i: int) -> dict[str, Any]:
        """Worker i's clock figures: offset_ms, bound_ms (= its lowest probe round trip / 2), drift_ms, estimates."""
        return self.metrics["clock"]["workers"][self.workers[i]]

    def p50(self) -> float:
        return float(self.metrics["delivery_latency_ms"]["p50"])

    def describe(self) -> str:
        m = self.metrics
        clocks = ", ".join(f"w{i} {c['offset_ms']:+.3f} ms ±{c['bound_ms']:.3f} (drift {c['drift_ms']:.3f}, "
                           f"{c['estimates']} estimates)"
                           for i, c in enumerate(map(self.clock, range(len(self.workers)))))
        lat = m["delivery_latency_ms"]
        return (f"p50 {self.p50():.3f} ms (p90 {lat['p90']:.3f}), delivered {m['delivered']}/"
                f"{m['expected_deliveries']}, clocks: {clocks}; valid {m['valid']} {m['invalid_reasons']}")


def run_swarm(tmp: Path, server: ServerProcess, shifts: Sequence[str | None] = (None, None),
              extra: Sequence[str] = (), netns: Sequence[str] | None = None, master_ip: str = "127.0.0.1",
              nofile: int | None = None, timeout: float = 60) -> Outcome:
    """One headless large_group_burst run: a master and one worker per entry of ``shifts`` (a faketime offset, or
    None), each a separate process; with ``netns``, process i runs in namespace netns[i] (the master first); with
    ``nofile``, the workers' open-file limit (soft and hard). Workers start one after the other, each once the
    previous one is registered, so that worker i has Locust's index i and its client id is known."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    out = tmp / "record.json"

    def inside(i: int, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", netns[i], *cmd] if netns else cmd

    def limit() -> None:
        assert nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    locust = [sys.executable, "-m", "locust", "-f", str(SCENARIO)]
    procs: list[Proc] = []
    try:
        master = Proc(inside(0, [*locust, "--master", "--master-bind-host", master_ip, "--master-bind-port",
                                 str(port), "--expect-workers", str(len(shifts)), "--headless", "--host",
                                 server.ws_url, "--admin-url", server.admin_url, "--results-dir", str(tmp / "results"),
                                 "--chatbench-out", str(out), *LOAD, *extra]), tmp / "master.log")
        procs.append(master)
        workers: list[str] = []
        for i, shift in enumerate(shifts):
            cmd = [*locust, "--worker", "--master-host", master_ip, "--master-port", str(port)]
            env = None
            if shift is not None:
                cmd = ["faketime", "-f", shift, *cmd]
                env = {"DONT_FAKE_MONOTONIC": "1", "FAKETIME_FORCE_MONOTONIC_FIX": "0"}
            procs.append(Proc(inside(i + 1, cmd), tmp / f"worker{i}.log", env, limit if nofile else None))

            def registered(i: int = i) -> str | None:
                assert master.popen.poll() is None, f"the master exited:\n{log_tail(master.log)}"
                return {int(m[2]): m[1] for m in READY.finditer(master.text())}.get(i)

            workers.append(wait_until(registered, 30, f"worker {i} registered with the master", interval=0.05))
        try:
            rc = master.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the master did not finish in {timeout:g} s:\n{log_tail(master.log)}")
        for w in procs[1:]:  # a headless master tells its workers to quit when it ends
            try:
                w.popen.wait(15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{w.log.stem} did not exit after the master:\n{log_tail(w.log)}")
        assert out.exists(), f"no record (master exit {rc}):\n{log_tail(master.log, 60)}"
        return Outcome(orjson.loads(out.read_bytes()), rc, workers, [w.popen.returncode for w in procs[1:]],
                       {p.log.stem: log_tail(p.log, 30) for p in procs})
    finally:
        for p in procs:
            p.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(*SERVER_ARGS)


# --------------------------------------------------------------------------------------------------------------
# clocks


@needs_faketime
def test_shifted_clocks_are_corrected(server: ServerProcess, tmp_path: Path) -> None:
    """Workers at +50 ms and −30 ms: each offset reads back within its bound of the true shift, the run is valid,
    and delivery latency p50 is within 1 ms of the same run with unshifted workers.

    The load is chosen so that p50 is a property of the code, not of the machine: 10 members in one group (5 per
    worker), 4 open-model senders spread over both workers, 20 messages/s for 4 s — 720 deliveries, over half of
    them cross-worker (sent on one worker, received on the other, so their latency carries the full 80 ms between
    the two clocks unless corrected). Larger groups make p50 a measure of how busy the shared 2-core machine is
    (40 members: 4–7 ms from run to run, unshifted alike) and faketime's per-call cost starts to show; at 10 members
    p50 is ~2.5 ms and single runs agree within ~0.5 ms. Unshifted and shifted runs alternate, ``PAIRS`` of each,
    and their medians are compared, so a change of load on the machine hits both sides alike."""
    runs: dict[str, list[Outcome]] = {"unshifted": [], "shifted": []}
    for k in range(PAIRS):
        for name, shifts in (("unshifted", (None, None)), ("shifted", SHIFTS)):
            o = run_swarm(tmp_path / f"{name}{k}", server, shifts)
            print(f"{name} {k}: {o.describe()}")
            runs[name].append(o)
            m = o.metrics
            assert m["valid"], m["invalid_reasons"]
            assert o.rc == 0, o.logs["master"]
            assert m["lost"] == m["duplicated"] == m["reordered"] == 0
            assert m["delivered"] == m["expected_deliveries"] == 720
            assert m["latency_clamped"] == 0  # no latency left negative after correction
            true = TRUE_OFFSET_MS if name == "shifted" else (0.0, 0.0)
            for i, offset in enumerate(true):
                c = o.clock(i)
                assert c["bound_ms"] <= 1.0 and c["drift_ms"] <= 1.0  # --clock-bound-ms's default
                assert abs(c["offset_ms"] - offset) <= c["bound_ms"], (i, c, offset)
    p50 = {name: statistics.median(o.p50() for o in outcomes) for name, outcomes in runs.items()}
    print(f"median p50: unshifted {p50['unshifted']:.3f} ms, shifted {p50['shifted']:.3f} ms")
    assert abs(p50["shifted"] - p50["unshifted"]) <= 1.0, p50


@needs_faketime
def test_uncorrected_clocks_invalidate_the_run(server: ServerProcess, tmp_path: Path) -> None:
    """The same shifted run with --no-clock-correction: the offsets are measured and reported, the latencies are
    not corrected, and the run is invalid, naming each worker's offset and the flag."""
    o = run_swarm(tmp_path, server, SHIFTS, extra=["--no-clock-correction"])
    print(f"uncorrected: {o.describe()}")
    m = o.metrics
    assert not m["valid"]
    assert m["clock"]["corrected"] is False
    for i, offset in enumerate(TRUE_OFFSET_MS):
        c = o.clock(i)
        assert abs(c["offset_ms"] - offset) <= c["bound_ms"], (i, c)
        reason = (f"{o.workers[i]}: clock {c['offset_ms']:+.3f} ms off the master's and latencies not corrected "
                  "(--no-clock-correction)")
        assert reason in m["invalid_reasons"]
    # worker 0 → worker 1 deliveries come out 80 ms early, below zero: counted, and named as well
    assert m["latency_clamped"] > 0
    assert any("latencies outside the HDR range" in r for r in m["invalid_reasons"])


# --------------------------------------------------------------------------------------------------------------
# runs that did not do their planned work


def chatbench_run(tmp: Path, *args: str) -> Proc:
    """``chatbench run smoke`` (its own server, Locust as its child), its output in tmp/chatbench.log."""
    tmp.mkdir(parents=True, exist_ok=True)
    return Proc([sys.executable, "-m", "chatbench.cli", "run", "smoke", "--results-dir", str(tmp / "results"),
                 "--json", str(tmp / "summary.json"), *args], tmp / "chatbench.log")


def bundle_of(tmp: Path) -> dict[str, Any]:
    summary = orjson.loads((tmp / "summary.json").read_bytes())
    return dict(orjson.loads(Path(summary["bundle_path"]).read_bytes()))


def test_closed_port_is_invalid(tmp_path: Path) -> None:
    """Every connect refused (nothing listens on port 1): the run is invalid, says so, and chatbench exits 1."""
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", 1))
    run = chatbench_run(tmp_path, "-u", "10", "-r", "10", "-t", "3s", "--locust-arg=--host=ws://127.0.0.1:1")
    try:
        rc = run.popen.wait(90)
    finally:
        run.stop()
    m = bundle_of(tmp_path)["metrics"]
    print(f"closed port: {m['invalid_reasons']}")
    assert not m["valid"]
    assert "10 of 10 connects failed (> 0.1%)" in m["invalid_reasons"], m["invalid_reasons"]
    assert "nothing was sent" in m["invalid_reasons"]
    assert rc == 1, log_tail(run.log)
    assert "RUN INVALID" in run.text()


def socket_fds(pid: int) -> int:
    try:
        return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def test_lost_worker_is_invalid(tmp_path: Path) -> None:
    """chatbench run with two Locust worker processes; once both hold their members, one is killed (SIGKILL, by its
    PID): the master marks it missing after its heartbeats stop (~4 s), the run is invalid with that reason and
    chatbench exits 1."""
    run = chatbench_run(tmp_path, "-u", "20", "-r", "20", "-t", "12s", "--processes", "2",
                        "--locust-arg=--flush-timeout-s=10")
    started: list[int] = []
    try:
        def locust_workers() -> list[int] | None:
            assert run.popen.poll() is None, log_tail(run.log)
            for child in children(run.popen.pid):  # the server(s) and the locust master
                if b"locust" in Path(f"/proc/{child}/cmdline").read_bytes():
                    started[:] = [child]
                    workers = children(child)  # --processes 2: the master forks its two workers
                    started.extend(workers)
                    # each worker holds its 10 members' sockets (and one to the master) once they connected
                    return workers if len(workers) == 2 and all(socket_fds(w) > 10 for w in workers) else None
            return None

        workers = wait_until(locust_workers, 60, "two Locust workers holding their members", interval=0.05,
                             ignoring=(OSError,))
        os.kill(workers[0], signal.SIGKILL)
        rc = run.popen.wait(90)
    finally:
        run.stop()
        terminate(started)  # the locust master runs in its own session: it would outlive chatbench
    bundle = bundle_of(tmp_path)
    m = bundle["metrics"]
    print(f"lost worker: {m['invalid_reasons']}")
    assert not m["valid"]
    (lost,) = bundle["generator"]["workers_lost"]
    assert f"workers lost mid-run (missed heartbeats): ['{lost}']" in m["invalid_reasons"]
    assert bundle["generator"]["workers"] == 1 and not bundle["generator"]["finals_missing"]
    assert rc == 1, log_tail(run.log)


def test_open_file_limit_fails_the_worker_early(server: ServerProcess, tmp_path: Path) -> None:
    """A worker whose open-file limit (1,500) cannot hold its 600 members plus the margin stops before any member
    connects, naming the limit and the fix, with exit code 1; the master's run is invalid (the worker is lost)."""
    o = run_swarm(tmp_path, server, (None,), extra=["--members", "600"], nofile=1500)
    log = o.logs["worker0"]
    assert "open-file limit RLIMIT_NOFILE is 1500" in log and "needs at least 1600" in log, log
    assert "ulimit -n 1600" in log and "more worker processes (at most 500 per process" in log
    assert o.worker_rcs == [1]
    m = o.metrics
    assert not m["valid"]
    assert any("workers lost mid-run" in r for r in m["invalid_reasons"]), m["invalid_reasons"]
    assert o.record["requests"].get("connect", {"count": 0})["count"] == 0  # failed before any connect


# --------------------------------------------------------------------------------------------------------------
# generators on separate hosts: network namespaces


@dataclass
class Lan:
    """A bridge in the root namespace (the server's address) and one namespace per generator process on it."""

    namespaces: list[str]
    host_ip: str
    ips: list[str]


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _free_subnet() -> str:
    """A 10.231.N.0/24 no interface on this machine uses yet."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=10, check=True).stdout
    for _ in range(100):
        prefix = f"10.231.{secrets.randbelow(254) + 1}"
        if f" {prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.231.N.0/24")


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Three namespaces (master, worker 0, worker 1) with their own addresses on a private /24 on a bridge; the root
    namespace holds .1 (the server). Names unique per run; everything is deleted at teardown."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and `ip` (iproute2)")
    tag = secrets.token_hex(3)
    bridge = f"cbd{tag}"
    prefix = _free_subnet()
    namespaces = [f"chatbench-dist-{tag}-{role}" for role in ("master", "w0", "w1")]
    veths = [f"cbd{tag}h{i}" for i in range(len(namespaces))]
    ips = [f"{prefix}.{i + 2}" for i in range(len(namespaces))]
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{prefix}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for ns, veth, ip in zip(namespaces, veths, ips, strict=True):
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield Lan(namespaces, f"{prefix}.1", ips)
    finally:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
        for dev in (*veths, bridge):  # deleting a namespace removes its veth pair; these are gone or go now
            subprocess.run(["ip", "link", "del", dev], capture_output=True, timeout=10, check=False)


@needs_faketime
def test_generators_in_network_namespaces(lan: Lan, server_factory: Callable[..., ServerProcess],
                                          tmp_path: Path) -> None:
    """The master and each worker in its own network namespace with its own address (what separate hosts look like
    to the code: Locust's ZeroMQ and every member's WebSocket cross a veth and a bridge), the server on the bridge's
    address, worker 0's clock 50 ms ahead: the run is valid, both offsets within their bounds of the truth."""
    server = server_factory(*SERVER_ARGS, "--host", lan.host_ip)
    assert server.ws_url.startswith(f"ws://{lan.host_ip}:")
    o = run_swarm(tmp_path, server, (SHIFTS[0], None), netns=lan.namespaces, master_ip=lan.ips[0])
    print(f"namespaces {lan.namespaces} on {lan.host_ip}/24: {o.describe()}")
    m = o.metrics
    assert m["valid"], m["invalid_reasons"]
    assert m["delivered"] == m["expected_deliveries"] == 720
    for i, offset in enumerate((TRUE_OFFSET_MS[0], 0.0)):
        c = o.clock(i)
        assert c["bound_ms"] <= 1.0
        assert abs(c["offset_ms"] - offset) <= c["bound_ms"], (i, c)
    # the server listens on the bridge's address only, and each namespace has nothing but its veth: every member's
    # connection and every Locust message crossed a veth pair and the bridge
