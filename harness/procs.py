"""Start and stop the system under test as child processes: the reference server (used by the CLI, tests and
benchmarks) and a throwaway Redis. Only processes started here are ever signalled, always by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType

from drivers.admin import AdminClient
from drivers.subprocs import die_with_parent, free_port, log_tail, stop_process
from harness.cpuquota import CpuQuota
from reference_server.protocol import DEV_ADMIN_TOKEN, DEV_SECRET

READY = re.compile(r"chatbench server ready ws=(\S+) admin=(\S+)")
#: the server's defaults (loopback benchmarking only), which the servers started here keep
ADMIN_TOKEN = DEV_ADMIN_TOKEN
SECRET = DEV_SECRET
REPO = Path(__file__).resolve().parents[1]

__all__ = ["ADMIN_TOKEN", "REPO", "SECRET", "RedisProcess", "ServerProcess", "ServerStartError", "die_with_parent",
           "free_port", "log_tail", "stop_process"]


class ServerStartError(RuntimeError):
    """The server exited or did not print its ready line in time."""


class ServerProcess:
    """``python -m reference_server`` on free loopback ports with its own database (unless given).

    ``port``/``admin_port``: None picks a free port before the start; 0 lets the server bind one itself (no race
    with other processes); either way ``port``, ``admin_port``, ``ws_url`` and ``admin_url`` hold the real ones
    once started. ``cpu`` pins the server to one core. ``new_session`` starts it in its own session, so a
    terminal's Ctrl-C reaches only the caller, which then stops it in order. ``die_with_parent`` has the kernel
    SIGTERM it if the thread that started it ends (PR_SET_PDEATHSIG; start it from a long-lived thread).
    """

    def __init__(self, *args: str, db_path: Path | None = None, cpu: int | None = None, cpu_quota: float | None = None,
                 log_path: Path | None = None, port: int | None = None, admin_port: int | None = None,
                 new_session: bool = False, die_with_parent: bool = False) -> None:
        # without db_path: a temp dir for the database and the log, removed by cleanup() (or when this object
        # is collected, or at exit) unless cleanup(keep=True)
        base = Path(tempfile.mkdtemp(prefix="chatbench-")) if db_path is None else db_path.parent
        self._tmp = weakref.finalize(self, shutil.rmtree, base, ignore_errors=True) if db_path is None else None
        self.db_path = db_path or base / "chat.db"
        self.log_path = log_path or base / "server.log"
        self.args = list(args)
        self.cpu = cpu
        self.cpu_quota = cpu_quota  # cores (a cgroup quota, harness/cpuquota.py); None: no quota
        self._quota: CpuQuota | None = None
        self.port = free_port() if port is None else port
        self.admin_port = free_port() if admin_port is None else admin_port
        self.new_session = new_session
        self.die_with_parent = die_with_parent
        self.cmd: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.ws_url = ""
        self.admin_url = ""
        self.ready_line = ""
        self.admin: AdminClient | None = None
        self._stdout_lines: list[str] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "reference_server", "--port", str(self.port), "--admin-port",
               str(self.admin_port), "--db-path", str(self.db_path), *self.args]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        self.cmd = cmd
        env = dict(os.environ)  # the server runs this checkout's code, installed or not
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, bufsize=1, env=env,
            start_new_session=self.new_session, preexec_fn=die_with_parent if self.die_with_parent else None,
        )
        log.close()
        if self.cpu_quota is not None:
            self._quota = CpuQuota(self.cpu_quota, f"chatbench-server-{self.proc.pid}")
            try:
                self._quota.apply(self.proc.pid)
            except BaseException:
                self.stop()
                raise
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self._stdout_lines.append(line)
                m = READY.search(line)
                if m and not ready.is_set():
                    self.ws_url, self.admin_url = m.group(1), m.group(2)
                    if self.ws_url != "none":  # a cluster's logic node has no WebSocket port
                        self.port = int(self.ws_url.rsplit(":", 1)[1])
                    self.admin_port = int(self.admin_url.rsplit(":", 1)[1])
                    self.ready_line = line.strip()
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"server did not start (exit {self.proc.returncode}); log:\n{self.log_tail()}")
        self.admin = AdminClient(self.admin_url, ADMIN_TOKEN)
        return self

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful: flush, close 1001), then SIGKILL after timeout. Returns the exit code."""
        code = stop_process(self.proc, timeout)
        if self._quota is not None:
            self._quota.remove()
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def cleanup(self, keep: bool = False) -> None:
        """stop(); then remove the temp dir this object made, unless keep (to look at the db and the log)."""
        self.stop()
        if self._tmp is not None:
            if keep:
                self._tmp.detach()
            else:
                self._tmp()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.cleanup()


class RedisProcess:
    """A throwaway ``redis-server`` (Debian package) on a free loopback port, no persistence."""

    def __init__(self, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisProcess:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServerStartError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        stop_process(self.proc, timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
