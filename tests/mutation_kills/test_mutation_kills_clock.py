"""Clock judge edges that mutation testing found untested (scripts/mutation.py):
the range a TSC written with MSR_IA32_TSC may be read back in, to the tick,
with and without KVM's synchronization with an earlier write; what a step
back without a master clock is excused up to.  No KVM needed."""

from __future__ import annotations

from kvmharness import checks
from kvmharness.judges import clock as jc
from kvmharness.scenarios.clock_record import Batch

KHZ = 1_000_000  # one tick per ns: ticks are ns here
WRITTEN = 10**12


def _range(t0: int, t1: int, earlier=()):
    return jc.tsc_msr_range(WRITTEN, (100, 200), Batch(t0, t1, 0, 1), KHZ, earlier)


def test_the_first_reading_after_a_tsc_write_lies_within_the_time_since_it():
    # the reading's KVM_RUN began 10 us after the write ended, ended 20 us after it began
    lo, hi = _range(10_200, 20_100)
    early, late = 10_000, 20_000
    assert lo == WRITTEN + early - checks.rate_slack_ns(early) - 1
    assert hi == WRITTEN + late + checks.rate_slack_ns(late) + 1
    # a KVM_RUN begun before the write ended may read the value itself
    lo, _ = _range(150, 20_100)
    assert lo == WRITTEN - checks.rate_slack_ns(0) - 1


def test_a_write_within_a_second_of_the_expected_value_may_keep_the_earlier_offset():
    """KVM synchronizes a write within one second (of ticks) of what it
    expects from the earlier write; the guest may then read the earlier write's
    value plus the time since it.  One tick further is not synchronized."""
    ref_ns = (0, 50)
    ref = WRITTEN - 10**9 + 10  # 60 ticks inside the window: synchronized
    expected = ref + (100 - 50)  # ref + the time from its end to the write's start
    assert abs(WRITTEN - expected) < KHZ * 1000
    own = _range(10_200, 20_100)
    lo, hi = _range(10_200, 20_100, [(ref, ref_ns)])
    ref_lo = ref + (10_200 - 50) - checks.rate_slack_ns(10_150) - 1
    assert (lo, hi) == (min(own[0], ref_lo), own[1])
    assert lo == ref_lo < own[0]
    # exactly one second of ticks away: not synchronized, the write's own range
    edge = WRITTEN - KHZ * 1000 - (100 - 50)
    assert _range(10_200, 20_100, [(edge, ref_ns)]) == own
    # the expected value counts from the write's start (100), not its end (200)
    near = WRITTEN + KHZ * 1000 - (100 - 50) - 60  # expected 60 ticks inside, above
    assert _range(10_200, 20_100, [(near, ref_ns)])[1] > own[1]


def test_excused_violations_are_counted_per_kind():
    found = jc.Found()
    v = checks.violation(checks.KIND_DECREASE, "vcpu0", 1, 10, 5, "back")
    found.excuse(v)
    found.excuse(v)
    found.excuse(checks.violation(checks.KIND_WARP, "all", 0, None, 3, "warp"))
    assert found.excused == {checks.KIND_DECREASE: 2, checks.KIND_WARP: 1}


def test_a_step_back_exactly_at_the_drift_without_a_master_clock_is_excused():
    run = jc.RunView([])
    since = 10**9
    tol = jc.unstable_tolerance(run, 0, since)
    for size, judged in ((tol, False), (tol + 1, True)):
        found = jc.Found()
        v = checks.violation(checks.KIND_DECREASE, "vcpu0", 1, 10**12, 10**12 - size, "back")
        jc._judge_stable_kind(run, 0, v, False, since, found)
        assert bool(found.judged) is judged and bool(found.excused) is not judged
