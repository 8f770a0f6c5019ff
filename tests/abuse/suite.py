"""The abuse suite's generated-input part, for both the fast test and ``make abuse``: provision, fuzz each kind of
input against a running server with a canary measured throughout, and report."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from hypothesis import strategies as st

from harness.procs import ServerProcess
from tests.abuse.fuzz import (
    AdminFuzzer,
    FrameFuzzer,
    RandomRequests,
    Report,
    RequestFuzzer,
    UpgradeFuzzer,
    admin_cases,
    frame_cases,
    request_frames,
    run_examples,
    upgrade_cases,
)
from tests.abuse.tools import Canary, RssWatch, p99

T = TypeVar("T")

# ids far from the small ones hypothesis likes, so the admin fuzz does not reach into what the other parts use
FUZZ_GID = 424_242
REQUEST_USERS = list(range(1_000_001, 1_000_011))  # members of FUZZ_GID, one connection each
FRAME_USER = 1_000_011
UPGRADE_USERS = list(range(1_000_020, 1_000_025))  # exist, in no group
CANARY_GID, CANARY_SENDER, CANARY_RECEIVER = 777_777, 2_000_001, 2_000_002
BATCH = 40  # request frames pipelined in one write, at most


@dataclass
class Figures:
    report: Report
    seconds: dict[str, float] = field(default_factory=dict)
    canary_baseline_p99_ms: float = 0.0
    canary_p99_ms: dict[str, float] = field(default_factory=dict)
    canary_samples: int = 0
    rss_growth_mib: float = 0.0
    server_alive: bool = True
    errors_logged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["inputs_total"] = self.report.total
        return out


def provision(srv: ServerProcess) -> None:
    admin = srv.admin
    assert admin is not None
    for first, n in ((REQUEST_USERS[0], len(REQUEST_USERS) + 1), (UPGRADE_USERS[0], len(UPGRADE_USERS)),
                     (CANARY_SENDER, 2)):
        admin.create_users(first, n)
    admin.create_groups({FUZZ_GID: [*REQUEST_USERS, FRAME_USER], CANARY_GID: [CANARY_SENDER, CANARY_RECEIVER]})


def draw(strategy: st.SearchStrategy[T], n: int) -> list[T]:
    out: list[T] = []
    run_examples(strategy, n, out.append)
    return out


def bulk_batches(gen: RandomRequests, n: int) -> list[list[bytes]]:
    return [[gen.frame() for _ in range(BATCH)] for _ in range(0, n, BATCH)]


def fuzz(srv: ServerProcess, counts: dict[str, int], *, max_frame_bytes: int = 65536,
         canary_baseline_s: float = 3.0) -> Figures:
    """Run ``counts[kind]`` generated inputs of each kind (requests counted per frame: batches of up to 40);
    ``counts["bulk"]``: more request frames drawn with ``random`` (fast), in batches of 40."""
    provision(srv)
    report = Report()
    figures = Figures(report)
    canary = Canary(srv.ws_url, CANARY_GID, CANARY_SENDER, CANARY_RECEIVER).start()
    try:
        canary.measure(1.0)
        figures.canary_baseline_p99_ms = p99(canary.measure(canary_baseline_s)) * 1000
        requests = RequestFuzzer(srv.port, REQUEST_USERS, FUZZ_GID, report)
        frames = FrameFuzzer(srv.port, FRAME_USER, max_frame_bytes, report)
        upgrades = UpgradeFuzzer(srv.port, {*REQUEST_USERS, FRAME_USER, *UPGRADE_USERS, CANARY_SENDER,
                                            CANARY_RECEIVER}, report)
        admin = AdminFuzzer(srv.admin_port, report)
        rids = itertools.count(1)
        windows: list[tuple[float, float]] = []
        with RssWatch(srv.pid) as rss:
            # each phase's inputs are generated first (hypothesis is CPU-heavy, and this machine has two cores), then
            # sent: the canary's window holds the server's work on them, not the generator's
            phases: list[tuple[str, Any, Any]] = [
                ("requests", lambda: draw(st.lists(request_frames(FUZZ_GID, rids), min_size=BATCH // 4,
                                                   max_size=BATCH), counts["requests"] // (BATCH // 4)),
                 requests.batch),
                ("bulk", lambda: bulk_batches(RandomRequests(13, FUZZ_GID, rids), counts.get("bulk", 0)),
                 requests.batch),
                ("frames", lambda: draw(frame_cases, counts["frames"]), frames.one),
                ("upgrades", lambda: draw(upgrade_cases([*UPGRADE_USERS, 99_999_999]), counts["upgrades"]),
                 upgrades.one),
                ("admin", lambda: draw(admin_cases(), counts["admin"]), admin.one),
            ]
            for kind, generate, send in phases:
                inputs = generate()
                t0 = time.monotonic()
                for one in inputs:
                    send(one)
                figures.seconds[kind] = round(time.monotonic() - t0, 1)
                figures.canary_p99_ms[kind] = round(p99(canary.window(t0)) * 1000, 2)
                windows.append((t0, time.monotonic()))
        requests.close()
        frames.reset()
        figures.rss_growth_mib = round(rss.growth / (1 << 20), 1)
        during = [lat for t0, t1 in windows for lat in canary.window(t0, t1)]
        figures.canary_p99_ms["all"] = round(p99(during) * 1000, 2)
        figures.canary_samples = len(during)
    finally:
        canary.stop()
    assert srv.proc is not None
    figures.server_alive = srv.proc.poll() is None
    figures.errors_logged = [line for line in srv.log_path.read_text(errors="replace").splitlines()
                             if " ERROR " in line or "Traceback" in line][:20]
    return figures
