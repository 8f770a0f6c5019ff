"""Real packet loss, for what a userspace proxy cannot do: nftables drops packets inside a network namespace.

Where the kernel has ``tc netem`` it drops the packets (on the egress of both veth ends); this one has none (docs:
FACTS), but network namespaces, veth pairs and nftables work, as root, and nftables rules drop them instead::

    host (root namespace)  10.213.N.1 ── veth ── 10.213.N.2  namespace chatbench-loss-PID
                                                  nft: numgen random mod 100 < LOSS drop   (both directions)

Processes started with :meth:`LossyLink.command` run inside the namespace and see ``loss_pct`` % of their packets
dropped each way, so TCP retransmits for real (RTO ≥ 200 ms). They reach a server that listens on 127.0.0.1
through a relay (``drivers.proxy``, no impairment) listening on the host end of the veth: :meth:`relay`.

:func:`unavailable` says why it cannot run here (not root, no ``ip``/``nft``, namespace creation refused) — a
clear message instead of a failure; ``python -m drivers.netloss --check`` prints it. Everything created is
deleted on exit (the namespace, and with it the veth pair).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from types import TracebackType

from drivers.proxy import Proxy


def _run(*cmd: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    return subprocess.run(full, capture_output=True, text=True, timeout=10, check=False)


def unavailable() -> str | None:
    """None if nftables packet loss in a namespace works here, else why not (with what to do)."""
    if os.geteuid() != 0:
        return "packet loss needs root (network namespaces + nftables); use the proxy profiles (retransmit_pct)"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"packet loss needs `{tool}`: apt-get install {pkg}"
    probe = f"chatbench-probe-{os.getpid()}"
    r = _run("ip", "netns", "add", probe)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    try:
        r = _run("nft", "add", "table", "inet", "chatbench", ns=probe)
        if r.returncode != 0:
            return f"nftables does not work in a namespace here: {r.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe)
    return None


class LossyLink:
    """A namespace behind a veth pair whose packets are dropped with probability ``loss_pct`` % each way."""

    def __init__(self, loss_pct: float, subnet: int | None = None) -> None:
        if not 0 <= loss_pct <= 100:
            raise ValueError("loss_pct must be within 0..100")
        self.loss_pct = loss_pct
        n = subnet if subnet is not None else os.getpid() % 250 + 1
        self.ns = f"chatbench-loss-{os.getpid()}-{n}"
        self.host_if, self.ns_if = f"cbl{n}h{os.getpid() % 10000}", f"cbl{n}n{os.getpid() % 10000}"
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self._relays: list[Proxy] = []
        self.method = ""  # how packets are dropped: "netem" where the kernel has it, else "nftables"

    def __enter__(self) -> LossyLink:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        steps = [
            ("ip", "netns", "add", self.ns),
            ("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if),
            ("ip", "link", "set", self.ns_if, "netns", self.ns),
            ("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if),
            ("ip", "link", "set", self.host_if, "up"),
            ("ip", "-n", self.ns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if),
            ("ip", "-n", self.ns, "link", "set", self.ns_if, "up"),
            ("ip", "-n", self.ns, "link", "set", "lo", "up"),
        ]
        try:
            for step in steps:
                r = _run(*step)
                if r.returncode != 0:
                    raise RuntimeError(f"{' '.join(step)}: {r.stderr.strip()}")
            self.set_loss(self.loss_pct)
        except BaseException:
            self.close()
            raise
        return self

    def set_loss(self, loss_pct: float) -> None:
        """Drop ``loss_pct`` % of the packets each way: with ``tc netem`` on the egress of both veth ends where
        the kernel has netem, else with nftables rules (``method`` says which)."""
        self.loss_pct = loss_pct
        if self.method != "nftables" and self._netem(loss_pct):
            self.method = "netem"
            return
        self.method = "nftables"
        pct = round(loss_pct)
        rules = (f"table inet chatbench {{\n"
                 f"  chain in {{ type filter hook input priority 0; iifname \"{self.ns_if}\" "
                 f"numgen random mod 100 < {pct} counter drop; }}\n"
                 f"  chain out {{ type filter hook output priority 0; oifname \"{self.ns_if}\" "
                 f"numgen random mod 100 < {pct} counter drop; }}\n}}\n")
        _run("nft", "delete", "table", "inet", "chatbench", ns=self.ns)
        r = subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], input=rules, capture_output=True,
                           text=True, timeout=10, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"nft: {r.stderr.strip()}")

    def _netem(self, loss_pct: float) -> bool:
        """Loss by netem on both ends' egress; False (and nothing left behind) where this kernel has no netem."""
        if shutil.which("tc") is None:
            return False
        done: list[tuple[str, str | None]] = []
        for dev, ns in ((self.host_if, None), (self.ns_if, self.ns)):
            r = _run("tc", "qdisc", "replace", "dev", dev, "root", "netem", "loss", f"{loss_pct:g}%", ns=ns)
            if r.returncode != 0:
                for d, n in done:
                    _run("tc", "qdisc", "del", "dev", d, "root", ns=n)
                return False
            done.append((dev, ns))
        return True

    def dropped(self) -> int:
        """Packets dropped so far (both directions)."""
        if self.method == "netem":
            outs = (_run("tc", "-s", "qdisc", "show", "dev", self.host_if).stdout,
                    _run("tc", "-s", "qdisc", "show", "dev", self.ns_if, ns=self.ns).stdout)
            return sum(int(out.split("dropped", 1)[1].split(",")[0]) for out in outs if "dropped" in out)
        out = _run("nft", "list", "table", "inet", "chatbench", ns=self.ns).stdout
        return sum(int(line.split("packets", 1)[1].split()[0]) for line in out.splitlines() if "packets" in line)

    def command(self, *cmd: str) -> list[str]:
        """``cmd`` run inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def relay(self, upstream: str) -> str:
        """Start a plain relay on the host end of the veth to ``upstream`` (e.g. the server on 127.0.0.1); return
        the ws:// URL that processes inside the namespace use."""
        proxy = Proxy(upstream, host=self.host_ip).start_in_thread()
        self._relays.append(proxy)
        return proxy.url

    def close(self) -> None:
        for proxy in self._relays:
            proxy.stop()
        self._relays.clear()
        _run("ip", "link", "del", self.host_if)
        _run("ip", "netns", "del", self.ns)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="nftables packet loss in a network namespace")
    p.add_argument("--check", action="store_true", help="say whether it works here, and why not")
    args = p.parse_args(argv)
    reason = unavailable()
    if args.check or reason:
        print(reason or "packet loss available: network namespaces + nftables work here")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
