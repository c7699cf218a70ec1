"""Steal judge details that mutation testing found untested (scripts/mutation.py).

Each test pins one rule of :meth:`VcpuRecord.run_delays` that the corpus
replay does not reach, on a small hand-made vCPU whose numbers make the rule
matter.  No KVM needed."""

from __future__ import annotations

import pytest

from kvmharness import checks
from kvmharness.checks import Sample
from kvmharness.judges import RecordError, undeltas
from kvmharness.judges import steal as js
from kvmharness.scenarios.base import Verdict


def _vcpu(versions: list[int], values: list[int], run_delay: list[int]) -> js.VcpuRecord:
    """One vCPU life on one thread; ``run_delay[i]`` is the thread's run_delay
    after reading i's KVM_RUN (and before the next)."""
    n = len(versions)
    guest = [
        Sample(1_000 * i, v, ver) for i, (v, ver) in enumerate(zip(values, versions, strict=True))
    ]
    host = [
        Sample(1_000 * i + 500, v, ver)
        for i, (v, ver) in enumerate(zip(values, versions, strict=True))
    ]
    ctx = [js.RunCtx(7, 0, run_delay[i - 1] if i else 0, run_delay[i]) for i in range(n)]
    return js.VcpuRecord(0, guest, host, ctx)


def test_a_new_vcpu_is_fresh_until_its_area_first_changes_from_zero():
    """A new vCPU's area starts at version 0; KVM's first update (here at
    reading 2: the guest enabled steal time late) may charge the thread's whole
    run_delay, and the guest may see it one reading later, so readings 0-3 are
    fresh, 4 on are not.  (Counting from any other starting version, or from
    the area's last version, makes only readings 0-1 fresh.)"""
    r = _vcpu([0, 0, 2, 4, 6, 8], [0, 0, 900, 950, 1_000, 1_050], [100, 200, 300, 400, 500, 600])
    rds = r.run_delays()
    assert [rd.fresh for rd in rds] == [True, True, True, True, False, False]
    assert [rd.start for rd in rds] == [True, False, False, False, False, False]


def test_a_new_vcpus_whole_run_delay_is_counted_from_zero():
    """The first stretch of a new vCPU counts its whole-run_delay charge from
    the area's value 0: steal 1 ns over run_delay + slack at the first update
    is over the run_delay, exactly at it is not."""
    rds = _vcpu([2, 4], [0, 0], [1_000, 1_000]).run_delays()
    assert rds[0].base == 0 and rds[0].zero_start
    slack = 10
    for extra, caught in ((0, False), (1, True)):
        samples = [Sample(0, 1_000 + slack + extra, 2), Sample(1_000, 1_000 + slack + extra, 4)]
        found = checks.check_follows_run_delay(
            "vcpu0", samples, rds, slack_ns=slack, alive_fraction=0.0
        )
        assert bool(found) is caught, found
        if caught:
            assert found[0].kind == checks.KIND_OVER_RUN_DELAY and found[0].index == 0


# ---- a vCPU's record written and read back (mutpc)


def _vrec(guest, host, ctx, **kw):
    from kvmharness.judges.steal import VcpuRecord

    return VcpuRecord(0, guest=guest, host=host, ctx=ctx, **kw)


def test_readings_of_unequal_count_are_refused_when_written():
    from kvmharness.checks import Sample
    from kvmharness.judges.steal import RunCtx

    g = [Sample(0, 0, 2), Sample(1, 0, 4)]
    c = [RunCtx(1, 0, 0, 0)] * 2
    with pytest.raises(ValueError, match="^vcpu0: 2 guest, 1 host, 2 ctx readings$"):
        _vrec(g, g[:1], c).to_json()
    with pytest.raises(ValueError, match="^vcpu0: 2 guest, 2 host, 1 ctx readings$"):
        _vrec(g, g, c[:1]).to_json()


def test_versions_not_read_stay_unread_and_quiet_readings_come_back():
    from kvmharness.checks import Sample
    from kvmharness.judges.steal import RunCtx, VcpuRecord

    # reading 0 under version 0, then three quiet readings (only the version
    # moved), then one with a new value whose host side has no version
    g = [Sample(0, 5, 0), Sample(3, 5, 2), Sample(6, 5, 4), Sample(9, 5, 6), Sample(10, 8, None)]
    h = g[:4] + [Sample(10, 9, None)]
    c = [RunCtx(7, 0, 0, 0)] * 5
    rec = _vrec(g, h, c, boundary=0)
    d = rec.to_json()
    ev = d["events"]
    assert ev["quiet_before"] == [0, 3]
    assert undeltas(ev["guest_version"]) == [0, -1]  # -1: not read
    assert ev["host_minus_guest_version"] == [0, 0]
    back = VcpuRecord.from_json(d)
    assert [s.version for s in back.guest] == [0, 2, 4, 6, None]
    assert [s.version for s in back.host] == [0, 2, 4, 6, None]
    assert [s.t_ns for s in back.guest] == [0, 3, 6, 9, 10]  # interpolated, whole ns
    assert [s.value for s in back.host] == [5, 5, 5, 5, 9]
    assert back.ctx == c
    # a host version read where the guest's was not
    h2 = g[:4] + [Sample(10, 9, 8)]
    ev2 = _vrec(g, h2, c, boundary=0).to_json()["events"]
    assert ev2["host_minus_guest_version"] == [0, 9]
    assert VcpuRecord.from_json(_vrec(g, h2, c, boundary=0).to_json()).host[4].version == 8
    # interpolation rounds down to whole ns: 7 ns over 2 quiet readings
    g3 = [Sample(0, 5, 0), Sample(3, 5, 2), Sample(7, 5, 4), Sample(10, 7, 6)]
    back3 = VcpuRecord.from_json(_vrec(g3, g3, c[:4], boundary=0).to_json())
    assert [s.t_ns for s in back3.guest] == [0, 3, 7, 10]


def test_an_unreadable_vcpu_record_says_why():
    from kvmharness.judges.steal import VcpuRecord

    with pytest.raises(
        RecordError, match="^steal vcpu record is not readable: KeyError\\('events'\\)$"
    ):
        VcpuRecord.from_json({})
    ev = {
        k: [0]
        for k in (
            "quiet_before",
            "t_ns",
            "guest_value",
            "guest_version",
            "since_previous_ns",
            "host_minus_guest_value",
            "host_minus_guest_version",
            "run_delay_before_ns",
        )
    }
    ev["run_delay_during_ns"] = []
    with pytest.raises(RecordError, match="^steal vcpu record: event columns of unequal length$"):
        VcpuRecord.from_json({"events": ev, "runs": [], "readings": 1})


def test_alive_is_judgeable_only_over_readings_that_waited():
    from kvmharness.judges.steal import RunCtx, VcpuRecord

    def rec(pres):
        g = [Sample(i * 10, i, 2 * i) for i in range(len(pres))]
        return VcpuRecord(0, guest=g, host=list(g), ctx=[RunCtx(1, 0, p, p) for p in pres])

    m = checks.ALIVE_MIN_RUN_DELAY_NS
    waited = rec([0, 1, m, 2 * m])
    assert waited.alive_judgeable(0)
    assert not waited.alive_judgeable(4)  # no readings from there on
    assert not waited.alive_judgeable(5)
    assert not rec([0, 0, 0, 0]).alive_judgeable(0)
    assert not rec([0, 1, 2, m - 1]).alive_judgeable(0)


def _steal_corpus_record() -> dict:
    import copy
    import gzip
    import json
    from pathlib import Path

    path = Path(__file__).parent.parent / "data" / "steal" / "kvm_pvm-6.18.json.gz"
    doc = json.loads(gzip.open(path).read())
    recs = [r for run in doc["runs"] for r in run["results"]]
    return copy.deepcopy(next(r for r in recs if r["variant"] == "fresh-vm/vcpu-thread"))


def test_the_steal_judge_says_what_held_and_refuses_what_it_cannot_read():
    rec = _steal_corpus_record()
    j = js.judge(rec)
    assert j.observed == (
        "steal monotonic and within run_delay; vcpu0 133.2 ms->153.8 ms "
        "(runner's run_delay 558.4 us)"
    )
    bad = dict(rec, config={})
    with pytest.raises(
        RecordError, match="^steal record has no config.budget_s: KeyError\\('budget_s'\\)$"
    ):
        js.judge(bad)
    with pytest.raises(
        RecordError, match="^steal record has no readable 'records': KeyError\\('records'\\)$"
    ):
        js.judge({k: v for k, v in rec.items() if k != "records"})
    d = rec["records"][0]
    d["readings"] += 1
    n = d["readings"]
    with pytest.raises(RecordError, match=f"^steal vcpu record rebuilt {n - 1} readings, not {n}$"):
        js.judge(rec)


def test_a_broken_steal_record_names_its_violations():
    rec = _steal_corpus_record()
    ev = rec["records"][0]["events"]
    ev["guest_value"][-1] -= 10**9  # the last reading went back by a second
    j = js.judge(rec)
    assert j.violations
    assert j.observed.startswith(f"{j.violations[0].kind} x"), j.observed


def test_a_steal_run_too_loaded_to_judge_is_untestable_with_no_violations():
    rec = _steal_corpus_record()
    budget = int(rec["config"]["budget_s"] * 1e9)
    rec["records"][0]["stuck"] = {
        "rip": 0x401000,
        "waited_ns": budget,
        "cpu_ns": 1_000_000,
        "queued_ns": budget - 1_000_000,
    }
    j = js.judge(rec)
    assert (j.verdict, j.violations) == (Verdict.UNTESTABLE, [])


def test_alive_is_judgeable_from_the_phase_being_recorded_on():
    from kvmharness.judges.steal import RunCtx, VcpuRecord

    def rec(pres, ins):
        g = [Sample(i * 10, i, 2 * i + 2) for i in range(len(pres))]
        ctx = [RunCtx(1, 0, p, p + w) for p, w in zip(pres, ins, strict=True)]
        return VcpuRecord(0, guest=g, host=list(g), ctx=ctx)

    m = checks.ALIVE_MIN_RUN_DELAY_NS
    # found by search: the waiting before reading 1 does not count for a phase
    # from 1 on, nor does a phase of one reading
    r = rec([m - 1, m + 2_000_000 - 1, 2 * m + 2_000_000 - 1], [0, 0, 0])
    assert not r.alive_judgeable(1)
    assert not r.alive_judgeable(2)
    # a stretch that waited exactly the minimum is judgeable
    r = rec([0, 2 * m, 3 * m, 3 * m + 1, 3 * m + 3, 4 * m + 3], [0, 0, 1, 1, 0, 1])
    assert r.alive_judgeable(4)
