"""The impairing proxies of a ``--profile-mix`` run, one set per generator process.

The first member of a process that needs an impaired profile starts ``python -m drivers.proxy --profile A
--profile B ...`` — one listener per profile of the mix on a free port of 127.0.0.1, upstream = ``--host``, or in a
cluster (``--front-url``) the gateway the front picks for each new connection — and
every member of that profile connects through its listener. The proxy runs as a child process of the generator,
not in it: Locust monkey-patches the generator with gevent (an asyncio loop in it would share the hub and the
GIL with the receive path, and the per-frame work of the proxy would eat the generator's CPU). The child dies
with its parent (``PR_SET_PDEATHSIG`` where Linux offers it; ``quitting``/``atexit`` otherwise).
"""

from __future__ import annotations

from locust import events
from locust.env import Environment

import atexit
import subprocess
import sys
import threading
from typing import IO, Any, Final

import orjson

from drivers import swarm
from drivers.profiles import DIRECT, parse_mix
from drivers.subprocs import die_with_parent, stop_process

REPORT_S: Final = 1.0  # how often the proxy child reports its impairment counts

_lock = threading.Lock()
_proc: subprocess.Popen[bytes] | None = None
_urls: dict[str, str] = {}
_mix: dict[str, dict[str, float]] = {}


def mix(env: Environment) -> dict[str, float]:
    """The run's profile mix (parsed once per process); {} without ``--profile-mix``."""
    spec = str(swarm.option(env, "profile_mix", "") or "")
    if spec not in _mix:
        _mix[spec] = parse_mix(spec)
    return _mix[spec]


def url(env: Environment, profile: str) -> str:
    """The ws:// URL of ``profile``'s proxy in this process (started on first use)."""
    global _proc
    with _lock:
        if not _urls:
            names = [n for n in mix(env) if n != DIRECT]
            upstream = str(env.host or "").removeprefix("ws://").rstrip("/")
            cmd = [sys.executable, "-m", "drivers.proxy", "--upstream", upstream, "--duration", "86400", "--report-s",
                   str(REPORT_S),
                   "--upstream-front", str(swarm.option(env, "front_url", "") or "")]
            for n in names:
                cmd += ["--profile", n]
            _proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, preexec_fn=die_with_parent)
            assert _proc.stdout is not None
            line = _proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the impairing proxy did not start: {' '.join(cmd)}")
            _urls.update(orjson.loads(line))
            threading.Thread(target=_read_reports, args=(_proc.stdout,), daemon=True, name="netproxy-reports").start()
    return _urls[profile]


def _read_reports(stdout: IO[bytes]) -> None:
    """Add the proxy's impairment counts (cumulative per profile, a line every REPORT_S) to this process's ledger
    as deltas, ``injected_<what>`` in the profile's counts: the bundle's ``metrics.by_profile`` then says how many
    stalls, resets, half-open drops... the members of each profile went through (up to REPORT_S late)."""
    seen: dict[tuple[str, str], int] = {}
    for line in stdout:
        for name, counts in orjson.loads(line).items():
            target = swarm.ledger.profile(name)["counts"]  # looked up per line: a worker report swaps the dicts
            for what, n in counts.items():
                key = f"injected_{what}"
                delta = int(n) - seen.get((name, key), 0)
                if delta:
                    seen[name, key] = int(n)
                    target[key] = target.get(key, 0) + delta


def stop(**_: Any) -> None:
    global _proc
    proc, _proc = _proc, None
    _urls.clear()
    stop_process(proc, 5.0)


events.quitting.add_listener(stop)
atexit.register(stop)
