"""kvmharness.judges (the dispatcher and the record encoding) and the hang
judge: the details mutation testing found untested (scripts/mutation.py).
No KVM needed."""

from __future__ import annotations

import pytest

from kvmharness import checks
from kvmharness.judges import (
    SCHEMA_VERSION,
    RecordError,
    deltas,
    judge_record,
    read_record,
    undeltas,
)
from kvmharness.judges.hang import ThreadSample, hang_record, judge_threads
from kvmharness.judges.stopped import KIND_HUNG
from kvmharness.scenarios.base import Verdict


def test_deltas_start_from_zero_and_undeltas_invert_them():
    assert deltas([]) == [] and undeltas([]) == []
    assert deltas([5, 7, 7, 3]) == [5, 2, 0, -4]
    assert undeltas([5, 2, 0, -4]) == [5, 7, 7, 3]
    assert undeltas(deltas([10**15, 10**15 + 1])) == [10**15, 10**15 + 1]


def test_read_record_names_the_variant_as_today():
    old = {"family": "postcopy", "variant": "postcopy/stream", "x": 1}
    assert read_record(old) == {"family": "postcopy", "variant": "stream", "x": 1}
    assert old["variant"] == "postcopy/stream"  # the caller's record is left alone
    assert read_record({"family": "steal", "strategy": "fresh-vm"}) == {
        "family": "steal",
        "strategy": "fresh-vm",
        "variant": "fresh-vm",
    }
    for today in (
        {"family": "steal", "variant": "fresh-vm", "strategy": "other"},
        {"family": "steal", "variant": "steal"},
        {"family": "steal", "variant": "stealing/x"},
        {"family": 3, "variant": "3/x"},
        {"family": "steal", "variant": None, "strategy": "x"},
        {"family": "steal"},
    ):
        assert read_record(today) is today
    assert read_record({"family": "postcopy", "variant": "postcopy/"})["variant"] == ""
    # judge_record reads it so: a 0.1 record of a missing family says its variant
    with pytest.raises(RecordError, match="steal/fresh-vm has schema None"):
        judge_record({"family": "steal", "strategy": "fresh-vm"})


@pytest.mark.parametrize(
    "record, message",
    [
        ({"schema": SCHEMA_VERSION}, "no usable 'family' \\(got None\\)"),
        ({"family": 3, "schema": SCHEMA_VERSION}, "no usable 'family' \\(got 3\\)"),
        ({"family": "no-such", "schema": SCHEMA_VERSION}, "no usable 'family'"),
        ({"family": "nosuch", "schema": SCHEMA_VERSION}, "no judge for family 'nosuch'"),
        ({"family": "steal", "variant": "v"}, "steal/v has schema None; this kvmharness"),
        ({"family": "steal", "schema": SCHEMA_VERSION - 1}, f"schema {SCHEMA_VERSION - 1}"),
        ({"family": "steal", "schema": SCHEMA_VERSION + 1}, f"judges schema {SCHEMA_VERSION}"),
    ],
)
def test_a_record_no_judge_can_read_is_a_record_error(record, message):
    with pytest.raises(RecordError, match=message):
        judge_record(record)


def _hang(threads, window_ns=10**9, family="steal"):
    return {
        "schema": SCHEMA_VERSION,
        "family": family,
        "variant": "fresh-vm",
        "hang": hang_record(threads, window_ns, 30.0),
    }


def test_a_hang_record_is_judged_by_the_hang_judge_whatever_its_family():
    asleep = ThreadSample(11, "vcpu0", 0, 0, "D", "kvm_vcpu_ioctl", "kvm.py:1 run")
    j = judge_record(_hang([asleep], family="nosuch"))
    assert j.verdict == Verdict.BROKEN
    assert [v.kind for v in j.violations] == [KIND_HUNG]
    assert "nosuch/fresh-vm did not return" in j.observed
    assert "thread vcpu0 (tid 11, state D, in kvm_vcpu_ioctl) at kvm.py:1 run" in j.observed
    # the record keeps every field of every thread
    assert hang_record([asleep], 5, 1.5) == {
        "window_ns": 5,
        "deadline_s": 1.5,
        "threads": [
            {
                "tid": 11,
                "name": "vcpu0",
                "cpu_ns": 0,
                "queued_ns": 0,
                "state": "D",
                "wchan": "kvm_vcpu_ioctl",
                "where": "kvm.py:1 run",
            }
        ],
    }


def test_a_thread_sample_reads_back_with_its_defaults():
    d = {"tid": "7", "name": "main", "cpu_ns": "5", "queued_ns": 6}
    assert ThreadSample.of(d) == ThreadSample(7, "main", 5, 6, "?", "", "")
    full = dict(d, state="S", wchan="futex_wait", where="x.py:2")
    assert ThreadSample.of(full) == ThreadSample(7, "main", 5, 6, "S", "futex_wait", "x.py:2")


def test_a_hang_record_that_cannot_be_read_is_a_record_error():
    rec = _hang([ThreadSample(1, "t", 0, 0)])
    del rec["hang"]["window_ns"]
    with pytest.raises(RecordError, match="hang record unreadable"):
        judge_record(rec)
    rec = _hang([ThreadSample(1, "t", 0, 0)])
    rec["hang"]["threads"][0]["cpu_ns"] = "lots"
    with pytest.raises(RecordError, match="hang record unreadable"):
        judge_record(rec)


def test_a_hang_without_threads_or_window_is_untestable():
    for threads, window in (([], 10**9), ([ThreadSample(1, "t", 0, 0)], 0)):
        v, why = judge_threads(threads, window, "steal/x")
        assert v is None and why == "steal/x did not return and no thread of it could be read"
    j = judge_record(_hang([], 10**9))
    assert j.verdict == Verdict.UNTESTABLE and j.violations == []
    assert "no thread of it could be read" in j.observed


def test_the_first_stuck_thread_is_named_even_after_sleeping_ones():
    window = 10**9
    asleep = ThreadSample(1, "main", 0, 0, "S", "0")
    ran = ThreadSample(2, "vcpu1", window, 0, "R")
    v, why = judge_threads([asleep, ran], window, "clock/warp")
    assert why is None and v is not None and v.kind == checks.KIND_STUCK
    assert (v.series, v.index) == ("vcpu1", 1)
    assert v.detail == (
        "clock/warp did not return: thread vcpu1 (tid 2, state R) ran "
        f"{checks.format_ns(window)} of the last {checks.format_ns(window)} without finishing"
    )


def test_a_queued_thread_makes_it_untestable_not_hung():
    window = 10**9
    asleep = ThreadSample(1, "main", 0, 0, "S", "futex_wait")
    queued = ThreadSample(2, "vcpu0", 0, window, "R")
    v, why = judge_threads([asleep, queued], window, "steal/fresh-vm")
    assert v is None
    assert why is not None and why.startswith(
        "steal/fresh-vm did not return, but thread vcpu0 (tid 2, state R) waited "
        f"{checks.format_ns(window)} of the last {checks.format_ns(window)} on a run queue"
    )
    assert "(vcpu0 was stopped after 1 s in KVM_RUN; its thread ran only 0 ns" in why
    j = judge_record(_hang([asleep, queued], window))
    assert j.verdict == Verdict.UNTESTABLE and j.observed == why


def test_every_thread_asleep_is_hung_named_by_the_first():
    window = 2 * 10**9
    a = ThreadSample(1, "vcpu0", 1_000, 2_000, "D", "mutex_lock_killable", "kvm.py:9 set_msrs")
    b = ThreadSample(2, "main", 0, 0, "S")
    v, why = judge_threads([a, b], window, "steal/x")
    assert why is None and v is not None and v.kind == KIND_HUNG and v.counter == "ioctl"
    assert (v.series, v.index) == ("vcpu0", 0)
    assert v.detail == (
        "hung: steal/x did not return; thread vcpu0 (tid 1, state D, in "
        "mutex_lock_killable) at kvm.py:9 set_msrs slept through the last "
        f"{checks.format_ns(window)} (ran {checks.format_ns(1_000)}, waited "
        f"{checks.format_ns(2_000)} on a run queue), and so did every other thread: "
        "a hang in the kernel (e.g. a lock left held), not load"
    )


def test_the_window_is_the_budget_to_the_nanosecond():
    """Stuck from 10% of the window on: a thread that ran 1 ns less than a
    tenth of a 10 s window is not stuck (here: queued, so untestable); at the
    tenth it is.  A window of 1 ns is still a window (a thread asleep in it is
    hung)."""
    window = 10 * 10**9
    under = ThreadSample(1, "vcpu0", window // 10 - 1, window - window // 10)
    v, why = judge_threads([under], window, "steal/x")
    assert v is None and why is not None and "too loaded" in why
    at = ThreadSample(1, "vcpu0", window // 10, window - window // 10)
    v, why = judge_threads([at], window, "steal/x")
    assert why is None and v is not None and v.kind == checks.KIND_STUCK
    v, why = judge_threads([ThreadSample(1, "vcpu0", 0, 0)], 1, "steal/x")
    assert why is None and v is not None and v.kind == KIND_HUNG
