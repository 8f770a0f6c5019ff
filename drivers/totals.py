"""The coordinator's side of the ledger: merge what every generator process shipped, complete fan-out per message.

Each worker sees only its own receivers, so a message's fan-out is known only here: the worker parts of a
message (bucketed latencies of its receivers) are summed, its send record (from the sender's ack, whichever
worker it was on) gives the send time, and the receivers' presence changes give how many members were online at
that time. A message is *complete* when every member online at its send time (but the sender) received it.

Messages are *settled* — their first/p50/p99/last recipient times recorded into HDR histograms and their
per-message data dropped — once their send is older than ``settle_s`` (and at the end of the run, all of them).
Private messages (``to``) are checked by the ledger, not counted in fan-out completion.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Any, Final

from drivers.deliveries import LogBuckets, Recorder, encode, summary_ms
from drivers.ledger import COUNTERS, now_us

#: a worker is saturated when its CPU ratio passes this in any sample (Locust warns at 90 % too)
CPU_SATURATED: Final = 0.90
#: or when its event loop (the gevent hub) runs this late (ms) — receive backlog
LAG_SATURATED_MS: Final = 250.0


class _Presence:
    """Online members of one group over time: a step function built from (+1/−1, time) changes."""

    __slots__ = ("changes", "cum", "dirty", "times")

    def __init__(self) -> None:
        self.changes: list[tuple[int, int]] = []
        self.times: list[int] = []
        self.cum: list[int] = []
        self.dirty = False

    def add(self, t: int, delta: int) -> None:
        self.changes.append((t, delta))
        self.dirty = True

    def at(self, t: int) -> int:
        if self.dirty:
            self.changes.sort()
            self.times = [c[0] for c in self.changes]
            self.cum = list(itertools.accumulate(c[1] for c in self.changes))
            self.dirty = False
        i = bisect.bisect_right(self.times, t)
        return self.cum[i - 1] if i else 0


def profile_histogram(profile: str) -> str:
    """The bundle's name of a profile's delivery-latency histogram (``histograms`` of a --profile-mix run)."""
    return f"delivery_latency_us[{profile}]"


class Totals:
    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.latency = Recorder()
        self.send_ack = Recorder()
        self.catchup = Recorder()
        self.fan_first = Recorder()
        self.fan_p50 = Recorder()
        self.fan_p99 = Recorder()
        self.fan_last = Recorder()  # fan-out completion: the last recipient of a complete message
        self.fan_counts = {"messages": 0, "complete": 0, "incomplete": 0, "expected": 0, "received": 0,
                           "unmatched": 0, "late_parts": 0, "private": 0}
        self._parts: dict[tuple[int, int], LogBuckets] = {}
        self._sends: dict[tuple[int, int], tuple[int, int, int, bool]] = {}
        self._settled: set[tuple[int, int]] = set()
        self._presence: dict[int, _Presence] = {}
        self.health: dict[str, dict[str, float]] = {}  # worker -> {cpu_max, cpu_last, lag_max_ms, samples}
        self._health_samples: dict[str, dict[str, list[tuple[float, float]]]] = {}
        self.measure_from = 0.0  # epoch s; health samples before it (connect phase) are not judged
        self.measure_until = math.inf  # epoch s; nor those after it (the end-of-run reconciliation)
        self.clock: dict[str, list[tuple[float, int, int, bool]]] = {}  # worker -> (t, offset µs, bound µs, applied)
        self.reports = 0
        self.interval: Recorder | None = None  # latency merged since start_interval() (capacity search steps)
        self.final_delivered = 0  # deliveries that reached the coordinator only with a worker's final data
        self.finals: set[str] = set()  # workers whose final data arrived
        #: per network profile (weak networks; empty without a profile mix): latency, catchup, counts
        self.profiles: dict[str, dict[str, Any]] = {}

    # -- merging worker data
    def merge(self, wire: dict[str, Any], worker: str = "local") -> None:
        self.reports += 1
        if wire.get("final"):
            self.final_delivered += int(wire["counts"].get("delivered", 0))
        for k, v in wire["counts"].items():
            self.counts[k] = self.counts.get(k, 0) + int(v)
        self.latency.merge(wire["latency"])
        if self.interval is not None:
            self.interval.merge(wire["latency"])
        self.send_ack.merge(wire["send_ack"])
        self.catchup.merge(wire["catchup"])
        for name, part in wire.get("profiles", {}).items():
            prof = self.profiles.get(name)
            if prof is None:
                prof = self.profiles[name] = {"latency": Recorder(), "catchup": Recorder(), "counts": {}}
            prof["latency"].merge(part["latency"])
            prof["catchup"].merge(part["catchup"])
            for k, v in part["counts"].items():
                prof["counts"][k] = prof["counts"].get(k, 0) + int(v)
        for gid, seq, w in wire["fan"]:
            key = (gid, seq)
            if key in self._settled:
                self.fan_counts["late_parts"] += 1
                continue
            b = self._parts.get(key)
            if b is None:
                b = self._parts[key] = LogBuckets()
            b.merge_wire(w)
        for gid, seq, sts, cts, uid, private in wire["sends"]:
            self._sends[(gid, seq)] = (sts, cts, uid, bool(private))
        for gid, t, delta in wire["presence"]:
            p = self._presence.get(gid)
            if p is None:
                p = self._presence[gid] = _Presence()
            p.add(t, delta)
        if "health" in wire:
            self.merge_health(worker, wire["health"])
        if wire.get("clock"):
            self.clock.setdefault(worker, []).extend((float(t), int(o), int(b), bool(a))
                                                     for t, o, b, a in wire["clock"])

    def merge_health(self, worker: str, h: dict[str, Any]) -> None:
        """Samples are (epoch s, value) pairs: CPU ratio and event-loop lateness (ms); ``unstamped_reads``: the receive
        engine's reads since the last report that carried no kernel stamp (stamped when read)."""
        cur = self.health.setdefault(worker, {"cpu_max": 0.0, "cpu_last": 0.0, "lag_max_ms": 0.0, "samples": 0,
                                              "unstamped_reads": 0})
        cur["unstamped_reads"] += int(h.get("unstamped_reads", 0))
        samples = self._health_samples.setdefault(worker, {"cpu": [], "lag_ms": [], "cpu_s": []})
        samples["cpu_s"].extend((float(t), float(c)) for t, c in h.get("cpu_s", ()))
        for t, cpu in h.get("cpu", ()):
            samples["cpu"].append((float(t), float(cpu)))
            cur["cpu_last"] = float(cpu)
            cur["samples"] += 1
        for t, lag in h.get("lag_ms", ()):
            samples["lag_ms"].append((float(t), float(lag)))
        self._summarize_health()

    def _summarize_health(self) -> None:
        for worker, samples in self._health_samples.items():
            cur = self.health[worker]
            lo, hi = self.measure_from, self.measure_until
            cur["cpu_max"] = max((v for t, v in samples["cpu"] if lo <= t <= hi), default=0.0)
            cur["lag_max_ms"] = max((v for t, v in samples["lag_ms"] if lo <= t <= hi), default=0.0)

    def cpu_samples(self) -> dict[str, list[tuple[float, float]]]:
        """Per generator process: (reference epoch s, CPU seconds so far), to take its CPU over any window."""
        return {w: sorted(s["cpu_s"]) for w, s in sorted(self._health_samples.items()) if s["cpu_s"]}

    def start_interval(self) -> None:
        """From now on also merge delivery latency into a fresh interval histogram (take it with take_interval)."""
        self.interval = Recorder()

    def take_interval(self) -> Recorder:
        out = self.interval or Recorder()
        self.interval = None
        return out

    def health_in(self, t0: float, t1: float) -> tuple[float, float]:
        """(highest CPU ratio, highest event-loop lag ms) of any generator process between t0 and t1."""
        cpu = lag = 0.0
        for samples in self._health_samples.values():
            cpu = max([cpu, *(v for t, v in samples["cpu"] if t0 <= t <= t1)])
            lag = max([lag, *(v for t, v in samples["lag_ms"] if t0 <= t <= t1)])
        return cpu, lag

    def set_measure_from(self, t: float) -> None:
        """Judge the generator's health only from epoch second ``t`` on (e.g. after the connect phase)."""
        self.measure_from = t
        self._summarize_health()

    def set_measure_until(self, t: float) -> None:
        """Judge the generator's health only up to epoch second ``t`` (the last deliveries landed; what follows is
        the reconciliation, whose work measures nothing)."""
        self.measure_until = t
        self._summarize_health()

    # -- fan-out completion
    def online(self, gid: int, t_us: int) -> int:
        p = self._presence.get(gid)
        return p.at(t_us) if p is not None else 0

    def settle(self, older_than_s: float | None = None) -> int:
        """Complete every message whose send is older than ``older_than_s`` (None: every message). Returns how many."""
        limit = None if older_than_s is None else now_us() - int(older_than_s * 1e6)
        done = 0
        fc = self.fan_counts
        for key, (sts, _cts, _uid, private) in list(self._sends.items()):
            if limit is not None and sts > limit:
                continue
            del self._sends[key]
            self._settled.add(key)
            parts = self._parts.pop(key, None)
            if private:
                fc["private"] += 1
                continue
            done += 1
            expected = max(self.online(key[0], sts) - 1, 0)  # the sender gets an ack, not a push
            received = parts.count if parts is not None else 0
            fc["messages"] += 1
            fc["expected"] += expected
            fc["received"] += received
            if parts is None:
                if expected:
                    fc["incomplete"] += 1
                continue
            self.fan_first.record(parts.min)
            self.fan_p50.record(int(parts.percentile(50)))
            self.fan_p99.record(int(parts.percentile(99)))
            if received >= expected:
                fc["complete"] += 1
                self.fan_last.record(parts.max)
            else:
                fc["incomplete"] += 1
        if older_than_s is None:
            fc["unmatched"] += len(self._parts)  # parts of messages whose send was never reported
            self._parts.clear()
        return done

    # -- results
    def saturated(self) -> list[str]:
        """Reasons the generator was saturated (empty: it kept up)."""
        out = []
        for worker, h in sorted(self.health.items()):
            if h["cpu_max"] > CPU_SATURATED:
                out.append(f"{worker}: CPU {h['cpu_max']:.0%} > {CPU_SATURATED:.0%}")
            if h["lag_max_ms"] > LAG_SATURATED_MS:
                out.append(f"{worker}: event loop {h['lag_max_ms']:.0f} ms late > {LAG_SATURATED_MS:.0f} ms")
        return out

    def metrics(self) -> dict[str, Any]:
        """The generator's part of a result bundle's ``metrics`` (record/schema.py, docs/results.md)."""
        c = self.counts
        fc = self.fan_counts
        fan = summary_ms(self.fan_last.h, (50, 99))
        reasons = self.saturated()
        cpu = max((h["cpu_max"] for h in self.health.values()), default=0.0)
        return {
            "delivery_latency_ms": summary_ms(self.latency.h, (50, 90, 99, 99.9)),
            "fanout_completion_ms": fan,
            "fanout_first_ms": summary_ms(self.fan_first.h, (50, 99)),
            "fanout_recipient_p50_ms": summary_ms(self.fan_p50.h, (50, 99)),
            "fanout_recipient_p99_ms": summary_ms(self.fan_p99.h, (50, 99)),
            "fanout": dict(fc),
            "send_ack_ms": summary_ms(self.send_ack.h, (50, 99)),
            "catchup_ms": summary_ms(self.catchup.h, (50, 99)),
            "sent": c["sent"],
            "delivered": c["delivered"],
            "expected_deliveries": fc["expected"],
            "lost": c["lost"],
            "duplicated": c["duplicated"],
            "reordered": c["reordered"],
            "unread_mismatches": c["unread_mismatches"],
            "latency_clamped": self.latency.clamped,
            "ledger": dict(c),
            "generator_cpu_ratio": cpu,
            "generator_health": {w: dict(h) for w, h in sorted(self.health.items())},
            "generator_health_from": self.measure_from,
            "generator_health_until": self.measure_until if self.measure_until < math.inf else None,
            "generator_cpu_samples": self.cpu_samples(),
            "generator_saturated": bool(reasons),
            "generator_saturated_reasons": reasons,
            "clock": self.clock_summary(),
            "by_profile": {name: {"delivery_latency_ms": summary_ms(p["latency"].h, (50, 90, 99, 99.9)),
                                  "catchup_ms": summary_ms(p["catchup"].h, (50, 99)), **p["counts"]}
                           for name, p in sorted(self.profiles.items())},
        }

    def clock_summary(self) -> dict[str, Any]:
        """Each worker's clock offset to the master (the reference): last estimate, worst bound, drift (ms)."""
        workers = {}
        for worker, every in sorted(self.clock.items()):
            est = [e for e in every if e[3]] or every  # the estimates applied (a worker applies its first)
            offsets = [o for _, o, _, _ in est]
            workers[worker] = {"offset_ms": offsets[-1] / 1000, "bound_ms": max(b for _, _, b, _ in est) / 1000,
                               "drift_ms": (max(offsets) - min(offsets)) / 1000, "estimates": len(est),
                               "rejected": len(every) - len(est)}
        return {
            "reference": "master" if workers else "single process",
            "workers": workers,
            "max_abs_offset_ms": max((abs(w["offset_ms"]) for w in workers.values()), default=0.0),
            "max_bound_ms": max((w["bound_ms"] for w in workers.values()), default=0.0),
            "max_drift_ms": max((w["drift_ms"] for w in workers.values()), default=0.0),
        }

    def histograms(self) -> dict[str, str]:
        """The raw HDR histograms (µs), encoded, so runs can be re-merged."""
        out = {"delivery_latency_us": encode(self.latency.h), "send_ack_us": encode(self.send_ack.h),
               "catchup_us": encode(self.catchup.h), "fanout_completion_us": encode(self.fan_last.h),
               "fanout_first_us": encode(self.fan_first.h)}
        for name, prof in sorted(self.profiles.items()):  # --profile-mix runs: the receivers of each profile
            out[profile_histogram(name)] = encode(prof["latency"].h)
        return out
