"""Capacity search without sockets: SLO parsing, judging a step, and the search against simulated systems."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.bundle import capacity_result
from drivers.capacity import Search, Slo, Step, judge


def test_slo_parsing() -> None:
    s = Slo.parse("p99<200ms, lost=0,p50<=0.05s,closes=3")
    assert s.latency_ms == {"p99": 200.0, "p50": 50.0} and (s.lost, s.closes) == (0, 3)
    for bad in ("", "p99>200ms", "p99=3", "lost<1", "lost=0.5", "p98<1ms", "p99<ms", "cpu<0.9"):
        with pytest.raises(ValueError):
            Slo.parse(bad)


def test_judging_names_every_broken_clause() -> None:
    slo = Slo.parse("p99<100ms,lost=0")
    step = Step(50.0, "bracket", latency_ms={"p99": 140.0}, deliveries=10, lost=2, missed_slots=3, sent=5,
                generator_cpu=0.95)
    judge(step, slo, cpu_limit=0.9, lag_limit_ms=250)
    assert step.failures == ["latency p99 140.0 ms ≥ 100 ms", "lost 2 > 0"]
    assert step.generator_limits == ["3 send slots missed", "generator CPU 95% > 90%"]
    assert not step.held


def run(search: Search, capacity: float, generator_limit: float = float("inf")) -> dict[str, object]:
    """Drive the search against a system that holds below ``capacity`` and a generator that breaks above
    ``generator_limit``."""
    for _ in range(100):
        level = search.next_level()
        if level is None:
            return search.answer()
        step = Step(level, search.phase)
        if level >= capacity:
            step.failures.append("latency p99 over")
        if level > generator_limit:
            step.generator_limits.append("send slots missed")
        search.record(step)
    raise AssertionError("the search did not end")


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.5, max_value=50_000), st.floats(min_value=0.5, max_value=100))
def test_search_brackets_and_narrows_to_its_resolution(capacity: float, start: float) -> None:
    answer = run(Search(start, resolution=0.1), capacity)
    found, failed = answer["capacity"], answer["first_failed"]
    assert isinstance(found, float) and isinstance(failed, float)
    assert found < capacity <= failed  # the answer held; the first failure is above the true capacity
    assert failed / found - 1 <= 0.1 + 1e-9
    assert answer["confirmed"] is True and answer["generator_bound"] is False
    assert [s["phase"] for s in answer["steps"]][-1] == "confirm"  # type: ignore[index]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=2, max_value=3_000), st.integers(min_value=1, max_value=400),
       st.integers(min_value=1, max_value=5_000))
def test_a_search_over_whole_levels_asks_only_for_whole_levels(capacity: int, start: int, maximum: int) -> None:
    """A count of groups: every level whole, within [minimum, maximum]; narrowed until the first failure is the
    next whole level above the last hold or within the resolution."""
    start = min(start, maximum)
    answer = run(Search(start, resolution=0.1, maximum=maximum, minimum=1, whole=True), capacity)
    levels = [s["level"] for s in answer["steps"]]  # type: ignore[attr-defined]
    assert all(float(v).is_integer() and 1 <= v <= maximum for v in levels), levels
    found, failed = answer["capacity"], answer["first_failed"]
    if capacity > maximum:  # nothing failed up to the maximum
        assert found == maximum and failed is None
        return
    assert isinstance(found, float) and isinstance(failed, float)
    assert found < capacity <= failed
    assert failed - found <= 1 or failed / found - 1 <= 0.1 + 1e-9


def test_a_lone_failure_is_held_again_and_a_retry_that_holds_overturns_it() -> None:
    """One stall fails a short step (its p99 is about its slowest message's fan-out). The first step here fails
    once by chance: without a retry the search answers below it, for good; with one, the level is held again
    (phase ``retry``), holds, and the search goes on to the system's real limit, each failure there tried twice."""
    def search_with_one_stall(retry: bool) -> dict[str, object]:
        search = Search(10, resolution=0.1, retry=retry)
        stalled = False
        while (level := search.next_level()) is not None:
            step = Step(level, search.phase)
            if level >= 100 or not stalled:  # the real limit at 100; the very first step stalls once
                step.failures.append("latency p99 over")
            stalled = True
            search.record(step)
        return search.answer()

    capped = search_with_one_stall(retry=False)
    assert capped["capacity"] is not None and capped["capacity"] < 10  # type: ignore[operator]
    answer = search_with_one_stall(retry=True)
    found, failed = answer["capacity"], answer["first_failed"]
    assert isinstance(found, float) and isinstance(failed, float)
    assert found < 100 <= failed and failed / found - 1 <= 0.1 + 1e-9
    steps = answer["steps"]
    assert isinstance(steps, list)
    assert [(s["level"], s["phase"], s["held"]) for s in steps[:2]] == [(10, "bracket", False), (10, "retry", True)]
    # every other failure is a real one: retried, and failed again, before it narrowed the search
    for i, s in enumerate(steps[2:], start=2):
        if not s["held"] and s["phase"] != "confirm":
            pair = steps[i - 1] if s["phase"] == "retry" else steps[i + 1]
            assert pair["level"] == s["level"] and not pair["held"], (s, pair)


def test_a_retried_level_is_judged_by_its_retry() -> None:
    """The first try at 20 fails with the generator's loop late, the retry fails on the server's latency alone: the
    level's verdict is the retry's — a server capacity below 20, not 'generator-bound at 20'."""
    search = Search(10, resolution=0.25)
    while (level := search.next_level()) is not None:
        step = Step(level, search.phase)
        if level >= 20:
            step.failures.append("latency p99 over")
            if search.phase != "retry":
                step.generator_limits.append("generator event loop late")
        search.record(step)
    answer = search.answer()
    assert answer["generator_bound"] is False and answer["first_failed"] == 20
    assert answer["failed_because"] == ["latency p99 over"]
    assert answer["capacity"] is not None and 10 <= answer["capacity"] < 20  # type: ignore[operator]


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.5, max_value=50_000), st.floats(min_value=0.5, max_value=100))
def test_retries_change_no_answer_of_a_steady_system(capacity: float, start: float) -> None:
    """A system whose every step says the same: the answer with retries is the answer without, at one step more
    per failed short step."""
    with_retry, without = run(Search(start), capacity), run(Search(start, retry=False), capacity)
    assert {k: v for k, v in with_retry.items() if k != "steps"} == {k: v for k, v in without.items() if k != "steps"}
    steps, plain = with_retry["steps"], without["steps"]
    assert isinstance(steps, list) and isinstance(plain, list)
    failures = sum(1 for s in plain if not s["held"] and s["phase"] != "confirm")
    assert len(steps) == len(plain) + failures


def test_a_generator_that_breaks_first_is_the_answer() -> None:
    answer = run(Search(10), capacity=1000, generator_limit=150)
    assert answer["capacity"] is None and answer["generator_bound"] is True
    assert 150 < answer["generator_bound_at"] <= 150 * 1.1 + 1e-9  # narrowed to the resolution above 150
    assert "send slots missed" in answer["failed_because"]  # type: ignore[operator]


def test_a_level_that_does_not_hold_for_the_confirm_period_is_not_the_capacity() -> None:
    search = Search(10, resolution=0.2)
    seen: list[float] = []
    while (level := search.next_level()) is not None:
        step = Step(level, search.phase)
        seen.append(level)
        # the system degrades over time: a short step holds below 45, the long confirm only at or below 35
        if level >= 45 or (search.phase == "confirm" and level > 35):
            step.failures.append("latency p99 over")
        search.record(step)
    answer = search.answer()
    assert answer["confirmed"] is True
    assert answer["capacity"] is not None and 28 < answer["capacity"] <= 35  # type: ignore[operator]
    assert seen.count(answer["capacity"]) >= 1  # type: ignore[arg-type]


def test_failed_confirms_walk_down_further_each_time() -> None:
    """Near a soft knee a short step may hold where the long confirm does not, a few percent apart: each failed
    confirm holds the next one further down — / 1.25, then / 1.25², / 1.25⁴ at resolution 0.25 —, whatever shorter
    steps held between, up to Search.MAX_CONFIRMS; past that there is no capacity."""
    def confirm_holds_below(limit: float) -> tuple[dict[str, object], list[float]]:
        search = Search(10, resolution=0.25)
        confirms: list[float] = []
        while (level := search.next_level()) is not None:
            step = Step(level, search.phase)
            if search.phase == "confirm":
                confirms.append(level)
            if level >= 100 or (search.phase == "confirm" and level > limit):
                step.failures.append("latency p99 over")
            search.record(step)
        return search.answer(), confirms

    answer, confirms = confirm_holds_below(70)  # the first confirm, at the highest hold (~95), fails; 76 fails
    assert Search.MAX_CONFIRMS == 4
    assert len(confirms) == 3 and 80 < confirms[0] < 100
    assert confirms[1:] == pytest.approx([confirms[0] / 1.25, confirms[0] / 1.25 / 1.25 ** 2])
    assert answer["confirmed"] is True and answer["capacity"] == confirms[-1] <= 70
    assert answer["highest_held"] == answer["capacity"]  # the short steps at or above a failed confirm do not count
    answer, confirms = confirm_holds_below(1)  # none does
    assert len(confirms) == 4 and answer["capacity"] is None and answer["confirmed"] is False
    assert confirms[-1] == pytest.approx(confirms[0] / 1.25 ** (1 + 2 + 4))
    assert "no level held for the confirm period" in answer["failed_because"]  # type: ignore[operator]


def test_confirms_over_whole_levels_walk_down_whole_levels_to_the_minimum() -> None:
    """A count of groups: each confirm at a whole level, at least one below the failed one, never below the
    minimum; a failed confirm at the minimum answers 'below the minimum'."""
    search = Search(3, resolution=0.1, minimum=1, whole=True)
    while (level := search.next_level()) is not None:
        step = Step(level, search.phase)
        if level > 3 or search.phase == "confirm":
            step.failures.append("latency p99 over")
        search.record(step)
    answer = search.answer()
    confirms = [s["level"] for s in answer["steps"] if s["phase"] == "confirm"]  # type: ignore[union-attr, index]
    assert confirms == [3.0, 2.0, 1.0]
    assert answer["capacity"] is None and answer["below_minimum"] is True


def test_a_configuration_that_fails_at_the_lowest_measurable_level_has_no_capacity() -> None:
    """Failing at every level down to the minimum (a step sends too little below it): no capacity, and not
    generator-bound — the search does not halve on until steps send nothing."""
    answer = run(Search(10, minimum=0.625), capacity=0.0)
    levels = [s["level"] for s in answer["steps"]]  # type: ignore[union-attr]
    assert levels == [10, 10, 5, 5, 2.5, 2.5, 1.25, 1.25, 0.625, 0.625]  # each failure retried once
    assert answer["capacity"] is None and answer["generator_bound"] is False and answer["below_minimum"] is True
    assert answer["failed_because"] == ["latency p99 over", "no level held down to 0.625, the lowest a step measures"]
    assert run(Search(10, minimum=0.625), capacity=5)["below_minimum"] is False
    with pytest.raises(ValueError):
        Search(1, minimum=2)


def test_a_failed_confirm_with_nothing_held_below_goes_on_downwards() -> None:
    """The start level held a short step but not the confirm, and nothing below it was tried: the search goes on
    downwards (a state that degrades over the run, e.g. a growing write-diffusion table), not 'none' at once."""
    search = Search(10, resolution=0.25, minimum=0.5)
    while (level := search.next_level()) is not None:
        step = Step(level, search.phase)
        # short steps hold at 10 and below; the long confirm only at 7.5 and below
        if level > 10 or (search.phase == "confirm" and level > 7.5):
            step.failures.append("latency p99 over")
        search.record(step)
    answer = search.answer()
    levels = [(s["phase"], s["level"]) for s in answer["steps"]]  # type: ignore[union-attr]
    # the failed confirm at 10, then / 1.25 (8: over 7.5, fails), then / 1.25² (5.12: holds)
    assert [lv for ph, lv in levels if ph == "confirm"] == pytest.approx([10, 8, 8 / 1.25**2])
    assert answer["confirmed"] is True and answer["capacity"] == pytest.approx(5.12)


def test_a_confirm_that_fails_at_the_lowest_measurable_level_is_no_capacity_not_no_answer() -> None:
    """Write diffusion at 2,000 members: every level fails down to the minimum, where a short step holds but its
    confirm does not. The configuration holds nothing for the confirm period: 'below the minimum', a server answer
    (not an unanswered search). A generator-limited confirm there answers nothing."""
    for gen in (False, True):
        search = Search(10, minimum=0.625)
        while (level := search.next_level()) is not None:
            step = Step(level, search.phase)
            if level > 0.625 or search.phase == "confirm":
                step.failures.append("latency p99 over")
                if gen and search.phase == "confirm":
                    step.generator_limits.append("generator event loop late")
            search.record(step)
        answer = search.answer()
        assert answer["capacity"] is None and answer["confirmed"] is False
        assert answer["highest_held"] is None  # the failed confirm took back the short step's hold
        assert answer["below_minimum"] is (not gen), answer
        because = answer["failed_because"]
        assert isinstance(because, list)
        assert any("did not hold for the confirm period" in b for b in because) is (not gen)


def test_the_maximum_caps_the_search() -> None:
    answer = run(Search(10, maximum=100), capacity=1e9)
    assert answer["capacity"] == 100 and answer["first_failed"] is None


@pytest.mark.parametrize(("p99", "lag", "generators"), [
    (115.0, 45.0, True),  # without the lag it might have held: the step says nothing of the server
    (150.0, 60.0, True),
    (160.0, 60.0, False),  # over the ceiling by more than the generator can have added: the server's
    (250.0, 120.0, False),
    (104.0, 9.0, False),  # a lag under a tenth of the ceiling: within the step's resolution
    (104.0, 10.0, True),
])
def test_a_late_generator_loop_owns_a_latency_failure_it_can_explain(p99: float, lag: float,
                                                                      generators: bool) -> None:
    """A latency over its ceiling by less than the generator's loop lag (its worst receive delay) may be the
    generator's: not a server limit. Over by more, the server broke it whatever the generator added."""
    step = Step(80.0, "bracket", latency_ms={"p99": p99}, deliveries=10, sent=5, generator_lag_ms=lag)
    judge(step, Slo.parse("p99<100ms"), cpu_limit=0.9, lag_limit_ms=250)
    assert step.failures == [f"latency p99 {p99:.1f} ms ≥ 100 ms"]
    assert bool(step.generator_limits) is generators, step.generator_limits
    if generators:
        assert "may be the generator's" in step.generator_limits[0]


def test_a_server_limit_below_the_generators_is_still_found() -> None:
    """Bracketing jumps past both limits (the generator breaks too): narrowing finds the server's below it."""
    answer = run(Search(100, growth=4, resolution=0.05), capacity=900, generator_limit=1000)
    assert answer["generator_bound"] is False
    assert isinstance(answer["capacity"], float) and 900 / 1.05 <= answer["capacity"] < 900


def test_a_step_that_sent_nothing_proves_nothing() -> None:
    step = Step(0.2, "bracket", deliveries=0, sent=0)
    judge(step, Slo.parse("p99<100ms"), cpu_limit=0.9, lag_limit_ms=250)
    assert not step.held and step.generator_limits == ["nothing was sent during the step"]


@pytest.mark.parametrize("flag,value", [("--server-cpu-quota", "0.05"), ("--server-cpu-quota", "-1"),
                                        ("--server-cpu-quota", "65"), ("--server-cpu-quota", "half"),
                                        ("--generator-cpu-quota", "0")])
def test_a_cpu_quota_that_cannot_be_set_is_refused_before_anything_starts(
        flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from chatbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["capacity", "large_group_burst", "--slo", "p99<1s", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and ("give 0.1 .. 64" in err or "could not convert" in err), err


@pytest.mark.parametrize("argv,flag,owner", [
    (["capacity", "large_group_burst", "--slo", "p99<1s", "--json", "out.json"], "--json", "run"),
    (["matrix", "smoke", "--json=out.json"], "--json", "run"),
    (["run", "smoke", "--repeat", "3"], "--repeat", "matrix / capacity"),
    (["run", "smoke", "--slo", "p99<1s"], "--slo", "capacity"),
])
def test_another_commands_flag_is_refused_not_handed_to_the_scenario(
        argv: list[str], flag: str, owner: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown flags go to the scenario (and Locust, which has a --json of its own: `capacity --json FILE` once
    failed with "Unknown User(s): FILE"); a flag another chatbench command defines is refused by name first."""
    from chatbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"{flag} is a flag of `chatbench {owner}`, not of `chatbench {argv[0]}`" in capsys.readouterr().err


def test_the_capacity_command_passes_the_axis_and_refuses_a_bad_slo() -> None:
    import argparse

    from chatbench.capacity import locust_args

    base = {"slo": "p99<200ms", "start": 10.0, "growth": 2.0, "resolution": 0.1, "max": 1e5, "step_s": 8.0,
            "warm_s": 3.0, "confirm_s": 30.0, "retry": 0}
    flags = locust_args(argparse.Namespace(vary="groups", **base))
    assert flags[flags.index("--capacity-vary") + 1] == "groups"
    assert flags[flags.index("--capacity-retry") + 1] == "0"
    with pytest.raises(ValueError, match="SLO clause"):
        locust_args(argparse.Namespace(vary="rate", **{**base, "slo": "p99>1ms"}))


def test_a_search_stopped_after_an_undrained_failure_has_no_answer() -> None:
    """A server still busy long after a failed step would hand its backlog to every later step: the search stops
    there, keeps what it measured, and answers no capacity (the level that held so far was never confirmed)."""
    search = Search(10, resolution=0.1)
    for _ in range(3):  # 10, 20 held; 40 failed
        level = search.next_level()
        assert level is not None
        step = Step(level, search.phase)
        if level >= 40:
            step.failures.append("latency p99 over")
        search.record(step)
    assert search.next_level() is not None  # it would bisect between 20 and 40
    search.stop("the server was still busy 60 s after the failed step at 40.0 msg/s")
    assert search.next_level() is None
    answer = search.answer()
    assert answer["capacity"] is None and answer["highest_held"] == 20 and answer["first_failed"] == 40
    assert answer["stopped"] == "the server was still busy 60 s after the failed step at 40.0 msg/s"
    assert answer["stopped"] in answer["failed_because"]  # type: ignore[operator]
    assert len(answer["steps"]) == 3  # type: ignore[arg-type]
    assert Search(10).answer()["stopped"] is None


def test_a_stopped_search_makes_the_run_invalid_and_says_why() -> None:
    search = Search(10)
    search.record(Step(10, "bracket", failures=["latency p99 over"]))
    search.stop("the server was still busy 60 s after the failed step at 10.0 msg/s")
    answer = {"vary": "rate", "unit": "messages/s", "short_unit": "msg/s", **search.answer()}
    metrics: dict[str, object] = {"generator_saturated_reasons": ["generator CPU 95% > 90%"]}
    reasons = capacity_result(metrics, ["generator CPU 95% > 90%", "clock"], answer)
    assert reasons == ["clock", "capacity search stopped: the server was still busy 60 s after the failed step at "
                       "10.0 msg/s"]
    assert metrics["capacity"] == answer
    assert capacity_result({"generator_saturated_reasons": []}, [], {}) == ["the capacity search did not finish"]


def _search_bundle(storage: str, capacity: float | None, *, below: bool = False, generator: bool = False) -> dict:
    answer = {"capacity": capacity, "below_minimum": below, "minimum": 0.625, "generator_bound": generator,
              "first_failed": 0.625 if below else 20.0, "failed_because": ["latency p99 150 ms ≥ 100 ms"]}
    return {"scenario": "large_group_burst", "api_version": 1, "parameters": {"members": 2000},
            "server_modes": {"storage": storage}, "metrics": {"capacity": answer}}


def test_a_configuration_with_no_level_ranks_below_every_capacity_in_the_significance_test() -> None:
    """Write diffusion answering "< 0.625" in every search is below read diffusion's capacities: the table tests
    that difference (the no-level searches rank lowest) instead of calling it untestable; a generator-bound
    search answers nothing about the server and is not ranked."""
    from rich.console import Console

    from chatbench.capacity import capacity_table

    loaded = [_search_bundle("read", c) for c in (13.0, 14.1, 14.1, 15.4)]
    loaded += [_search_bundle("write", None, below=True) for _ in range(4)]
    loaded.append(_search_bundle("write", None, generator=True))
    console = Console(width=300, record=True)
    console.print(capacity_table(loaded, "t"))
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if "storage=" in line}
    assert "< 0.625 (in 4 of 5)" in rows["storage=write"] and "generator-bound in 1 of 5" in rows["storage=write"]
    assert "higher, p=0.0" in rows["storage=read"], rows  # 4 above 4 tied below: p ≈ 0.01
    few = [_search_bundle("read", 14.1), _search_bundle("write", None, below=True)]
    console = Console(width=300, record=True)
    console.print(capacity_table(few, "t"))
    assert "n/a (≥ 2 answers a side)" in console.export_text()


def test_the_answer_names_the_servers_cost_per_message_at_the_start_and_at_the_capacity() -> None:
    """A server whose cost per message grows with every message it stores (a table growing): the answer's
    first-step and confirm-step costs show it, and the table prints them as first → found (medians)."""
    from rich.console import Console

    from chatbench.capacity import capacity_table

    search, stored = Search(10.0, resolution=0.1), 0
    while (level := search.next_level()) is not None:
        ms = 30.0 + stored / 1000  # 30 ms on an empty table, +1 ms per 1,000 messages stored
        step = Step(level, search.phase, sent=int(level * 20), server_ms_per_message=ms)
        stored += step.sent
        if level * ms >= 700:  # the server saturates (70 % of a core) at this cost
            step.failures.append("latency p99 over")
        search.record(step)
    answer = search.answer()
    steps = answer["steps"]
    assert answer["server_ms_per_message_first"] == 30.0 == steps[0]["server_ms_per_message"]
    held = [s for s in steps if s["phase"] == "confirm" and s["held"]]
    assert held and held[-1]["level"] == answer["capacity"]
    assert answer["server_ms_per_message_found"] == held[-1]["server_ms_per_message"] > 30.0
    bundles = [{"scenario": "large_group_burst", "api_version": 1, "parameters": {"members": 2000},
                "server_modes": {"storage": "write"},
                "metrics": {"capacity": {**answer, "server_ms_per_message_found": found,
                                         "failed_because": [f"latency p99 {p99} ms ≥ 100 ms",
                                                            f"generator event loop {lag} ms late: p99 …"]}}}
               for found, p99, lag in ((40, 159.9, 30), (50, 202.8, 40), (70, 1_216.1, 126))]
    console = Console(width=300, record=True)
    console.print(capacity_table(bundles, "t"))
    text = console.export_text()
    assert "30.0 → 50.0" in text
    # the limit names what broke once, not each repeat's figure
    assert "generator event loop late, latency p99 ≥ 100 ms" in text and "159.9" not in text, text
    unanswered = Search(10.0)  # no capacity: no cost at the capacity either
    unanswered.record(Step(10.0, "bracket", sent=5, server_ms_per_message=12.0, generator_limits=["slots missed"]))
    assert (unanswered.answer()["server_ms_per_message_first"], unanswered.answer()["server_ms_per_message_found"]
            ) == (12.0, None)
