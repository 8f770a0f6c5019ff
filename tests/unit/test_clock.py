"""The worker's clock across runs (drivers/clock.py): the estimate taken before a run is the run's first."""

from __future__ import annotations

from drivers.clock import Clock


def test_a_new_run_starts_from_the_estimate_in_use() -> None:
    c = Clock()
    c.new_run()
    assert c.take() == []  # nothing estimated yet: nothing to report
    c.update(-50_000, 300, good_enough_us=1000)  # taken while the worker was idle, before the run
    c.update(-50_100, 900, good_enough_us=1000)
    c.new_run()  # the run starts: the estimates before it are not the run's, the one in use is
    (first,) = c.take()
    assert first[1:] == (-50_100, 900, True)
    assert c.offset_us == -50_100 and c.bound_us == 900  # still corrected by it
    assert not c.update(-40_000, 9_000, good_enough_us=1000)  # taken while the users connect: not applied
    assert c.offset_us == -50_100
    assert [e[1:] for e in c.take()] == [(-40_000, 9_000, False)]
