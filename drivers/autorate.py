"""The capacity search's live side: one load level shared by every sender of every generator process, and the
coordinator's loop that moves it (the search itself, pure, is :mod:`drivers.capacity`).

The coordinator (master or only process) runs :func:`control`: it holds each level the search asks for, judges
the step on the interval data that reached it (HDR latency merged from the workers' reports, ledger counts, the
generator's health samples, the server's /metrics), and tells the workers every new level with a Locust message
(``chatbench_level``). Senders read :func:`rate` at every slot. When the search ends the level drops to 0 and
:data:`STATE` says done: the scenario's shape then ends the run, and the answer goes into the result record.
"""

from __future__ import annotations

from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

import logging
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import gevent

from drivers.admin import CAPACITY_SERIES, server_counters
from drivers.capacity import Search, Slo, Step, judge
from drivers.clock import CLOCK
from drivers.deliveries import summary_ms
from drivers.totals import CPU_SATURATED, LAG_SATURATED_MS, Totals
from record.promtext import bucket_quantiles, delta

log = logging.getLogger("chatbench.capacity")
#: a step is held until about this many messages were sent (at most MAX_HOLD_FACTOR × its nominal time)
MIN_MESSAGES = 20
MAX_HOLD_FACTOR = 4
#: after a failed step the level rests at 0 until the server is quiet — nothing accepted or pushed for
#: DRAIN_QUIET_S — at most DRAIN_MAX_S: the next step must not inherit an overload's backlog
DRAIN_QUIET_S = 1.0
DRAIN_MAX_S = 60.0


@dataclass(frozen=True)
class Axis:
    """What a capacity search can move in a scenario (``--capacity-vary``), and what a level of it sends."""

    name: str
    unit: str  # in the record (``metrics.capacity.unit``)
    short: str  # in step lines and tables
    whole: bool  # levels are whole numbers (a count)
    #: messages per second all senders send at a level (a step lasts until it sent MIN_MESSAGES, within reason)
    rate: Callable[[Namespace, float], float]
    #: the highest level the scenario can offer
    maximum: Callable[[Namespace], float]
    #: the lowest level; None: the lowest at which a step of MAX_HOLD_FACTOR × --capacity-step-s sends MIN_MESSAGES
    #: (an axis whose rate grows with the level)
    minimum: Callable[[Namespace], float] | None = None
    #: run on the coordinator before a level is set; returns the group its messages go to (0: the scenario's own)
    prepare: Callable[[Environment, float], int] | None = None


#: the open-model arrival rate over all senders: what every scenario with a capacity search moves by default
RATE: Final = Axis("rate", "messages/s", "msg/s", False, lambda o, level: level, lambda o: float(o.capacity_max))
#: the axes the loaded scenario offers (it calls :func:`offer` at import); none: it has no capacity search
AXES: dict[str, Axis] = {}


def offer(*axes: Axis) -> None:
    """A scenario: these are the axes its senders follow (they read :data:`STATE` ``.level`` at every slot)."""
    for a in axes:
        AXES[a.name] = a


@dataclass
class State:
    level: float = 0.0  # the level now (messages per second over all senders, groups, members: the axis')
    gid: int = 0  # the group the level's messages go to, when the axis makes one per level (0: the scenario's)
    active: bool = False  # this run searches its capacity
    done: bool = False  # the search ended: the shape stops the run
    answer: dict[str, Any] = field(default_factory=dict)


STATE = State()


def enabled(env: Environment) -> bool:
    return bool(getattr(env.parsed_options, "capacity", "")) if env.parsed_options is not None else False


def rate(senders: int, burst: int = 1) -> float:
    """One sender's slot rate at the current level."""
    return STATE.level / senders / burst if senders > 0 else 0.0


def reset(env: Environment) -> None:
    STATE.level, STATE.gid, STATE.done, STATE.answer = 0.0, 0, False, {}
    STATE.active = enabled(env)


def on_level(environment: Environment, msg: Any, **_: Any) -> None:
    """A worker: the coordinator moved the level."""
    STATE.gid = int(msg.data.get("gid", 0))
    STATE.level = float(msg.data["level"])
    STATE.done = bool(msg.data.get("done", False))


def _set(env: Environment, level: float, done: bool = False, gid: int | None = None) -> None:
    if gid is not None:
        STATE.gid = gid
    STATE.level, STATE.done = level, done
    if isinstance(env.runner, MasterRunner):
        env.runner.send_message("chatbench_level", {"level": level, "done": done, "gid": STATE.gid})


def _progress(counters: dict[str, float]) -> tuple[float, float] | None:
    if not counters:
        return None
    return counters.get("chat_messages_accepted_total", 0.0), counters.get("chat_deliveries_total", 0.0)


def _idle(counters: dict[str, float]) -> bool:
    """Nothing waits for the writer (a group commit of heavy messages can take seconds without a counter moving)
    and nothing is queued to a client socket."""
    return counters.get("chat_writer_backlog", 0.0) == 0 and counters.get("chat_send_queue_bytes", 0.0) == 0


def drain(env: Environment) -> float | None:
    """Level 0 until the server is idle and has accepted and pushed nothing for DRAIN_QUIET_S: the seconds that
    took, or None when it was still busy after DRAIN_MAX_S (or its /metrics could not be read)."""
    _set(env, 0.0)
    t0 = CLOCK.time()
    before = _progress(server_counters(env.parsed_options, CAPACITY_SERIES))
    while before is not None and CLOCK.time() - t0 < DRAIN_MAX_S:
        gevent.sleep(DRAIN_QUIET_S)
        counters = server_counters(env.parsed_options, CAPACITY_SERIES)
        now = _progress(counters)
        if now == before and _idle(counters):
            return CLOCK.time() - t0
        before = now
    return None


def per_message_ms(before: dict[str, float], after: dict[str, float]) -> float | None:
    """The server's CPU ms per message it accepted between two readings of its /metrics (None: none accepted,
    or unreadable)."""
    if not before or not after:
        return None
    accepted = delta(after, before, "chat_messages_accepted_total")
    return delta(after, before, "process_cpu_seconds_total") * 1000 / accepted if accepted > 0 else None


def control(env: Environment, totals: Totals, start_at: float) -> None:
    """The coordinator's search loop (a greenlet); ``start_at``: reference epoch s when the search phase begins
    (after connecting). Judged on what was merged into ``totals`` during each step."""
    assert not isinstance(env.runner, WorkerRunner)
    opts = env.parsed_options
    assert opts is not None
    slo = Slo.parse(opts.capacity)
    vary = str(getattr(opts, "capacity_vary", "rate") or "rate")
    axis = AXES.get(vary)
    if axis is None:
        offered = ", ".join(sorted(AXES)) or "none: it has no capacity search"
        STATE.answer = {"vary": vary, "error": f"--capacity-vary {vary}: this scenario offers {offered}"}
        log.error(STATE.answer["error"])
        print(f"capacity search refused: {STATE.answer['error']}", flush=True)
        _set(env, 0.0, done=True)
        return
    confirm_s = float(opts.capacity_confirm_s)
    # a step holds at most MAX_HOLD_FACTOR × step_s: below this level it cannot send MIN_MESSAGES
    lowest = (axis.minimum(opts) if axis.minimum is not None
              else MIN_MESSAGES / (MAX_HOLD_FACTOR * float(opts.capacity_step_s) * axis.rate(opts, 1.0)))
    minimum = min(lowest, float(opts.capacity_start))
    search = Search(float(opts.capacity_start), growth=float(opts.capacity_growth),
                    resolution=float(opts.capacity_resolution),
                    maximum=min(float(opts.capacity_max), axis.maximum(opts)), minimum=minimum,
                    confirm=confirm_s > 0, whole=axis.whole, retry=bool(opts.capacity_retry))
    while CLOCK.time() < start_at:
        gevent.sleep(0.2)
    while (level := search.next_level()) is not None:
        phase = search.phase
        if axis.prepare is not None:
            _set(env, level, gid=axis.prepare(env, level))
        else:
            _set(env, level)
        gevent.sleep(float(opts.capacity_warm_s))
        hold = confirm_s if phase == "confirm" else float(opts.capacity_step_s)
        # long enough for MIN_MESSAGES at this level (a step that sends nothing proves nothing), within reason
        hold = min(max(hold, MIN_MESSAGES / axis.rate(opts, level)), MAX_HOLD_FACTOR * hold)
        totals.start_interval()
        c0, s0, t0 = dict(totals.counts), server_counters(env.parsed_options, CAPACITY_SERIES), CLOCK.time()
        gevent.sleep(hold)
        interval = totals.take_interval()
        c1, s1, t1 = dict(totals.counts), server_counters(env.parsed_options, CAPACITY_SERIES), CLOCK.time()
        cpu, lag = totals.health_in(t0, t1 + 2.5)  # health samples cover the 2 s before their stamp
        lat = summary_ms(interval.h, (50, 90, 99, 99.9))
        step = Step(level, phase, latency_ms={k: v for k, v in lat.items() if k.startswith("p")},
                    deliveries=int(interval.h.get_total_count()),
                    lost=c1.get("lost", 0) - c0.get("lost", 0),
                    closes=int(delta(s1, s0, "chat_slow_consumer_disconnects_total")) if s0 and s1 else 0,
                    missed_slots=c1.get("missed_send_slots", 0) - c0.get("missed_send_slots", 0),
                    sent=c1.get("sent", 0) - c0.get("sent", 0), generator_cpu=cpu, generator_lag_ms=lag,
                    server_cpu=(delta(s1, s0, "process_cpu_seconds_total") / (t1 - t0)) if s0 and s1 else None,
                    server_ms_per_message=per_message_ms(s0, s1),
                    server_p99_ms=bucket_quantiles(s1, s0, "chat_push_latency_seconds", (0.99,)).get("p99")
                    if s0 and s1 else None)
        judge(step, slo, CPU_SATURATED, LAG_SATURATED_MS)
        search.record(step)
        if not (s0 and s1):  # its closes would read 0 and its CPU nothing: a step that cannot be judged whole
            search.stop(f"the server's /metrics could not be read (every process of --server-metrics-urls) around "
                        f"the step at {level:,.1f} {axis.short}: its closes and CPU are unknown")
        line = (f"capacity {phase} {level:,.1f} {axis.short}: {'held' if step.held else 'FAILED'} "
                f"p99 {lat.get('p99', float('nan')):.1f} ms, {step.deliveries:,} deliveries, lost {step.lost}, "
                f"server CPU {step.server_cpu or 0:.0%}"
                + (f", {step.server_ms_per_message:.1f} ms/msg" if step.server_ms_per_message is not None else "")
                + f" (own p99 ≤ {step.server_p99_ms or 0:.1f} ms), generator CPU "
                f"{cpu:.0%}, loop lag {lag:.0f} ms"
                + ("" if step.held else f" — {'; '.join(step.failures + step.generator_limits)}"))
        if not step.held and search.next_level() is not None:
            step.drain_s = drain(env)
            if step.drain_s is not None:
                line += f" (drained in {step.drain_s:.1f} s)"
            else:  # the next step would judge this one's backlog, not its own level
                search.stop(f"the server was still busy {DRAIN_MAX_S:g} s after the failed step at {level:,.1f} "
                            f"{axis.short} (or its /metrics unreadable): the search stopped unanswered")
                line += f" (still busy after {DRAIN_MAX_S:g} s at level 0: search stopped)"
        log.info(line)
        print(line, flush=True)  # chatbench capacity follows the search from these lines
    STATE.answer = {"vary": axis.name, "unit": axis.unit, "short_unit": axis.short, "slo": slo.text,
                    **search.answer()}
    _set(env, 0.0, done=True)
