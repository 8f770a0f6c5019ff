"""Phased load shapes: a scenario names its phases once (ramp, burst, storm, tail, ...) and both the Locust
shape (user counts) and the users' behaviour (when to send, when to go offline) read the same timeline.

The timeline starts at ``chatbench_t0``, the epoch time the coordinator stamps into the options at test start
(Locust passes custom options on to workers with the spawn message), so every process agrees on the phases.
"""

from __future__ import annotations

from locust import LoadTestShape

from argparse import Namespace
from typing import ClassVar, NamedTuple

from drivers.clock import CLOCK


class Phase(NamedTuple):
    name: str
    seconds: float


def window(phases: list[Phase], opts: Namespace, name: str) -> tuple[float, float]:
    """(start, end) epoch seconds of the named phase."""
    t = float(getattr(opts, "chatbench_t0", 0.0) or CLOCK.time())
    for ph in phases:
        if ph.name == name:
            return t, t + ph.seconds
        t += ph.seconds
    raise KeyError(f"no phase {name!r} in {[p.name for p in phases]}")


class PhasedShape(LoadTestShape):
    """All ``users`` spawn at ``spawn_rate`` and stay until the last phase ends; then the run stops.

    Subclass and implement :meth:`phases`; :meth:`users` and :meth:`spawn_rate` default to the scenario's
    ``--members`` and ``--connect-rate`` options.
    """

    abstract: ClassVar[bool] = True
    #: leading phases not judged for generator health (connecting 10k users loads the generator on purpose)
    warmup_phases: ClassVar[tuple[str, ...]] = ("connect",)
    phase: str = ""

    def phases(self, opts: Namespace) -> list[Phase]:
        """The timeline; a phase of ``math.inf`` seconds lasts until a capacity search ends it."""
        raise NotImplementedError

    def users(self, opts: Namespace) -> int:
        return int(opts.members)

    def spawn_rate(self, opts: Namespace) -> float:
        return float(opts.connect_rate)

    def measured_from(self, opts: Namespace) -> float:
        """Epoch seconds when the first phase after the warm-up phases starts."""
        t = float(getattr(opts, "chatbench_t0", 0.0) or 0.0)
        for ph in self.phases(opts):
            if ph.name not in self.warmup_phases:
                break
            t += ph.seconds
        return t

    def search_start(self, opts: Namespace) -> float:
        """Epoch seconds when the ``search`` phase of a capacity search starts (the senders follow the level from
        then on); the first measured phase's start when the timeline has none."""
        try:
            return window(self.phases(opts), opts, "search")[0]
        except KeyError:
            return self.measured_from(opts)

    def tick(self) -> tuple[int, float] | None:
        from drivers import autorate

        if autorate.STATE.done:  # a capacity search ended: so does the run
            return None
        assert self.runner is not None
        opts = self.runner.environment.parsed_options
        assert opts is not None
        t: float = self.get_run_time()  # type: ignore[no-untyped-call]
        elapsed = 0.0
        for ph in self.phases(opts):
            elapsed += ph.seconds
            if t < elapsed:
                self.phase = ph.name
                return self.users(opts), self.spawn_rate(opts)
        return None
