"""Child processes the toolkit starts (servers, proxies, Redis, Prometheus): stop them by PID, tie their life to
the parent's, read their logs. Only processes started by the caller are ever signalled."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> int | None:
    """SIGTERM a child we started, SIGKILL it after ``timeout``; returns its exit code (None: never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the thread that started it ends (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
