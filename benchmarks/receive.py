"""Receive benchmark: push frames per generator-CPU-second, through the receive path the swarm runs.

    python -m benchmarks.receive                          # 10,000 receivers, 3 repeats per mode (~2 min)
    python -m benchmarks.receive --receivers 500 --messages 20 --repeat 1   # a few seconds
    python -m benchmarks.receive --receive-engine client  # the ChatClient path (one greenlet per connection)
    python -m benchmarks.receive --raw                    # the engine without the ledger: the receive floor

The receiver is what a Locust worker runs (gevent, monkey-patched): one member handle per connection as
``ChatUser`` opens it (``--receive-engine``, default ``batch``: :class:`drivers.engine.EngineClient`, every
connection in the process's one uvloop + picows event loop in a real thread, pushes applied by
:class:`drivers.batchledger.BatchLedger`; ``client``: :class:`drivers.client.ChatClient`, every push through
:meth:`drivers.ledger.ReceiverLedger.on_push`), every push checked by the ledger (order, holes, duplicates),
its latency recorded in HDR and its fan-out part kept; and, as a Locust worker does every 3 s for its report,
``Ledger.take()`` (the fan-out parts bucketed, the histograms encoded) — inside the measured window, since the
swarm pays it per delivery. ``--raw`` counts the batch engine's frames without any ledger: what the event loop,
picows and the hand-over cost alone.

1. starts the reference server (``--send-rate 0``) pinned to core 0, provisions one group of N+1 members;
2. starts the receiver process pinned to core 1, which connects the N members and waits;
3. for each run, the receiver notes its CPU time (``time.process_time``: every thread of the process, user +
   system), this process sends ``--messages`` messages (``paced``: one send per write, each waiting for its ack,
   so the server writes one frame per socket write; ``burst``: ``--burst`` messages per write, which the server
   coalesces) and the receiver reports when it has all N × messages frames and has taken its ledger, with its
   CPU time again;
4. prints frames per generator-CPU-second per mode and writes one result record per mode (record/schema.py,
   docs/results.md) under ``--results-dir`` (default ``results/``, never overwritten):
   ``bench-receive-<run id>.json``, the run id ending in the mode.

A record (kind ``benchmark``, scenario ``bench-receive``): ``parameters`` are receivers, messages, mode, burst,
``receiver`` (``ledger`` or ``raw``), ``engine`` (``batch`` or ``client``) and pinning; ``server_modes`` as the
server reports them, ``config.server_args`` its extra flags. ``metrics``: ``receiver_cpu_s`` and ``wall_s``
(medians of the windows), ``frames_per_cpu_s`` (a window's frames / the median receiver CPU), the server's
figures of a window (medians: ``server_cpu_s``, ``server_deliveries``, ... and the derived
``deliveries_per_server_cpu_s``, ...), and the counts summed over the windows: ``expected_deliveries``,
``delivered``, ``lost``, ``duplicated``, ``reordered`` (the ledger's; 0 with ``--raw``), ``complete``.
``details.runs``: every window's frames, CPU, wall time, ledger counts (and, batch engine, the share of frames the
run check took in order) and server figures. A record is invalid when a window missed frames, saw duplicates or
reordering, or the server counted other deliveries than expected.

Targets (issue 15, full ledger, 10,000 members): 150,000 frames per generator core-second paced and 1,000,000
coalesced; on a loaded machine compare with ``--raw`` of the same session. All traffic is on 127.0.0.1; every
process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    from drivers.client import ChatClient
    from harness.procs import ServerProcess

TARGETS: Final = {"paced": 150_000, "burst": 1_000_000}
GID: Final = 1
SCENARIO: Final = "bench-receive"
SERVER_ARGS: Final = ("--sqlite-synchronous", "normal")
BODY: Final = "benchmark message body of a typical length, about 60 bytes"
REPORT_S: Final = 3.0  # a Locust worker's report interval: Ledger.take() this often


def child(argv: Sequence[str]) -> int:
    """The receiver process (gevent, like a Locust worker). Talks to the parent over stdin/stdout lines."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from gevent.pool import Pool

    from drivers.client import ChatClient
    from drivers.engine import Engine, EngineClient
    from drivers.ledger import Ledger
    from reference_server.protocol import user_token

    url, secret, first, count = argv[0], argv[1], int(argv[2]), int(argv[3])
    raw, engine_name = argv[4] == "raw", argv[5]
    ledger = Ledger()
    taken = [0]  # deliveries shipped by earlier takes
    eng = Engine(ledger) if engine_name == "batch" else None
    if eng is not None and raw:
        eng.batch.apply_ids = lambda _distinct, ids, *_a, **_k: _count(ids)  # type: ignore[method-assign]

    def _count(ids: Sequence[int]) -> list[Any]:
        taken[0] += len(ids)
        return []

    clients: list[ChatClient] = []

    def connect(uid: int) -> None:
        rl = ledger.receiver(uid)
        c: ChatClient
        if eng is not None:
            c = EngineClient(url, uid, user_token(secret, uid), receiver=rl, engine=eng, heartbeat_s=None,
                             request_timeout=60, connect_timeout=60, on_hello=rl.on_connect)
        else:
            c = ChatClient(url, uid, user_token(secret, uid), heartbeat_s=None, request_timeout=60,
                           on_message=rl.on_push, on_hello=rl.on_connect)
        c.connect()
        clients.append(c)

    pool = Pool(200)
    for uid in range(first, first + count):
        pool.spawn(connect, uid)
    pool.join()
    print(f"ready {len(clients)}", flush=True)

    def take() -> None:
        taken[0] += int(ledger.take()["counts"]["delivered"])

    def received() -> int:
        return taken[0] + ledger.delivered + ledger.counts["delivered"]

    def reports() -> None:
        while True:
            gevent.sleep(REPORT_S)
            take()

    def thread_cpu() -> dict[str, float]:
        """CPU seconds of each thread of this process, by name (the engine thread apart from the swarm's)."""
        out: dict[str, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
                with open(f"/proc/self/task/{tid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            key = "main" if int(tid) == os.getpid() else name
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        return out

    gevent.spawn(reports)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "quit":
            break
        expected = int(cmd[1])
        take()
        base = received()
        in_order0 = 0 if eng is None else eng.batch.in_order
        frames0 = 0 if eng is None else eng.batch.frames
        threads0 = thread_cpu()
        cpu0, wall0 = time.process_time(), time.monotonic()
        deadline = wall0 + 120
        while received() - base < expected and time.monotonic() < deadline:
            gevent.sleep(0.01)
        counts = dict(ledger.counts)
        take()
        cpu1, wall1 = time.process_time(), time.monotonic()
        threads1 = thread_cpu()
        res: dict[str, Any] = {"frames": received() - base, "cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0,
                               "duplicated": counts["duplicated"], "reordered": counts["reordered"],
                               "thread_cpu_s": {k: round(v - threads0.get(k, 0.0), 3) for k, v in threads1.items()
                                                if v - threads0.get(k, 0.0) > 0}}
        if eng is not None and not raw:
            n = eng.batch.frames - frames0
            res["in_order_share"] = (eng.batch.in_order - in_order0) / n if n else None
            res["batches"] = eng.batch.batches
        print(orjson.dumps(res).decode(), flush=True)
    for c in clients:
        c.close()
    return 0


def window(rx: subprocess.Popen[str], sender: ChatClient, srv: ServerProcess, expected: int, messages: int,
           burst: int) -> dict[str, Any]:
    """One window: the receiver notes its CPU, this process sends, the receiver answers with its figures; the
    server's counters and CPU (schedstat) around it."""
    import record
    from record.machine import process_cpu_seconds
    from record.promtext import counters

    assert rx.stdin is not None and rx.stdout is not None and srv.admin is not None
    before, cpu0 = counters(srv.admin.metrics_text()), process_cpu_seconds(srv.pid)
    rx.stdin.write(f"go {expected}\n")
    rx.stdin.flush()
    time.sleep(0.05)
    for i in range(0, messages, burst):
        k = min(burst, messages - i)
        if k == 1:
            sender.send(GID, BODY)
        else:
            sender.send_many(GID, [BODY] * k)
    line = rx.stdout.readline()
    if not line:
        raise RuntimeError(f"receiver process ended (exit {rx.poll()})")
    res: dict[str, Any] = orjson.loads(line)
    server = dict(record.server_figures(counters(srv.admin.metrics_text()), before))
    server["server_cpu_s"] = process_cpu_seconds(srv.pid) - cpu0
    res["server"] = server
    return res


def build_record(args: argparse.Namespace, mode: str, runs: list[dict[str, Any]], info: dict[str, Any],
                 run_id: str, started_s: float, error: str | None) -> dict[str, Any]:
    import record
    from benchmarks.common import median, medians, pinned

    n, burst = args.receivers, 1 if mode == "paced" else args.burst
    params = {"receivers": n, "messages": args.messages, "mode": mode, "burst": burst,
              "receiver": "raw" if args.raw else "ledger", "engine": args.receive_engine,
              "server_core": pinned(args.server_core),
              "receiver_core": pinned(args.receiver_core)}
    rec = record.new("benchmark", SCENARIO, params, run_id=f"{run_id}-{mode}", started_s=started_s,
                     server_modes=info.get("server_modes"))
    rec["config"] = {"server_args": list(SERVER_ARGS)}
    m = rec["metrics"]
    expected = n * args.messages
    m.update(medians([r["server"] for r in runs]))
    m["server_cpu_source"] = "schedstat, the server process, each window; median of the windows"
    cpu = m["receiver_cpu_s"] = median(r["cpu_s"] for r in runs)
    frames = median(r["frames"] for r in runs)
    m["frames_per_cpu_s"] = frames / cpu if cpu and frames is not None else None
    m["wall_s"] = median(r["wall_s"] for r in runs)
    m["expected_deliveries"] = expected * len(runs)
    m["delivered"] = sum(int(r["frames"]) for r in runs)
    m["lost"] = sum(max(0, expected - int(r["frames"])) for r in runs)
    m["duplicated"] = sum(int(r["duplicated"]) for r in runs)
    m["reordered"] = sum(int(r["reordered"]) for r in runs)
    m["complete"] = all(r["frames"] == expected for r in runs)
    rec["details"] = {"runs": runs, "repeats": args.repeat, **{k: v for k, v in info.items() if k != "server_modes"}}
    invalid = [f"{mode} #{i + 1}: {r['frames']} of {expected} frames, {r['duplicated']} duplicated, "
               f"{r['reordered']} reordered" for i, r in enumerate(runs)
               if r["frames"] != expected or r["duplicated"] or r["reordered"]]
    invalid += [f"{mode} #{i + 1}: the server counted {r['server']['server_deliveries']} deliveries, expected "
                f"{expected}" for i, r in enumerate(runs) if r["server"]["server_deliveries"] != expected]
    if len(runs) < args.repeat:
        invalid.append(f"{len(runs)} of {args.repeat} windows ran")
    if error:
        invalid.append(error)
    return record.finish(rec, invalid)


def main(argv: Sequence[str] | None = None) -> int:
    # here, not at the top: the receiver process (child) monkey-patches before the engine imports picows and ssl,
    # as a Locust worker does
    from drivers.engine import DEFAULT_RECEIVE_ENGINE, RECEIVE_ENGINES

    p = argparse.ArgumentParser(prog="python -m benchmarks.receive",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--receivers", type=int, default=10_000)
    p.add_argument("--messages", type=int, default=100, help="messages per window")
    p.add_argument("--burst", type=int, default=10, help="messages per write in the burst mode")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--raw", action="store_true", help="count the batch engine's frames without the ledger and HDR")
    p.add_argument("--receive-engine", choices=list(RECEIVE_ENGINES), default=DEFAULT_RECEIVE_ENGINE,
                   help="the member handles: the receive engine (batch, the swarm's default) or ChatClient")
    p.add_argument("--server-core", type=int, default=0, help="CPU for the server (-1: no pinning)")
    p.add_argument("--receiver-core", type=int, default=1, help="CPU for the receiver process (-1: no pinning)")
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="where the records go (default results/; never overwritten)")
    args = p.parse_args(argv)
    if args.receivers < 1 or args.messages < 1 or args.burst < 1 or args.repeat < 1:
        p.error("--receivers, --messages, --burst and --repeat must be >= 1")
    if args.raw and args.receive_engine != "batch":
        p.error("--raw measures the batch engine without its ledger")

    import record
    from benchmarks.common import FAILURES, BenchError, available_core, console, server_modes, write_records
    from drivers.client import ChatClient
    from drivers.subprocs import stop_process
    from harness.procs import SECRET, ServerProcess
    from reference_server.protocol import user_token

    args.server_core = available_core(args.server_core)
    args.receiver_core = available_core(args.receiver_core)
    n = args.receivers
    sender_uid = n + 1
    run_id, started = record.new_run_id(), time.time()
    runs: dict[str, list[dict[str, Any]]] = {"paced": [], "burst": []}
    info: dict[str, Any] = {}
    error: str | None = None
    try:
        with ServerProcess("--send-rate", "0", "--idle-timeout-s", "600", *SERVER_ARGS, cpu=args.server_core,
                           port=0, admin_port=0, die_with_parent=True) as srv:
            assert srv.admin is not None
            info["server_modes"] = server_modes(srv.admin)
            srv.admin.create_users(1, n + 1)
            srv.admin.create_groups({GID: list(range(1, n + 2))})
            pin = [] if args.receiver_core is None else ["taskset", "-c", str(args.receiver_core)]
            cmd = [*pin, sys.executable, "-m", "benchmarks.receive", "--child", srv.ws_url, SECRET, "1", str(n),
                   "raw" if args.raw else "ledger", args.receive_engine]
            rx = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            try:
                assert rx.stdin is not None and rx.stdout is not None
                ready = rx.stdout.readline()
                if ready.split()[:2] != ["ready", str(n)]:
                    raise BenchError(f"receiver not ready: {ready!r}")
                with ChatClient(srv.ws_url, sender_uid, user_token(SECRET, sender_uid), heartbeat_s=None,
                                request_timeout=60) as sender:
                    for _ in range(args.repeat):
                        for mode, rs in runs.items():
                            res = window(rx, sender, srv, n * args.messages, args.messages,
                                         1 if mode == "paced" else args.burst)
                            rs.append(res)
                            rate = res["frames"] / res["cpu_s"] if res["cpu_s"] else 0.0
                            print(f"{mode:6} {res['frames']:>8} frames  {res['cpu_s']:.3f} CPU s  "
                                  f"{res['wall_s']:.3f} wall s  → {rate:,.0f} frames per generator-CPU-second"
                                  f"  threads {res.get('thread_cpu_s')}", flush=True)
                rx.stdin.write("quit\n")
                rx.stdin.flush()
                rx.wait(30)
            finally:
                info["receiver_exit_code"] = stop_process(rx, 10)
    except KeyboardInterrupt:
        error = "interrupted"
    except (*FAILURES, RuntimeError, subprocess.TimeoutExpired) as exc:
        error = f"benchmark failed: {exc}"
    records = [build_record(args, mode, rs, info, run_id, started, error) for mode, rs in runs.items() if rs]
    for rec in records:
        m, mode = rec["metrics"], rec["parameters"]["mode"]
        v = m["frames_per_cpu_s"] or 0.0
        target = TARGETS[mode]
        print(f"median {mode}: {v:,.0f} frames per generator-CPU-second "
              f"({'meets' if v >= target else 'below'} the {target:,} target){' [raw]' if args.raw else ''} "
              f"[{args.receive_engine}]")
        for reason in m["invalid_reasons"]:
            console.print(f"[red]{reason}[/red]")
    write_records(args.results_dir, [(rec, f"{SCENARIO}-{rec['run_id']}") for rec in records])
    if error is not None:
        print(error, file=sys.stderr)
        return 130 if error == "interrupted" else 2
    return 0 if all(r["metrics"]["valid"] for r in records) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
