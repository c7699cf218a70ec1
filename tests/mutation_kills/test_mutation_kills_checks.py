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
