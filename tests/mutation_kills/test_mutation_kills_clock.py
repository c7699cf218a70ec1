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


def _freq_run(khz: int, scales, tsc_after: int, d_ns: int = 10**9) -> jc.RunView:
    """A frequency run: one vCPU, two readings after the boundary ``d_ns``
    apart in kvmclock, the TSC ``tsc_after`` ticks apart."""
    from kvmharness.scenarios.clock_record import BoundaryFacts, ClockRecord

    r = ClockRecord(0)
    r.samples = [
        (1_000, 5_000, 0, 2, 1, 0, 0),
        (2_000, 6_000, 0, 4, 1, 0, 0),
        (2_000 + d_ns, 6_000 + tsc_after, 0, 6, 1, 0, 0),
    ]
    r.batches = [Batch(0, 1_500, 0, 1), Batch(1_600, 2_500, 1, 1), Batch(3_000, d_ns + 3_000, 2, 1)]
    r.boundary = 1
    facts = BoundaryFacts()
    facts.khz_after = khz
    facts.pvti_scale_after = [list(s) for s in scales]
    return jc.RunView([r], True, True, facts, khz=khz)


def test_after_set_tsc_khz_each_areas_scale_is_kvms_for_the_new_rate():
    from kvmharness.pvclock import scale_for_khz

    khz = 2_000_000
    want = scale_for_khz(khz)
    assert jc._frequency(_freq_run(khz, [want, want], 2 * 10**9)) == []
    bad = (want[0] + 1, want[1])
    found = jc._frequency(_freq_run(khz, [want, bad], 2 * 10**9))
    assert [(v.kind, v.series, v.index, v.counter) for v in found] == [
        (checks.KIND_DECODE_MISMATCH, "vcpu1/pvti", 0, "scale")
    ]
    assert found[0].delta is None and found[0].before is None and found[0].after is None
    assert found[0].detail == (
        f"after KVM_SET_TSC_KHZ {khz} the area's (mul, shift) is {bad}, "
        f"the scale for {khz} kHz is {tuple(want)}"
    )


def test_after_set_tsc_khz_the_guests_tsc_runs_at_it_within_slack():
    """Over 1 s of kvmclock the TSC may be off by RATE_SLACK_PPM of the rate
    plus the readings' 2 us: at 2 GHz, 1000 + 0 + 1 kHz; one more is not
    applied."""
    from kvmharness.pvclock import scale_for_khz

    khz = 2_000_000
    want = scale_for_khz(khz)
    tol = khz * checks.RATE_SLACK_PPM // 1_000_000 + 1
    for off, caught in ((tol, False), (tol + 1, True), (-tol, False), (-tol - 1, True)):
        found = jc._frequency(_freq_run(khz, [want], (khz + off) * 1000))
        assert bool(found) is caught, (off, found)
        if caught:
            v = found[0]
            assert (v.kind, v.series, v.index, v.before, v.after, v.counter) == (
                checks.KIND_TSC_NOT_APPLIED,
                "vcpu0",
                1,
                khz,
                khz + off,
                "tsc_khz",
            )
            assert v.detail == (
                f"the guest's TSC ran at {khz + off} kHz against kvmclock after "
                f"KVM_SET_TSC_KHZ {khz}"
            )
    # a short stretch widens the tolerance by 2 us of ticks: 2e6 / 1e6 ns = 2 kHz
    found = jc._frequency(_freq_run(khz, [want], (khz + tol + 2) * 1000 * 10**6 // 10**9, 10**6))
    assert found == []
