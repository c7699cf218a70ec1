"""The clock judge's verdict text, notes and record reading, to the character,
over real kvm_pvm records (tests/data/clock) and small synthetic runs: what
mutation testing of kvmharness/judges/clock.py found untested
(scripts/mutation.py --fast).  Every expected figure is computed here from
the record's raw fields, not by the judge's own helpers.  No KVM needed."""

from __future__ import annotations

import gzip
import json
from fractions import Fraction
from pathlib import Path

import pytest

from kvmharness import checks
from kvmharness.judges import RecordError, judge_record
from kvmharness.judges import clock as jc
from kvmharness.scenarios.base import Verdict
from kvmharness.scenarios.clock_record import ClockRecord, RateProbe

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
        "(2 mod 4: KVM's after its write; not judged)",
        "vcpu3 read vCPU 0's area 1 time(s) with the guest's mark under version 4006 "
        "(2 mod 4: KVM's after its write; not judged)",
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
        "(2 mod 4: KVM's after its write; not judged)",
        "KVM's record left the guest's mark in 5 rewrites",
    ]
    assert j.verdict == Verdict.HOLDS
    assert j.notes["mark_seen_under_kvm_version"] == watch
    assert j.observed.endswith("; " + "; ".join(watch))


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
