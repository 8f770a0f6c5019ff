"""Integration: every panel query of every committed dashboard, evaluated by a real Prometheus scraping a real
server and a real Locust swarm (a small reconnect storm with 30 % of its members behind the wifi impairing proxy,
exporting chatbench_* on --metrics-port, phases and profiles included), while real WebSocket clients add what the
scenario does not do (reconnects with sync, an error frame, a refused handshake). Targets over bus series (only a
cluster has a bus) are evaluated against a second Prometheus scraping a real 2-gateway broadcast cluster on Redis.

Template variables are substituted the way Grafana would (run id and modes of this run, All = ``.*``,
``${split:csv}`` = every mode label). Each target must return at least one finite sample; none is skipped.
Nothing is ever written into Prometheus but what the processes themselves export.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dashboards
from chatbench.prom import PrometheusError, PrometheusProcess, available
from dashboards.promql import SERVER_JOB, SWARM_JOB
from drivers.client import ChatClient, ConnectRefused, ServerError
from harness.cluster import Cluster
from harness.procs import ADMIN_TOKEN, REPO, SECRET, ServerProcess, free_port
from reference_server.protocol import user_token

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="needs the prometheus binary (apt-get install prometheus)"),
]

# Grafana's $__rate_interval for a 1 s scrape interval: max(4 × scrape interval, step + scrape interval)
RATE_INTERVAL = "4s"
MEMBERS = 16
FIRST_UID = 500_001  # clear of the swarm's uids (worker w: w * 1,000,000 + 1 ...)
GID = 1
#: series only a cluster exports (the embedded server has no bus): their targets are checked against a second,
#: cluster run (Redis + logic node + 2 gateways in broadcast mode) scraped by its own Prometheus
CLUSTER_ONLY = ("chat_bus_",)
METRIC = re.compile(r"\b(chat(?:bench)?_[a-z0-9_]+)")


@dataclass(frozen=True)
class Target:
    file: str
    panel: str
    ref: str
    expr: str
    instant: bool

    @property
    def id(self) -> str:
        return f"{self.file.removesuffix('.json')}:{self.panel}:{self.ref}"


def _targets() -> list[Target]:
    out = []
    for file, board in dashboards.load().items():
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                out.append(Target(file, panel["title"], t["refId"], t["expr"], bool(t.get("instant"))))
    return out


TARGETS = _targets()


@dataclass
class Observed:
    prom: PrometheusProcess
    run_id: str
    modes: dict[str, str]
    start: float
    end: float
    names: set[str]


def _swarm(srv: ServerProcess, port: int, results: Path) -> subprocess.Popen[str]:
    """A reconnect storm (phases; catch-up after the storm), headless, one process, 30 % of the members behind the
    wifi proxy (profile labels), its generator metrics on ``port``."""
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "scenarios" / "reconnect_storm.py"), "--headless",
           "--only-summary", "--members", "12", "--connect-rate", "100", "--senders", "2", "--rate", "10",
           "--offline-pct", "50", "--steady-s", "2", "--offline-s", "2", "--storm-s", "3", "--tail-s", "1",
           "--profile-mix", "wifi:30", "--host", srv.ws_url, "--admin-url", srv.admin_url,
           "--admin-token", ADMIN_TOKEN, "--chat-secret", SECRET, "--results-dir", str(results),
           "--metrics-port", str(port), "--stop-timeout", "3",
           # fan-out completion is exported as messages settle, --fanout-settle-s after their send (30 s by
           # default, so that late receivers still count): this run is shorter than that
           "--fanout-settle-s", "1"]
    return subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _traffic(srv: ServerProcess, seconds: float) -> None:
    """Members send, receive, read, ask unread counts; a third of them drop and reconnect and catch up by sync;
    one sends to a group it is not in (an error frame); one handshake is refused (bad token)."""
    assert srv.admin is not None
    uids = list(range(FIRST_UID, FIRST_UID + MEMBERS))
    srv.admin.create_users(FIRST_UID, MEMBERS)
    srv.admin.create_groups({GID: uids})
    last_seq: dict[int, int] = {}
    lock = threading.Lock()

    def client(uid: int) -> ChatClient:
        def on_message(frame: dict[str, Any]) -> None:
            with lock:
                last_seq[uid] = max(last_seq.get(uid, 0), int(frame["seq"]))

        c = ChatClient(srv.ws_url, uid, user_token(SECRET, uid), on_message=on_message, heartbeat_s=None)
        c.connect()
        return c

    clients = {uid: client(uid) for uid in uids}
    senders, reader, stormers = uids[:3], uids[3], uids[MEMBERS // 3:]
    try:
        with pytest.raises(ConnectRefused):
            ChatClient(srv.ws_url, reader, "forged", heartbeat_s=None).connect()
        with pytest.raises(ServerError):
            clients[reader].send(GID + 1, "not a member here")
        stormed = False
        t0 = time.monotonic()
        i = 0
        while (elapsed := time.monotonic() - t0) < seconds:
            for uid in senders:
                clients[uid].send(GID, f"m{i}")
            i += 1
            if i % 5 == 0:
                clients[reader].read(GID, last_seq.get(reader, 0))
                clients[reader].unread([GID])
            if not stormed and elapsed > seconds / 2:  # a small reconnect storm
                stormed = True
                for uid in stormers:
                    clients[uid].close()
                time.sleep(1.5)  # the traffic's shape: offline for more than one scrape, while the others send
                for uid in stormers:
                    clients[uid] = client(uid)
                    clients[uid].sync_all(GID, last_seq.get(uid, 0))
            time.sleep(0.1)  # the traffic's shape: about 30 messages a second, spread over the scrapes
    finally:
        for c in clients.values():
            c.close()


def _two_more_scrapes(prom: PrometheusProcess, run_id: str) -> None:
    """Until every target of the run has been scraped twice more from now: the last rates are in."""
    scrapes = f'min(count_over_time(up{{run_id="{run_id}"}}[1h]))'
    prom.wait_for(scrapes, min_value=prom.value(scrapes) + 2)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp: Path = tmp_path_factory.mktemp("prom")
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    with ServerProcess(db_path=tmp / "chat.db") as srv:
        assert srv.admin is not None
        modes = {k: str(v) for k, v in srv.admin.health()["modes"].items()}
        port = free_port()
        targets = {SERVER_JOB: [f"127.0.0.1:{srv.admin_port}"], SWARM_JOB: [f"127.0.0.1:{port}"]}
        with PrometheusProcess(targets, data_dir=tmp / "prometheus", labels={"run_id": run_id}) as prom:
            # Prometheus scrapes before the swarm starts: its first phases (2 s each) fall before a Prometheus
            # that is still starting (5-6 s here) takes its first scrape (a full-suite run missed "steady")
            prom.wait_for(f'count(up{{run_id="{run_id}",job="{SERVER_JOB}"}} == 1)', min_value=1)
            start = time.time()
            swarm = _swarm(srv, port, tmp)
            try:
                _traffic(srv, seconds=7.0)
                out, _ = swarm.communicate(timeout=60)
                assert swarm.returncode == 0, f"locust exit {swarm.returncode}:\n{out[-3000:]}"
            finally:
                if swarm.poll() is None:
                    swarm.kill()
                    swarm.wait()
            accepted = f'chat_messages_accepted_total{{run_id="{run_id}"}}'
            # the traffic is over: Prometheus comes to hold exactly what the server counted
            line = re.search(r"^chat_messages_accepted_total (\S+)$", srv.admin.metrics_text(), re.M)
            assert line is not None
            counted = float(line[1])
            assert counted >= 1 and prom.wait_for(accepted, min_value=counted) == counted
            prom.wait_for(f"count_over_time({accepted}[1m])", min_value=3)
            _two_more_scrapes(prom, run_id)
            yield Observed(prom, run_id, modes, start - 2, time.time(), prom.metric_names())


@pytest.fixture(scope="module")
def observed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """A broadcast cluster (Redis, logic node, 2 gateways), every node scraped, members on both gateways."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server missing (apt-get install redis-server): the bus panels need a cluster run")
    tmp: Path = tmp_path_factory.mktemp("prom-cluster")
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(2, fanout="broadcast").start()
    try:
        assert cluster.logic is not None
        modes = {k: str(v) for k, v in cluster.admin.health()["modes"].items()}
        nodes = [cluster.logic, *cluster.gateways]
        targets = {SERVER_JOB: [f"127.0.0.1:{n.admin_port}" for n in nodes]}
        with PrometheusProcess(targets, data_dir=tmp / "prometheus", labels={"run_id": run_id}) as prom:
            prom.wait_for(f'count(up{{run_id="{run_id}"}} == 1)', min_value=len(nodes))  # counters seen at 0
            start = time.time()
            uids = list(range(1, 9))
            cluster.admin.create_users(1, len(uids))
            cluster.admin.create_groups({GID: uids})
            clients = [ChatClient(cluster.gateways[uid % 2].ws_url, uid, user_token(SECRET, uid), heartbeat_s=None)
                       for uid in uids]
            try:
                for c in clients:
                    c.connect()
                for i in range(40):
                    clients[i % 3].send(GID, f"m{i}")
                    time.sleep(0.1)  # the traffic's shape: 10 messages a second, spread over the scrapes
            finally:
                for c in clients:
                    c.close()
            received = f'chat_bus_received_total{{run_id="{run_id}"}}'
            prom.wait_for(f"sum({received})", min_value=1)
            prom.wait_for(f"count_over_time(chat_messages_accepted_total{{run_id=\"{run_id}\"}}[1m])", min_value=3)
            _two_more_scrapes(prom, run_id)
            yield Observed(prom, run_id, modes, start - 2, time.time(), prom.metric_names())
    finally:
        cluster.stop()


def substitute(expr: str, obs: Observed, *, instant: bool) -> str:
    """Grafana's interpolation for this run: the run id and its modes selected, every mode label split on."""
    values = {"run_id": obs.run_id, **obs.modes, "profile": ".*"}
    expr = expr.replace("${split:csv}", "fanout,storage,unread,offline")
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    expr = expr.replace("$__range", f"{math.ceil(obs.end - obs.start)}s")
    for name, value in values.items():
        assert re.fullmatch(r"[\w.*-]+", value), value  # nothing to escape inside a PromQL regex string
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def cluster_only(t: Target) -> bool:
    return any(name.startswith(CLUSTER_ONLY) for name in METRIC.findall(t.expr))


@pytest.mark.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])
def test_panel_query_returns_data(request: pytest.FixtureRequest, target: Target) -> None:
    observed: Observed = request.getfixturevalue("observed_cluster" if cluster_only(target) else "observed")
    expr = substitute(target.expr, observed, instant=target.instant)
    try:
        if target.instant:
            series = observed.prom.query(expr, at=observed.end)
            samples = [float(s["value"][1]) for s in series]
        else:
            series = observed.prom.query_range(expr, observed.start, observed.end, step=1)
            samples = [float(v) for s in series for _, v in s["values"]]
    except PrometheusError as exc:
        pytest.fail(f"{target.id}: Prometheus rejected the query: {exc}\n{expr}")
    assert series, f"{target.id}: no series\n{expr}"
    assert any(math.isfinite(v) for v in samples), f"{target.id}: only NaN/Inf\n{expr}"


def test_variables_and_annotations(observed: Observed) -> None:
    """The run id and mode variables offer this run's values; every annotation query is valid PromQL; every board
    marks the run's phases (those of 2 s or more: at a 1 s scrape interval a shorter one may fall between two
    scrapes), and none marks a gateway restart (there was none)."""
    prom = observed.prom
    assert observed.run_id in prom.api("label/run_id/values", **{"match[]": f'chat_server_info{{job="{SERVER_JOB}"}}'})
    for mode, value in observed.modes.items():
        assert prom.api(f"label/{mode}/values", **{"match[]": f'chat_server_info{{run_id="{observed.run_id}"}}'}) \
            == [value]
    for file, board in dashboards.load().items():
        annotations = board["annotations"]["list"]
        assert "scenario phases" in [a["name"] for a in annotations], file
        for a in annotations:
            series = prom.query_range(substitute(a["expr"], observed, instant=False), observed.start, observed.end,
                                      step=1)
            if a["name"] == "scenario phases":
                assert {"steady", "offline", "storm"} <= {s["metric"]["phase"] for s in series}, (file, series)
            elif a["name"] == "gateway restarts":
                assert series == [], (file, series)


def test_every_server_metric_is_documented(observed: Observed) -> None:
    """docs/metrics.md names every chat_* family the server exports (a new counter needs a row there)."""
    doc = (REPO / "docs" / "metrics.md").read_text()
    families = {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in observed.names if n.startswith("chat_")}
    missing = sorted(f for f in families if f"`{f}" not in doc)
    assert not missing, f"docs/metrics.md does not describe: {missing}"


def test_generated_queries_cover_the_run(observed: Observed) -> None:
    """Sanity of the join: deliveries per message equals what the server counted (fan-out to online members)."""
    board = dashboards.load()["modes.json"]
    panel = next(p for p in board["panels"] if p["title"] == "Deliveries per message")
    expr = substitute(panel["targets"][0]["expr"], observed, instant=True)
    ratio = observed.prom.value(expr, at=observed.end)
    assert 1 <= ratio <= MEMBERS - 1, ratio


def test_phases_and_profiles_reach_prometheus(observed: Observed) -> None:
    """The generator exports the scenario's phases (the annotation source) and splits by network profile."""
    prom = observed.prom
    sel = f'run_id="{observed.run_id}"'
    assert set(prom.api("label/profile/values", **{"match[]": f"chatbench_delivery_latency_seconds_count{{{sel}}}"})) \
        == {"direct", "wifi"}
    phases = prom.api("label/phase/values", **{"match[]": f"chatbench_phase{{{sel}}}"})
    assert {"steady", "offline", "storm", "tail"} <= set(phases), phases
    assert prom.value(f'max_over_time(chatbench_phase{{{sel}, phase="storm"}}[1h])', at=observed.end) == 1
    members = prom.value(f"sum(max_over_time(chatbench_profile_members{{{sel}}}[1h]))", at=observed.end)
    assert members == 12
