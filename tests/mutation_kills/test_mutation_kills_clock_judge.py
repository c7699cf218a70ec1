"""The clock judge's verdict text, notes and record reading, to the character,
over real kvm_pvm records (tests/data/clock) and small synthetic runs: what
mutation testing of kvmharness/judges/clock.py found untested
(scripts/mutation.py --fast).  Every expected figure is computed here from
the record's raw fields, not by the judge's own helpers.  No KVM needed."""

from __future__ import annotations

import copy
import gzip
import json
from fractions import Fraction
from pathlib import Path

import pytest

from kvmharness import checks
from kvmharness.judges import RecordError, judge_record
from kvmharness.judges import clock as jc
from kvmharness.scenarios.base import Verdict
from kvmharness.scenarios.clock_record import STABLE_BIT, ClockRecord, RateProbe, TscWrite

DATA = Path(__file__).parent.parent / "data" / "clock"
fmt = checks.format_ns


def load(name: str) -> dict:
    with gzip.open(DATA / f"kvm_pvm-{name}.json.gz", "rt") as f:
        return json.load(f)


def vcpus(rec: dict) -> list[ClockRecord]:
    return [ClockRecord.from_record(d, rec["tsc_khz"]) for d in rec["vcpu_records"]]


def reads(rec: dict) -> int:
    return sum(b.n for r in vcpus(rec) for b in r.batches)


def jumps(rec: dict) -> str:
    """vcpuN's kvmclock jump from its last reading before the boundary to its first after."""
    out = []
    for r in vcpus(rec):
        a, b = r.batches[r.boundary - 1], r.batches[r.boundary]
        out.append(f"vcpu{r.index} {fmt(r.samples[b.first][0] - r.samples[a.first + a.n - 1][0])}")
    return ", ".join(out)


def downtime(rec: dict) -> int:
    return rec["facts"]["set_clock_ns"][0] - rec["facts"]["get_clock_ns"][1]


def khz_span(probes: list, raw: bool) -> list[float] | None:
    """A phase's measured rate from its first and last probe, as the notes give it."""
    a, b = probes[0], probes[-1]
    ta, tb = (a[0:2], b[0:2]) if raw else (a[2:4], b[2:4])
    ticks = b[4] - a[4]
    lo = Fraction(ticks * 1_000_000, tb[1] - ta[0])
    hi = Fraction(ticks * 1_000_000, tb[0] - ta[1])
    return [round(float(lo), 3), round(float(hi), 3)]


def result_of(record: dict):
    from kvmharness.scenarios.clock import ClockResult

    return ClockResult.from_json(record)


def rejudge(res) -> jc.Judgement:
    """The record of a (changed) result, through JSON, judged afresh."""
    return judge_record(json.loads(json.dumps(res.record())))


def set_sample(rec: ClockRecord, i: int, **kw: int) -> None:
    names = ["ns", "tsc", "vdso_ns", "version", "flags", "vdso_used", "tries"]
    s = list(rec.samples[i])
    for k, v in kw.items():
        s[names.index(k)] = v
    rec.samples[i] = tuple(s)  # type: ignore[assignment]


# ---- the verdict's text and notes on real records


def test_restore_text_gives_reads_each_vcpus_jump_over_the_downtime_and_the_lost_clock():
    rec = load("restore-downtime")
    j = judge_record(rec)
    assert j.verdict == Verdict.HOLDS
    assert j.observed == (
        f"{reads(rec)} reads, 0 warps; jump over {fmt(downtime(rec))} downtime: "
        f"{jumps(rec)}; master clock lost at the boundary (KVM_CLOCK_TSC_STABLE gone)"
    )
    assert j.violations == []


def test_restore_notes_give_stability_at_each_step_and_the_measured_rates():
    rec = load("restore-downtime")
    j = judge_record(rec)
    assert j.notes == {
        "stability": {
            "stable_before": True,
            "stable_at_save": True,  # saved_clock's flags 14 include KVM_CLOCK_TSC_STABLE (2)
            "stable_after": False,
            "phases_stable": [True, False],
            "lost_at_boundary": True,
        },
        "tsc": {
            "tsc_khz": rec["tsc_khz"],
            "tsc_khz_after": rec["facts"]["khz_after"],
            "measured_khz_raw": [khz_span(p, True) for p in rec["rate_probes"]],
            "measured_khz": [khz_span(p, False) for p in rec["rate_probes"]],
        },
    }


def test_a_run_without_a_boundary_gives_its_first_reading_in_ns_and_ticks():
    rec = load("monotonic")
    j = judge_record(rec)
    first = vcpus(rec)[0].samples[0]
    khz = rec["tsc_khz"]
    assert j.observed == (
        f"{reads(rec)} reads, 0 warps; first reading: kvmclock {fmt(first[0])}, TSC "
        f"{first[1]} ticks ({fmt(first[1] * 1_000_000 // khz)} at KVM's frequency)"
    )
    assert j.notes["stability"] == {
        "stable_before": True,
        "stable_at_save": None,
        "stable_after": None,
        "phases_stable": [True],
        "lost_at_boundary": False,
    }
    assert j.notes["tsc"]["tsc_khz_after"] is None
    assert set(j.notes) == {"stability", "tsc"}


def test_forced_updates_text_counts_the_sets_rewrites_and_watching_reads():
    rec = load("updates-mark")
    st = rec["storm"][0]
    rows = st["watch"]
    j = judge_record(rec)
    assert j.verdict == Verdict.HOLDS
    first = vcpus(rec)[0].samples[0]
    assert j.observed == (
        f"{reads(rec)} reads, 0 warps; {st['sets']} KVM_SET_CLOCKs, vCPU 0's area "
        f"rewritten {rows[0][1]} times under {sum(r[3] for r in rows[1:])} watching reads"
        f"; first reading: kvmclock {fmt(first[0])}, TSC {first[1]} ticks "
        f"({fmt(first[1] * 1_000_000 // rec['tsc_khz'])} at KVM's frequency)"
    )
    assert j.notes["forced_updates"] == rec["storm"]


def test_a_broken_run_names_counts_per_kind_and_the_first_violation_first():
    """Two steps back of vCPU 1 under a stable clock: the text starts with the
    count per kind and the first violation's series, index and detail."""
    res = result_of(load("monotonic"))
    rec = res.records[1]
    for i in (10, 20):
        set_sample(rec, i, ns=rec.samples[i - 1][0] - 1_000)
    j = rejudge(res)
    assert j.verdict == Verdict.BROKEN
    assert [(v.kind, v.series) for v in j.violations] == [
        (checks.KIND_DECREASE, "vcpu1"),
        (checks.KIND_DECREASE, "vcpu1"),
    ]
    first = j.violations[0]
    assert j.observed.startswith(
        f"decrease x2; first: vcpu1[{first.index}] {first.detail}; {reads(load('monotonic'))} "
        "reads, 0 warps"
    ), j.observed
    assert first.before - first.after == 1_000


# ---- reading the record


def test_config_without_a_knob_is_refused_naming_it_and_storm_defaults_to_off():
    cfg = dict(load("monotonic")["config"])
    view = jc.ClockConfigView.of(cfg)
    assert (view.phase_ms, view.downtime_ms, view.budget_s) == (150, 50, 30.0)
    assert (view.needs_stable, view.warp, view.pvti_check, view.khz_ratio, view.storm) == (
        True,
        False,
        False,
        None,
        False,
    )
    assert view.boundary == "-" and view.kind.value == "promise"
    assert view.clock_put is jc.ClockPut.NONE and view.tsc_put is jc.TscPut.STATE
    del cfg["storm"]
    assert jc.ClockConfigView.of(cfg).storm is False
    assert jc.ClockConfigView.of({**cfg, "storm": True}).storm is True
    for key in ("phase_ms", "khz_ratio"):
        broken = {k: v for k, v in cfg.items() if k != key}
        with pytest.raises(RecordError, match=f"^clock record config lacks '{key}'$"):
            jc.ClockConfigView.of(broken)


@pytest.mark.parametrize("key", ["tsc_khz", "stable", "facts", "rate_probes", "vcpu_records"])
def test_a_record_without_a_series_is_refused_as_unreadable(key):
    rec = load("restore-downtime")
    del rec[key]
    with pytest.raises(RecordError, match="^clock record unreadable: KeyError"):
        jc.run_of(rec)


def test_run_of_reads_every_field_of_the_record():
    rec = load("restore-downtime")
    rec["storm"] = [{"sets": 3, "added_ns": 7}]
    run = jc.run_of(rec)
    assert (run.stable, run.stable_after, run.khz) == (True, False, rec["tsc_khz"])
    assert run.records == vcpus(rec)
    assert run.facts.downtime_ns == downtime(rec) and run.facts.put == "saved + downtime"
    assert run.pvti_areas == rec["pvti_areas"]
    p = rec["rate_probes"][1][1]
    assert run.probes[1][1] == RateProbe((p[0], p[1]), (p[2], p[3]), p[4])
    assert [len(x) for x in run.probes] == [len(x) for x in rec["rate_probes"]]
    assert run.storm == [{"sets": 3, "added_ns": 7}] and run.added_ns(0) == 7
    assert run.added_ns(1) == 0
    del rec["storm"]
    assert jc.run_of(rec).storm == []


# ---- the forced updates (clock/updates)


def _storm_run(*storm: dict) -> jc.RunView:
    return jc.RunView([], storm=list(storm))


def test_master_clock_lost_after_the_storms_sets_is_one_violation_per_phase():
    lost = {"stable_gets": 5, "lost_after_sets": 2, "clocksource": ["tsc", "tsc"]}
    kept = {"stable_gets": 9, "lost_after_sets": None, "clocksource": ["tsc", "tsc"]}
    out, why = jc.storm_master_clock(_storm_run(kept, lost))
    assert why is None
    assert [(v.kind, v.series, v.index, v.before, v.after, v.counter) for v in out] == [
        (jc.KIND_MASTER_CLOCK_LOST, "vm", 1, 1, 0, "KVM_CLOCK_TSC_STABLE")
    ]
    assert out[0].detail == (
        "KVM_GET_CLOCK had KVM_CLOCK_TSC_STABLE 5 time(s), then lacked it after 2 "
        "KVM_SET_CLOCK(s) and nothing else (host clocksource tsc): KVM_SET_CLOCK turned "
        "the master clock off"
    )
    # a storm record without the counts or the clocksource still names the loss
    out, why = jc.storm_master_clock(_storm_run({"lost_after_sets": 1}))
    assert why is None and len(out) == 1
    assert "STABLE 0 time(s)" in out[0].detail and "(host clocksource unknown)" in out[0].detail
    out, _ = jc.storm_master_clock(_storm_run({"lost_after_sets": 1, "clocksource": []}))
    assert "(host clocksource unknown)" in out[0].detail


def test_master_clock_lost_with_the_clocksource_says_why_it_cannot_be_judged():
    moved = {"stable_gets": 5, "lost_after_sets": 2, "clocksource": ["tsc", "hpet"]}
    lost = {"stable_gets": 5, "lost_after_sets": 2, "clocksource": ["tsc", "tsc"]}
    out, why = jc.storm_master_clock(_storm_run(moved, lost))
    assert why == (
        "the host clocksource went from 'tsc' to 'hpet' during the forced updates: "
        "KVM's master clock went with it"
    )
    assert [v.index for v in out] == [1]  # the next phase is still judged


def test_the_watchers_counts_are_shown_per_vcpu_and_for_kvms_record():
    rows = [
        [100, 100, 3, 0, 0, 0, 0],  # vCPU 0: rewrites, KVM records, records keeping the mark
        [0, 0, 0, 50, 7, 2, 4002],  # vCPU 1 read the mark twice under version 4002
        [0, 0, 0, 50, 7, 0, 0],
        [0, 0, 0, 50, 7, 1, 4006],
    ]
    assert jc.storm_watch(_storm_run({"watch": rows})) == [
        "vcpu1 read vCPU 0's area 2 time(s) with the guest's mark under version 4002 "
        "(2 mod 4: KVM's after its write; a fixed mark, not judged)",
        "vcpu3 read vCPU 0's area 1 time(s) with the guest's mark under version 4006 "
        "(2 mod 4: KVM's after its write; a fixed mark, not judged)",
        "KVM's record left the guest's mark in 3 rewrites",
    ]
    # vCPU 0's own row is never a watcher's, and one row alone is no watch
    rows[0][5] = 9
    assert jc.storm_watch(_storm_run({"watch": rows}))[0].startswith("vcpu1 ")
    assert jc.storm_watch(_storm_run({"watch": rows[:1]}, {}, {"watch": None})) == []


def test_updates_judge_shows_the_watch_in_text_and_notes():
    rec = load("updates-mark")
    row = rec["storm"][0]["watch"][1]
    row[5], row[6] = 2, 4002
    rec["storm"][0]["watch"][0][2] = 5
    j = judge_record(rec)
    watch = [
        "vcpu1 read vCPU 0's area 2 time(s) with the guest's mark under version 4002 "
        "(2 mod 4: KVM's after its write; a fixed mark, not judged)",
        "KVM's record left the guest's mark in 5 rewrites",
    ]
    assert j.verdict == Verdict.HOLDS
    assert j.notes["mark_watch"] == watch
    assert j.observed.startswith(f"{reads(rec)} reads, 0 warps; ")
    assert j.observed.endswith("at KVM's frequency); " + "; ".join(watch))


def test_updates_judge_tells_rows_by_their_length():
    """Only a row of versioned marks (eight columns or more) is judged; its
    mixed count is shown with the first read only when the row has it."""
    rec = load("updates-versioned")
    rows = rec["storm"][0]["watch"]
    rows[1][5], rows[1][6], rows[1][7] = 1, 6, 2
    j = judge_record(rec)
    assert [(v.kind, v.series, v.index, v.before, v.after, v.counter) for v in j.violations] == [
        (jc.KIND_TORN_UPDATE, "vcpu1", 0, 4, 6, "pvti version")
    ]
    assert j.violations[0].detail == (
        "read vCPU 0's area 1 time(s) under KVM's even version (first 6) with the "
        "guest's mark of version 4 still in it: KVM said the area was consistent before "
        "writing its record"
    )
    assert j.notes["mark_watch"][0].startswith("vcpu1 read 2 time(s) a mark of another")
    rows[1][5] = 0
    del rows[1][8]
    j = judge_record(rec)
    assert j.verdict == Verdict.HOLDS
    assert j.notes["mark_watch"] == [
        "vcpu1 read 2 time(s) a mark of another version than the one read (an 8-byte "
        "load or store of two instants; not judged)"
    ]
    rows[1][5], rows[1][6], rows[1][7] = 2, 10, 0  # eight columns: judged, not "fixed"
    j = judge_record(rec)
    assert [(v.kind, v.after) for v in j.violations] == [(jc.KIND_TORN_UPDATE, 10)]
    assert "mark_watch" not in j.notes
    rows[1][5] = 0
    rows[0][5] = 9  # vCPU 0's row is never a watcher's
    rows[1][7] = 0
    assert judge_record(rec).verdict == Verdict.HOLDS


def test_a_storm_that_set_nothing_is_untestable_and_says_so():
    rec = load("updates")
    rec["storm"] = [{"sets": 0, "added_ns": 0}, {"sets": 0, "added_ns": 0}]
    j = judge_record(rec)
    assert (j.verdict, j.observed) == (
        Verdict.UNTESTABLE,
        "no kvmclock update was forced (no KVM_SET_CLOCK issued)",
    )
    rec["storm"][1]["sets"] = 1
    assert judge_record(rec).verdict == Verdict.HOLDS
    # a run that forces no updates needs none
    rec = load("monotonic")
    rec["storm"] = [{"sets": 0, "added_ns": 0}]
    assert judge_record(rec).verdict == Verdict.HOLDS


# ---- the TSC rate measured in the run


def _probe(t: int, tsc: int, width: int = 100, raw_off: int = 0) -> RateProbe:
    return RateProbe((t + raw_off, t + raw_off + width), (t, t + width), tsc)


def test_a_measured_rate_needs_ticks_and_time_between_the_probes():
    a = _probe(0, 1_000)
    assert jc.measured_rate(a, _probe(1_000_000, 1_000)) is None  # no tick
    assert jc.measured_rate(a, _probe(1_000_000, 999)) is None  # backwards
    assert jc.measured_rate(a, _probe(100, 5_000)) is None  # overlapping: no time for sure
    r = jc.measured_rate(a, _probe(101, 1_001))
    assert r == jc.Rate(Fraction(1_000_000, 201), Fraction(1_000_000, 1))
    assert r.mid == (r.lo + r.hi) / 2


def test_raw_and_monotonic_rates_come_from_their_own_clock():
    a, b = _probe(0, 0, raw_off=0), _probe(1_000_000, 1_000_000, raw_off=1_000_000)
    mono = jc.measured_rate(a, b)
    raw = jc.measured_rate(a, b, raw=True)
    assert mono == jc.Rate(Fraction(10**12, 1_000_100), Fraction(10**12, 999_900))
    assert raw == jc.Rate(Fraction(10**12, 2_000_100), Fraction(10**12, 1_999_900))
    run = jc.RunView([], probes=[[a, b], [a], [a, _probe(500, 7), b]])
    assert jc.phase_rates(run) == [mono, None, mono]  # first and last probe of a phase
    assert jc.phase_rates(run, raw=True) == [raw, None, raw]


def test_rate_bounds_span_kvms_khz_and_every_phases_measurement():
    slow = [_probe(0, 0), _probe(1_000_000, 900_000)]  # ~900 MHz
    fast = [_probe(0, 0), _probe(1_000_000, 1_100_000)]
    run = jc.RunView([], probes=[slow, [], fast])
    lo, hi = jc.tsc_rate_bounds(run, 1_000_000)
    assert lo == Fraction(900_000 * 10**6, 1_000_100)
    assert hi == Fraction(1_100_000 * 10**6, 999_900)
    assert jc.tsc_rate_bounds(jc.RunView([]), 1_000_000) == (1_000_000, 1_000_000)
    assert jc._rate_span(run, 1_000_000) == (lo, hi)


def test_drift_without_a_master_clock_is_twice_the_rate_error_and_ntp_slew():
    khz = 1_000_000
    slew = Fraction(checks.RATE_SLACK_PPM, 1_000_000)
    # 1.002e6 ticks in 1 ms (at most 1.001 ms): fast by 0.2% at most, the larger error
    probes = [_probe(0, 0, width=0), _probe(1_000_000, 1_002_000, width=1_000)]
    run = jc.RunView([], khz=khz, probes=[probes])
    assert jc.unstable_drift(run, 0) == 2 * (Fraction(2, 1000) + slew)
    # 0.997e6 ticks in 1 to 1.001 ms: slow by up to 0.3996%, the larger error
    probes = [_probe(0, 0, width=0), _probe(1_000_000, 997_000, width=1_000)]
    run = jc.RunView([], khz=khz, probes=[probes])
    err = 1 - Fraction(997_000 * 10**6, 1_001_000) / khz
    assert jc.unstable_drift(run, 0) == 2 * (err + slew)
    # a phase without probes, or no tsc_khz: the fallback drift
    assert jc.unstable_drift(run, 1) == 2 * jc.FALLBACK_DRIFT
    assert jc.unstable_drift(jc.RunView([], probes=[probes]), 0) == 2 * jc.FALLBACK_DRIFT
    # the tolerance grows with the time since the phase began, never below the slack
    assert jc.unstable_tolerance(run, 1, 10**6) == 20_000 + checks.rate_slack_ns(10**6)
    assert jc.unstable_tolerance(run, 1, -5) == checks.rate_slack_ns(-5)


def test_the_rate_after_the_boundary_is_judged_at_the_khz_set_there():
    facts = jc.BoundaryFacts()
    facts.khz_before, facts.khz_after = 1_000_000, 2_000_000
    probes = [_probe(0, 0, width=0), _probe(1_000_000, 2_000_000, width=0)]
    run = jc.RunView([], facts=facts, khz=3, probes=[probes, probes])
    assert run.khz_of(0) == 1_000_000 and run.khz_of(1) == 2_000_000
    slew = Fraction(checks.RATE_SLACK_PPM, 1_000_000)
    assert jc.unstable_drift(run, 1) == 2 * slew  # at 2 GHz exactly
    assert jc.unstable_drift(run, 0) == 2 * (1 + slew)  # twice 1 GHz
    facts.khz_before = facts.khz_after = 0
    assert run.khz_of(0) == run.khz_of(1) == 3


# ---- the jump across the boundary


def _cfg(**kw) -> jc.ClockConfigView:
    from dataclasses import replace

    return replace(jc.ClockConfigView.of(load("restore-downtime")["config"]), **kw)


A, B = jc.Batch(1_000, 2_000, 0, 1), jc.Batch(10_000_000, 10_001_000, 1, 1)
E_MAX, E_MIN = 10_000_000, 9_998_000  # B's end - A's start, B's start - A's end


def _facts(put: str = "-", tsc_write_ns: int = 0) -> jc.BoundaryFacts:
    """KVM_GET_CLOCK at 3..4 us, KVM_SET_CLOCK from 5.004 ms: 5 ms of downtime."""
    f = jc.BoundaryFacts((3_000, 4_000), (5_004_000, 5_005_000), put=put)
    f.tsc_write_ns = tsc_write_ns
    return f


def test_kvmclock_jump_bounds_follow_the_put_recorded_else_the_variants():
    slack = checks.rate_slack_ns
    why_real = f"the real time between the readings, {fmt(E_MAX)}, + rate slack"
    # saved + downtime: at most the real time, no lower bound
    got = jc._jump_bounds(_cfg(clock_put=jc.ClockPut.DOWNTIME), A, B, _facts())
    assert got == (0, E_MAX + slack(E_MAX), why_real, "")
    # KVM_CLOCK_REALTIME: at least the real time that surely passed
    lo = E_MIN - slack(E_MIN)
    why_lo = (
        f"KVM_CLOCK_REALTIME adds the real time that passed: at least {fmt(E_MIN)} "
        "between the readings, - rate slack"
    )
    want = (lo, E_MAX + slack(E_MAX), why_real, why_lo)
    assert jc._jump_bounds(_cfg(clock_put=jc.ClockPut.REALTIME), A, B, _facts()) == want
    # the put recorded wins over the variant's ("-" records none)
    assert jc._jump_bounds(_cfg(), A, B, _facts("KVM_CLOCK_REALTIME")) == want
    assert jc._jump_bounds(_cfg(clock_put=jc.ClockPut.REALTIME), A, B, _facts("-"))[0] == lo
    # saved: the clock stood still over the downtime
    hi = E_MAX - 5_000_000
    assert jc._jump_bounds(_cfg(clock_put=jc.ClockPut.FROZEN), A, B, _facts()) == (
        0,
        hi + slack(hi),
        f"the real time between the readings, {fmt(E_MAX)}, less the {fmt(5_000_000)} "
        "the clock stood still, + rate slack",
        "",
    )
    # overlapping readings: nothing surely passed, the bound is not negative
    b = jc.Batch(1_500, 2_500, 1, 1)
    assert jc._jump_bounds(_cfg(clock_put=jc.ClockPut.REALTIME), A, b, _facts())[0] == 0
    # a negative downtime (clocks read out of order) hides nothing
    f = jc.BoundaryFacts((3_000, 9_000), (5_000, 6_000))
    assert jc._jump_bounds(_cfg(clock_put=jc.ClockPut.FROZEN), A, B, f)[1] == E_MAX + slack(E_MAX)


def _tsc_run(facts: jc.BoundaryFacts, khz: int = 1_000_000, probes=()) -> jc.RunView:
    return jc.RunView([], facts=facts, khz=khz, probes=list(probes))


def _tsc_bound(cfg, run, a=A, b=B) -> int:
    """The largest TSC jump _tsc_jump lets pass, found by its own edge."""
    ok = jc._tsc_jump(cfg, "v", 1, 0, 0, a, b, run)
    assert ok == []
    lo, hi = 0, 10**12
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if not jc._tsc_jump(cfg, "v", 1, 0, mid, a, b, run) else (lo, mid - 1)
    return lo


def test_tsc_jump_is_at_most_the_real_time_in_ticks_at_the_fastest_rate():
    slack = checks.rate_slack_ns
    offset = _cfg(tsc_put=jc.TscPut.OFFSET)
    # 1 tick per ns (KVM's khz after the boundary wins over the run's)
    facts = _facts()
    facts.khz_after = 1_000_000
    run = _tsc_run(facts, khz=7)
    hi = E_MAX + slack(E_MAX) + 1
    assert _tsc_bound(offset, run) == hi
    [v] = jc._tsc_jump(offset, "vcpu0/boundary", 1, 5, 5 + hi + 1, A, B, run)
    assert (v.kind, v.series, v.index, v.counter) == (
        checks.KIND_OVERLONG_JUMP,
        "vcpu0/boundary",
        1,
        "TSC",
    )
    assert v.detail.endswith(
        f"more than the {hi} ticks allowed (the real time between the readings, at "
        "1000.000 MHz (KVM's tsc_khz 1000000, or the rate measured))"
    ), v.detail
    # without khz_after, the run's; the TSC measured 10% faster widens the bound
    run = _tsc_run(_facts(), khz=1_000_000)
    assert _tsc_bound(offset, run) == hi
    probes = [[_probe(0, 0, width=0), _probe(1_000_000, 1_100_000, width=0)]]
    run = _tsc_run(_facts(), khz=1_000_000, probes=probes)
    assert _tsc_bound(offset, run) == (E_MAX + slack(E_MAX)) * 11 // 10 + 1
    # a TSC put as captured is not judged here
    assert jc._tsc_jump(_cfg(), "v", 1, 0, 10**15, A, B, run) == []


def test_a_tsc_written_back_stands_still_from_its_reading_to_the_destinations_write():
    slack = checks.rate_slack_ns
    msr = _cfg(tsc_put=jc.TscPut.MSR)
    # written at 2.003 ms, read before KVM_GET_CLOCK began (3 us): 2 ms still
    run = _tsc_run(_facts(tsc_write_ns=2_003_000))
    e = E_MAX - 2_000_000
    assert _tsc_bound(msr, run) == e + slack(e) + 1
    [v] = jc._tsc_jump(msr, "v", 1, 0, 10**9, A, B, run)
    assert "(the real time between the readings less the time the TSC stood still, at" in (v.detail)
    # no write recorded: still over the downtime (5 ms)
    e = E_MAX - 5_000_000
    assert _tsc_bound(msr, _tsc_run(_facts())) == e + slack(e) + 1
    # a write recorded before the reading stands still for no time
    assert _tsc_bound(msr, _tsc_run(_facts(tsc_write_ns=1_000))) == E_MAX + slack(E_MAX) + 1
    # still longer than the readings' distance: no negative bound
    assert _tsc_bound(msr, _tsc_run(_facts(tsc_write_ns=10**9))) == 0 + slack(0) + 1


# ---- per-vCPU series and warps on small synthetic runs


def _vcpu(index: int, t0s: list[int], *, boundary: int = 0, per: int = 2, flags: int = 1):
    """A vCPU with one batch per start time in ``t0s`` (each 1 us long, ``per``
    readings of kvmclock = the batch's start + k ns, version 2)."""
    r = ClockRecord(index)
    for t0 in t0s:
        r.batches.append(jc.Batch(t0, t0 + 1_000, len(r.samples), per))
        r.samples += [(t0 + k, 10 * (t0 + k), t0 + k, 2, flags, 1, 0) for k in range(per)]
    r.boundary = boundary
    return r


def test_a_completed_update_needs_a_later_even_version_in_the_next_reading():
    S = checks.Sample

    def own(*versions):
        return [S(0, 0, v) for v in versions]

    assert jc._completed(own(5, 6), 0)
    assert jc._completed(own(5, 5 + (1 << 31) - 1), 0)  # far ahead, still later
    assert not jc._completed(own(5, 5 + (1 << 31) + 1), 0)  # "ahead" by more is behind
    assert not jc._completed(own(5, 4), 0)  # an earlier even version
    assert not jc._completed(own(5, 7), 0)  # odd again: left mid-update
    assert jc._completed(own((1 << 32) - 1, 0), 0)  # the u32 version wrapped
    assert jc._completed(own(3, 5, 8), 1) and not jc._completed(own(3, 5, 8), 0)
    assert jc._completed(own(5, 5, 6), 0)  # one stopped update through two readings
    assert jc._completed(own(5, 5, 5, 6), 0) and not jc._completed(own(5, 5, 7), 0)
    assert not jc._completed(own(5), 0)  # the last reading: nothing after it
    assert not jc._completed(own(5, None), 0) and not jc._completed(own(None, 6), 0)


def test_phases_are_stable_only_under_the_clocks_flag_and_every_readings_bit():
    r0 = _vcpu(0, [0, 10_000, 20_000, 30_000], boundary=2)
    r1 = _vcpu(1, [5_000, 15_000, 25_000], boundary=2)
    run = jc.RunView([r0, r1], stable=True, stable_after=True)
    assert jc._stable_phases(run) == [True, True]
    run.stable_after = None  # not known: the readings decide
    assert jc._stable_phases(run) == [True, True]
    run.stable, run.stable_after = False, True
    assert jc._stable_phases(run) == [False, True]
    run.stable = None
    set_sample(r1, 4, flags=0)  # one reading of vCPU 1 after the boundary
    assert jc._stable_phases(run) == [True, False]
    assert jc._stable_phases(jc.RunView([])) == []
    # a vCPU without a second phase does not end the others'
    run = jc.RunView([_vcpu(0, [0, 10_000]), _vcpu(1, [0, 10_000, 20_000], boundary=1)])
    assert jc._stable_phases(run) == [True, True]
    # the start of a phase is its earliest batch over the vCPUs
    assert jc._phase_start(jc.RunView([r0, r1]), 0) == 0
    assert jc._phase_start(jc.RunView([r0, r1]), 1) == 20_000
    assert jc._phase_start(jc.RunView([r1, r0]), 1) == 20_000
    assert jc._phase_start(jc.RunView([r0, r1]), 2) == 0


def _warp_run(stable_after: bool = True) -> jc.RunView:
    r0 = _vcpu(0, [0, 10_000, 20_000, 30_000], boundary=2)
    r1 = _vcpu(1, [5_000, 15_000, 25_000, 1_000_000], boundary=2, per=3)
    return jc.RunView([r0, r1], stable=True, stable_after=stable_after)


def test_warps_are_judged_per_phase_and_kind_with_the_phases_reads():
    run = _warp_run()
    r0, r1 = run.records
    r0.batches[3].warps, r0.batches[3].max_warp_ns = 2, 700
    r1.batches[2].warps, r1.batches[2].max_warp_ns = 1, 900
    r1.batches[0].vdso_warps, r1.batches[0].max_vdso_warp_ns = 4, 50
    found = jc.Found()
    jc._warps(_cfg(warp=True), run, [True, True], found)
    assert [(v.kind, v.series, v.index, v.after) for v in found.judged] == [
        (checks.KIND_WARP, "all vCPUs/vdso", 0, 50),
        (checks.KIND_WARP, "all vCPUs", 1, 900),
    ]
    assert found.judged[0].detail == (
        f"4 of {2 * 2 + 2 * 3} kvmclock (vCPU 0's area) readings went back against "
        f"another vCPU's earlier reading, by up to {fmt(50)}"
    )
    assert found.judged[1].detail == (
        f"3 of {2 * 2 + 2 * 3} kvmclock readings went back against another vCPU's "
        f"earlier reading, by up to {fmt(900)} after the boundary"
    )
    assert found.excused == {}
    # a variant that does not judge warps
    found = jc.Found()
    jc._warps(_cfg(warp=False), run, [True, True], found)
    assert found.judged == [] and found.excused == {}


def test_warps_without_a_master_clock_are_judged_beyond_the_drift_since_the_phase_began():
    run = _warp_run(stable_after=False)
    r1 = run.records[1]
    # phase 1 began at 20 us (vCPU 0's first batch there), its last batch ended at 1.001 ms
    tol = jc.unstable_tolerance(run, 1, 1_001_000 - 20_000)
    for size, judged in ((tol, False), (tol + 1, True)):
        r1.batches[3].warps, r1.batches[3].max_warp_ns = 1, size
        found = jc.Found()
        jc._warps(_cfg(warp=True), run, [True, False], found)
        assert (len(found.judged), found.excused) == ((1, {}) if judged else (0, {"warp": 1}))


def test_kvmclock_advances_at_most_the_real_time_plus_drift_and_forced_updates():
    r = _vcpu(0, [0, 10_000, 20_000])
    run = jc.RunView([r], storm=[{"added_ns": 500}])
    # readings 1 (batch 0: 0..1 us) and 2 (batch 1: 10..11 us): at most 11 us apart
    e = 11_000
    allowed = e + checks.rate_slack_ns(e) + jc.unstable_tolerance(run, 0, 11_000 - 0) + 500
    idx = list(range(len(r.samples)))
    for col, name in ((0, "vcpu0"), (2, "vcpu0/vdso")):
        for step, caught in ((allowed, False), (allowed + 1, True)):
            rr = copy.deepcopy(r)
            for i in range(2, len(rr.samples)):  # everything from reading 2 on moves up
                s = list(rr.samples[i])
                s[col] = rr.samples[1][col] + step + (i - 2)
                rr.samples[i] = tuple(s)
            out = jc._too_fast(run, 0, name, rr, idx, col, 0)
            assert [(v.kind, v.series, v.index, v.counter) for v in out] == (
                [(checks.KIND_TOO_FAST, name, 2, "kvmclock")] if caught else []
            ), (col, step)
            if caught:
                before = rr.samples[1][col]
                assert (out[0].before, out[0].after) == (before, before + step)
                assert out[0].detail == (
                    f"kvmclock went {before} -> {before + step} ns (+{step}) in at most "
                    f"{fmt(e)} of real time: more than the {allowed} ns the time and the "
                    "drift of KVM's scale allow"
                )
    # the drift allowed grows with the time since the phase began (start), not since 0
    rr = copy.deepcopy(r)
    rr.samples[2] = (rr.samples[1][0] + allowed + 1, *rr.samples[2][1:])
    rr.samples[3] = (rr.samples[2][0] + 1, *rr.samples[3][1:])
    late = jc.unstable_tolerance(run, 0, 11_000 + 10**9) - jc.unstable_tolerance(run, 0, 11_000)
    assert late > 1
    assert jc._too_fast(run, 0, "v", rr, idx, 0, -(10**9)) == []
    # a u64 wrap is another violation's business (decrease/wrap), not too fast
    rr.samples[2] = ((1 << 63) + 5, *rr.samples[2][1:])
    assert [v.index for v in jc._too_fast(run, 0, "v", rr, idx, 0, 0)] == []
    # readings of a subset (vDSO-style ones): pairs of the listed indices only
    out = jc._too_fast(run, 0, "v", r, [0, 4], 0, 0)
    assert out == []


# ---- the verdict


def test_a_failed_run_keeps_its_blame_and_text_and_judges_nothing():
    rec = load("restore-downtime")
    rec["failure"] = {"blame": "kernel", "observed": "KVM_SET_CLOCK failed: EINVAL"}
    j = judge_record(rec)
    assert (j.verdict, j.observed, j.violations, j.notes) == (
        Verdict.BROKEN,
        "KVM_SET_CLOCK failed: EINVAL",
        [],
        {},
    )
    rec["failure"]["blame"] = "harness"
    assert judge_record(rec).verdict == Verdict.ERROR
    rec["failure"] = None
    assert judge_record(rec).verdict == Verdict.HOLDS


def test_excused_steps_and_completed_odd_readings_are_counted_in_text_and_notes():
    res = result_of(load("restore-downtime"))
    rec = res.records[1]
    i = list(phase2(rec))[-5]
    set_sample(rec, i, ns=rec.samples[i - 1][0] - 2_000)  # within drift, no master clock
    j = rejudge(res)
    assert j.verdict == Verdict.HOLDS
    assert j.notes["not_judged_without_master_clock"] == {"decrease": 1}
    assert j.observed.endswith(
        "master clock lost at the boundary (KVM_CLOCK_TSC_STABLE gone); not judged without "
        "a master clock: decrease x1"
    ), j.observed
    # and an odd reading whose update then completed, twice
    r0 = res.records[0]
    for k in (5, 9):
        set_sample(r0, k, version=r0.samples[k + 1][3] - 1)
    j = rejudge(res)
    assert j.notes["odd_version_then_completed"] == 2
    assert j.observed.startswith(f"{reads(load('restore-downtime'))} reads, 0 warps; jump over")
    assert j.observed.endswith(
        "master clock lost at the boundary (KVM_CLOCK_TSC_STABLE gone); 2 reading(s) gave up "
        "on an update that then completed (odd version, the next one even); not judged "
        "without a master clock: decrease x1"
    ), j.observed


def phase2(rec: ClockRecord) -> range:
    return rec.sample_range(rec.boundary, len(rec.batches))


def test_never_stable_is_not_supported_only_where_the_variant_needs_the_master_clock():
    res = result_of(load("monotonic"))
    res.stable = False
    for r in res.records:
        for i in range(len(r.samples)):
            set_sample(r, i, flags=r.samples[i][4] & ~STABLE_BIT)
    j = rejudge(res)
    assert j.verdict == Verdict.NOT_SUPPORTED
    assert j.observed == (
        "the host clock is never stable (KVM_GET_CLOCK without KVM_CLOCK_TSC_STABLE, areas "
        "without PVCLOCK_TSC_STABLE_BIT: no master clock, e.g. a host clocksource other than "
        f"tsc); measured: {summary_of(res)}"
    )
    # stable in one phase of two is enough to be tested
    rec = load("restore-downtime")
    assert judge_record(rec).notes["stability"]["phases_stable"] == [True, False]
    rec["config"]["needs_stable"] = True
    assert judge_record(rec).verdict == Verdict.HOLDS


def summary_of(res) -> str:
    rec = json.loads(json.dumps(res.record()))
    first = vcpus(rec)[0].samples[0]
    return (
        f"{reads(rec)} reads, 0 warps; first reading: kvmclock {fmt(first[0])}, TSC "
        f"{first[1]} ticks ({fmt(first[1] * 1_000_000 // rec['tsc_khz'])} at KVM's frequency)"
    )


def test_a_stopped_vcpu_that_is_untestable_says_why_and_a_hung_one_is_broken():
    from kvmharness.judges.stopped import Stopped

    res = result_of(load("warp"))
    res.records[0].stuck = Stopped(0x10, 40 * 10**9, 10**6, 39 * 10**9)  # host too loaded
    j = rejudge(res)
    assert j.verdict == Verdict.UNTESTABLE and j.violations == []
    assert j.observed == (
        "vcpu0 was stopped after 40 s in KVM_RUN; its thread ran only 1 ms and waited 39 s "
        "on a run queue: the host is too loaded to judge"
    )
    # the first vCPU's reason is kept when a second one is untestable too
    res.records[1].stuck = Stopped(0x20, 40 * 10**9, 10**6, 39 * 10**9)
    assert rejudge(res).observed == j.observed
    # a hung vCPU beside it: BROKEN, the untestable one does not hide it
    res.records[1].stuck = Stopped(0x20, 40 * 10**9, 10**6, 10**6)
    j = rejudge(res)
    assert j.verdict == Verdict.BROKEN
    assert [(v.kind, v.series) for v in j.violations] == [("hung", "vcpu1")]


# ---- each vCPU's own series (_per_vcpu)


def _judged(run: jc.RunView, cfg: jc.ClockConfigView | None = None) -> jc.Found:
    found = jc.Found()
    jc._per_vcpu(cfg or _cfg(), run, found)
    return found


def _step_back(r: ClockRecord, i: int, by: int, col: int = 0) -> None:
    s = list(r.samples[i])
    s[col] = r.samples[i - 1][col] - by
    r.samples[i] = tuple(s)


def test_a_step_back_is_judged_by_both_readings_stable_bit_or_beyond_drift():
    # two phases, the second (batches 2, 3) without a master clock; readings
    # 5 (batch 2, ends at 21 us) -> 6 (batch 3, ends at 31 us), phase start 20 us
    def run_with(flags5: int, flags6: int, by: int) -> jc.Found:
        r = _vcpu(0, [0, 10_000, 20_000, 30_000], boundary=2)
        set_sample(r, 5, flags=flags5)
        set_sample(r, 6, flags=flags6)
        _step_back(r, 6, by)
        for i in range(7, len(r.samples)):
            set_sample(r, i, ns=r.samples[i - 1][0] + 1)
        return _judged(jc.RunView([r], stable=True, stable_after=False))

    run = jc.RunView([], stable=True, stable_after=False)
    tol = jc.unstable_tolerance(run, 1, 31_000 - 20_000)
    found = run_with(1, 1, 5)  # both under the stable bit: judged, however small
    assert [(v.kind, v.series, v.index) for v in found.judged] == [("decrease", "vcpu0", 2)]
    for f5, f6 in ((1, 0), (0, 1), (0, 0)):
        assert run_with(f5, f6, tol).excused == {"decrease": 1}, (f5, f6)
        assert run_with(f5, f6, tol).judged == []
        assert [v.kind for v in run_with(f5, f6, tol + 1).judged] == ["decrease"]
    # the drift counts from the phase's start: the same step in phase 0 (start 0)
    r = _vcpu(0, [0, 10_000, 20_000, 30_000], boundary=2, flags=0)
    _step_back(r, 2, jc.unstable_tolerance(run, 0, 11_000) + 1)
    for i in range(3, len(r.samples)):
        set_sample(r, i, ns=r.samples[i - 1][0] + 1)
    assert [v.index for v in _judged(jc.RunView([r], stable=False)).judged] == [2]


def test_vdso_style_readings_are_comparable_only_back_to_back():
    """A vDSO-style reading (vCPU 0's area) is taken under its stable bit: a
    step back between two consecutive ones is judged; with a reading between
    them that did not use the area, only beyond drift."""
    r = _vcpu(0, [0, 10_000, 20_000], flags=0)
    _step_back(r, 3, 5, col=2)
    for i in range(4, len(r.samples)):
        set_sample(r, i, vdso_ns=r.samples[i - 1][2] + 1)
    found = _judged(jc.RunView([r], stable=False))
    assert [(v.kind, v.series, v.index, v.counter) for v in found.judged] == [
        ("decrease", "vcpu0/vdso", 3, "kvmclock (vCPU 0's area)")
    ]
    set_sample(r, 2, vdso_used=0)  # reading 2 did not use the area: 1 -> 3 steps back
    set_sample(r, 3, vdso_ns=r.samples[1][2] - 5)
    for i in range(4, len(r.samples)):
        set_sample(r, i, vdso_ns=r.samples[i - 1][2] + 1)
    found = _judged(jc.RunView([r], stable=False))
    assert found.judged == [] and found.excused == {"decrease": 1}
    # ... and its index in the vDSO series skips it
    set_sample(r, 2, vdso_used=1)
    set_sample(r, 0, vdso_used=0)
    assert [v.index for v in _judged(jc.RunView([r], stable=False)).judged] == [2]


def test_vdso_style_readings_may_not_run_faster_than_real_time():
    r = _vcpu(0, [0, 10_000])
    set_sample(r, 2, vdso_ns=r.samples[1][2] + 10**9)
    set_sample(r, 3, vdso_ns=r.samples[2][2] + 1)
    found = _judged(jc.RunView([r], stable=True))
    assert [(v.kind, v.series, v.index) for v in found.judged] == [
        (checks.KIND_TOO_FAST, "vcpu0/vdso", 2)
    ]
    set_sample(r, 1, vdso_used=0)  # the pair is then readings 0 -> 2
    assert [v.index for v in _judged(jc.RunView([r], stable=True)).judged] == [1]


def test_odd_versions_are_judged_unless_the_update_then_completed():
    r = _vcpu(0, [0, 10_000, 20_000])
    set_sample(r, 2, version=3)  # then 2 again: an earlier version, not completed
    found = _judged(jc.RunView([r], stable=True))
    assert [(v.kind, v.series, v.index) for v in found.judged] == [
        (checks.KIND_ODD_VERSION, "vcpu0", 2)
    ]
    assert found.waited_out == 0
    set_sample(r, 3, version=4)
    set_sample(r, 4, version=4)
    set_sample(r, 5, version=4)
    found = _judged(jc.RunView([r], stable=True))
    assert (found.judged, found.waited_out) == ([], 1)


def test_every_decode_of_a_vcpu_is_checked():
    r = _vcpu(3, [0, 10_000])
    r.decode = [(1, 500, 500), (2, 10_000, 10_001)]
    found = _judged(jc.RunView([r], stable=True))
    assert [(v.kind, v.series, v.index, v.before, v.after) for v in found.judged] == [
        (checks.KIND_DECODE_MISMATCH, "vcpu3", 2, 10_001, 10_000)
    ]


def test_a_tsc_put_is_judged_at_the_first_reading_of_its_batch():
    r = _vcpu(0, [0, 10_000, 20_000])
    first = r.samples[2][1]  # batch 1's first reading
    r.tsc_writes = [
        TscWrite(1, first, first, "offset"),  # exactly
        TscWrite(2, first, first, "late"),  # batch 2 read later: outside
        TscWrite(3, 0, 0, "beyond the batches"),
    ]
    found = _judged(jc.RunView([r], stable=True))
    assert [(v.kind, v.series, v.index, v.before, v.after) for v in found.judged] == [
        (checks.KIND_TSC_NOT_APPLIED, "vcpu0", 2, first, r.samples[4][1])
    ]
    assert found.judged[0].detail.startswith("late; the guest read TSC")
    r.batches[2].n = 0  # a batch without readings judges nothing
    r.samples = r.samples[:4]
    assert _judged(jc.RunView([r], stable=True)).judged == []


def test_an_msr_write_is_judged_at_the_rate_of_its_phase():
    """MSR_IA32_TSC written at 1 ms: the first reading after it lies within the
    time since the write at KVM's khz of the phase the write's batch is in."""
    r = _vcpu(0, [0, 10_000, 2_000_000, 2_010_000], boundary=2)
    facts = jc.BoundaryFacts()
    facts.khz_before, facts.khz_after = 1_000_000, 2_000_000
    run = jc.RunView([r], stable=True, stable_after=True, facts=facts, khz=1_000_000)

    def write(batch: int, value: int) -> jc.TscWrite:
        return TscWrite(batch, 0, 0, "msr", value, (1_000_000, 1_000_100))

    b = r.batches[2]
    # after the boundary at 2 ticks per ns: from (t0 - 1.0001 ms) to (t1 - 1 ms) ticks
    lo, hi = jc.tsc_msr_range(10**9, (1_000_000, 1_000_100), b, 2_000_000, (), None)
    assert lo < hi
    read = r.samples[b.first][1]
    for value, caught in ((read - lo + 10**9, False), (read - lo + 10**9 + 1, True)):
        r.tsc_writes = [write(2, value)]
        kinds = [v.kind for v in _judged(run).judged if v.kind == checks.KIND_TSC_NOT_APPLIED]
        assert kinds == ([checks.KIND_TSC_NOT_APPLIED] if caught else []), value
    # before the boundary (batch 1) the same write is judged at 1 tick per ns
    b = r.batches[1]
    lo1, _ = jc.tsc_msr_range(10**9, (0, 100), b, 1_000_000, (), None)
    read = r.samples[b.first][1]
    r.tsc_writes = [TscWrite(1, 0, 0, "msr", read - lo1 + 10**9, (0, 100))]
    assert not [v for v in _judged(run).judged if v.kind == checks.KIND_TSC_NOT_APPLIED]
    r.tsc_writes = [TscWrite(1, 0, 0, "msr", read - lo1 + 10**9 + 1, (0, 100))]
    assert [v.index for v in _judged(run).judged if v.kind == "tsc-not-applied"] == [1]
    # no khz of the phase: the run's
    facts.khz_before = facts.khz_after = 0
    r.tsc_writes = [TscWrite(1, 0, 0, "msr", read - lo1 + 10**9 + 1, (0, 100))]
    assert [v.index for v in _judged(run).judged if v.kind == "tsc-not-applied"] == [1]


# ---- edges the first --fast pass of judges/clock.py left alive


def test_a_clock_far_off_its_rate_may_step_back_at_once_by_the_drift():
    """The drift at a TSC twice KVM's khz is over 1 ns per ns: at 0 ns since
    the phase began only the slack is allowed, a moment later the drift too."""
    facts = jc.BoundaryFacts()
    facts.khz_before = 1_000_000
    probes = [_probe(0, 0, width=0), _probe(1_000_000, 2_000_000, width=0)]
    run = jc.RunView([], facts=facts, probes=[probes])
    assert jc.unstable_drift(run, 0) > 2
    assert jc.unstable_tolerance(run, 0, 0) == checks.rate_slack_ns(0)
    assert jc.unstable_tolerance(run, 0, -3) == checks.rate_slack_ns(0)
    assert jc.unstable_tolerance(run, 0, 1) == 2 + checks.rate_slack_ns(1)


def test_overlapping_readings_give_a_realtime_put_no_lower_bound_and_say_zero():
    b = jc.Batch(1_500, 2_500, 1, 1)
    lo, _, _, why_lo = jc._jump_bounds(_cfg(clock_put=jc.ClockPut.REALTIME), A, b, _facts())
    assert lo == 0
    assert why_lo == (
        f"KVM_CLOCK_REALTIME adds the real time that passed: at least {fmt(0)} between "
        "the readings, - rate slack"
    )


def test_a_vcpu_without_batches_starts_no_phase():
    assert jc._phase_start(jc.RunView([ClockRecord(0)]), 0) == 0
    assert jc._phase_start(jc.RunView([ClockRecord(0), _vcpu(1, [7_000])]), 0) == 7_000


def test_the_drift_of_a_step_back_counts_to_the_end_of_its_own_batch():
    """Readings 2 -> 3 in batch 1 (ends at 11 us) of three: the step back is
    allowed the drift of 11 us, not of the later batches."""
    r = _vcpu(0, [0, 10_000, 20_000], flags=0)
    run = jc.RunView([r], stable=False)
    tol = jc.unstable_tolerance(run, 0, 11_000)
    r.samples[3] = (r.samples[2][0] - tol - 1, *r.samples[3][1:])
    for i in range(4, len(r.samples)):
        set_sample(r, i, ns=r.samples[i - 1][0] + 1)
    found = _judged(run)
    assert [(v.kind, v.series, v.index, v.counter) for v in found.judged] == [
        ("decrease", "vcpu0", 3, "kvmclock")
    ]
    assert found.judged[0].detail.startswith("kvmclock "), found.judged[0].detail


def test_too_fast_kvmclock_is_named_after_its_vcpu():
    r = _vcpu(2, [0, 10_000])
    for i in (2, 3):
        set_sample(r, i, ns=r.samples[i][0] + 10**9)
    found = _judged(jc.RunView([r], stable=True))
    assert [(v.kind, v.series, v.index) for v in found.judged] == [("too-fast", "vcpu2", 2)]


def test_vdso_steps_after_the_boundary_are_judged_within_their_phase():
    """Phase 1 (batches 2, 3) starts at 1 ms: a vDSO-style step back there,
    between readings that are not back to back, is excused up to the drift of
    the time since 1 ms, and its index counts within phase 1."""
    r = _vcpu(0, [0, 10_000, 1_000_000, 1_010_000], boundary=2, flags=0)
    run = jc.RunView([r], stable=False, stable_after=False)
    tol = jc.unstable_tolerance(run, 1, 1_011_000 - 1_000_000)
    set_sample(r, 5, vdso_used=0)
    for by, judged in ((tol, False), (tol + 1, True)):
        set_sample(r, 6, vdso_ns=r.samples[4][2] - by)
        set_sample(r, 7, vdso_ns=r.samples[6][2] + 1)
        found = _judged(run)
        got = [(v.kind, v.series, v.index) for v in found.judged]
        assert got == ([("decrease", "vcpu0/vdso", 1)] if judged else []), by
        assert found.excused == ({} if judged else {"decrease": 1})


def _msr_run(boundary: int, khz_before: int, khz_after: int, khz: int) -> jc.RunView:
    r = _vcpu(0, [0, 10_000, 2_000_000, 2_010_000], boundary=boundary)
    facts = jc.BoundaryFacts()
    facts.khz_before, facts.khz_after = khz_before, khz_after
    return jc.RunView([r], stable=True, stable_after=True, facts=facts, khz=khz)


def _msr_caught(run: jc.RunView, batch: int, khz: int) -> tuple[bool, bool]:
    """Whether a write just inside / just outside the range at ``khz`` is caught."""
    r = run.records[0]
    b = r.batches[batch]
    lo, _ = jc.tsc_msr_range(10**9, (0, 100), b, khz, (), None)
    read = r.samples[b.first][1]
    out = []
    for value in (read - lo + 10**9, read - lo + 10**9 + 1):
        r.tsc_writes = [TscWrite(batch, 0, 0, "msr", value, (0, 100))]
        out.append(any(v.kind == "tsc-not-applied" for v in _judged(run).judged))
    return out[0], out[1]


def test_an_msr_write_uses_the_khz_of_its_own_phase_else_before_the_boundary():
    # boundary at batch 1: a write read in batch 1 is after it (khz_after)
    assert _msr_caught(_msr_run(1, 1_000_000, 2_000_000, 5), 1, 2_000_000) == (False, True)
    # no boundary: before it (khz_before), whatever khz_after says
    assert _msr_caught(_msr_run(0, 1_000_000, 2_000_000, 5), 2, 1_000_000) == (False, True)
    # after the boundary without a khz of its own (nor the run's): KVM's before it
    assert _msr_caught(_msr_run(2, 1_000_000, 0, 0), 2, 1_000_000) == (False, True)


def test_an_msr_write_is_judged_at_the_measured_rate_and_may_keep_an_earlier_offset():
    run = _msr_run(0, 1_000_000, 0, 1_000_000)
    # the TSC measured 10% fast: a reading 5% above the write's value is in range
    run.probes = [[_probe(0, 0, width=0), _probe(1_000_000, 1_100_000, width=0)]]
    r = run.records[0]
    b = r.batches[2]
    read = r.samples[b.first][1]
    elapsed = b.t1_ns - 100
    value = read - elapsed * 105 // 100
    r.tsc_writes = [TscWrite(2, 0, 0, "msr", value, (0, 100))]
    assert not any(v.kind == "tsc-not-applied" for v in _judged(run).judged)
    run.probes = []
    assert any(v.kind == "tsc-not-applied" for v in _judged(run).judged)
    # written 10 ms of ticks ahead, but within a second of an earlier write's
    # expectation: the guest may read that write's value plus the time since it
    ref = read - b.t0_ns  # written at 0..0: reads ~ ref + time since
    r.tsc_writes = [TscWrite(2, 0, 0, "msr", ref + 10**7, (0, 100), [(ref, (0, 0))])]
    assert not any(v.kind == "tsc-not-applied" for v in _judged(run).judged)
    r.tsc_writes = [TscWrite(2, 0, 0, "msr", ref + 10**7, (0, 100), [])]
    assert any(v.kind == "tsc-not-applied" for v in _judged(run).judged)


def test_a_put_with_a_value_but_no_write_time_uses_its_own_range():
    r = _vcpu(0, [0, 10_000])
    first = r.samples[2][1]
    r.tsc_writes = [TscWrite(1, first, first, "offset", value=5, write_ns=None)]
    assert _judged(jc.RunView([r], stable=True)).judged == []
    r.tsc_writes = [TscWrite(1, first, first, "offset", value=None, write_ns=(0, 1))]
    assert _judged(jc.RunView([r], stable=True)).judged == []


def test_a_boundary_without_readings_on_both_sides_is_not_judged():
    r = _vcpu(0, [0, 10_000])
    r.boundary = 2  # the run ended at the boundary
    assert _judged(jc.RunView([r], stable=True)).judged == []
    r = _vcpu(0, [0, 10_000, 20_000], boundary=2)
    r.batches[2].n = 0
    r.samples = r.samples[:4]
    assert _judged(jc.RunView([r], stable=True)).judged == []
    r = _vcpu(0, [0, 10_000, 20_000], boundary=1)
    r.batches[0].n = 0
    r.batches[1].first, r.batches[2].first = 0, 2
    r.samples = r.samples[2:]
    assert _judged(jc.RunView([r], stable=True)).judged == []


def test_boundary_jumps_are_named_and_say_why_the_bound():
    r = _vcpu(1, [0, 10_000, 2_000_000, 2_010_000], boundary=2)
    set_sample(r, 4, ns=r.samples[3][0] + 10**9)
    set_sample(r, 4, tsc=r.samples[3][1] + 10**12)
    for i in (5, 6, 7):
        set_sample(r, i, ns=r.samples[i - 1][0] + 1, tsc=r.samples[i - 1][1] + 1)
    facts = jc.BoundaryFacts()
    run = jc.RunView([r], stable=True, stable_after=True, facts=facts, khz=1_000_000)
    found = _judged(run, _cfg(tsc_put=jc.TscPut.OFFSET, clock_put=jc.ClockPut.DOWNTIME))
    got = [(v.kind, v.series, v.index, v.counter) for v in found.judged]
    assert got == [
        (checks.KIND_OVERLONG_JUMP, "vcpu1/boundary", 2, "kvmclock"),
        (checks.KIND_OVERLONG_JUMP, "vcpu1/boundary", 2, "TSC"),
    ], got
    e = 2_001_000 - 10_000
    assert found.judged[0].detail.endswith(
        f"allowed (the real time between the readings, {fmt(e)}, + rate slack)"
    ), found.judged[0].detail
    # a jump short of KVM_CLOCK_REALTIME's real time says where that bound came from
    set_sample(r, 4, ns=r.samples[3][0] + 10)
    for i in (5, 6, 7):
        set_sample(r, i, ns=r.samples[i - 1][0] + 1)
    found = _judged(run, _cfg(tsc_put=jc.TscPut.STATE, clock_put=jc.ClockPut.REALTIME))
    assert [(v.kind, v.series) for v in found.judged] == [
        (checks.KIND_SHORT_JUMP, "vcpu1/boundary")
    ]
    assert "(KVM_CLOCK_REALTIME adds the real time that passed: at least" in (
        found.judged[0].detail
    )


def test_too_fast_counts_the_real_time_from_the_first_readings_batch_start():
    r = _vcpu(0, [5_000, 10_000])
    run = jc.RunView([r])
    e = 11_000 - 5_000
    allowed = e + checks.rate_slack_ns(e) + jc.unstable_tolerance(run, 0, 11_000)
    idx = [1, 2]
    set_sample(r, 2, ns=r.samples[1][0] + allowed + 1)
    assert [v.kind for v in jc._too_fast(run, 0, "v", r, idx, 0, 0)] == ["too-fast"]


def test_warps_are_judged_when_one_vcpu_has_no_second_phase():
    run = _warp_run()
    run.records.append(_vcpu(2, [0, 10_000]))  # one phase only
    run.records[0].batches[3].warps, run.records[0].batches[3].max_warp_ns = 1, 10
    found = jc.Found()
    jc._warps(_cfg(warp=True), run, [True, True], found)
    assert [(v.series, v.index) for v in found.judged] == [("all vCPUs", 1)]


def test_the_watch_of_a_later_phase_is_shown_after_a_phase_without_one():
    rows = [[10, 10, 0, 0, 0, 0, 0], [0, 0, 0, 5, 1, 1, 4002], [0, 0, 0, 5, 1, 0, 4006]]
    assert jc.storm_watch(_storm_run({"watch": rows[:1]}, {"watch": rows})) == [
        "vcpu1 read vCPU 0's area 1 time(s) with the guest's mark under version 4002 "
        "(2 mod 4: KVM's after its write; a fixed mark, not judged)"
    ]


def _pvti_cfg() -> jc.ClockConfigView:
    return _cfg(pvti_check=True, warp=False)


def test_the_areas_read_with_every_vcpu_stopped_agree_with_the_master_clock():
    """(version, tsc_timestamp, system_time, _, _, flags) per vCPU: under a
    stable clock every vCPU has vCPU 0's pair and the stable bit."""
    areas = [[2, 100, 7, 0, 0, 1], [2, 100, 7, 0, 0, 1]]
    run = jc.RunView([], stable=True, pvti_areas=copy.deepcopy(areas))
    assert jc.judge_run(_pvti_cfg(), run).judged == []
    run.pvti_areas[1][2] = 8  # vCPU 1's system_time differs
    out = jc.judge_run(_pvti_cfg(), run).judged
    assert [(v.kind, v.series, v.before, v.after) for v in out] == [
        (checks.KIND_MASTER_CLOCK, "vcpu1/pvti", 7, 8)
    ]
    assert "(tsc_timestamp, system_time) = (100, 8) but vcpu0 has (100, 7)" in out[0].detail
    run.pvti_areas = copy.deepcopy(areas)
    run.pvti_areas[1][1] = 101  # ... or its tsc_timestamp
    assert [v.series for v in jc.judge_run(_pvti_cfg(), run).judged] == ["vcpu1/pvti"]
    run.pvti_areas = copy.deepcopy(areas)
    run.pvti_areas[0][5] = 0  # vCPU 0's flags (column 5) lack the stable bit
    run.pvti_areas[1][3] = 1  # column 3 is not read
    assert [(v.kind, v.series) for v in jc.judge_run(_pvti_cfg(), run).judged] == [
        (checks.KIND_PVTI_FLAGS, "vcpu0/pvti")
    ]
    run.pvti_areas[0][0] = 99  # the version is not judged
    assert len(jc.judge_run(_pvti_cfg(), run).judged) == 1
    # not judged: a variant without the check, no areas, or no KVM_GET_CLOCK after the phase
    assert jc.judge_run(_cfg(pvti_check=False, warp=False), run).judged == []
    assert jc.judge_run(_pvti_cfg(), jc.RunView([], stable=True)).judged == []
    run.stable = None
    assert jc.judge_run(_pvti_cfg(), run).judged == []
    # other violations stay beside the areas'
    r = _vcpu(0, [0, 10_000])
    set_sample(r, 2, version=3)
    run = jc.RunView([r], stable=True, pvti_areas=[[2, 100, 7, 0, 0, 0]])
    assert [v.kind for v in jc.judge_run(_pvti_cfg(), run).judged] == [
        checks.KIND_ODD_VERSION,
        checks.KIND_PVTI_FLAGS,
    ]


def test_the_frequency_is_judged_only_where_the_variant_sets_one():
    from kvmharness.pvclock import scale_for_khz

    facts = jc.BoundaryFacts()
    facts.khz_after = 2_000_000
    facts.pvti_scale_after = [[1, 1]]  # not KVM's scale for 2 GHz
    run = jc.RunView([], stable=True, facts=facts)
    assert [v.kind for v in jc.judge_run(_cfg(khz_ratio=2.0, warp=False), run).judged] == [
        checks.KIND_DECODE_MISMATCH
    ]
    assert jc.judge_run(_cfg(khz_ratio=None, warp=False), run).judged == []
    facts.khz_after = 0
    assert jc.judge_run(_cfg(khz_ratio=2.0, warp=False), run).judged == []
    assert list(scale_for_khz(2_000_000)) != [1, 1]


# ---- the TSC rate after KVM_SET_TSC_KHZ (_frequency)

KHZ2 = 2_000_000


def _after(index: int, readings: list[tuple[int, int]], boundary: int = 1) -> ClockRecord:
    """A vCPU with one reading before the boundary and ``readings`` (kvmclock
    ns, TSC) in the batch after it."""
    r = ClockRecord(index)
    r.samples = [(0, 0, 0, 2, 1, 0, 0)] + [(ns, tsc, 0, 2, 1, 0, 0) for ns, tsc in readings]
    r.batches = [jc.Batch(0, 10, 0, 1), jc.Batch(20, 30, 1, len(readings))]
    r.boundary = boundary
    return r


def _freq(*records: ClockRecord) -> list:
    facts = jc.BoundaryFacts()
    facts.khz_after = KHZ2
    return jc._frequency(jc.RunView(list(records), facts=facts))


def _tol(d_ns: int) -> int:
    return KHZ2 * checks.RATE_SLACK_PPM // 1_000_000 + 2_000_000 // d_ns + 1


def test_the_rate_after_the_boundary_runs_from_its_first_to_its_last_reading():
    d = 10**9
    ok = KHZ2 * d // 1_000_000
    # three readings: the middle one is not the end of the stretch
    bad_end = [(100, 0), (200, 400), (100 + d, ok + (_tol(d) + 1) * d // 1_000_000)]
    assert [(v.series, v.after) for v in _freq(_after(0, bad_end))] == [
        ("vcpu0", KHZ2 + _tol(d) + 1)
    ]
    good_end = [(100, 0), (200, 10**9), (100 + d, ok)]
    assert _freq(_after(0, good_end)) == []


def test_vcpus_without_a_measurable_stretch_do_not_stop_the_others():
    d = 10**9
    bad = _after(1, [(100, 0), (100 + d, 3 * d)])  # 3 GHz
    lone = _after(0, [(100, 0)])  # one reading after the boundary
    still = _after(2, [(100, 0), (100, 5)])  # no kvmclock time between them
    ended = _after(3, [(100, 0), (200, 0)], boundary=2)  # the run ended at the boundary
    for first in (lone, still, ended):
        assert [v.series for v in _freq(first, bad)] == ["vcpu1"]


def test_one_ns_of_kvmclock_is_a_stretch_too():
    assert [v.after for v in _freq(_after(0, [(100, 0), (101, 5)]))] == [5 * 1_000_000]
    assert _freq(_after(0, [(100, 0), (101, 2)])) == []


def test_a_short_stretch_widens_the_tolerance_by_two_us_of_ticks_exactly():
    for d in (10**6, 666_667):
        tol = _tol(d)
        for off, caught in ((tol, False), (tol + 1, True)):
            # ticks such that measured = d_tsc * 1e6 // d is exactly KHZ2 + off
            d_tsc = -(-(KHZ2 + off) * d // 1_000_000)
            assert d_tsc * 1_000_000 // d == KHZ2 + off
            found = _freq(_after(0, [(100, 0), (100 + d, d_tsc)]))
            assert bool(found) is caught, (d, off)


# ---- the summary text, the notes and the verdict's kind


def test_summary_counts_warps_with_the_largest_and_vdso_warps():
    r = _vcpu(0, [0, 10_000])
    r.batches[0].warps, r.batches[0].max_warp_ns = 2, 700
    r.batches[1].warps, r.batches[1].max_warp_ns = 1, 1_500
    r.batches[1].vdso_warps = 4
    assert jc.summary(jc.RunView([r]), []) == (
        f"4 reads, 3 warps (largest {fmt(1_500)}), 4 vDSO-style warps"
    )
    r.batches[0].warps = r.batches[1].warps = 0
    assert jc.summary(jc.RunView([r]), []) == "4 reads, 0 warps, 4 vDSO-style warps"
    assert jc.summary(jc.RunView([]), []) == "0 reads, 0 warps"


def test_summary_gives_the_first_reading_in_ns_at_kvms_frequency_rounded_down():
    r = _vcpu(0, [0])
    set_sample(r, 0, ns=5, tsc=829)
    # 829 ticks at 2445.430 MHz: 339.0 ns, rounded down to 338
    assert jc.summary(jc.RunView([r], khz=2_445_430), []) == (
        "2 reads, 0 warps; first reading: kvmclock 5 ns, TSC 829 ticks (338 ns at KVM's frequency)"
    )


def test_summary_shows_each_vcpus_jump_only_across_a_boundary_with_readings():
    r0 = _vcpu(0, [0, 10_000], boundary=1)
    r1 = _vcpu(1, [0, 10_000], boundary=2)  # ended at the boundary
    r2 = _vcpu(2, [0, 10_000, 20_000], boundary=2)
    r2.batches[2].n = 0
    facts = jc.BoundaryFacts((0, 5_000), (3_000, 4_000))  # a negative downtime shows as 0
    text = jc.summary(jc.RunView([r0, r1, r2], facts=facts), [])
    assert text == f"12 reads, 0 warps; jump over {fmt(0)} downtime: vcpu0 {fmt(10_000 - 1)}"


def test_summary_of_forced_updates_needs_a_watcher_row():
    st = {"sets": 3, "watch": [[5, 5, 0, 0, 0, 0, 0]]}
    assert jc.summary(jc.RunView([], storm=[st]), []) == "0 reads, 0 warps"
    st["watch"].append([0, 0, 0, 9, 1, 0, 0])
    assert jc.summary(jc.RunView([], storm=[st]), []) == (
        "0 reads, 0 warps; 3 KVM_SET_CLOCKs, vCPU 0's area rewritten 5 times under 9 watching reads"
    )


def test_summary_of_violations_counts_every_kind():
    vs = [
        checks.violation("decrease", "vcpu0", 3, 10, 5, "back"),
        checks.violation("warp", "all", 0, None, 3, "warp"),
        checks.violation("decrease", "vcpu1", 4, 10, 5, "back"),
    ]
    assert jc.summary(jc.RunView([]), vs) == (
        "decrease x2, warp x1; first: vcpu0[3] back; 0 reads, 0 warps"
    )


def test_stability_notes_read_the_saved_flags_and_the_loss_at_the_boundary():
    run = jc.RunView([], stable=True, stable_after=False)
    run.facts.saved_clock = [0, 0, 2, 0]  # flags without KVM_CLOCK_TSC_STABLE; realtime 2
    assert jc.stability_notes(run, [True, False]) == {
        "stable_before": True,
        "stable_at_save": False,
        "stable_after": False,
        "phases_stable": [True, False],
        "lost_at_boundary": True,
    }
    run.facts.saved_clock = [0, 2, 0, 0]
    assert jc.stability_notes(run, [True, False])["stable_at_save"] is True
    # stable by KVM_GET_CLOCK but not by every reading before: still a loss
    assert jc.stability_notes(run, [False, False])["lost_at_boundary"] is True
    # no KVM_GET_CLOCK before, the readings stable: a loss
    run.stable = None
    assert jc.stability_notes(run, [True, False])["lost_at_boundary"] is True
    assert jc.stability_notes(run, [False, False])["lost_at_boundary"] is False
    assert jc.stability_notes(run, [True, True])["lost_at_boundary"] is False
    assert jc.stability_notes(run, [True])["lost_at_boundary"] is False


def test_rate_notes_give_none_for_a_phase_without_a_rate():
    run = jc.RunView([], khz=5, probes=[[_probe(0, 0)], []])
    assert jc.rate_notes(run) == {
        "tsc_khz": 5,
        "tsc_khz_after": None,
        "measured_khz_raw": [None, None],
        "measured_khz": [None, None],
    }


@pytest.mark.parametrize("bug", [False, True])
def test_a_characterization_is_characterized_whatever_it_found(bug):
    rec = load("monotonic")
    if bug:
        res = result_of(rec)
        set_sample(res.records[0], 3, version=7)
        rec = json.loads(json.dumps(res.record()))
    rec["config"]["kind"] = "characterize"
    j = judge_record(rec)
    assert j.verdict == Verdict.CHARACTERIZED
    assert bool(j.violations) is bug
    rec["failure"] = {"blame": "kernel", "observed": "x"}
    assert judge_record(rec).verdict == Verdict.CHARACTERIZED


def test_untestable_and_not_supported_verdicts_keep_their_notes():
    rec = load("updates")
    rec["storm"] = [{"sets": 0, "added_ns": 0}]
    j = judge_record(rec)
    assert j.verdict == Verdict.UNTESTABLE
    assert (j.violations, j.notes["forced_updates"]) == ([], rec["storm"])
    assert j.notes["stability"]["phases_stable"] == [True]
    res = result_of(load("monotonic"))
    res.stable = False
    for r in res.records:
        for i in range(len(r.samples)):
            set_sample(r, i, flags=0)
    j = rejudge(res)
    assert j.verdict == Verdict.NOT_SUPPORTED
    assert j.violations == [] and j.notes["stability"]["phases_stable"] == [False]


def test_a_hung_vcpu_is_reported_at_the_batch_after_its_last():
    from kvmharness.judges.stopped import Stopped

    res = result_of(load("warp"))
    res.records[1].stuck = Stopped(0x20, 40 * 10**9, 10**6, 10**6)
    j = rejudge(res)
    assert [(v.kind, v.series, v.index) for v in j.violations] == [
        ("hung", "vcpu1", len(res.records[1].batches))
    ]


def test_excused_kinds_are_listed_each_in_the_text():
    res = result_of(load("restore-downtime"))
    rec = res.records[1]
    i = list(phase2(rec))[-5]
    set_sample(rec, i, ns=rec.samples[i - 1][0] - 2_000)
    b = rec.batches[rec.boundary + 1]
    b.warps, b.max_warp_ns = 1, 1_000
    j = rejudge(res)
    assert j.verdict == Verdict.HOLDS
    assert j.observed.endswith("; not judged without a master clock: decrease x1, warp x1"), (
        j.observed
    )


def test_the_frequency_is_judged_beside_the_other_violations():
    facts = jc.BoundaryFacts()
    facts.khz_after = 2_000_000
    facts.pvti_scale_after = [[1, 1]]
    r = _vcpu(0, [0, 10_000])
    set_sample(r, 2, version=3)
    run = jc.RunView([r], stable=True, facts=facts)
    assert [v.kind for v in jc.judge_run(_cfg(khz_ratio=2.0, warp=False), run).judged] == [
        checks.KIND_ODD_VERSION,
        checks.KIND_DECODE_MISMATCH,  # the area's scale
        checks.KIND_TSC_NOT_APPLIED,  # 10 ticks per ns against kvmclock, not 2
    ]


def test_a_phase_whose_record_kept_the_mark_leaves_the_next_phase_judged():
    """Each storm phase is judged on its own: one whose KVM record kept the
    mark is shown, and a later phase's torn reads are still judged; the
    count shown sums eight-column rows too (mixed, no first read)."""
    kept = {"watch": [[10, 10, 10, 0, 0, 0, 0, 0], [0, 0, 0, 50, 5, 1, 6, 0]]}
    torn = {"watch": [[10, 10, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 50, 5, 2, 14, 0, 0]]}
    out = jc.storm_torn(_storm_run(kept, torn))
    assert [(v.series, v.before, v.after) for v in out] == [("vcpu1", 12, 14)]
    assert jc.storm_watch(_storm_run(kept)) == [
        "KVM's record left the guest's mark in 10 rewrites",
        "1 read(s) of the mark under KVM's version not judged: a record that keeps "
        "the mark at every rewrite cannot tell an early version from a finished one",
    ]
    assert jc._keeps_pad0([10, 10, 10]) and not jc._keeps_pad0([10, 10, 9])
    assert not jc._keeps_pad0([10, 0, 0])  # nothing rewritten: nothing kept
    assert jc._keeps_pad0([1, 1, 1])  # one rewrite, kept
    assert jc.storm_watch(_storm_run({"watch": [[10, 10, 9], [0, 0, 0, 5, 1, 1, 6, 0]]})) == [
        "KVM's record left the guest's mark in 9 rewrites"
    ]
