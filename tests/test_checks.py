"""Unit tests for kvmharness.checks: synthetic series, no KVM."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmharness import checks
from kvmharness.checks import (
    KIND_DECREASE,
    KIND_IMPLAUSIBLE,
    KIND_NOT_ALIVE,
    KIND_ODD_VERSION,
    KIND_STALLED,
    KIND_TOO_FAST,
    KIND_VERSION_STALE,
    KIND_WRAP,
    U64,
    Sample,
    Violation,
)

MS = 1_000_000
S = Sample
TICK = 10_000_000


def series(values, step_ns=10 * MS, versions=None):
    versions = versions or [None] * len(values)
    return [
        Sample(i * step_ns, v, ver) for i, (v, ver) in enumerate(zip(values, versions, strict=True))
    ]


# -- monotonic / wrap --------------------------------------------------------


def test_wrap_from_negative_delta_is_named():
    s = series([0, 100, U64 - 5, U64 - 5 + 10])
    out = checks.check_monotonic("vcpu0", s)
    assert len(out) == 1
    v = out[0]
    assert (v.kind, v.series, v.index, v.before, v.after) == (KIND_WRAP, "vcpu0", 2, 100, U64 - 5)
    assert v.delta == U64 - 105
    assert v.wall_ns == 10 * MS
    assert v.counter == "steal"
    assert "2^64-5" in v.detail and "-105 ns delta" in v.detail


def test_jump_to_value_above_2_63_is_a_wrap_even_with_smaller_delta():
    before = (1 << 62) + 1
    after = (1 << 63) + 7
    out = checks.check_monotonic("vcpu1", series([before, after]))
    assert [(v.kind, v.index, v.before, v.after, v.delta) for v in out] == [
        (KIND_WRAP, 1, before, after, after - before)
    ]


def test_series_starting_wrapped_reported_at_index_0():
    out = checks.check_monotonic("vcpu0", series([U64 - 1, U64 - 1]))
    assert [(v.kind, v.index, v.before, v.after, v.delta) for v in out] == [
        (KIND_WRAP, 0, None, U64 - 1, None)
    ]


def test_decrease_xen_2017():
    out = checks.check_monotonic("cpu0", series([300, 335, 312, 320]), counter="steal")
    assert len(out) == 1
    v = out[0]
    assert (v.kind, v.index, v.before, v.after, v.delta) == (KIND_DECREASE, 2, 335, 312, -23)
    assert "down by 23" in v.detail


def test_return_from_wrapped_value_is_a_decrease():
    out = checks.check_monotonic("vcpu0", series([10, U64 - 3, 20]))
    assert [(v.kind, v.index) for v in out] == [(KIND_WRAP, 1), (KIND_DECREASE, 2)]
    assert "back from a wrapped value" in out[1].detail


def test_wrap_threshold_scales_with_unit():
    ticks = (U64 - 10 * TICK) // TICK  # ~1.8e12 ticks: a wrapped ns value shown in ticks
    s = series([335, ticks], step_ns=TICK)
    out = checks.check_monotonic("cpu0", s, unit_ns=TICK)
    assert [(v.kind, v.index, v.before, v.after) for v in out] == [(KIND_WRAP, 1, 335, ticks)]
    assert "ticks" in out[0].detail
    # The same numbers read as ns are an ordinary (if large) increase.
    assert checks.check_monotonic("cpu0", s, unit_ns=1) == []


def test_clean_monotonic_series_has_no_violation():
    assert checks.check_monotonic("vcpu0", series([0, 0, 5, 5, 1000])) == []
    assert checks.check_monotonic("vcpu0", []) == []
    assert checks.check_monotonic("vcpu0", series([7])) == []


# -- rate ---------------------------------------------------------------------


def test_too_fast_increase():
    s = [Sample(0, 0), Sample(10 * MS, 5 * MS), Sample(20 * MS, 5 * MS + 11 * MS)]
    out = checks.check_rate("vcpu0", s)
    assert len(out) == 1
    v = out[0]
    assert (v.kind, v.index, v.before, v.after, v.delta, v.wall_ns) == (
        KIND_TOO_FAST,
        2,
        5 * MS,
        16 * MS,
        11 * MS,
        10 * MS,
    )


def test_rate_exactly_at_limit_and_slack():
    s = [Sample(0, 0), Sample(10 * MS, 10 * MS)]
    assert checks.check_rate("vcpu0", s) == []
    s2 = [Sample(0, 0), Sample(10 * MS, 10 * MS + 1)]
    assert len(checks.check_rate("vcpu0", s2)) == 1
    assert checks.check_rate("vcpu0", s2, slack_ns=1) == []


def test_rate_max_rate_for_aggregate_and_units():
    # 4 CPUs' worth of ticks in 1 s: 400 ticks allowed at 100 Hz.
    s = [Sample(0, 1000), Sample(1_000_000_000, 1400)]
    assert checks.check_rate("cpu", s, unit_ns=TICK, max_rate=4) == []
    assert len(checks.check_rate("cpu", s, unit_ns=TICK, max_rate=3.5)) == 1
    s_bad = [Sample(0, 1000), Sample(1_000_000_000, 1401)]
    out = checks.check_rate("cpu", s_bad, unit_ns=TICK, max_rate=4)
    assert [(v.kind, v.delta) for v in out] == [(KIND_TOO_FAST, 401)]


def test_rate_does_not_double_report_wraps():
    s = series([100, U64 - 5])
    assert checks.check_rate("vcpu0", s) == []
    assert [v.kind for v in checks.check_series("vcpu0", s)] == [KIND_WRAP]


def test_rate_ignores_decrease_and_tolerates_odd_times():
    s = [Sample(0, 50), Sample(5, 10), Sample(3, 10)]  # time goes back, value flat
    assert checks.check_rate("vcpu0", s) == []
    # negative wall time counts as zero: any increase beyond slack is too fast
    assert len(checks.check_rate("vcpu0", [Sample(10, 0), Sample(5, 1)])) == 1


# -- versions -------------------------------------------------------------------


def test_odd_version():
    s = series([0, 10, 20], versions=[2, 5, 6])
    out = checks.check_versions("vcpu0", s)
    assert [(v.kind, v.index, v.before, v.after, v.counter) for v in out] == [
        (KIND_ODD_VERSION, 1, None, 5, "version")
    ]


def test_stale_version():
    s = series([0, 10, 10, 20], versions=[2, 4, 4, 4])
    out = checks.check_versions("vcpu0", s)
    assert [(v.kind, v.index, v.before, v.after, v.delta) for v in out] == [
        (KIND_VERSION_STALE, 3, 4, 4, 0)
    ]
    assert "from 10 to 20" in out[0].detail


def test_versions_skip_none_and_handle_u32_wrap():
    s = series([0, 5, 10, 15], versions=[(1 << 32) - 2, None, 0, 2])
    assert checks.check_versions("vcpu0", s) == []
    # version going back while value changes is stale
    s2 = series([0, 5], versions=[8, 6])
    assert [v.kind for v in checks.check_versions("vcpu0", s2)] == [KIND_VERSION_STALE]


# -- alive / bounded / stalled -----------------------------------------------------


def test_not_alive():
    a, b = Sample(0, 1000), Sample(100 * MS, 1000 + 10 * MS)
    out = checks.check_alive("vcpu0", a, b, contended_ns=100 * MS, min_fraction=0.2)
    assert [(v.kind, v.index, v.before, v.after, v.delta, v.wall_ns) for v in out] == [
        (KIND_NOT_ALIVE, 1, 1000, 1000 + 10 * MS, 10 * MS, 100 * MS)
    ]
    assert checks.check_alive("vcpu0", a, b, contended_ns=100 * MS, min_fraction=0.1) == []
    assert checks.check_alive("vcpu0", a, b, contended_ns=0, min_fraction=0.5) == []
    ticks = checks.check_alive(
        "cpu0",
        Sample(0, 10),
        Sample(0, 12),
        contended_ns=100 * MS,
        min_fraction=0.5,
        unit_ns=TICK,
        index=7,
    )
    assert [(v.kind, v.index, v.delta) for v in ticks] == [(KIND_NOT_ALIVE, 7, 2)]


def test_implausible_names_bound():
    s = series([10, 500, 10**11], step_ns=TICK)
    out = checks.check_bounded(
        "cpu0", s, bound=3600 * 10**9, bound_name="uptime from btime", unit_ns=TICK, counter="steal"
    )
    assert [(v.kind, v.index, v.before, v.after, v.delta) for v in out] == [
        (KIND_IMPLAUSIBLE, 2, None, 10**11, None)
    ]
    assert "uptime from btime" in out[0].detail


def test_bounded_per_sample_bounds():
    s = series([10, 20, 30])
    out = checks.check_bounded("vcpu0", s, bound=[5, None, 40], bound_name="b", counter="steal")
    assert [v.index for v in out] == [0]
    # shorter bound list: missing entries are unknown
    assert checks.check_bounded("vcpu0", s, bound=[100], bound_name="b") == []


def test_stalled():
    work = series([500, 600, 600, 600])
    steal = series([10, 12, 40, 41])
    idle = series([1000, 1100, 1105, 1200])
    out = checks.check_stalled("cpu0", work, steal, idle=idle, min_steal=2)
    assert [(v.kind, v.index, v.before, v.after, v.delta, v.counter) for v in out] == [
        (KIND_STALLED, 2, 600, 600, 0, "user+system")
    ]
    # without the idle guard the last pair (steal +1, min_steal 1) is reported too
    out2 = checks.check_stalled("cpu0", work, steal)
    assert [v.index for v in out2] == [2, 3]


def test_summarize_and_to_dict():
    vs = checks.check_series("vcpu0", series([0, 10, 5, U64 - 1], versions=[2, 3, 4, 6]))
    assert checks.summarize(vs) == {KIND_DECREASE: 1, KIND_WRAP: 1, KIND_ODD_VERSION: 1}
    d = vs[0].to_dict()
    assert set(d) == {f.name for f in Violation.__dataclass_fields__.values()}
    json.dumps([v.to_dict() for v in vs])


def test_check_series_default_slack_is_one_unit_plus_default():
    slack = TICK + checks.DEFAULT_SLACK_NS
    s = [Sample(0, 0), Sample(TICK, 1 + slack // TICK)]
    assert checks.check_series("cpu0", s, unit_ns=TICK) == []
    s2 = [Sample(0, 0), Sample(TICK, 2 + slack // TICK)]
    assert [v.kind for v in checks.check_series("cpu0", s2, unit_ns=TICK)] == [KIND_TOO_FAST]


def test_never_raises_on_odd_data():
    odd = [Sample(0, -5), Sample(-10, -50, 3), Sample(5, 0, None), Sample(5, 0, 7)]
    for fn in (checks.check_monotonic, checks.check_rate, checks.check_series):
        fn("x", odd)
    checks.check_versions("x", odd)
    checks.check_bounded("x", odd, bound=0, bound_name="zero")
    checks.check_stalled("x", odd, odd[:2])


def test_format_helpers():
    assert checks.format_value(U64 - 5) == "2^64-5"
    assert checks.format_value(5) == "5"
    assert checks.format_ns(12 * MS) == "12 ms"
    assert "years" in checks.format_ns(10**11 * TICK)


# -- properties ---------------------------------------------------------------------

steps = st.lists(
    st.tuples(st.integers(0, 10**12), st.integers(0, 10**12)),  # (wall step, fraction source)
    min_size=1,
    max_size=40,
)


def _clean_series(start: int, pairs: list[tuple[int, int]]) -> list[Sample]:
    t, v = 0, start
    out = [Sample(t, v)]
    for wall, frac in pairs:
        inc = frac % (wall + 1)  # 0 <= inc <= wall
        t += wall
        v += inc
        out.append(Sample(t, v))
    return out


@given(start=st.integers(0, 1 << 62), pairs=steps)
def test_property_clean_series_has_no_violation(start, pairs):
    s = _clean_series(start, pairs)
    assert checks.check_monotonic("p", s) == []
    assert checks.check_rate("p", s) == []
    assert checks.check_series("p", s, slack_ns=0) == []


@given(
    start=st.integers(0, 1 << 40),
    pairs=steps,
    where=st.integers(0, 10**6),
    drop=st.integers(1, 1 << 40),
)
def test_property_inserted_decrease_is_found_at_its_index(start, pairs, where, drop):
    s = _clean_series(start, pairs)
    i = 1 + where % len(s)  # insert after sample i-1
    prev = s[i - 1]
    bad = Sample(prev.t_ns, prev.value - drop)
    s2 = s[:i] + [bad] + [Sample(x.t_ns, x.value) for x in s[i:]]
    out = checks.check_monotonic("p", s2)
    decreases = [v for v in out if v.kind == KIND_DECREASE]
    assert decreases and decreases[0].index == i
    assert decreases[0].delta == -drop
    assert all(v.kind == KIND_DECREASE for v in out)


@given(before=st.integers(0, 1 << 62), neg=st.integers(1, 1 << 40))
def test_property_negative_delta_stored_as_u64_is_a_wrap(before, neg):
    after = (before - neg) % U64
    out = checks.check_series("p", [Sample(0, before), Sample(1, after)])
    if before - neg < 0 or after - before >= checks.WRAP_THRESHOLD:
        assert [v.kind for v in out] == [KIND_WRAP]
        assert str(-neg) in out[0].detail or "2^63" in out[0].detail
    else:
        assert [v.kind for v in out] == [KIND_DECREASE]


# -- steal against run_delay ----------------------------------------------------


def _rd(pre, post, fresh=False, start=False, base=None, phase_start=False):
    return checks.RunDelay(pre, post, fresh, start, base=base, phase_start=phase_start)


def test_run_delay_bounds_hold_for_exact_charging():
    # thread waited 5 ms before reading 1 and 3 ms during run 2: steal follows exactly
    samples = [S(0, 1_000), S(10, 6_000_000), S(20, 9_000_000)]
    rds = [
        _rd(1_000, 1_000, fresh=True, start=True),
        _rd(6_000_000, 6_000_000),
        _rd(6_000_000, 9_000_000),
    ]
    assert checks.check_follows_run_delay("vcpu0", samples, rds) == []


def test_steal_beyond_run_delay_is_named():
    samples = [S(0, 0), S(10, 5_000_000), S(20, 9_000_001)]
    rds = [_rd(0, 0, fresh=True, start=True), _rd(5_000_000, 5_000_000), _rd(5_000_000, 9_000_000)]
    out = checks.check_follows_run_delay("vcpu0", samples, rds)
    assert [(v.kind, v.index, v.delta) for v in out] == [(checks.KIND_OVER_RUN_DELAY, 2, 4_000_001)]
    assert "at most 4 ms" in out[0].detail


def test_fresh_reading_may_charge_the_whole_run_delay_and_what_was_missed():
    # restore: area held 10 ms; the previous reading missed 2 ms charged later in its run;
    # the new thread charges its whole 1 ms run_delay from last_steal 0
    samples = [S(0, 8_000_000), S(10, 11_000_000)]
    rds = [_rd(40_000_000, 42_000_000), _rd(1_000_000, 1_000_000, fresh=True, start=True)]
    assert checks.check_follows_run_delay("vcpu0", samples, rds) == []
    # one ns more than that is impossible
    samples[1] = S(10, 11_000_001)
    assert [v.kind for v in checks.check_follows_run_delay("vcpu0", samples, rds)] == [
        checks.KIND_OVER_RUN_DELAY
    ]


def test_dead_steal_clock_is_not_alive_but_idle_thread_is_fine():
    flat = [S(i, 0) for i in range(4)]
    waited = [
        _rd(0, 0, True, True),
        _rd(0, 10_000_000),
        _rd(20_000_000, 20_000_000),
        _rd(30_000_000, 30_000_000),
    ]
    out = checks.check_follows_run_delay("vcpu0", flat, waited)
    assert [(v.kind, v.index) for v in out] == [(checks.KIND_NOT_ALIVE, 3)]
    # judged between the tight readings 2 and 3 (no wait inside their KVM_RUN)
    assert "waited 10 ms" in out[0].detail
    idle = [_rd(5, 5, True, True)] + [_rd(5, 5)] * 3  # no run-queue wait: nothing to judge
    assert checks.check_follows_run_delay("vcpu0", flat, idle) == []


def test_alive_is_judged_per_stretch():
    # a new thread starts at reading 2: the waiting before it does not count after it
    samples = [S(0, 0), S(1, 20_000_000), S(2, 20_000_000), S(3, 20_000_000)]
    rds = [
        _rd(0, 0, True, True),
        _rd(20_000_000, 20_000_000),
        _rd(0, 0, True, True),
        _rd(0, 1_000_000),
    ]
    assert checks.check_follows_run_delay("vcpu0", samples, rds) == []


MS = 1_000_000


def test_whole_run_delay_is_charged_once_per_stretch():
    """After a restore the area held 10 ms; the new thread's first update charges
    its whole run_delay (1 ms) from last_steal 0.  A second update that charges
    the whole run_delay (1.2 ms) again is impossible, although each step alone
    is within the thread's whole run_delay (the pre-fix rule let it through)."""
    rds = [
        _rd(40 * MS, 40 * MS),
        _rd(1 * MS, 1 * MS, fresh=True, start=True, base=10 * MS),
        _rd(1 * MS, 1_200_000, fresh=True),
        _rd(1_200_000, 1_200_000),
    ]
    good = [S(0, 10 * MS), S(1, 11 * MS), S(2, 11_200_000), S(3, 11_200_000)]
    assert checks.check_follows_run_delay("vcpu0", good, rds, alive_min_ns=0) == []
    twice = [S(0, 10 * MS), S(1, 11 * MS), S(2, 12_200_000), S(3, 12_200_000)]
    out = checks.check_follows_run_delay("vcpu0", twice, rds, alive_min_ns=0)
    assert [(v.kind, v.index, v.before) for v in out] == [(checks.KIND_OVER_RUN_DELAY, 2, 10 * MS)]
    assert "charged once" in out[0].detail


def test_the_stretch_base_is_the_hosts_reading_not_the_guests():
    """The guest's last reading before the boundary may lag the area (an update
    after its read); the host's reading after that KVM_RUN is the exact base,
    so the guest's lag is no room for an extra charge."""
    rds = [_rd(40 * MS, 42 * MS), _rd(1 * MS, 1 * MS, fresh=True, start=True, base=10 * MS)]
    ok = [S(0, 9_500_000), S(1, 11 * MS)]
    assert checks.check_follows_run_delay("vcpu0", ok, rds) == []
    # 1 ms over base + run_delay; without the base, within what the guest's
    # last reading "may have missed" (its KVM_RUN's 2 ms)
    over = [S(0, 9_500_000), S(1, 12 * MS)]
    assert [v.kind for v in checks.check_follows_run_delay("vcpu0", over, rds)] == [
        checks.KIND_OVER_RUN_DELAY
    ]
    no_base = [rds[0], _rd(1 * MS, 1 * MS, fresh=True, start=True)]
    assert checks.check_follows_run_delay("vcpu0", over, no_base) == []


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_steal_that_counts_part_of_run_delay_is_not_alive(fraction):
    """KVM charges every ns of run_delay: between two readings whose KVM_RUN did
    not wait, steal grows by exactly pre[b] - post[a].  A kernel that counts 70%
    is not alive (the pre-fix bound, half, let 70% and 50% through)."""
    waits = [0, 5 * MS, 5 * MS, 12 * MS, 20 * MS, 26 * MS]
    rds = [_rd(0, 0, True, True)] + [_rd(w, w) for w in waits[1:]]
    exact = [S(i, w) for i, w in enumerate(waits)]
    assert checks.check_follows_run_delay("vcpu0", exact, rds) == []
    part = [S(i, int(w * fraction)) for i, w in enumerate(waits)]
    out = checks.check_follows_run_delay("vcpu0", part, rds)
    assert [(v.kind, v.index) for v in out] == [(checks.KIND_NOT_ALIVE, 5)]
    assert checks.ALIVE_FRACTION > 0.7


def test_alive_is_judged_per_phase():
    """Steal that stops at a boundary inside one stretch (a cancelled save): the
    phase after it is judged alone, however much the phase before it grew."""
    rds = [
        _rd(0, 0, True, True),
        _rd(1 * MS, 1 * MS),
        _rd(40 * MS, 40 * MS),
        _rd(41 * MS, 41 * MS, phase_start=True),
        _rd(42 * MS, 42 * MS),
        _rd(50 * MS, 50 * MS),
    ]
    stops = [S(0, 0), S(1, 1 * MS), S(2, 40 * MS), S(3, 41 * MS), S(4, 41 * MS), S(5, 41 * MS)]
    out = checks.check_follows_run_delay("vcpu0", stops, rds)
    assert [(v.kind, v.index) for v in out] == [(checks.KIND_NOT_ALIVE, 5)]
    assert [s[:2] for s in checks.alive_segments(rds)] == [(1, 2), (3, 5)]


def test_alive_ends_at_readings_whose_kvm_run_did_not_wait():
    """A KVM_RUN that waited before entering the guest hands its reading more than
    pre: a stretch ending there would credit a partial clock with that wait."""
    rds = [
        _rd(0, 0, True, True),
        _rd(0, 0),
        _rd(10 * MS, 10 * MS),
        _rd(10 * MS, 40 * MS),  # waited 30 ms inside this KVM_RUN, before entry
    ]
    assert [s[:2] for s in checks.alive_segments(rds)] == [(1, 2)]
    half = [S(0, 0), S(1, 0), S(2, 5 * MS), S(3, 20 * MS)]
    assert [v.kind for v in checks.check_follows_run_delay("vcpu0", half, rds)] == [
        checks.KIND_NOT_ALIVE
    ]


def test_wraps_are_left_to_monotonic():
    samples = [S(0, 5), S(1, (1 << 64) - 100)]
    rds = [_rd(0, 5, True, True), _rd(5, 5)]
    assert checks.check_follows_run_delay("vcpu0", samples, rds) == []
    assert checks.check_monotonic("vcpu0", samples)[0].kind == checks.KIND_WRAP


def test_run_delay_check_refuses_bad_parameters():
    with pytest.raises(ValueError, match="run_delay readings"):
        checks.check_follows_run_delay("x", [S(0, 0)], [])
    with pytest.raises(ValueError):
        checks.check_follows_run_delay("x", [S(0, 0)], [_rd(0, 0)], alive_fraction=2)


def test_a_stretch_with_no_update_at_all_is_judged_whole():
    """A dead steal clock never updates, so every reading of its stretch is
    fresh: the stretch is judged from its first reading, not skipped (which
    would make a dead clock untestable)."""
    rds = [_rd(0, 0, True, True)] + [_rd(w, w, fresh=True) for w in (0, 5 * MS, 10 * MS)]
    assert [s[:2] for s in checks.alive_segments(rds)] == [(0, 3)]
    flat = [S(i, 0) for i in range(4)]
    assert [v.kind for v in checks.check_follows_run_delay("vcpu0", flat, rds)] == [
        checks.KIND_NOT_ALIVE
    ]


def test_a_new_vcpu_owes_its_threads_whole_run_delay():
    """Under load a thread waits inside its KVM_RUNs, not between them, so no
    pair of readings brackets the waiting.  A new vCPU starts from last_steal
    0, though: by reading b KVM has charged at least pre[b] on top of the
    area's value before it, and a kernel that counts 70% falls short."""
    rds = [
        _rd(30 * MS, 30 * MS, True, True, base=7 * MS),
        _rd(30 * MS, 60 * MS, True),
        _rd(60 * MS, 90 * MS),
        _rd(90 * MS, 91 * MS),
    ]
    rds = [replace(rds[0], zero_start=True), *rds[1:]]
    good = [S(0, 37 * MS), S(1, 67 * MS), S(2, 97 * MS), S(3, 97 * MS)]
    assert checks.check_follows_run_delay("vcpu0", good, rds) == []
    span = checks.alive_segments(rds, checks.ALIVE_MIN_RUN_DELAY_NS)[0]
    assert (span.last, span.base, span.waited(rds)) == (3, 7 * MS, 90 * MS)
    part = [S(0, 28 * MS), S(1, 49 * MS), S(2, 70 * MS), S(3, 70 * MS)]
    assert [v.kind for v in checks.check_follows_run_delay("vcpu0", part, rds)] == [
        checks.KIND_NOT_ALIVE
    ]
    # without zero_start (a thread change, last_steal unknown) nothing brackets it
    moved = [replace(rds[0], zero_start=False), *rds[1:]]
    assert checks.check_follows_run_delay("vcpu0", part, moved) == []
