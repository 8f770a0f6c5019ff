"""A CPU quota for a server process: a cgroup that holds it to a fraction of one core (cfs quota / period).

A server with a known fraction of a core is a known capacity: a capacity search against a half-core server
should find about half of what the same configuration holds on a whole core. cgroup v1 (``/sys/fs/cgroup/cpu``)
and v2 (``cpu.max``) are supported; both need root. The group is removed when the process has ended.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

#: 10 ms: a throttled server waits at most one period minus its quota, so latency stays readable at 0.1 core
PERIOD_US: Final = 10_000
V1: Final = Path("/sys/fs/cgroup/cpu")
V2: Final = Path("/sys/fs/cgroup")


class CpuQuotaError(RuntimeError):
    """The quota cannot be applied here (no cgroup cpu controller, or not root)."""


#: the quotas that can be set: the kernel's smallest is 1 ms, 0.1 of the 10 ms period
MIN_CORES: Final = 0.1
MAX_CORES: Final = 64.0


def check_cores(fraction: float) -> float:
    if not MIN_CORES <= fraction <= MAX_CORES:
        raise CpuQuotaError(f"a CPU quota of {fraction:g} cores: give {MIN_CORES:g} .. {MAX_CORES:g}")
    return fraction


class CpuQuota:
    def __init__(self, fraction: float, name: str) -> None:
        check_cores(fraction)
        self.fraction = fraction
        self.quota_us = round(fraction * PERIOD_US)
        if (V1 / "cpu.cfs_quota_us").exists():
            self.path, self.v2 = V1 / name, False
        elif (V2 / "cgroup.controllers").exists() and "cpu" in (V2 / "cgroup.controllers").read_text().split():
            self.path, self.v2 = V2 / name, True
        else:
            raise CpuQuotaError("no cgroup cpu controller at /sys/fs/cgroup/cpu (v1) or /sys/fs/cgroup (v2)")

    def apply(self, pid: int) -> None:
        """Move ``pid`` (all its threads) into a new group holding it to the fraction."""
        try:
            self.path.mkdir(exist_ok=True)
            if self.v2:
                (self.path / "cpu.max").write_text(f"{self.quota_us} {PERIOD_US}\n")
            else:
                (self.path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
                (self.path / "cpu.cfs_quota_us").write_text(f"{self.quota_us}\n")
            (self.path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as e:
            self.remove()
            raise CpuQuotaError(f"cannot set a CPU quota in {self.path}: {e} (root is needed)") from None

    def remove(self) -> None:
        """Remove the group (its processes must have ended, or moved out)."""
        with contextlib.suppress(OSError):
            procs = (self.path / "cgroup.procs").read_text().split()
            parent = self.path.parent / "cgroup.procs"
            for p in procs:  # anything still inside goes back to the parent group
                with contextlib.suppress(OSError):
                    parent.write_text(f"{p}\n")
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
