# ruff: noqa: E501  (EXPECTED holds each violation whole)
"""kvmharness.checks: the details mutation testing found untested
(scripts/mutation.py).  No KVM needed."""

from __future__ import annotations

from fractions import Fraction

import pytest

from kvmharness import checks as c
from kvmharness.checks import Sample

U64 = 1 << 64
DAY = 86_400 * 10**9


def test_a_violation_counts_steal_unless_told():
    v = c.violation(c.KIND_DECREASE, "vcpu0", 1, 5, 3, "x")
    assert (v.counter, v.delta, v.wall_ns) == ("steal", -2, None)
    assert c.violation(c.KIND_DECREASE, "s", 0, None, 3, "x").delta is None
    assert c.violation(c.KIND_DECREASE, "s", 0, 3, None, "x").delta is None


def test_values_near_two_to_the_64_are_named_so():
    assert c.format_value(None) == "?"
    assert c.format_value(5) == "5"
    assert c.format_value((1 << 63) - 1) == str((1 << 63) - 1)
    assert c.format_value(1 << 63) == f"2^64-{1 << 63}"
    assert c.format_value(U64 - 1) == "2^64-1"
    assert c.format_value(U64) == str(U64)  # not a u64 at all


@pytest.mark.parametrize(
    "ns, text",
    [
        (0, "0 ns"),
        (999, "999 ns"),
        (-999, "-999 ns"),
        (1000, "1 us"),
        (-1500, "-1.5 us"),
        (999_999, "1000 us"),
        (1_000_000, "1 ms"),
        (999_999_999, "1000 ms"),
        (1_000_000_000, "1 s"),
        (2 * DAY - 1, "1.728e+05 s"),
        (DAY, "8.64e+04 s"),
        (2 * DAY, "2 days"),
        (-3 * DAY, "-3 days"),
        (365 * DAY, "365 days"),
        (366 * DAY * 2 - DAY, "2.001 years"),
        (729 * DAY, "729 days"),
        (365 * DAY * 2, "1.999 years"),
        (146 * 365.25 * DAY, "146 years"),
        (-(1 << 63), "-292.3 years"),
        (Fraction(3, 2), "1.5 ns"),
    ],
)
def test_durations_read_in_their_unit(ns, text):
    assert c.format_ns(ns) == text


def test_units_are_named():
    assert c.unit_name(1) == "ns"
    assert c.unit_name(2) == "units of 2 ns"
    assert c.unit_name(c.TICK_NS_100HZ) == "ticks"


def test_rates_are_the_decimals_written():
    assert c._exact(0.1) == Fraction(1, 10)
    assert c._exact(3) == Fraction(3)
    assert c._exact(Fraction(1, 3)) == Fraction(1, 3)


def test_a_unit_must_be_positive():
    c._check_unit(1)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"^unit_ns must be positive, got {bad}$"):
            c._check_unit(bad)


def test_wall_time_needs_both_times():
    class NoTime:
        value = 1

    assert c._wall(Sample(5, 0), Sample(12, 0)) == 7
    assert c._wall(NoTime(), Sample(12, 0)) is None
    assert c._wall(Sample(12, 0), NoTime()) is None


def test_wrapped_values_and_pairs_at_their_edges():
    assert c.is_wrapped_value(1 << 63) and not c.is_wrapped_value((1 << 63) - 1)
    assert c.is_wrapped_value(1 << 62, 2) and not c.is_wrapped_value((1 << 62) - 1, 2)
    assert not c.is_wrapped_value(1 << 62)  # the default unit is 1 ns
    assert not c.is_wrap_pair(0, (1 << 63) - 1)
    # an increase of 2^63 ns or more, between values both already wrapped
    assert c.is_wrap_pair(1 << 63, U64) and not c.is_wrap_pair((1 << 63) + 1, U64)
    assert c.is_wrap_pair(1 << 62, 1 << 63, 2) and not c.is_wrap_pair((1 << 62) + 1, 1 << 63, 2)
    assert not c.is_wrap_pair(0, 1 << 62)  # default unit 1 ns
    # crossing into the wrapped half from a sane value, in units of 2 ns
    assert c.is_wrap_pair(1 << 61, (1 << 62) + 1, 2)
    assert not c.is_wrap_pair((1 << 62) + 1, (1 << 62) + 2, 2)  # both already wrapped


def test_a_series_that_starts_wrapped():
    out = c.check_monotonic("cpu1", [Sample(0, 1 << 62), Sample(1, 5)], counter="user", unit_ns=2)
    assert out[0] == c.Violation(
        c.KIND_WRAP,
        "cpu1",
        0,
        None,
        1 << 62,
        None,
        None,
        f"user starts at {1 << 62} units of 2 ns, at or above 2^63 ns: a negative value "
        f"({c.format_ns((1 << 63) - U64)}) stored as u64",
        "user",
    )
    assert [v.kind for v in out] == [c.KIND_WRAP, c.KIND_DECREASE]
    assert c.check_monotonic("s", [Sample(0, 1 << 62), Sample(1, 1 << 62)]) == []


def _v(kind, series, index, before, after, delta, wall, detail, counter="steal"):
    return c.Violation(kind, series, index, before, after, delta, wall, detail, counter)


def test_each_step_of_a_counter_is_named_exactly():
    big = (1 << 63) + (1 << 62)  # 2^64 - 2^62: a delta of -2^62 ns stored as u64
    assert c.check_monotonic("vcpu0", [Sample(10, 5), Sample(20, 5 + big)]) == [
        _v(
            c.KIND_WRAP,
            "vcpu0",
            1,
            5,
            5 + big,
            big,
            10,
            f"steal went from 5 to 2^64-{U64 - 5 - big} ns (u64 wrap of a {big - U64} ns delta)",
        )
    ]
    # in units of 2 ns: the delta of 2^63 - 2^61 units is 2^64 - 2^62 ns
    d = (1 << 62) + (1 << 61)
    assert c.check_monotonic(
        "cpu2", [Sample(10, 5), Sample(20, 5 + d)], counter="user", unit_ns=2
    ) == [
        _v(
            c.KIND_WRAP,
            "cpu2",
            1,
            5,
            5 + d,
            d,
            10,
            f"user went from 5 to {5 + d} units of 2 ns (u64 wrap of a "
            f"{c.format_ns(2 * d - U64)} delta)",
            "user",
        )
    ]
    assert c.format_ns(2 * d - U64) == "-146.1 years"
    # crossing into the wrapped half with a smaller step
    a, b = (1 << 62) - 1, (1 << 62) + (1 << 61)
    assert c.check_monotonic("cpu2", [Sample(10, a), Sample(20, b)], counter="user", unit_ns=2) == [
        _v(
            c.KIND_WRAP,
            "cpu2",
            1,
            a,
            b,
            b - a,
            10,
            f"user went from {a} to {b} units of 2 ns (the value is at or above 2^63 ns: "
            "a negative value (-146.1 years) stored as u64)",
            "user",
        )
    ]
    assert c.check_monotonic("vcpu1", [Sample(10, 50), Sample(25, 20)], counter="x") == [
        _v(c.KIND_DECREASE, "vcpu1", 1, 50, 20, -30, 15, "x went from 50 to 20 ns: down by 30", "x")
    ]
    w = (1 << 62) + 7
    assert c.check_monotonic("cpu2", [Sample(10, w), Sample(30, 9)], counter="user", unit_ns=2)[
        1
    ] == _v(
        c.KIND_DECREASE,
        "cpu2",
        1,
        w,
        9,
        9 - w,
        20,
        f"user went from {w} to 9 units of 2 ns: down by {w - 9} (back from a wrapped value)",
        "user",
    )


def test_a_wrap_of_exactly_two_to_the_63_is_a_delta_wrap():
    h = 1 << 63
    out = c.check_monotonic("s", [Sample(0, h), Sample(1, U64)])
    assert [v.kind for v in out] == [c.KIND_WRAP, c.KIND_WRAP]
    assert out[1].detail == f"steal went from 2^64-{h} to {U64} ns (u64 wrap of a {-h} ns delta)"


# ---- each check over a few readings: the exact violations

S = Sample
H = 1 << 63
CASES: dict[str, tuple] = {
    "rate-edge": (c.check_rate, ("vcpu0", [S(0, 0), S(100, 100), S(200, 201)]), {}),
    "rate-after-flat": (c.check_rate, ("vcpu0", [S(0, 5), S(10, 5), S(20, 100)]), {}),
    "rate-after-wrap": (c.check_rate, ("vcpu0", [S(0, 0), S(1, H), S(2, H + 100)]), {}),
    "rate-wrap-in-units": (
        c.check_rate,
        ("cpu0", [S(0, 0), S(10, 1 << 62), S(20, (1 << 62) + 100)]),
        {"unit_ns": 2},
    ),
    "rate-x2-units": (
        c.check_rate,
        ("cpu0", [S(0, 0), S(10, 30)]),
        {"unit_ns": 2, "max_rate": 2.0, "slack_ns": 5, "counter": "user"},
    ),
    "rate-zero": (c.check_rate, ("cpu0", [S(0, 0), S(10, 1)]), {"max_rate": 0.0}),
    "rate-back-in-time": (c.check_rate, ("cpu0", [S(10, 0), S(5, 3)]), {"slack_ns": 2}),
    "versions": (
        c.check_versions,
        (
            "vcpu1",
            [S(0, 1, 2), S(1, 2, 3), S(2, 2, None), S(3, 5, 3), S(4, 6, 1), S(5, 6, 7), S(6, 9, 8)],
        ),
        {},
    ),
    "alive": (
        c.check_alive,
        ("vcpu0", S(10, 3), S(50, 7)),
        {"contended_ns": 40, "min_fraction": 0.5, "unit_ns": 2, "counter": "user", "index": 4},
    ),
    "alive-edge": (
        c.check_alive,
        ("vcpu0", S(10, 3), S(50, 13)),
        {"contended_ns": 40, "min_fraction": 0.5, "unit_ns": 2},
    ),
    "alive-default": (
        c.check_alive,
        ("vcpu0", S(10, 3), S(50, 4)),
        {"contended_ns": 40, "min_fraction": 0.1},
    ),
    "alive-none": (
        c.check_alive,
        ("vcpu0", S(10, 3), S(50, 3)),
        {"contended_ns": 0, "min_fraction": 0.5},
    ),
    "bounded-int": (
        c.check_bounded,
        ("cpu", [S(0, 5), S(1, 6), S(2, 7)]),
        {"bound": 12, "bound_name": "uptime", "unit_ns": 2, "counter": "user"},
    ),
    "bounded-seq": (
        c.check_bounded,
        ("vcpu0", [S(0, 5), S(1, 60), S(2, 70), S(3, 80)]),
        {"bound": [4, None, 69], "bound_name": "uptime from btime"},
    ),
    "stalled": (
        c.check_stalled,
        (
            "cpu0",
            [S(0, 1), S(10, 1), S(20, 1), S(30, 2), S(40, 2)],
            [S(0, 0), S(10, 5), S(20, 6), S(30, 9), S(40, 9)],
        ),
        {"unit_ns": 2},
    ),
    "stalled-idle": (
        c.check_stalled,
        ("cpu0", [S(0, 1), S(10, 1), S(20, 1)], [S(0, 0), S(10, 5), S(20, 9)]),
        {"idle": [S(0, 0), S(10, 6), S(20, 10)], "min_steal": 0, "work_name": "user"},
    ),
    "stalled-short": (
        c.check_stalled,
        ("cpu0", [S(0, 1), S(10, 1), S(20, 1)], [S(0, 0), S(10, 5)]),
        {"min_steal": 5},
    ),
    "series": (
        c.check_series,
        ("vcpu0", [S(0, 0, 2), S(100, 100 + c.DEFAULT_SLACK_NS + 1, 4), S(200, 50, 4)]),
        {},
    ),
    "series-units": (
        c.check_series,
        ("cpu0", [S(0, 0), S(100, 5000151), S(200, 10000303)]),
        {"unit_ns": 2, "max_rate": 3.0, "counter": "user"},
    ),
}

Violation = c.Violation
EXPECTED: dict[str, list[c.Violation]] = {
    "rate-edge": [
        Violation(
            kind="too-fast",
            series="vcpu0",
            index=2,
            before=100,
            after=201,
            delta=101,
            wall_ns=100,
            detail="steal grew by 101 ns (101 ns) in 100 ns of wall time; at most 100 allowed (elapsed + 0 ns slack)",
            counter="steal",
        )
    ],
    "rate-after-flat": [
        Violation(
            kind="too-fast",
            series="vcpu0",
            index=2,
            before=5,
            after=100,
            delta=95,
            wall_ns=10,
            detail="steal grew by 95 ns (95 ns) in 10 ns of wall time; at most 10 allowed (elapsed + 0 ns slack)",
            counter="steal",
        )
    ],
    "rate-after-wrap": [
        Violation(
            kind="too-fast",
            series="vcpu0",
            index=2,
            before=9223372036854775808,
            after=9223372036854775908,
            delta=100,
            wall_ns=1,
            detail="steal grew by 100 ns (100 ns) in 1 ns of wall time; at most 1 allowed (elapsed + 0 ns slack)",
            counter="steal",
        )
    ],
    "rate-wrap-in-units": [
        Violation(
            kind="too-fast",
            series="cpu0",
            index=2,
            before=4611686018427387904,
            after=4611686018427388004,
            delta=100,
            wall_ns=10,
            detail="steal grew by 100 units of 2 ns (200 ns) in 10 ns of wall time; at most 5 allowed (elapsed + 0 ns slack)",
            counter="steal",
        )
    ],
    "rate-x2-units": [
        Violation(
            kind="too-fast",
            series="cpu0",
            index=1,
            before=0,
            after=30,
            delta=30,
            wall_ns=10,
            detail="user grew by 30 units of 2 ns (60 ns) in 10 ns of wall time; at most 12.5 allowed (elapsed x 2 + 5 ns slack)",
            counter="user",
        )
    ],
    "rate-zero": [
        Violation(
            kind="too-fast",
            series="cpu0",
            index=1,
            before=0,
            after=1,
            delta=1,
            wall_ns=10,
            detail="steal grew by 1 ns (1 ns) in 10 ns of wall time; at most 0 allowed (elapsed x 0 + 0 ns slack)",
            counter="steal",
        )
    ],
    "rate-back-in-time": [
        Violation(
            kind="too-fast",
            series="cpu0",
            index=1,
            before=0,
            after=3,
            delta=3,
            wall_ns=-5,
            detail="steal grew by 3 ns (3 ns) in -5 ns of wall time; at most 2 allowed (elapsed + 2 ns slack)",
            counter="steal",
        )
    ],
    "versions": [
        Violation(
            kind="odd-version",
            series="vcpu1",
            index=1,
            before=None,
            after=3,
            delta=None,
            wall_ns=None,
            detail="version 3 is odd (value 2): read while the host was updating the area",
            counter="version",
        ),
        Violation(
            kind="odd-version",
            series="vcpu1",
            index=3,
            before=None,
            after=3,
            delta=None,
            wall_ns=None,
            detail="version 3 is odd (value 5): read while the host was updating the area",
            counter="version",
        ),
        Violation(
            kind="version-not-advanced",
            series="vcpu1",
            index=3,
            before=3,
            after=3,
            delta=0,
            wall_ns=2,
            detail="value went from 2 to 5 but version went from 3 to 3 (sample 1 to 3)",
            counter="version",
        ),
        Violation(
            kind="odd-version",
            series="vcpu1",
            index=4,
            before=None,
            after=1,
            delta=None,
            wall_ns=None,
            detail="version 1 is odd (value 6): read while the host was updating the area",
            counter="version",
        ),
        Violation(
            kind="version-not-advanced",
            series="vcpu1",
            index=4,
            before=3,
            after=1,
            delta=-2,
            wall_ns=1,
            detail="value went from 5 to 6 but version went from 3 to 1 (sample 3 to 4)",
            counter="version",
        ),
        Violation(
            kind="odd-version",
            series="vcpu1",
            index=5,
            before=None,
            after=7,
            delta=None,
            wall_ns=None,
            detail="version 7 is odd (value 6): read while the host was updating the area",
            counter="version",
        ),
    ],
    "alive": [
        Violation(
            kind="not-alive",
            series="vcpu0",
            index=4,
            before=3,
            after=7,
            delta=4,
            wall_ns=40,
            detail="user grew by 8 ns during 40 ns of contention; expected at least 0.5 of it (20 ns)",
            counter="user",
        )
    ],
    "alive-edge": [],
    "alive-default": [
        Violation(
            kind="not-alive",
            series="vcpu0",
            index=1,
            before=3,
            after=4,
            delta=1,
            wall_ns=40,
            detail="steal grew by 1 ns during 40 ns of contention; expected at least 0.1 of it (4 ns)",
            counter="steal",
        )
    ],
    "alive-none": [],
    "bounded-int": [
        Violation(
            kind="implausible",
            series="cpu",
            index=2,
            before=None,
            after=7,
            delta=None,
            wall_ns=None,
            detail="user is 7 units of 2 ns (14 ns), more than the uptime (12 ns)",
            counter="user",
        )
    ],
    "bounded-seq": [
        Violation(
            kind="implausible",
            series="vcpu0",
            index=0,
            before=None,
            after=5,
            delta=None,
            wall_ns=None,
            detail="steal is 5 ns (5 ns), more than the uptime from btime (4 ns)",
            counter="steal",
        ),
        Violation(
            kind="implausible",
            series="vcpu0",
            index=2,
            before=None,
            after=70,
            delta=None,
            wall_ns=None,
            detail="steal is 70 ns (70 ns), more than the uptime from btime (69 ns)",
            counter="steal",
        ),
    ],
    "stalled": [
        Violation(
            kind="stalled",
            series="cpu0",
            index=1,
            before=1,
            after=1,
            delta=0,
            wall_ns=10,
            detail="user+system stayed at 1 units of 2 ns while steal grew by 5",
            counter="user+system",
        ),
        Violation(
            kind="stalled",
            series="cpu0",
            index=2,
            before=1,
            after=1,
            delta=0,
            wall_ns=10,
            detail="user+system stayed at 1 units of 2 ns while steal grew by 1",
            counter="user+system",
        ),
    ],
    "stalled-idle": [
        Violation(
            kind="stalled",
            series="cpu0",
            index=2,
            before=1,
            after=1,
            delta=0,
            wall_ns=10,
            detail="user stayed at 1 ns while steal grew by 4, idle grew by 4",
            counter="user",
        )
    ],
    "stalled-short": [
        Violation(
            kind="stalled",
            series="cpu0",
            index=1,
            before=1,
            after=1,
            delta=0,
            wall_ns=10,
            detail="user+system stayed at 1 ns while steal grew by 5",
            counter="user+system",
        )
    ],
    "series": [
        Violation(
            kind="decrease",
            series="vcpu0",
            index=2,
            before=10000101,
            after=50,
            delta=-10000051,
            wall_ns=100,
            detail="steal went from 10000101 to 50 ns: down by 10000051",
            counter="steal",
        ),
        Violation(
            kind="version-not-advanced",
            series="vcpu0",
            index=2,
            before=4,
            after=4,
            delta=0,
            wall_ns=100,
            detail="value went from 10000101 to 50 but version went from 4 to 4 (sample 1 to 2)",
            counter="version",
        ),
    ],
    "series-units": [
        Violation(
            kind="too-fast",
            series="cpu0",
            index=2,
            before=5000151,
            after=10000303,
            delta=5000152,
            wall_ns=100,
            detail="user grew by 5000152 units of 2 ns (10 ms) in 100 ns of wall time; at most 5.00015e+06 allowed (elapsed x 3 + 10 ms slack)",
            counter="user",
        )
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_check_names_each_violation_exactly(name):
    f, args, kw = CASES[name]
    assert f(*args, **kw) == EXPECTED[name]


def test_a_rate_or_slack_below_zero_is_refused():
    for kw in ({"max_rate": -0.1}, {"slack_ns": -1}):
        with pytest.raises(ValueError, match="^max_rate and slack_ns must not be negative$"):
            c.check_rate("s", [], **kw)


def test_a_version_moved_forward_less_than_half_the_u32_space():
    assert c._version_advanced(0, 2) and c._version_advanced(U64 - 2, 2)
    assert c._version_advanced(0, (1 << 31) - 1)
    assert not c._version_advanced(0, 1 << 31)
    assert not c._version_advanced(5, 5) and not c._version_advanced(5, 3)


# ---- "alive": the pair of readings it is judged over


def _pair_by_hand(rds, a, b, from_zero):
    """_alive_pair's definition, pair by pair: for each y (in order) the earliest
    x meeting post[x] + k*w[x] <= pre[y] - k*w[y] (k = 1/ALIVE_MAX_SLACK; x None
    counts 0), kept when it waited strictly more than the best so far."""
    k = 1 / c.ALIVE_MAX_SLACK
    best, best_wait = None, None
    for y in range(a, b + 1):
        ry = rds[y]
        right = ry.pre_ns - k * (ry.post_ns - ry.pre_ns)
        xs = ([None] if from_zero else []) + list(range(a, y))
        for x in xs:
            left = 0 if x is None else rds[x].post_ns + k * (rds[x].post_ns - rds[x].pre_ns)
            if left <= right:
                wait = ry.pre_ns - (0 if x is None else rds[x].post_ns)
                if best_wait is None or wait > best_wait:
                    best, best_wait = (x, y), wait
                break
    return best


def _rds(steps):
    out, t = [], 0
    for gap, inside in steps:
        pre = t + gap
        t = pre + inside
        out.append(c.RunDelay(pre, t))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_the_alive_pair_is_the_one_its_definition_names(seed):
    import random

    rnd = random.Random(seed)
    n = rnd.randint(1, 9)
    rds = _rds([(rnd.choice([0, 1, 5, 20, 100]), rnd.choice([0, 0, 1, 3, 30])) for _ in range(n)])
    a = rnd.randint(0, n - 1)
    b = rnd.randint(a, n - 1)
    for zero in (False, True):
        assert c._alive_pair(rds, a, b, zero) == _pair_by_hand(rds, a, b, zero), (rds, a, b)


def test_alive_pairs_by_hand():
    # waits inside the runs: 5x the run's own wait must fit in the gap
    rds = _rds([(10, 1), (10, 1), (100, 0), (0, 50)])
    assert c._alive_pair(rds, 0, 3, False) == (0, 2)
    assert c._alive_pair(rds, 1, 3, False) == (1, 2)
    assert c._alive_pair(rds, 0, 3, True) == (None, 2)
    assert c._alive_pair(rds, 0, 0, True) == (None, 0)
    assert c._alive_pair(rds, 0, 0, False) is None
    flat = _rds([(0, 0)] * 3)
    assert c._alive_pair(flat, 0, 2, False) == (0, 1)  # waited 0: still a pair
    # exactly on the bound: post[x] + 5*w[x] == pre[y] - 5*w[y]
    edge = [c.RunDelay(0, 1), c.RunDelay(11, 12)]  # 1 + 5 == 11 - 5
    assert c._alive_pair(edge, 0, 1, False) == (0, 1)
    assert c._alive_pair([c.RunDelay(0, 1), c.RunDelay(10, 11)], 0, 1, False) is None


def test_alive_spans_by_hand():
    flat = _rds([(0, 0)] * 3)
    assert c.alive_segments(flat) == [c.AliveSpan(0, 1)]  # waited 0 is at least 0
    assert c.alive_segments(flat, 1) == [c.AliveSpan(0, 2)]
    s = c.AliveSpan(1, 2, None)
    samples = [Sample(0, 3), Sample(1, 10), Sample(2, 15)]
    assert (s.before(samples), s.grew(samples)) == (10, 5)
    z = c.AliveSpan(1, 2, 4)
    assert (z.before(samples), z.grew(samples)) == (4, 11)
    rds = _rds([(5, 1), (7, 2), (9, 3)])
    assert (s.waited(rds), z.waited(rds)) == (rds[2].pre_ns - rds[1].post_ns, rds[2].pre_ns)


# ---- steal against run_delay: ceilings and the two rules, exact

RD = c.RunDelay
Ceiling = c.Ceiling
RDS1 = [
    RD(10, 12, fresh=True),
    RD(20, 25, fresh=True),
    RD(30, 31),
    RD(40, 44, fresh=True, start=True, base=7),
    RD(50, 52, fresh=True),
    RD(60, 61),
    RD(70, 75, fresh=True),
    RD(80, 90, fresh=True, start=True),
]
V1 = [S(100, 14), S(200, 9), S(300, 12), S(400, 30), S(500, 33), S(600, 40), S(700, 41), S(800, 42)]
RDS2 = [RD(10, 12), RD(20, 21, fresh=True), RD(30, 31)]
V2 = [S(0, 1), S(1, 2), S(2, 3)]
RDS3 = [
    RD(0, 0, start=True, zero_start=True, base=0, fresh=True),
    RD(10_000_000, 10_000_100),
    RD(20_000_000, 20_000_100),
    RD(30_000_000, 30_000_100, start=True),
    RD(40_000_000, 40_000_100),
    RD(50_000_000, 50_000_100),
]
V3 = [
    S(0, 0),
    S(10, 1_000_000),
    S(20, 2_000_000),
    S(30, 2_000_000),
    S(40, 2_000_000),
    S(50, 40_000_000),
]
CASES2 = {
    "ceilings-1": (c.run_delay_ceilings, (V1, RDS1), {}),
    "ceilings-2": (c.run_delay_ceilings, (V2, RDS2), {}),
    "follows-1": (
        c.check_follows_run_delay,
        ("vcpu0", V1, RDS1),
        {"alive_min_ns": 0, "slack_ns": 1},
    ),
    "follows-3": (c.check_follows_run_delay, ("vcpu1", V3, RDS3), {}),
    "follows-3-min": (
        c.check_follows_run_delay,
        ("vcpu1", V3, RDS3),
        {"alive_min_ns": 20_000_000, "alive_fraction": 1.0},
    ),
}
RDS4 = [RD(0, 0), RD(10_000_000, 10_000_000)]
CASES2["alive-at-need"] = (
    c.check_follows_run_delay,
    ("v", [S(0, 0), S(1, 9_000_000)], RDS4),
    {"alive_min_ns": 0},
)
CASES2["alive-under-need"] = (
    c.check_follows_run_delay,
    ("v", [S(0, 0), S(1, 8_999_999)], RDS4),
    {"alive_min_ns": 0},
)
CASES2["alive-under-min"] = (
    c.check_follows_run_delay,
    ("v", [S(0, 0), S(1, 0)], RDS4),
    {"alive_min_ns": 10_000_001},
)
CASES2["alive-at-min"] = (
    c.check_follows_run_delay,
    ("v", [S(0, 0), S(1, 0)], RDS4),
    {"alive_min_ns": 10_000_000},
)

EXPECTED2: dict[str, list] = {
    "ceilings-1": [
        Ceiling(
            before=0,
            allowed=12,
            why="the runner thread's whole run_delay, charged once since the stretch (new vCPU or runner thread) began",
        ),
        Ceiling(
            before=0,
            allowed=25,
            why="the runner thread's whole run_delay, charged once since the stretch (new vCPU or runner thread) began",
        ),
        Ceiling(before=9, allowed=11, why="its thread's run_delay growth around the two readings"),
        Ceiling(
            before=7,
            allowed=44,
            why="the runner thread's whole run_delay, charged once since the stretch (new vCPU or runner thread) began",
        ),
        Ceiling(
            before=7,
            allowed=52,
            why="the runner thread's whole run_delay, charged once since the stretch (new vCPU or runner thread) began",
        ),
        Ceiling(before=33, allowed=11, why="its thread's run_delay growth around the two readings"),
        Ceiling(
            before=40,
            allowed=76,
            why="the runner thread's whole run_delay, charged once since the stretch (new vCPU or runner thread) began, plus what the reading before it may have missed",
        ),
        Ceiling(
            before=41,
            allowed=165,
            why="the runner thread's whole run_delay, charged once since the stretch (new vCPU or runner thread) began, plus what the reading before it may have missed",
        ),
    ],
    "ceilings-2": [
        Ceiling(
            before=0,
            allowed=12,
            why="the runner thread's whole run_delay, charged once since the stretch (new vCPU or runner thread) began",
        ),
        Ceiling(
            before=1,
            allowed=23,
            why="the runner thread's whole run_delay, charged once since the stretch (new vCPU or runner thread) began, plus what the reading before it may have missed",
        ),
        Ceiling(before=2, allowed=11, why="its thread's run_delay growth around the two readings"),
    ],
    "follows-1": [
        Violation(
            kind="over-run-delay",
            series="vcpu0",
            index=0,
            before=0,
            after=14,
            delta=14,
            wall_ns=None,
            detail="steal grew by 14 ns but at most 12 ns is possible (the runner thread's whole run_delay, charged once since the stretch (new vCPU or runner thread) began)",
            counter="steal",
        ),
        Violation(
            kind="not-alive",
            series="vcpu0",
            index=6,
            before=40,
            after=41,
            delta=1,
            wall_ns=100,
            detail="steal grew by 1 ns since reading 5 while its thread waited 9 ns on a run queue (samples 5-6); KVM charges all of it, at least 0.9 of it is required",
            counter="steal",
        ),
    ],
    "follows-3": [
        Violation(
            kind="over-run-delay",
            series="vcpu1",
            index=5,
            before=2000000,
            after=40000000,
            delta=38000000,
            wall_ns=10,
            detail="steal grew by 38 ms but at most 10 ms is possible (its thread's run_delay growth around the two readings)",
            counter="steal",
        ),
        Violation(
            kind="not-alive",
            series="vcpu1",
            index=2,
            before=0,
            after=2000000,
            delta=2000000,
            wall_ns=20,
            detail="steal grew by 2 ms since its vCPU started while its thread waited 20 ms on a run queue (samples 0-2); KVM charges all of it, at least 0.9 of it is required",
            counter="steal",
        ),
    ],
    "follows-3-min": [
        Violation(
            kind="over-run-delay",
            series="vcpu1",
            index=5,
            before=2000000,
            after=40000000,
            delta=38000000,
            wall_ns=10,
            detail="steal grew by 38 ms but at most 10 ms is possible (its thread's run_delay growth around the two readings)",
            counter="steal",
        ),
        Violation(
            kind="not-alive",
            series="vcpu1",
            index=2,
            before=0,
            after=2000000,
            delta=2000000,
            wall_ns=20,
            detail="steal grew by 2 ms since its vCPU started while its thread waited 20 ms on a run queue (samples 0-2); KVM charges all of it, at least 1 of it is required",
            counter="steal",
        ),
    ],
    "alive-at-need": [],
    "alive-under-need": [
        Violation(
            kind="not-alive",
            series="v",
            index=1,
            before=0,
            after=8999999,
            delta=8999999,
            wall_ns=1,
            detail="steal grew by 9 ms since reading 0 while its thread waited 10 ms on a run queue (samples 0-1); KVM charges all of it, at least 0.9 of it is required",
            counter="steal",
        )
    ],
    "alive-under-min": [],
    "alive-at-min": [
        Violation(
            kind="not-alive",
            series="v",
            index=1,
            before=0,
            after=0,
            delta=0,
            wall_ns=1,
            detail="steal grew by 0 ns since reading 0 while its thread waited 10 ms on a run queue (samples 0-1); KVM charges all of it, at least 0.9 of it is required",
            counter="steal",
        )
    ],
}


@pytest.mark.parametrize("name", list(CASES2))
def test_steal_against_run_delay_exactly(name):
    f, args, kw = CASES2[name]
    assert f(*args, **kw) == EXPECTED2[name]


@pytest.mark.parametrize(
    "kw",
    [{"alive_fraction": 1.1}, {"alive_fraction": -0.1}, {"slack_ns": -1}, {"alive_min_ns": -1}],
)
def test_follows_run_delay_refuses_bad_settings(kw):
    with pytest.raises(
        ValueError, match="^alive_fraction must be in \\[0, 1\\], slack and minimum >= 0$"
    ):
        c.check_follows_run_delay("v", [Sample(0, 0)], [RD(0, 0)], **kw)
    assert c.check_follows_run_delay("v", [Sample(0, 0)], [RD(0, 0)], alive_fraction=1.0) == []
    with pytest.raises(ValueError, match="^1 samples but 0 run_delay readings$"):
        c.check_follows_run_delay("v", [Sample(0, 0)], [])


# ---- the kvmclock and TSC checks, exact

CASES3: dict[str, tuple] = {
    "even": (
        c.check_even_versions,
        ("vcpu0", [S(0, 5, 2), S(1, 6, 3), S(2, 7, None), S(3, 1 << 63, 5)]),
        {},
    ),
    "even-named": (c.check_even_versions, ("vcpu1", [S(0, 5, 1)]), {"counter": "hv"}),
    "warps-none": (c.check_warps, ("guest", 0, 5, 10), {}),
    "warps-one": (c.check_warps, ("guest", 1, 1500, 10), {}),
    "warps-named": (c.check_warps, ("guest", 3, 7, 100), {"what": "tsc"}),
    "jump-back": (c.check_jump, ("vcpu0", 3, 100, 90), {"max_ns": 50}),
    "jump-wrap": (
        c.check_jump,
        ("vcpu0", 3, 0, 1 << 63),
        {"max_ns": 1 << 64, "what": "tsc", "unit": "ticks"},
    ),
    "jump-zero": (c.check_jump, ("vcpu0", 3, 100, 100), {"max_ns": 50}),
    "jump-at-max": (c.check_jump, ("vcpu0", 3, 100, 150), {"max_ns": 50}),
    "jump-over": (c.check_jump, ("vcpu0", 4, 100, 151), {"max_ns": 50}),
    "jump-over-why": (
        c.check_jump,
        ("vcpu0", 4, 100, 151),
        {"max_ns": 50, "why_max": "downtime", "what": "tsc", "unit": "ticks"},
    ),
    "jump-at-min": (c.check_jump, ("vcpu0", 5, 100, 110), {"max_ns": 50, "min_ns": 10}),
    "jump-short": (c.check_jump, ("vcpu0", 5, 100, 109), {"max_ns": 50, "min_ns": 10}),
    "jump-short-why": (
        c.check_jump,
        ("vcpu0", 5, 100, 109),
        {"max_ns": 50, "min_ns": 10, "why_min": "the sleep", "what": "tsc", "unit": "ticks"},
    ),
    "jump-min-is-max": (c.check_jump, ("vcpu0", 5, 100, 110), {"max_ns": 10, "min_ns": 10}),
    "tsc-in": (c.check_tsc_applied, ("vcpu0", 2), {"lo": 10, "hi": 20, "read": 10, "written": "w"}),
    "tsc-in-hi": (
        c.check_tsc_applied,
        ("vcpu0", 2),
        {"lo": 10, "hi": 20, "read": 20, "written": "w"},
    ),
    "tsc-low": (
        c.check_tsc_applied,
        ("vcpu0", 2),
        {"lo": 10, "hi": 20, "read": 9, "written": "set 5"},
    ),
    "tsc-high": (
        c.check_tsc_applied,
        ("vcpu1", 3),
        {"lo": 10, "hi": 20, "read": 25, "written": "set 5"},
    ),
    "decode-same": (c.check_decode, ("vcpu0", 1, 5, 5), {}),
    "decode": (c.check_decode, ("vcpu0", 1, 6, 5), {}),
    "pvti-stable": (
        c.check_pvti_consistency,
        ([(2, 10, 20, 1), (2, 10, 20, 1), (2, 11, 20, 1), (2, 10, 21, 0)], True),
        {},
    ),
    "pvti-unstable": (c.check_pvti_consistency, ([(2, 10, 20, 1), (2, 11, 22, 0)], False), {}),
    "pvti-empty": (c.check_pvti_consistency, ([], True), {}),
}

EXPECTED3: dict[str, list] = {
    "even": [
        Violation(
            kind="odd-version",
            series="vcpu0",
            index=1,
            before=None,
            after=3,
            delta=None,
            wall_ns=None,
            detail="kvmclock read under odd version 3 (value 6): the area stayed mid-update for all the guest's tries",
            counter="version",
        ),
        Violation(
            kind="odd-version",
            series="vcpu0",
            index=3,
            before=None,
            after=5,
            delta=None,
            wall_ns=None,
            detail="kvmclock read under odd version 5 (value 2^64-9223372036854775808): the area stayed mid-update for all the guest's tries",
            counter="version",
        ),
    ],
    "even-named": [
        Violation(
            kind="odd-version",
            series="vcpu1",
            index=0,
            before=None,
            after=1,
            delta=None,
            wall_ns=None,
            detail="hv read under odd version 1 (value 5): the area stayed mid-update for all the guest's tries",
            counter="version",
        )
    ],
    "warps-none": [],
    "warps-one": [
        Violation(
            kind="warp",
            series="guest",
            index=0,
            before=None,
            after=1500,
            delta=None,
            wall_ns=None,
            detail="1 of 10 kvmclock readings went back against another vCPU's earlier reading, by up to 1.5 us",
            counter="kvmclock",
        )
    ],
    "warps-named": [
        Violation(
            kind="warp",
            series="guest",
            index=0,
            before=None,
            after=7,
            delta=None,
            wall_ns=None,
            detail="3 of 100 tsc readings went back against another vCPU's earlier reading, by up to 7 ns",
            counter="tsc",
        )
    ],
    "jump-back": [
        Violation(
            kind="decrease",
            series="vcpu0",
            index=3,
            before=100,
            after=90,
            delta=-10,
            wall_ns=None,
            detail="kvmclock went from 100 to 90 ns (-10): went back",
            counter="kvmclock",
        )
    ],
    "jump-wrap": [
        Violation(
            kind="u64-wrap",
            series="vcpu0",
            index=3,
            before=0,
            after=9223372036854775808,
            delta=9223372036854775808,
            wall_ns=None,
            detail="tsc went from 0 to 2^64-9223372036854775808 ticks (+9223372036854775808): went back",
            counter="tsc",
        )
    ],
    "jump-zero": [],
    "jump-at-max": [],
    "jump-over": [
        Violation(
            kind="over-long-jump",
            series="vcpu0",
            index=4,
            before=100,
            after=151,
            delta=51,
            wall_ns=None,
            detail="kvmclock went from 100 to 151 ns (+51): more than the 50 ns allowed",
            counter="kvmclock",
        )
    ],
    "jump-over-why": [
        Violation(
            kind="over-long-jump",
            series="vcpu0",
            index=4,
            before=100,
            after=151,
            delta=51,
            wall_ns=None,
            detail="tsc went from 100 to 151 ticks (+51): more than the 50 ticks allowed (downtime)",
            counter="tsc",
        )
    ],
    "jump-at-min": [],
    "jump-short": [
        Violation(
            kind="short-jump",
            series="vcpu0",
            index=5,
            before=100,
            after=109,
            delta=9,
            wall_ns=None,
            detail="kvmclock went from 100 to 109 ns (+9): less than the 10 ns that surely passed",
            counter="kvmclock",
        )
    ],
    "jump-short-why": [
        Violation(
            kind="short-jump",
            series="vcpu0",
            index=5,
            before=100,
            after=109,
            delta=9,
            wall_ns=None,
            detail="tsc went from 100 to 109 ticks (+9): less than the 10 ticks that surely passed (the sleep)",
            counter="tsc",
        )
    ],
    "jump-min-is-max": [],
    "tsc-in": [],
    "tsc-in-hi": [],
    "tsc-low": [
        Violation(
            kind="tsc-not-applied",
            series="vcpu0",
            index=2,
            before=10,
            after=9,
            delta=-1,
            wall_ns=None,
            detail="set 5; the guest read TSC 9, expected 10..20 (-1 ticks outside)",
            counter="tsc",
        )
    ],
    "tsc-high": [
        Violation(
            kind="tsc-not-applied",
            series="vcpu1",
            index=3,
            before=20,
            after=25,
            delta=5,
            wall_ns=None,
            detail="set 5; the guest read TSC 25, expected 10..20 (+5 ticks outside)",
            counter="tsc",
        )
    ],
    "decode-same": [],
    "decode": [
        Violation(
            kind="decode-mismatch",
            series="vcpu0",
            index=1,
            before=5,
            after=6,
            delta=1,
            wall_ns=None,
            detail="guest computed 6 ns, the host's pvclock arithmetic gives 5 ns from the same area and TSC",
            counter="kvmclock",
        )
    ],
    "pvti-stable": [
        Violation(
            kind="pvti-flags",
            series="vcpu3/pvti",
            index=0,
            before=1,
            after=0,
            delta=-1,
            wall_ns=None,
            detail="pvti PVCLOCK_TSC_STABLE_BIT is 0 but KVM_GET_CLOCK says stable",
            counter="flags",
        ),
        Violation(
            kind="master-clock",
            series="vcpu2/pvti",
            index=0,
            before=20,
            after=20,
            delta=0,
            wall_ns=None,
            detail="(tsc_timestamp, system_time) = (11, 20) but vcpu0 has (10, 20) under a stable master clock",
            counter="pvti",
        ),
        Violation(
            kind="master-clock",
            series="vcpu3/pvti",
            index=0,
            before=20,
            after=21,
            delta=1,
            wall_ns=None,
            detail="(tsc_timestamp, system_time) = (10, 21) but vcpu0 has (10, 20) under a stable master clock",
            counter="pvti",
        ),
    ],
    "pvti-unstable": [
        Violation(
            kind="pvti-flags",
            series="vcpu0/pvti",
            index=0,
            before=0,
            after=1,
            delta=1,
            wall_ns=None,
            detail="pvti PVCLOCK_TSC_STABLE_BIT is 1 but KVM_GET_CLOCK says not stable",
            counter="flags",
        )
    ],
    "pvti-empty": [],
}


@pytest.mark.parametrize("name", list(CASES3))
def test_the_clock_checks_exactly(name):
    f, args, kw = CASES3[name]
    assert f(*args, **kw) == EXPECTED3[name]


def test_a_jump_bound_upside_down_is_refused():
    with pytest.raises(ValueError, match="^min 11 above max 10$"):
        c.check_jump("v", 0, 0, 5, max_ns=10, min_ns=11)


def test_kinds_are_counted_in_their_documented_order():
    vs = [
        c.violation(k, "s", 0, None, None, "")
        for k in ("zzz-unknown", c.KIND_STUCK, "aaa-unknown", c.KIND_DECREASE, c.KIND_STUCK)
    ]
    assert list(c.summarize(vs).items()) == [
        (c.KIND_DECREASE, 1),
        (c.KIND_STUCK, 2),
        ("aaa-unknown", 1),
        ("zzz-unknown", 1),
    ]


def test_a_figure_not_measured_is_a_dash():
    assert c.ns_or_dash(None) == "-"
    assert c.ns_or_dash(1500) == "1.5 us"
    assert c.ns_or_dash(0) == "0 ns"


def test_durations_divided_by_their_unit_exactly():
    assert c.format_ns(999_999_999_999) == "1000 s"
    assert c.format_ns(1_000_000_000_000_000 * 1_000) == "31.69 years"
    assert c.format_ns(5 * 10**9 * 1_000_000 + 0) == "57.87 days"
    assert c.format_ns(1_234_567_890) == "1.235 s"
    assert c.format_ns(123_456_789) == "123.5 ms"
    assert c.format_ns(10**12 * 1_000_000) == "31.69 years"
    # on a rounding edge: a divisor off by one in its last place prints 123.4
    assert c.format_ns(123_450_000) == "123.5 ms"
    assert c.format_ns(123_450_000_000) == "123.5 s"
    assert c.format_ns(10_666_080_000_000_000) == "123.5 days"
    assert c.format_ns(109_078_844_400_000_000) == "3.457 years"


def test_the_rate_slack_is_ppm_rounded_up_plus_one():
    assert c.rate_slack_ns(0) == 1 and c.rate_slack_ns(-5) == 1
    assert c.rate_slack_ns(1) == 2  # 0.0005 ns rounds up to 1
    assert c.rate_slack_ns(2_000_000) == 1001
    assert c.rate_slack_ns(2_000_001) == 1002


def test_the_alive_pair_is_the_one_that_waited_most_between_the_two():
    # found by search: the latest y is not the best, nor is the pair with the
    # largest pre[y] + post[x]
    rds = [RD(300, 330), RD(350, 380), RD(385, 385), RD(386, 389), RD(489, 492), RD(492, 492)]
    assert c._alive_pair(rds, 0, 5, False) == (0, 5)
    rds = [RD(1, 101), RD(106, 106), RD(206, 236), RD(536, 566), RD(666, 669), RD(670, 770)]
    assert c._alive_pair(rds, 0, 5, False) == (0, 4)


def test_more_edges_of_the_checks():
    # a pair without a time is skipped, not the end of the series
    out = c.check_rate("s", [Sample(None, 0), Sample(None, 5), Sample(0, 5), Sample(1, 100)])
    assert [(v.kind, v.index) for v in out] == [(c.KIND_TOO_FAST, 3)]
    # no contention: nothing judged, even a counter that went back
    assert c.check_alive("s", Sample(0, 5), Sample(1, 4), contended_ns=0, min_fraction=1.0) == []
    out = c.check_alive("s", Sample(0, 5), Sample(1, 5), contended_ns=1, min_fraction=1.0)
    assert [v.kind for v in out] == [c.KIND_NOT_ALIVE]
    # series of unequal length are compared over the shortest, idle included
    w3, s3 = [Sample(i, 1) for i in range(3)], [Sample(i, 5 * i) for i in range(3)]
    idle2 = [Sample(0, 0), Sample(1, 0)]
    assert [v.index for v in c.check_stalled("c", w3[:2], s3, idle=s3)] == [1]
    assert [v.index for v in c.check_stalled("c", w3, s3, idle=idle2)] == [1]
    # the first reading has no pair before it
    assert c.check_stalled("c", w3[:2], [Sample(0, 5), Sample(1, 0)]) == []
    # check_series passes the counter and unit to check_monotonic
    assert c.check_series("cpu0", [Sample(0, 10), Sample(1, 5)], unit_ns=2, counter="user") == [
        c.violation(
            c.KIND_DECREASE,
            "cpu0",
            1,
            10,
            5,
            "user went from 10 to 5 units of 2 ns: down by 5",
            wall_ns=1,
            counter="user",
        )
    ]


def test_alive_falls_back_to_the_whole_stretch_when_the_best_pair_waited_too_little():
    # the only pair whose runs hardly waited saw 1 ns of waiting; the whole
    # stretch saw 10 ms (inside the last KVM_RUN): judged over the stretch
    rds = [RD(0, 0), RD(1, 1), RD(10_000_000, 20_000_000)]
    samples = [Sample(0, 0), Sample(1, 0), Sample(2, 0)]
    out = c.check_follows_run_delay("v", samples, rds, slack_ns=10**9)
    assert [(v.kind, v.index, v.before) for v in out] == [(c.KIND_NOT_ALIVE, 2, 0)]


def test_a_new_vcpu_with_one_reading_is_judged_from_its_start():
    rds = [RD(10_000_000, 10_000_000, fresh=True, start=True, zero_start=True, base=0)]
    out = c.check_follows_run_delay("v", [Sample(0, 0)], rds)
    assert [(v.kind, v.index, v.before, v.after) for v in out] == [(c.KIND_NOT_ALIVE, 0, 0, 0)]
    assert "since its vCPU started" in out[0].detail
    rds = [RD(10_000_000, 10_000_000, fresh=True, start=True)]  # no base: nothing to judge
    assert c.check_follows_run_delay("v", [Sample(0, 0)], rds) == []


def test_no_readings_no_violations():
    assert c.alive_segments([]) == []
    assert c.check_follows_run_delay("v", [], []) == []
