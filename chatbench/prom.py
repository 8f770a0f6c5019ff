"""A real Prometheus (the ``prometheus`` binary, e.g. Debian's 2.42) for one run, its data kept with the results.

    with PrometheusProcess({SERVER_JOB: ["127.0.0.1:8766"]}, data_dir=Path("results/run-1.prometheus"),
                           labels={"run_id": "run-1"}) as prom:
        ...                                   # generate load; Prometheus scrapes every second
        prom.query("sum(rate(chat_deliveries_total[5s]))")

``data_dir`` receives the generated ``prometheus.yml``, the TSDB (``tsdb/``) and the log; the TSDB stays
when Prometheus stops, so a run can be looked at again later: ``PrometheusProcess.reopen(data_dir)`` starts
one on the kept data without scraping anything. Every target carries ``labels`` (the run id) as target
labels, which is how the dashboards tell runs apart. Only the process started here is signalled, by PID.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from drivers.admin import urlopen_direct
from drivers.subprocs import free_port, log_tail, stop_process

# Job names: the dashboards and dashboards/prometheus.yml use the same ones.
BINARY = "prometheus"
# Kept results are looked at long after the run: never let retention delete them on reopen.
RETENTION = "10y"


class PrometheusError(RuntimeError):
    """Prometheus did not start, or a query failed (bad PromQL, HTTP error)."""


def available(binary: str = BINARY) -> bool:
    return shutil.which(binary) is not None


def scrape_config(targets: Mapping[str, Sequence[str]], *, labels: Mapping[str, str] | None = None,
                  interval: str = "1s") -> dict[str, Any]:
    """A Prometheus configuration: one job per key of ``targets`` (host:port, path /metrics), ``labels`` on all."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addrs), "labels": dict(labels or {})}]}
            for job, addrs in targets.items() if addrs
        ],
    }


class PrometheusProcess:
    """``prometheus`` on a free loopback port, with its own config and ``--storage.tsdb.path`` under ``data_dir``.

    ``targets`` maps a job name to ``host:port`` addresses; ``labels`` become target labels of every series.
    The config is written as JSON (YAML is a superset of JSON), so no YAML library is needed.
    """

    def __init__(self, targets: Mapping[str, Sequence[str]], *, data_dir: Path,
                 labels: Mapping[str, str] | None = None, interval: str = "1s", port: int | None = None,
                 binary: str = BINARY) -> None:
        self.targets = {job: list(addrs) for job, addrs in targets.items()}
        self.labels = dict(labels or {})
        self.interval = interval
        self.data_dir = data_dir
        self.config_path = data_dir / "prometheus.yml"
        self.tsdb_path = data_dir / "tsdb"
        self.log_path = data_dir / "prometheus.log"
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def reopen(cls, data_dir: Path, **kw: Any) -> PrometheusProcess:
        """A Prometheus over the TSDB kept in ``data_dir``, scraping nothing (to query a finished run)."""
        return cls({}, data_dir=data_dir, **kw)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> PrometheusProcess:
        if not available(self.binary):
            raise PrometheusError(f"no {self.binary!r} on PATH (Debian: apt-get install prometheus)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = scrape_config(self.targets, labels=self.labels, interval=self.interval)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        cmd = [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.tsdb_path}",
               f"--storage.tsdb.retention.time={RETENTION}", f"--web.listen-address=127.0.0.1:{self.port}",
               "--log.level=warn"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(f"prometheus did not become ready (exit {self.proc.returncode}); "
                                      f"log:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with urlopen_direct(f"{self.url}/-/ready", timeout=1) as resp:
                return int(resp.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (Prometheus flushes its head and WAL), SIGKILL after ``timeout``. Returns the exit code."""
        return stop_process(self.proc, timeout)

    def __enter__(self) -> PrometheusProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- HTTP API

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/PATH; returns ``data``. Raises PrometheusError with Prometheus' own message on failure."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urlopen_direct(url, timeout=30) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry a JSON error body
            try:
                body = json.load(exc)
            except ValueError:
                raise PrometheusError(f"{url}: HTTP {exc.code}") from exc
        except OSError as exc:
            raise PrometheusError(f"{url}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} ({params.get('query', path)})")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result vector (or [] for none). Scalars come back as one unlabelled sample."""
        data = self.api("query", query=expr, **({"time": at} if at is not None else {}))
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def value(self, expr: str, at: float | None = None) -> float:
        """The value of a query that returns one sample (e.g. ``sum(...)``); NaN when it returns none."""
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else math.nan

    def wait_for(self, expr: str, timeout: float = 20.0, *, min_value: float | None = None) -> float:
        """Poll until ``expr`` returns a sample (at least ``min_value`` if given); returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.value(expr)
            if not math.isnan(v) and (min_value is None or v >= min_value):
                return v
            if time.monotonic() > deadline:
                raise PrometheusError(f"timed out after {timeout} s waiting for {expr!r} (last value {v})")
            time.sleep(0.25)
