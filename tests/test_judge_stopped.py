"""judges.stopped: a vCPU the watchdog stopped in KVM_RUN is stuck, hung or starved.

The bounds at their edges and what the user reads: the violation names the
vCPU and the sample, the untestable reason names the figures it rests on.
"""

from __future__ import annotations

from kvmharness import checks
from kvmharness.judges.stopped import (
    HUNG_MIN_SLEEP_SHARE,
    KIND_HUNG,
    STUCK_MIN_CPU_SHARE,
    Stopped,
    judge_stopped,
)

MS = 1_000_000
BUDGET_S = 2.0
#: 10% of a 2 s budget, exactly representable: 200 ms.
STUCK_CPU_NS = 200 * MS


def test_the_bounds_are_the_documented_shares():
    assert STUCK_MIN_CPU_SHARE == 0.1 and HUNG_MIN_SLEEP_SHARE == 0.5
    assert STUCK_MIN_CPU_SHARE * BUDGET_S * 1e9 == STUCK_CPU_NS


def test_a_thread_that_ran_exactly_a_tenth_of_the_budget_is_stuck():
    s = Stopped(rip=0xFFFF_8000_0000_1234, waited_ns=1_500 * MS, cpu_ns=STUCK_CPU_NS, queued_ns=0)
    v, why = judge_stopped("vcpu1", 7, s, BUDGET_S)
    assert why is None and v is not None
    assert (v.kind, v.series, v.index, v.counter) == (checks.KIND_STUCK, "vcpu1", 7, "run")
    assert v.before is None and v.after is None and v.delta is None
    assert "did not return in 1.5 s" in v.detail and "ran 200 ms" in v.detail
    assert "rip 0xffff800000001234" in v.detail


def test_one_ns_under_a_tenth_of_the_budget_is_not_stuck():
    # it slept the rest: hung, not stuck
    s = Stopped(rip=0x10, waited_ns=1_500 * MS, cpu_ns=STUCK_CPU_NS - 1, queued_ns=0)
    v, why = judge_stopped("vcpu0", 3, s, BUDGET_S)
    assert why is None and v is not None and v.kind == KIND_HUNG


def test_stuck_wins_even_when_run_delay_is_not_recorded():
    s = Stopped(rip=0x10, waited_ns=1_500 * MS, cpu_ns=STUCK_CPU_NS, queued_ns=None)
    v, why = judge_stopped("vcpu0", 3, s, BUDGET_S)
    assert why is None and v is not None and v.kind == checks.KIND_STUCK


def test_a_thread_that_slept_exactly_half_the_wait_is_hung():
    # waited 1000 ms = ran 100 + queued 400 + slept 500
    s = Stopped(rip=0x2000, waited_ns=1_000 * MS, cpu_ns=100 * MS, queued_ns=400 * MS)
    v, why = judge_stopped("vcpu2", 11, s, BUDGET_S)
    assert why is None and v is not None
    assert (v.kind, v.series, v.index, v.counter) == (KIND_HUNG, "vcpu2", 11, "run")
    assert v.before is None and v.after is None and v.delta is None
    assert "slept 500 ms" in v.detail
    assert "ran 100 ms" in v.detail and "waited 400 ms on a run queue" in v.detail
    assert "did not return in 1 s" in v.detail and "rip 0x2000" in v.detail


def test_a_thread_that_slept_under_half_the_wait_is_untestable_not_hung():
    # waited 1000 ms = ran 150 + queued 400 + slept 450: mostly not asleep, and the
    # CPU it got counts against sleep, not for it
    s = Stopped(rip=0x2000, waited_ns=1_000 * MS, cpu_ns=150 * MS, queued_ns=400 * MS)
    v, why = judge_stopped("vcpu2", 11, s, BUDGET_S)
    assert v is None and why is not None
    assert why == (
        "vcpu2 was stopped after 1 s in KVM_RUN; its thread ran only 150 ms and waited "
        "400 ms on a run queue: the host is too loaded to judge"
    )


def test_one_ns_under_half_asleep_is_untestable():
    s = Stopped(rip=0x2000, waited_ns=1_000 * MS, cpu_ns=100 * MS, queued_ns=400 * MS + 1)
    v, why = judge_stopped("vcpu2", 11, s, BUDGET_S)
    assert v is None and "too loaded" in why


def test_without_run_delay_load_cannot_be_told_from_a_hang():
    s = Stopped(rip=0x2000, waited_ns=1_000 * MS, cpu_ns=1 * MS, queued_ns=None)
    v, why = judge_stopped("vcpu3", 0, s, BUDGET_S)
    assert v is None
    assert why == (
        "vcpu3 was stopped after 1 s in KVM_RUN with only 1 ms of CPU and no run_delay "
        "recorded: cannot tell load from a hang"
    )
