"""What a result bundle records about where it was measured: per-process CPU, the machine, the git commit."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

REPO = Path(__file__).resolve().parents[1]  # the checkout whose commit a record names


def process_cpu_seconds(pid: int) -> float:
    """On-CPU seconds of a process: the sum over its live threads of /proc/PID/task/TID/schedstat field 1.

    Nanosecond precision (/proc/PID/stat, which psutil reads, counts 10 ms ticks). Threads that already ended
    are not in the sum. Returns 0.0 when schedstat cannot be read (kernel without it, process gone).
    """
    ns = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
    return ns / 1e9


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    freq = psutil.cpu_freq()
    return {
        "cpu_model": model or platform.processor(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_affinity_available": sorted(os.sched_getaffinity(0)),
        "cpu_mhz": freq.current if freq else None,
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "hostname": platform.node(),
        "open_files_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def git_info() -> dict[str, Any]:
    """The checkout's HEAD commit and whether the work tree has changes (None where git is unavailable)."""

    def git(*a: str) -> str | None:
        try:
            out = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}
