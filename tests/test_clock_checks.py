"""The kvmclock/TSC checks catch synthetic warps, backward steps, odd versions,
over-long and short jumps, TSC writes not applied, decode mismatches and
master-clock disagreement; and the clock judge turns them into verdicts."""

from __future__ import annotations

from kvmharness import checks
from kvmharness.checks import Sample
from kvmharness.hostinfo import clock_consistency


def test_backward_step_and_wrap_in_a_kvmclock_series():
    s = [Sample(1, 100, 2), Sample(2, 200, 2), Sample(3, 150, 2), Sample(4, 2**64 - 5, 2)]
    v = checks.check_monotonic("vcpu0", s, counter="kvmclock")
    assert [x.kind for x in v] == [checks.KIND_DECREASE, checks.KIND_WRAP]
    assert v[0].index == 2 and v[0].delta == -50


def test_odd_version_only_and_changing_values_are_fine():
    s = [Sample(1, 100, 2), Sample(2, 200, 2), Sample(3, 300, 5)]
    v = checks.check_even_versions("vcpu1", s)
    assert [(x.kind, x.index, x.after) for x in v] == [(checks.KIND_ODD_VERSION, 2, 5)]
    assert checks.check_even_versions("vcpu1", s[:2]) == []


def test_warps_counted_and_largest_named():
    assert checks.check_warps("all", 0, 0, 100) == []
    (v,) = checks.check_warps("all", 3, 1500, 100)
    assert v.kind == checks.KIND_WARP and v.after == 1500
    assert "3 of 100" in v.detail and "1.5 us" in v.detail


def test_jump_bounds_each_way():
    assert checks.check_jump("v", 1, 1000, 1500, max_ns=600) == []
    (over,) = checks.check_jump("v", 1, 1000, 1700, max_ns=600, why_max="downtime")
    assert over.kind == checks.KIND_OVERLONG_JUMP and "downtime" in over.detail
    (back,) = checks.check_jump("v", 1, 1000, 999, max_ns=600)
    assert back.kind == checks.KIND_DECREASE
    (short,) = checks.check_jump("v", 1, 1000, 1100, max_ns=600, min_ns=200)
    assert short.kind == checks.KIND_SHORT_JUMP
    (wrap,) = checks.check_jump("v", 1, 10, 2**64 - 1, max_ns=600)
    assert wrap.kind == checks.KIND_WRAP


def test_tsc_applied():
    assert checks.check_tsc_applied("v", 0, lo=100, hi=200, read=150, written="w") == []
    (v,) = checks.check_tsc_applied("v", 0, lo=100, hi=200, read=5000, written="wrote 100")
    assert v.kind == checks.KIND_TSC_NOT_APPLIED and "wrote 100" in v.detail
    assert "5000" in v.detail and "+4800" in v.detail


def test_decode_and_pvti_consistency():
    assert checks.check_decode("v", 3, 10, 10) == []
    assert checks.check_decode("v", 3, 10, 11)[0].kind == checks.KIND_DECODE_MISMATCH
    same = [(2, 100, 200, 1), (4, 100, 200, 1)]
    assert checks.check_pvti_consistency(same, True) == []
    differ = [(2, 100, 200, 1), (4, 101, 200, 1)]
    assert [v.kind for v in checks.check_pvti_consistency(differ, True)] == [
        checks.KIND_MASTER_CLOCK
    ]
    flags = [(2, 100, 200, 1), (4, 100, 200, 0)]
    assert [v.series for v in checks.check_pvti_consistency(flags, False)] == ["vcpu0/pvti"]


def test_rate_slack_is_500_ppm_plus_one():
    assert checks.rate_slack_ns(0) == 1
    assert checks.rate_slack_ns(1_000_000_000) == 500_001
    assert checks.rate_slack_ns(1) == 2  # rounded up


def test_cpuid_vs_clock_mismatch_is_flagged():
    assert clock_consistency(True, True, True, True).startswith("consistent")
    assert clock_consistency(True, True, False, False).startswith("MISMATCH: invariant TSC")
    assert "PVCLOCK_TSC_STABLE_BIT is 1" in clock_consistency(False, True, False, True)
    assert clock_consistency(False, True, False, False).startswith("consistent")
    assert clock_consistency(True, True, None, None).startswith("unknown")


# ---- the judge over synthetic records


def _run(variant, per_vcpu, *, boundary=None, stable=True, downtime=(0, 0)):
    from kvmharness.scenarios.clock_record import Batch, BoundaryFacts, ClockRecord, Run

    recs = []
    for i, batches in enumerate(per_vcpu):
        r = ClockRecord(i)
        for t0, t1, readings, warps in batches:
            first = len(r.samples)
            r.samples += [(ns, tsc, 0, 2, int(stable), 0, 0) for ns, tsc in readings]
            r.batches.append(Batch(t0, t1, first, len(readings), warps, 7 if warps else 0))
        r.boundary = boundary or 0
        recs.append(r)
    facts = BoundaryFacts(
        get_clock_ns=(downtime[0], downtime[0]), set_clock_ns=(downtime[1], downtime[1])
    )
    return Run(recs, stable, facts=facts, khz=1_000_000)


def _judge(variant, run, vcpus=1):
    """The run's record, through JSON, judged: (violations, untestable or not
    supported reason)."""
    import json

    from kvmharness.judges import judge_record
    from kvmharness.scenarios.base import Verdict
    from kvmharness.scenarios.clock import ClockConfig, unjudged_result

    res = unjudged_result(ClockConfig(variant, vcpus), run)
    j = judge_record(json.loads(json.dumps(res.record())))
    why = (
        f"{j.verdict}: {j.observed}"
        if j.verdict in (Verdict.UNTESTABLE, Verdict.NOT_SUPPORTED)
        else None
    )
    return j.violations, why


def test_judge_catches_a_backward_step_and_warps():
    run = _run("warp", [[(0, 1_000, [(100, 1), (200, 2)], 0), (2_000, 3_000, [(150, 3)], 2)]])
    v, why = _judge("warp", run)
    assert {x.kind for x in v} == {checks.KIND_DECREASE, checks.KIND_WARP}
    assert why is None


def test_judge_catches_kvmclock_running_ahead_of_the_host():
    """100 us of kvmclock within 3 us of host time: too fast, even stable."""
    run = _run("warp", [[(0, 1_000, [(100, 1)], 0), (2_000, 3_000, [(100_100, 3)], 0)]])
    v, _ = _judge("warp", run)
    assert [x.kind for x in v] == [checks.KIND_TOO_FAST]


def test_judge_without_a_master_clock_excuses_drift_not_a_real_step_back():
    """No master clock: a 50 ns step back 20 us into the phase is within what
    drift from KVM's scale may make (excused: the variant is not supported
    here); a 5 ms one is not (BROKEN)."""
    small = _run(
        "warp", [[(0, 10_000, [(100, 1)], 0), (10_000, 20_000, [(50, 3)], 0)]], stable=False
    )
    v, why = _judge("warp", small)
    assert v == [] and why and "not supported" in why and "never stable" in why
    big = _run(
        "warp", [[(0, 10_000, [(5_000_100, 1)], 0), (10_000, 20_000, [(50, 3)], 0)]], stable=False
    )
    v, why = _judge("warp", big)
    assert checks.KIND_DECREASE in {x.kind for x in v} and why is None


def test_judge_restore_jumps_against_the_measured_time():
    # readings at 100 (KVM_RUN 0..10) and after the boundary (KVM_RUN 1000..1010):
    # at most 1010 ns of real time passed, so a 5000 ns jump is over-long
    long = _run(
        "restore/downtime",
        [[(0, 10, [(100, 1)], 0), (1000, 1010, [(5100, 2)], 0)]],
        boundary=1,
        downtime=(20, 900),
    )
    v, _ = _judge("restore/downtime", long)
    assert [x.kind for x in v] == [checks.KIND_OVERLONG_JUMP]
    ok = _run(
        "restore/downtime",
        [[(0, 10, [(100, 1)], 0), (1000, 1010, [(1000, 2)], 0)]],
        boundary=1,
        downtime=(20, 900),
    )
    assert _judge("restore/downtime", ok)[0] == []
    # frozen: the 880 ns downtime did not pass for the guest; 900 ns of jump is too much
    frozen = _run(
        "restore/frozen",
        [[(0, 10, [(100, 1)], 0), (1000, 1010, [(1000, 2)], 0)]],
        boundary=1,
        downtime=(20, 900),
    )
    assert [x.kind for x in _judge("restore/frozen", frozen)[0]] == [checks.KIND_OVERLONG_JUMP]
    # realtime: at least 990 ns passed between the readings; 100 ns is short
    short = _run(
        "restore/realtime",
        [[(0, 10, [(100, 1)], 0), (1000, 1010, [(200, 2)], 0)]],
        boundary=1,
        downtime=(20, 900),
    )
    assert [x.kind for x in _judge("restore/realtime", short)[0]] == [checks.KIND_SHORT_JUMP]


def test_judge_msr_restored_tsc_stands_still_only_until_its_first_write():
    """The TSC is read before KVM_GET_CLOCK (at 20) and written back by the state
    load (at 500): from there it may count, even if the restore's own write
    came later (KVM synchronizes the two).  Readings at 0..10 and 1000..1010
    leave at most 1010 - 480 = 530 ticks of jump at 1 tick per ns."""

    def run(tsc_after):
        r = _run(
            "tsc/msr",
            [[(0, 10, [(100, 1000)], 0), (1000, 1010, [(200, tsc_after)], 0)]],
            boundary=1,
            downtime=(20, 900),
        )
        r.facts.tsc_write_ns = 500
        return r

    assert _judge("tsc/msr", run(1000 + 520))[0] == []  # counted from the load at 500
    over = _judge("tsc/msr", run(1000 + 600))[0]
    assert [x.kind for x in over] == [checks.KIND_OVERLONG_JUMP]
    back = _judge("tsc/msr", run(999))[0]
    assert [x.kind for x in back] == [checks.KIND_DECREASE]


def test_judge_tsc_written_but_not_read():
    from kvmharness.scenarios.clock_record import TscWrite

    run = _run("tsc/msr", [[(0, 10, [(100, 50)], 0)]])
    run.records[0].tsc_writes.append(TscWrite(0, 1000, 2000, "MSR_IA32_TSC written 1000"))
    v, _ = _judge("tsc/msr", run)
    assert [x.kind for x in v] == [checks.KIND_TSC_NOT_APPLIED]
    assert "written 1000" in v[0].detail and "read TSC 50" in v[0].detail


def test_table_and_plot_of_synthetic_results(tmp_path):
    pytest = __import__("pytest")
    pytest.importorskip("matplotlib")
    from kvmharness.scenarios.base import Verdict
    from kvmharness.scenarios.clock import VARIANTS, ClockConfig, ClockResult
    from kvmharness.scenarios.clock_view import clock_table, plot_clock

    run = _run(
        "restore/downtime",
        [[(0, 10, [(100, 1)], 0), (1000, 1010, [(1000, 2)], 3)]],
        boundary=1,
        downtime=(20, 900),
    )
    res = ClockResult(
        ClockConfig("restore/downtime", 1),
        VARIANTS["restore/downtime"],
        run.records,
        [],
        Verdict.HOLDS,
        "ok",
        0.5,
        stable=True,
        stable_after=False,
        facts=run.facts,
    )
    table = clock_table([res])
    assert "restore/downtime" in table and "yes -> no" in table and "3 (7 ns)" in table
    path = tmp_path / "c.png"
    plot_clock([res], str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"


def _batch(t0_ns: int, t1_ns: int):
    from kvmharness.scenarios.clock_record import Batch

    return Batch(t0_ns, t1_ns, 0, 1)


def test_tsc_write_window_follows_the_time_since_the_write():
    from kvmharness.judges.clock import tsc_msr_range

    khz = 1_000_000  # 1 tick per ns
    lo, hi = tsc_msr_range(10**12, (1_000, 2_000), _batch(5_000, 6_000), khz)
    assert lo <= 10**12 + 3_000 and hi >= 10**12 + 5_000
    assert hi < 10**12 + 5_100  # 500 ppm + 1 ns of slack, no more


def test_tsc_write_synced_by_kvm_with_an_earlier_write_of_the_vm():
    """KVM keeps the offset of an earlier write it judges the new one to
    synchronize with (a write within a second of what it expects): the state
    load's write of the same value, 2 ms before, counts from its own time."""
    from kvmharness.judges.clock import tsc_msr_range

    khz, value = 1_000_000, 10**12
    load = (value, (0, 1_000))
    write, run = (2_000_000, 2_001_000), _batch(3_000_000, 3_001_000)
    alone = tsc_msr_range(value, write, run, khz)
    synced_read = value + 3_000_500  # counted from the load's write
    assert not alone[0] <= synced_read <= alone[1]
    lo, hi = tsc_msr_range(value, write, run, khz, [load])
    assert lo <= synced_read <= hi
    # a write far from what KVM expects is never synced: the window stays the write's own
    far = (value + 5 * 10**9, (0, 1_000))
    assert tsc_msr_range(value, write, run, khz, [far]) == alone


def test_capture_completes_the_pending_exit_before_reading_state():
    """State read right after a port-I/O exit has rip on the OUT (stock KVM
    finishes it at the next KVM_RUN): capture_vcpu must finish it first."""
    from kvmharness.snapshot import state as st

    calls: list[str] = []

    class FakeVcpu:
        index = 0

        def finish_exit(self) -> None:
            calls.append("finish_exit")

        def get_msrs(self, indices):
            calls.append("get_msrs")
            return {}

    class Part:
        def __init__(self, name):
            self.name = name

        def get(self, vcpu):
            calls.append(self.name)
            return None

    orig = st.VCPU_STATE, st.readable_msrs
    st.VCPU_STATE = tuple(Part(n) for n in ("regs", "mp_state", "cpuid", "tsc_khz"))
    st.readable_msrs = lambda kvm, vcpu: []
    try:
        st.capture_vcpu(None, FakeVcpu())
    except Exception:
        pass  # only the order of the calls matters here
    finally:
        st.VCPU_STATE, st.readable_msrs = orig
    assert calls and calls[0] == "finish_exit", calls
