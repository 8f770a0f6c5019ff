"""Weak-network profiles: what :class:`drivers.proxy.Impair` does to a connection, defined once.

Every parameter is per connection and per direction where it says so. Latency is one-way (``rtt_ms / 2`` each
way) plus a jitter sample (``jitter``: ``normal`` = N(0, jitter_ms), ``uniform`` = U(−jitter_ms, +jitter_ms),
``pareto`` = a heavy right tail with mean jitter_ms above the base, i.e. occasional long delays), never below 0;
bytes keep their order (TCP), so a late frame holds the ones behind it. Bandwidth is a token bucket on bytes
(``down_kbps`` server→client, ``up_kbps`` client→server; 0 = unlimited; burst ``burst_bytes``). Stalls: no bytes
either way for ``stall_s`` seconds, starting at exponentially distributed intervals of mean ``stall_every_s``.
Disconnects (FIN both ways), resets (RST both ways) and half-open connections (no byte passes any more and no
FIN or RST reaches the client: only its heartbeat can tell) happen at exponentially distributed times of mean
``*_every_s``. ``retransmit_pct`` % of server frames arrive ``retransmit_ms`` late: what packet loss looks like
to an application above TCP (a retransmission timeout), since this userspace proxy cannot drop packets.

0 everywhere = no impairment (``clean``: through the proxy all the same, the control for a mix); ``direct`` is the
name of members connected without any proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DIRECT: Final = "direct"


@dataclass(frozen=True)
class Profile:
    name: str
    doc: str = ""
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter: str = "normal"  # normal | uniform | pareto
    down_kbps: float = 0.0  # kilobits per second, server → client; 0 = unlimited
    up_kbps: float = 0.0  # client → server
    burst_bytes: int = 16_384
    stall_every_s: float = 0.0  # mean interval between stalls; 0 = never
    stall_s: float = 0.0
    disconnect_every_s: float = 0.0  # FIN
    reset_every_s: float = 0.0  # RST
    half_open_every_s: float = 0.0  # traffic stops, no FIN
    retransmit_pct: float = 0.0
    retransmit_ms: float = 200.0


PROFILES: Final[dict[str, Profile]] = {p.name: p for p in (
    Profile("clean", "Through the proxy, not impaired: the control run for a mix (the same members pay the same "
            "proxy CPU on the generator's machine, without any impairment)."),
    Profile("wifi", "Good home Wi-Fi: 20 ms RTT ±5 ms, 20/10 Mbit/s.",
            rtt_ms=20, jitter_ms=5, down_kbps=20_000, up_kbps=10_000),
    Profile("4g", "LTE: 60 ms RTT ±15 ms, 10/5 Mbit/s, a 0.5 s stall every ~2 min (handover).",
            rtt_ms=60, jitter_ms=15, down_kbps=10_000, up_kbps=5_000, stall_every_s=120, stall_s=0.5),
    Profile("3g", "UMTS: 200 ms RTT ±50 ms, 1.5 Mbit/s down, 750 kbit/s up, a 1 s stall every ~minute, "
            "a disconnect every ~10 min.",
            rtt_ms=200, jitter_ms=50, down_kbps=1_500, up_kbps=750, stall_every_s=60, stall_s=1.0,
            disconnect_every_s=600),
    Profile("2g", "EDGE: 650 ms RTT, heavy-tailed jitter (mean +150 ms), 100/50 kbit/s, a 2 s stall every "
            "~minute, a disconnect every ~5 min.",
            rtt_ms=650, jitter_ms=150, jitter="pareto", down_kbps=100, up_kbps=50, stall_every_s=60, stall_s=2.0,
            disconnect_every_s=300),
    Profile("subway", "Underground commute: 120 ms RTT ±60 ms, 2 Mbit/s, 5 s stalls every ~15 s (tunnels), a "
            "reset every ~40 s and a half-open connection every ~60 s (the radio drops without a FIN).",
            rtt_ms=120, jitter_ms=60, down_kbps=2_000, up_kbps=1_000, stall_every_s=15, stall_s=5.0,
            reset_every_s=40, half_open_every_s=60),
    Profile("lossy", "Lossy link: 80 ms RTT ±20 ms, 5 Mbit/s, 3 % of frames late by a 200 ms retransmission, a "
            "reset every ~2 min.",
            rtt_ms=80, jitter_ms=20, down_kbps=5_000, up_kbps=2_500, retransmit_pct=3, retransmit_ms=200,
            reset_every_s=120),
)}


def parse_mix(spec: str) -> dict[str, float]:
    """``"3g:20,wifi:80"`` → {"3g": 0.2, "wifi": 0.8}; the rest of 100 % is ``direct``. Empty → {}."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, pct = part.partition(":")
        name = name.strip()
        if name != DIRECT and name not in PROFILES:
            raise ValueError(f"unknown network profile {name!r} (known: {', '.join([DIRECT, *PROFILES])})")
        try:
            share = float(pct) / 100
        except ValueError:
            raise ValueError(f"bad profile share in {part!r}: want NAME:PERCENT") from None
        if share < 0:
            raise ValueError(f"negative share in {part!r}")
        mix[name] = mix.get(name, 0.0) + share
    if sum(mix.values()) > 1 + 1e-9:
        raise ValueError(f"profile shares add up to more than 100 %: {spec!r}")
    return mix


_GOLDEN: Final = 0.6180339887498949


def assign(mix: dict[str, float], index: int) -> str:
    """The profile of a process's ``index``-th user: a low-discrepancy sequence, so any prefix of the users is
    split close to the mix (20 % of 10 users is 2 users, not 0 or 10)."""
    x = (index * _GOLDEN) % 1.0
    acc = 0.0
    for name, share in mix.items():
        acc += share
        if x < acc:
            return name
    return DIRECT
