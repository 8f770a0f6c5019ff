"""Real packet loss in a network namespace, by netem where the kernel has it, else nftables (root only; skipped
with the reason elsewhere)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from drivers.netloss import LossyLink, unavailable
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
rtts = []
for _ in range(int(sys.argv[4])):
    t0 = time.perf_counter()
    c.ping()
    rtts.append((time.perf_counter() - t0) * 1000)
c.close()
print(json.dumps(rtts))
"""


def pings(link: LossyLink, url: str, n: int) -> list[float]:
    out = subprocess.run(link.command(sys.executable, "-c", PINGER, url, "1", user_token(SECRET, 1), str(n)),
                         capture_output=True, text=True, timeout=60, check=True)
    return [float(x) for x in json.loads(out.stdout)]


@pytest.mark.skipif(REASON is not None, reason=f"nftables packet loss unavailable: {REASON}")
def test_packet_loss_makes_tcp_retransmit(server: ServerProcess) -> None:
    provision(server, 1)
    with LossyLink(0) as link:
        url = link.relay(server.ws_url)
        clean = sorted(pings(link, url, 100))
        assert link.dropped() == 0
        link.set_loss(10)
        lossy = sorted(pings(link, url, 100))
        dropped = link.dropped()
    assert link.method in ("netem", "nftables")
    print(f"10 % loss each way ({link.method}): {dropped} packets dropped; ping RTT p50 {lossy[50]:.1f} ms, "
          f"max {lossy[-1]:.0f} ms (no loss: p50 {clean[50]:.1f} ms, max {clean[-1]:.1f} ms)")
    assert dropped > 0
    # each ping is 2 data packets + ACKs: at 10 % loss each way some pings wait for a retransmission (RTO ≥ 200 ms)
    assert sum(r >= 200 for r in lossy) >= 3
    assert clean[-1] < 100


def test_unavailable_says_why() -> None:
    assert REASON is None or ("root" in REASON or "apt-get" in REASON or "namespace" in REASON)
