"""Dashboards as code: the committed JSON is what the code generates; the Prometheus configs are valid; the
upload sends what a Grafana expects; ``chatbench run --prometheus`` keeps a queryable TSDB with the results."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import dashboards
from chatbench.cli import main as chatbench_main
from chatbench.grafana import push
from chatbench.prom import PrometheusProcess, available, scrape_config
from dashboards.__main__ import main as dashboards_main
from dashboards.promql import SERVER_JOB, SWARM_JOB
from harness.procs import REPO

GRAFANA_BUILTINS = {"__rate_interval", "__range", "__interval"}


def test_committed_json_is_what_the_code_generates() -> None:
    wanted = dashboards.generate()
    have = {p.name: p.read_text() for p in dashboards.JSON_DIR.glob("*.json")}
    assert have == wanted, "dashboards/json is stale: run python -m dashboards"


def test_check_fails_on_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(dashboards.JSON_DIR, tmp_path, dirs_exist_ok=True)
    assert dashboards_main(["--check", "--out", str(tmp_path)]) == 0
    edited = tmp_path / "overview.json"
    edited.write_text(edited.read_text().replace("Connections", "Connexions", 1))
    assert dashboards_main(["--check", "--out", str(tmp_path)]) == 1
    assert "Connexions" in capsys.readouterr().out  # the diff is printed
    assert dashboards_main(["--out", str(tmp_path)]) == 0  # regenerating repairs it
    assert dashboards_main(["--check", "--out", str(tmp_path)]) == 0


def test_python_m_dashboards_check() -> None:
    proc = subprocess.run([sys.executable, "-m", "dashboards", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboards_are_well_formed() -> None:
    boards = dashboards.load()
    assert set(boards) == {f"{n}.json" for n in dashboards.DASHBOARDS}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        defined = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource", "run_id", "fanout", "storage", "unread", "offline"} <= defined, name
        ids = [p["id"] for p in board["panels"]]
        assert ids == list(range(1, len(ids) + 1)), name
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
        exprs += [a["expr"] for a in board["annotations"]["list"]]
        assert exprs, name
        for expr in exprs:
            used = set(re.findall(r"\$\{?(\w+)", expr))
            assert used <= defined | GRAFANA_BUILTINS, (name, used - defined, expr)
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
                assert panel.get("description"), panel["title"]


def test_configuration_is_joined_not_labelled() -> None:
    """Server series are filtered by mode only through chat_server_info, never by a mode label of their own."""
    for board in dashboards.load().values():
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                for selector in re.findall(r"(chat_(?!server_info)\w+)\{([^}]*)\}", t["expr"]):
                    assert not re.search(r"\b(fanout|storage|unread|offline)=", selector[1]), t["expr"]


promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (apt-get install prometheus)")


@promtool
def test_promtool_checks_the_shipped_config() -> None:
    proc = subprocess.run(["promtool", "check", "config", "dashboards/prometheus.yml"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (REPO / "dashboards" / "prometheus.yml").read_text()
    assert f"job_name: {SERVER_JOB}" in text and f"job_name: {SWARM_JOB}" in text


@promtool
def test_promtool_checks_a_generated_config(tmp_path: Path) -> None:
    """What chatbench.prom writes (JSON, a subset of YAML) is a valid Prometheus configuration."""
    config = scrape_config({SERVER_JOB: ["127.0.0.1:8766", "127.0.0.1:8767"], SWARM_JOB: ["127.0.0.1:9646"]},
                           labels={"run_id": "r1"})
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))
    proc = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_provisioning_points_at_the_generated_json() -> None:
    prov = REPO / "dashboards" / "provisioning"
    provider = (prov / "dashboards" / "chatbench.yml").read_text()
    assert "path: ${CHATBENCH_DIR}/dashboards/json" in provider
    datasource = (prov / "datasources" / "chatbench.yml").read_text()
    assert "type: prometheus" in datasource and "timeInterval: 1s" in datasource


# -- upload. No Grafana server can be installed on these machines (not in Debian, PyPI or npm), so the upload is
# checked against a local HTTP endpoint that answers like Grafana's API and records every request.


class _FakeGrafana(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]]
    folders: dict[str, dict[str, Any]]

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append({"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"),
                              "body": body})
        return body

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record()
        uid = self.path.removeprefix("/api/folders/")
        if self.path.startswith("/api/folders/") and uid in self.folders:
            self._reply(200, self.folders[uid])
        else:
            self._reply(404, {"message": "folder not found"})

    def do_POST(self) -> None:
        body = self._record()
        if self.path == "/api/folders":
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "id": 7}
            self._reply(200, self.folders[body["uid"]])
        elif self.path == "/api/dashboards/db":
            uid = body["dashboard"]["uid"]
            self._reply(200, {"status": "success", "uid": uid, "url": f"/d/{uid}", "version": 1, "id": 1})
        else:
            self._reply(404, {"message": "not found"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_grafana() -> Iterator[tuple[str, type[_FakeGrafana]]]:
    handler = type("Handler", (_FakeGrafana,), {"requests": [], "folders": {}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_push_creates_the_folder_and_overwrites_every_dashboard(fake_grafana: tuple[str, type[_FakeGrafana]]) -> None:
    url, grafana = fake_grafana
    boards = dashboards.load()
    answers = push(url, "glsa_test_token", boards)
    assert [a["status"] for a in answers] == ["success"] * len(boards)
    reqs = grafana.requests
    assert all(r["auth"] == "Bearer glsa_test_token" for r in reqs)
    assert [(r["method"], r["path"]) for r in reqs[:2]] == [("GET", "/api/folders/chatbench"), ("POST", "/api/folders")]
    assert reqs[1]["body"] == {"title": "chatbench", "uid": "chatbench"}
    uploads = [r["body"] for r in reqs if r["path"] == "/api/dashboards/db"]
    assert len(uploads) == len(boards)
    for sent, board in zip(uploads, boards.values(), strict=True):
        assert sent["folderUid"] == "chatbench"
        assert sent["overwrite"] is True
        assert sent["dashboard"]["id"] is None  # matched by uid, never by another Grafana's numeric id
        assert {k: v for k, v in sent["dashboard"].items() if k != "id"} == board

    # a second push finds the folder and overwrites in place: no second folder
    grafana.requests.clear()
    push(url, "glsa_test_token", boards)
    assert [r["path"] for r in grafana.requests].count("/api/folders") == 0


def test_cli_push(fake_grafana: tuple[str, type[_FakeGrafana]], monkeypatch: pytest.MonkeyPatch) -> None:
    url, grafana = fake_grafana
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert chatbench_main(["dashboards", "push", "--url", url, "--token", "t0k", "--folder", "load tests"]) == 0
    assert grafana.requests[1]["body"] == {"title": "load tests", "uid": "chatbench"}
    assert sum(r["path"] == "/api/dashboards/db" for r in grafana.requests) == len(dashboards.DASHBOARDS)


# -- chatbench run --prometheus


@pytest.mark.integration
@pytest.mark.skipif(not available(), reason="needs the prometheus binary (apt-get install prometheus)")
def test_run_keeps_prometheus_data_with_the_results(tmp_path: Path) -> None:
    result = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chatbench.cli", "run", "smoke", "-u", "4", "-r", "4", "-t", "6s", "--prometheus",
         "--accept-invalid", "--json", str(result), "--locust-arg=--results-dir", f"--locust-arg={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(result.read_text())
    data_dir = Path(summary["prometheus"]["data_dir"])
    assert data_dir == tmp_path / "run.prometheus"
    assert (data_dir / "tsdb").is_dir()
    run_id = summary["prometheus"]["run_id"]
    with PrometheusProcess.reopen(data_dir) as prom:  # the kept data, served again, nothing scraped
        sent = prom.value(f'max(max_over_time(chat_messages_accepted_total{{run_id="{run_id}"}}[1h]))')
        assert sent >= summary["messages"] > 0
        # the swarm's own series too: the acks it counted, never more than the server accepted
        acked = prom.value(f'max(max_over_time(chatbench_messages_sent_total{{run_id="{run_id}"}}[1h]))')
        assert 0 < acked <= sent
