"""Real packet loss in a network namespace, by netem where the kernel has it, else nftables (root only; skipped
with the reason elsewhere)."""

from __future__ import annotations

import json
import select
import subprocess
import sys

import pytest

from drivers.netloss import LossyLink, unavailable
from drivers.subprocs import stop_process
from harness.procs import SECRET, ServerProcess
from reference_server.protocol import user_token
from tests.integration.conftest import provision

pytestmark = pytest.mark.integration

REASON = unavailable()

PINGER = """
import json, sys, time
from drivers.client import ChatClient
c = ChatClient(sys.argv[1], int(sys.argv[2]), sys.argv[3], heartbeat_s=None, request_timeout=10)
c.connect()
for _ in range(2):  # a round of pings, its RTTs on a line; then wait for the test's go for the next
    rtts = []
    for _ in range(int(sys.argv[4])):
        t0 = time.perf_counter()
        c.ping()
        rtts.append((time.perf_counter() - t0) * 1000)
    print(json.dumps(rtts), flush=True)
    sys.stdin.readline()
c.close()
"""


def rtts(proc: subprocess.Popen[str], timeout: float = 60) -> list[float]:
    """The pinger's next round (sorted RTTs, ms), within ``timeout``; its error output if it ended instead."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], timeout)[0]:
        raise AssertionError(f"no round of pings within {timeout:g} s")
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        assert proc.stderr is not None
        raise AssertionError(f"the pinger ended with {proc.returncode}: {proc.stderr.read()[-2000:]}")
    return sorted(float(x) for x in json.loads(line))


@pytest.mark.skipif(REASON is not None, reason=f"nftables packet loss unavailable: {REASON}")
def test_packet_loss_makes_tcp_retransmit(server: ServerProcess) -> None:
    provision(server, 1)
    with LossyLink(0) as link:
        url = link.relay(server.ws_url)
        # one connection, made before the loss (its handshake under loss is not what this measures): 100 pings
        # clean, then 100 at 10 % loss each way
        proc = subprocess.Popen(link.command(sys.executable, "-c", PINGER, url, "1", user_token(SECRET, 1), "100"),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            clean = rtts(proc)
            assert link.dropped() == 0
            link.set_loss(10)
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            lossy = rtts(proc)
            dropped = link.dropped()
            link.set_loss(0)  # the close, clean
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.wait(60) == 0
        finally:
            stop_process(proc, 10)
    assert link.method in ("netem", "nftables")
    print(f"10 % loss each way ({link.method}): {dropped} packets dropped; ping RTT p50 {lossy[50]:.1f} ms, "
          f"max {lossy[-1]:.0f} ms (no loss: p50 {clean[50]:.1f} ms, max {clean[-1]:.1f} ms)")
    assert dropped > 0
    # each ping is 2 data packets + ACKs: at 10 % loss each way some pings wait for a retransmission (RTO ≥ 200 ms)
    assert sum(r >= 200 for r in lossy) >= 3
    assert clean[-1] < 100


def test_unavailable_says_why() -> None:
    assert REASON is None or ("root" in REASON or "apt-get" in REASON or "namespace" in REASON)
