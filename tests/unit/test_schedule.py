"""Open-model send schedules (drivers/schedule.py): staggered senders sum to even gaps, also when a live rate
moves; random phases do not."""

from __future__ import annotations

import itertools
import random

import pytest

from drivers.schedule import LiveSchedule, Schedule, phase_among, staggered

EPOCH = 1_796_000_000.0  # starts are epoch seconds: floats whose rounding a grid must survive


def gaps_us(slots: list[int]) -> list[int]:
    s = sorted(slots)
    return [b - a for a, b in itertools.pairwise(s)]


def test_staggered_senders_sum_to_even_gaps() -> None:
    n = 10
    slots = [t for i in range(n) for t, _ in Schedule(rate=1.0, start=EPOCH, duration=5, phase=staggered(i, n)).slots()]
    assert len(slots) == 50
    assert all(abs(g - 100_000) <= 2 for g in gaps_us(slots)), gaps_us(slots)
    assert min(slots) == int(EPOCH * 1e6)  # sender 0 at the start, the others after it


def test_a_senders_phase_is_its_place_in_the_shared_list() -> None:
    senders = [907, 13, 455, 2]  # a run's sender uids, in the order every process was given
    phases = [phase_among(uid, senders) for uid in senders]
    assert phases == [0.0, 0.25, 0.5, 0.75]
    slots = [t for p in phases for t, _ in Schedule(rate=2.0, start=EPOCH, duration=3, phase=p).slots()]
    assert all(abs(g - 125_000) <= 2 for g in gaps_us(slots)), gaps_us(slots)
    with pytest.raises(ValueError, match="not one of the 4 senders"):
        phase_among(5, senders)


def test_random_phases_bunch() -> None:
    """The default (independent senders): ten random phases leave some slots far closer than the mean gap."""
    rng = random.Random(7)
    slots = [t for _ in range(10) for t, _ in Schedule(rate=1.0, start=0.0, duration=5, rng=rng).slots()]
    assert len(slots) == 50
    assert min(gaps_us(slots)) < 20_000 < 100_000 < max(gaps_us(slots))


def test_a_live_rate_change_keeps_the_senders_on_one_grid() -> None:
    rate = [2.0]  # each sender's slots per second: 4 senders, 8 a second, then 20
    scheds = [iter(LiveSchedule(lambda: rate[0], EPOCH, phase=staggered(i, 4)).slots()) for i in range(4)]
    before = [[next(s)[0] for _ in range(6)] for s in scheds]
    assert all(abs(g - 125_000) <= 2 for g in gaps_us([t for ts in before for t in ts]))
    rate[0] = 5.0
    after = [[next(s)[0] for _ in range(10)] for s in scheds]
    for mine, theirs in zip(before, after, strict=True):
        assert theirs[0] > mine[-1]  # no slot twice, none in the past
    # from every sender's first slot at the new rate to the first sender's last one taken
    settled, until = max(ts[0] for ts in after), min(ts[-1] for ts in after)
    tail = sorted(t for ts in after for t in ts if settled <= t <= until)
    assert len(tail) >= 30
    assert all(abs(g - 50_000) <= 2 for g in gaps_us(tail)), gaps_us(tail)


def test_after_a_pause_the_grid_resumes() -> None:
    rate = [1.0]
    s = iter(LiveSchedule(lambda: rate[0], EPOCH, phase=0.5, idle_s=0.3).slots())
    e = int(EPOCH * 1e6)
    assert [next(s)[0] - e for _ in range(2)] == [500_000, 1_500_000]
    rate[0] = 0.0
    t, burst = next(s)
    assert (t - e, burst) == (1_800_000, 0)  # idle: looks again after idle_s
    rate[0] = 1.0
    t, burst = next(s)
    assert (t - e, burst) == (2_500_000, 1)  # the first grid point at or after the pause's end


@pytest.mark.parametrize("rate", [0.3, 7.0, 20.0, 1234.5, 100_000.0])
def test_live_slots_always_move_on(rate: float) -> None:
    """Thousands of slots at a steady rate, epoch-second starts: each one interval after the last (a slot repeated
    by rounding would be sent twice at once)."""
    slots = [t for t, _ in itertools.islice(LiveSchedule(lambda: rate, EPOCH, phase=0.5).slots(), 5000)]
    assert all(abs(g - 1e6 / rate) <= 2 for g in gaps_us(slots))


def test_a_sender_index_outside_the_senders_is_refused() -> None:
    for index, senders in ((3, 3), (-1, 3), (0, 0)):
        with pytest.raises(ValueError, match="index must be in"):
            staggered(index, senders)
