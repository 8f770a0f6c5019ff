"""``make abuse`` (``python -m tests.abuse``): the abuse suite's long part, a few minutes.

1. 100,000+ generated malformed inputs (tests/abuse/fuzz.py: hypothesis for requests, WebSocket frames, upgrades
   and admin requests, plus a bulk of request frames drawn with ``random``) against one server with the default
   configuration, a canary group measured throughout and the server's RSS sampled;
2. a 1,000,000-member change on a fresh server: ack p50 of later sends before and after (adding, removing), and
   the longest ping round trip while it is applied.

Prints the figures and writes them to ``var/abuse/summary.json`` (docs/abuse.md holds a run's). Exit status 1 if
a criterion of issue 13 fails: a crash or an ERROR logged, an answer against the documented rules, an invalid
request accepted, canary p99 above max(2 × baseline, 50 ms), RSS growth above 64 MiB, later sends' ack p50 more
than 20 % above before.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from drivers.client import ChatClient
from harness.procs import REPO, SECRET, ServerProcess
from reference_server.protocol import user_token
from tests.abuse.suite import fuzz
from tests.abuse.tools import limit_ms


def ack_p50_ms(c: ChatClient, gid: int, n: int = 500) -> float:
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        c.send(gid, "x")
        lat.append(time.perf_counter() - t)
    return statistics.median(lat) * 1000


def million(n: int) -> dict[str, Any]:
    """A change of ``n`` members (added, then removed) and what later sends in another group see."""
    with ServerProcess("--send-rate", "0", "--sqlite-synchronous", "normal") as srv:
        assert srv.admin is not None
        a = srv.admin
        a.create_users(1, 10)
        a.create_groups({1: [1, 2], 7: [5]})
        c = ChatClient(srv.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None, request_timeout=120)
        c.connect()
        b = ChatClient(srv.ws_url, 2, user_token(SECRET, 2), heartbeat_s=None, request_timeout=120)
        b.connect()
        ack_p50_ms(c, 1, 200)
        before = ack_p50_ms(c, 1)
        t0 = time.monotonic()
        a.create_users(1000, n)
        create_s = time.monotonic() - t0
        rtts: list[float] = []
        stop = threading.Event()

        def pings() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                b.ping()
                rtts.append(time.perf_counter() - t)
                stop.wait(0.005)

        pinger = threading.Thread(target=pings, daemon=True)
        pinger.start()
        t0 = time.monotonic()
        added = a.change_members(7, add=list(range(1000, 1000 + n)))
        add_s = time.monotonic() - t0
        stop.set()
        pinger.join()
        after_add = ack_p50_ms(c, 1)
        t0 = time.monotonic()
        removed = a.change_members(7, remove=list(range(1000, 1000 + n)))
        remove_s = time.monotonic() - t0
        after_remove = ack_p50_ms(c, 1)
        c.close()
        b.close()
        return {"members": n, "ack_p50_before_ms": round(before, 3), "ack_p50_after_add_ms": round(after_add, 3),
                "ack_p50_after_remove_ms": round(after_remove, 3), "create_users_s": round(create_s, 2),
                "add_s": round(add_s, 2), "remove_s": round(remove_s, 2),
                "longest_ping_during_add_ms": round(max(rtts) * 1000, 1), "pings_during_add": len(rtts),
                "added": added["added"], "removed": removed["removed"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.abuse", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every input count by this (default 1: 102,000)")
    p.add_argument("--members", type=int, default=1_000_000, help="size of the membership change")
    p.add_argument("--out", type=Path, default=REPO / "var" / "abuse" / "summary.json")
    args = p.parse_args(argv)
    counts = {k: int(v * args.scale) for k, v in
              {"requests": 10_000, "bulk": 70_000, "frames": 10_000, "upgrades": 8_000, "admin": 4_000}.items()}
    t0 = time.monotonic()
    with ServerProcess() as srv:
        figures = fuzz(srv, counts)
    r = figures.report
    summary: dict[str, Any] = {"fuzz": figures.as_dict(), "fuzz_s": round(time.monotonic() - t0, 1)}
    print("fuzz:", orjson.dumps({k: v for k, v in summary["fuzz"].items() if k != "report"}).decode(), flush=True)
    print("inputs:", r.inputs, "total", r.total, "broken", r.broken_count, "accepted_invalid", r.accepted_invalid,
          flush=True)
    summary["membership_change"] = million(args.members)
    print("membership change:", summary["membership_change"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    m = summary["membership_change"]
    failures = []
    if r.total < 100_000 * args.scale:
        failures.append(f"only {r.total} inputs")
    if r.broken_count or r.accepted_invalid:
        failures.append(f"{r.broken_count} answers against the rules, {r.accepted_invalid} invalid accepted: "
                        f"{r.broken[:5]}")
    if not figures.server_alive or figures.errors_logged:
        failures.append(f"crash or ERROR logged: alive={figures.server_alive} {figures.errors_logged[:3]}")
    if figures.canary_p99_ms["all"] > limit_ms(figures.canary_baseline_p99_ms / 1000):
        failures.append(f"canary p99 {figures.canary_p99_ms} over max(2 x {figures.canary_baseline_p99_ms}, 50) ms")
    if figures.rss_growth_mib > 64:
        failures.append(f"RSS grew {figures.rss_growth_mib} MiB")
    if max(m["ack_p50_after_add_ms"], m["ack_p50_after_remove_ms"]) > 1.2 * m["ack_p50_before_ms"] + 0.1:
        failures.append(f"later sends slower after the membership change: {m}")
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    print(f"wrote {args.out}; {'FAILED' if failures else 'passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
