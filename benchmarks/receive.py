"""Receive benchmark: push frames per generator-CPU-second, through the swarm's own receive path.

    python -m benchmarks.receive                          # 2,000 receivers, 3 repeats per mode (~1 min)
    python -m benchmarks.receive --receivers 500 --messages 50 --repeat 1   # a few seconds

The receiver is what a Locust worker runs: gevent (monkey-patched), one :class:`drivers.client.ChatClient` per
member, every push checked by the ledger (:class:`drivers.ledger.ReceiverLedger`: order, holes, duplicates)
and its latency recorded in HDR, per-message fan-out lists kept — everything but Locust's scheduler.
``--raw`` replaces the ledger with a bare counter, to show what the ledger costs.

1. starts the reference server (``--send-rate 0``) pinned to core 0, provisions one group of N+1 members;
2. starts the receiver process pinned to core 1, which connects the N members and waits;
3. for each run, the receiver notes its CPU time (``time.process_time``: every thread of the process, user +
   system), this process sends ``--messages`` messages (``paced``: one send per write, each waiting for its ack,
   so the server writes one frame per socket write; ``burst``: ``--burst`` messages per write, which the server
   coalesces) and the receiver reports when it has all N × messages frames, with its CPU time again;
4. prints frames per generator-CPU-second per mode (median of the repeats) and writes JSON (machine, commit,
   parameters, raw figures) under ``results/`` (never overwriting).

The target is 100,000 frames per generator core-second with the ledger on (FACTS.md: a naive Locust receiver
with one event per frame does ~70k). All traffic is on 127.0.0.1; every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

TARGET: Final = 100_000
GID: Final = 1


def child(argv: Sequence[str]) -> int:
    """The receiver process (gevent, like a Locust worker). Talks to the parent over stdin/stdout lines."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from gevent.pool import Pool

    from drivers.client import ChatClient
    from drivers.ledger import Ledger
    from reference_server.protocol import user_token

    url, secret, first, count, raw = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4] == "raw"
    ledger = Ledger()
    counter = [0]

    def bare(_frame: dict[str, Any]) -> None:
        counter[0] += 1

    clients: list[ChatClient] = []

    def connect(uid: int) -> None:
        rl = ledger.receiver(uid)
        c = ChatClient(url, uid, user_token(secret, uid), heartbeat_s=None, request_timeout=60,
                       on_message=bare if raw else rl.on_push, on_hello=None if raw else rl.on_connect)
        c.connect()
        clients.append(c)

    pool = Pool(200)
    for uid in range(first, first + count):
        pool.spawn(connect, uid)
    pool.join()
    print(f"ready {len(clients)}", flush=True)

    def received() -> int:
        return counter[0] if raw else ledger.delivered + ledger.counts["delivered"]

    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "quit":
            break
        expected = int(cmd[1])
        base = received()
        cpu0, wall0 = time.process_time(), time.monotonic()
        deadline = wall0 + 120
        while received() - base < expected and time.monotonic() < deadline:
            gevent.sleep(0.005)
        cpu1, wall1 = time.process_time(), time.monotonic()
        counts = ledger.counts
        print(orjson.dumps({"frames": received() - base, "cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0,
                            "duplicated": counts["duplicated"], "reordered": counts["reordered"]}).decode(), flush=True)
        ledger.take()  # keep the fan-out lists from growing across runs (outside the measured window)
    for c in clients:
        c.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--receivers", type=int, default=2000)
    p.add_argument("--messages", type=int, default=100, help="messages per run")
    p.add_argument("--burst", type=int, default=10, help="messages per write in the burst mode")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--raw", action="store_true", help="count frames without the ledger and HDR")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--receiver-core", type=int, default=1)
    p.add_argument("--out", default="", help="result JSON (default results/bench-receive-<UTC>.json)")
    args = p.parse_args(argv)

    from drivers.bundle import write_new
    from drivers.client import ChatClient
    from harness.procs import SECRET, ServerProcess
    from record.machine import git_info, machine_info
    from reference_server.protocol import user_token

    n = args.receivers
    sender_uid = n + 1
    runs: dict[str, list[dict[str, Any]]] = {"paced": [], "burst": []}
    with ServerProcess("--send-rate", "0", "--idle-timeout-s", "600", "--sqlite-synchronous", "normal",
                       cpu=args.server_core, port=0, admin_port=0, die_with_parent=True) as srv:
        assert srv.admin is not None
        srv.admin.create_users(1, n + 1)
        srv.admin.create_groups({GID: list(range(1, n + 2))})
        cmd = ["taskset", "-c", str(args.receiver_core), sys.executable, "-m", "benchmarks.receive", "--child",
               srv.ws_url, SECRET, "1", str(n), "raw" if args.raw else "ledger"]
        rx = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        try:
            assert rx.stdin is not None and rx.stdout is not None
            ready = rx.stdout.readline()
            if not ready.startswith("ready"):
                raise SystemExit(f"receiver failed: {ready!r}")
            sender = ChatClient(srv.ws_url, sender_uid, user_token(SECRET, sender_uid), heartbeat_s=None,
                                request_timeout=60)
            sender.connect()
            for _ in range(args.repeat):
                for mode in runs:
                    rx.stdin.write(f"go {n * args.messages}\n")
                    rx.stdin.flush()
                    time.sleep(0.05)
                    burst = 1 if mode == "paced" else args.burst
                    for i in range(0, args.messages, burst):
                        k = min(burst, args.messages - i)
                        if k == 1:
                            sender.send(GID, "benchmark message body of a typical length, about 60 bytes")
                        else:
                            sender.send_many(GID, ["benchmark message body of a typical length, about 60 bytes"] * k)
                    res = orjson.loads(rx.stdout.readline())
                    res["frames_per_cpu_s"] = res["frames"] / res["cpu_s"] if res["cpu_s"] else 0.0
                    runs[mode].append(res)
                    print(f"{mode:6} {res['frames']:>8} frames  {res['cpu_s']:.3f} CPU s  {res['wall_s']:.3f} wall s"
                          f"  → {res['frames_per_cpu_s']:,.0f} frames per generator-CPU-second", flush=True)
            sender.close()
            rx.stdin.write("quit\n")
            rx.stdin.flush()
            rx.wait(30)
        finally:
            if rx.poll() is None:
                rx.kill()
                rx.wait()
    summary = {mode: statistics.median(r["frames_per_cpu_s"] for r in rs) for mode, rs in runs.items() if rs}
    for mode, v in summary.items():
        print(f"median {mode}: {v:,.0f} frames per generator-CPU-second "
              f"({'meets' if v >= TARGET else 'below'} the {TARGET:,} target){' [raw]' if args.raw else ''}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or f"results/bench-receive-{stamp}.json")
    result = {"api_version": 1, "benchmark": "receive", "utc": stamp, **git_info(), "machine": machine_info(),
              "parameters": vars(args), "frames_per_cpu_s": summary, "runs": runs, "target": TARGET}
    path = write_new(out.parent, out.stem, orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}")
    bad = any(r["duplicated"] or r["reordered"] or r["frames"] != n * args.messages for rs in runs.values() for r in rs)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
