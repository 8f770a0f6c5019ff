"""Start and stop the reference server as a child process (used by the CLI, tests and benchmarks).

Only processes started here are ever signalled, always by PID.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from drivers.admin import AdminClient

READY = re.compile(r"chatbench server ready ws=(\S+) admin=(\S+)")
ADMIN_TOKEN = "chatbench-dev-admin"
SECRET = "chatbench-dev-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m reference_server`` on free loopback ports with its own database (unless given)."""

    def __init__(self, *args: str, db_path: Path | None = None, cpu: int | None = None,
                 log_path: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="chatbench-") if db_path is None else None
        base = Path(self._tmp.name) if self._tmp else db_path.parent  # type: ignore[union-attr]
        self.db_path = db_path or base / "chat.db"
        self.log_path = log_path or base / "server.log"
        self.args = list(args)
        self.cpu = cpu
        self.port = free_port()
        self.admin_port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.ws_url = ""
        self.admin_url = ""
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
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        log.close()
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self._stdout_lines.append(line)
                m = READY.search(line)
                if m:
                    self.ws_url, self.admin_url = m.group(1), m.group(2)
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start (exit {self.proc.returncode}); log:\n{self.log_tail()}")
        self.admin = AdminClient(self.admin_url, ADMIN_TOKEN)
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful: flush, close 1001), then SIGKILL after timeout. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.cleanup()
