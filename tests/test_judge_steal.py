"""The steal judge over real recorded runs (kvm_pvm, idle and under two busy
processes): every record holds, and a record edited the way a broken kernel
would have written it is BROKEN, never untestable.  No KVM needed."""

from __future__ import annotations

import copy
import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest

from kvmharness import checks
from kvmharness.checks import Sample
from kvmharness.judges import RecordError, judge_record
from kvmharness.judges import steal as js
from kvmharness.judges.stopped import KIND_HUNG, Stopped
from kvmharness.scenarios.base import Kind, Verdict

CORPUS = Path(__file__).parent / "data" / "steal" / "kvm_pvm-6.18.json.gz"


DOC = json.loads(gzip.open(CORPUS).read())
RECORDS = [r for run in DOC["runs"] for r in run["results"]]
PROMISES = [r for r in RECORDS if js.KINDS[r["variant"]] is Kind.PROMISE]
# runs whose runner starts a new vCPU life after the boundary
FRESH = [r for r in PROMISES if r["variant"] != "cancelled-save"]
CANCELLED = [r for r in PROMISES if r["variant"] == "cancelled-save"]


def _id(r: dict) -> str:
    return f"{r['variant']}x{r['vcpus']}"


def _edit(record: dict, change) -> dict:
    """The record with ``change(VcpuRecord)`` applied to each vCPU, rewritten."""
    out = copy.deepcopy(record)
    recs = js.records_of(out)
    for r in recs:
        change(r)
    out["records"] = [r.to_json() for r in recs]
    return json.loads(json.dumps(out))


def _add_from(r: js.VcpuRecord, j: int, extra: int) -> None:
    """From reading ``j`` on, the area holds ``extra`` ns more (guest and host saw it)."""
    r.guest[j:] = [replace(s, value=s.value + extra) for s in r.guest[j:]]
    r.host[j:] = [replace(s, value=s.value + extra) for s in r.host[j:]]


def _kinds(j) -> set[str]:
    return {v.kind for v in j.violations}


def test_corpus_is_real_and_compact():
    assert len(PROMISES) >= 40 and len(CANCELLED) >= 8
    for r in RECORDS:
        assert r["schema"] == 2 and r["family"] == "steal"
        assert len(json.dumps(r, separators=(",", ":"))) <= 15_000, _id(r)


@pytest.mark.parametrize("record", RECORDS, ids=_id)
def test_recorded_runs_are_judged_as_they_were(record):
    j = judge_record(record)
    assert j.verdict == Verdict(record["verdict"]), j.observed
    assert j.verdict in (Verdict.HOLDS, Verdict.CHARACTERIZED)


def test_record_round_trip_is_exact():
    """Rebuilding a vCPU's readings and writing them again gives the same record."""
    for record in RECORDS[:16]:
        for d in record["records"]:
            assert js.VcpuRecord.from_json(d).to_json() == d


# -- the whole run_delay, charged once per vCPU life and runner thread ----------


def _second_update(r: js.VcpuRecord) -> int:
    s = r.boundary
    changed = [j for j in range(s, len(r.host)) if r.host[j].version != r.host[j - 1].version]
    return changed[1]


@pytest.mark.parametrize("record", FRESH, ids=_id)
def test_run_delay_charged_again_at_the_second_update_is_caught(record):
    """A kernel that charges the runner's whole run_delay again at the second
    update after the boundary (main's rules before the fix let every one through)."""

    def recharge(r: js.VcpuRecord) -> None:
        j = _second_update(r)
        _add_from(r, j, r.ctx[j].pre_ns)

    j = js.judge(_edit(record, recharge))
    assert j.verdict is Verdict.BROKEN, j.observed
    assert checks.KIND_OVER_RUN_DELAY in _kinds(j)


# -- alive: steal follows all of run_delay --------------------------------------


def _scale(fraction: float):
    """A kernel that accounts only ``fraction`` of each charge."""

    def change(r: js.VcpuRecord) -> None:
        for series in (r.guest, r.host):
            acc = prev = 0
            out = []
            for s in series:
                d, prev = s.value - prev, s.value
                acc += int(d * fraction) if d > 0 else d
                out.append(replace(s, value=acc))
            series[:] = out

    return change


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_partial_loss_of_steal_is_caught_in_every_promise(fraction):
    missed = []
    for record in PROMISES:
        j = js.judge(_edit(record, _scale(fraction)))
        if j.verdict is not Verdict.BROKEN or checks.KIND_NOT_ALIVE not in _kinds(j):
            missed.append(f"{_id(record)}: {j.verdict}: {j.observed}")
    assert not missed, "\n".join(missed)


def _stop_at_boundary(r: js.VcpuRecord) -> None:
    v = r.host[r.boundary - 1].value
    for series in (r.guest, r.host):
        series[r.boundary :] = [replace(s, value=v) for s in series[r.boundary :]]


def _drop(r: js.VcpuRecord, lo: int, hi: int) -> None:
    """Readings lo..hi-1 removed (a shorter phase); indices after them shift."""
    n = hi - lo
    del r.guest[lo:hi], r.host[lo:hi], r.ctx[lo:hi]

    def at(i: int) -> int:
        return i - n if i >= hi else i

    r.boundary = at(r.boundary)
    r.phases = [(at(a), at(b), c) for a, b, c in r.phases]


@pytest.mark.parametrize("shape", ["as recorded", "phase A longer", "phase B longer"])
@pytest.mark.parametrize("record", CANCELLED, ids=_id)
def test_cancelled_save_steal_that_stops_at_the_boundary_is_caught(record, shape):
    """Judged per phase, whatever the phases' lengths (one stretch over both
    phases let it through when the second phase waited less than the first)."""

    def change(r: js.VcpuRecord) -> None:
        (a0, a1, _), (b0, b1, _) = r.phases
        if shape == "phase A longer":  # keep the last third of phase B
            _drop(r, b0 + 1, b1 - (b1 - b0) // 3)
        elif shape == "phase B longer":
            _drop(r, a0 + 1, a1 - (a1 - a0) // 3)
        _stop_at_boundary(r)

    edited = _edit(record, change)
    for d in edited["records"]:
        r = js.VcpuRecord.from_json(d)
        (a0, a1, _), (b0, b1, _) = r.phases
        assert r.boundary == b0 and a1 == b0 - 1
    j = js.judge(edited)
    assert j.verdict is Verdict.BROKEN, j.observed
    assert checks.KIND_NOT_ALIVE in _kinds(j)


# -- a vCPU stopped in KVM_RUN ---------------------------------------------------


def _stopped_in_phase_b(cpu_ns: int, queued_ns: int):
    def change(r: js.VcpuRecord) -> None:
        b0 = r.phases[1][0]
        _drop(r, b0 + 3, len(r.guest))
        r.phases[1] = (b0, b0 + 2, r.phases[1][2])
        r.stuck = Stopped(rip=0x1234, waited_ns=2_000_000_000, cpu_ns=cpu_ns, queued_ns=queued_ns)

    return change


def test_a_vcpu_that_slept_in_kvm_run_is_hung_not_untestable():
    record = dict(CANCELLED[0], config={**CANCELLED[0]["config"], "budget_s": 2.0})
    j = js.judge(_edit(record, _stopped_in_phase_b(cpu_ns=300_000, queued_ns=100_000)))
    assert j.verdict is Verdict.BROKEN, j.observed
    assert KIND_HUNG in _kinds(j)
    assert "rip 0x1234" in j.violations[-1].detail


def test_a_vcpu_that_spun_in_kvm_run_is_stuck():
    record = dict(CANCELLED[0], config={**CANCELLED[0]["config"], "budget_s": 2.0})
    j = js.judge(_edit(record, _stopped_in_phase_b(cpu_ns=1_900_000_000, queued_ns=50_000_000)))
    assert j.verdict is Verdict.BROKEN and checks.KIND_STUCK in _kinds(j), j.observed


def test_a_vcpu_starved_on_a_run_queue_is_untestable():
    record = dict(CANCELLED[0], config={**CANCELLED[0]["config"], "budget_s": 2.0})
    j = js.judge(_edit(record, _stopped_in_phase_b(cpu_ns=100_000_000, queued_ns=1_800_000_000)))
    assert j.verdict is Verdict.UNTESTABLE and "too loaded" in j.observed, j.observed


# -- the record --------------------------------------------------------------------


def test_kinds_match_the_runner():
    from kvmharness.scenarios.steal import VARIANTS

    assert {n: s.kind for n, s in VARIANTS.items()} == js.KINDS


def test_table_prints_from_a_saved_record():
    from kvmharness.scenarios.steal import StealResult
    from kvmharness.scenarios.steal_view import steal_table

    res = [StealResult.from_json(r) for r in RECORDS[:16]]
    text = steal_table(res, 0)
    for r in RECORDS[:16]:
        assert r["variant"] in text
    assert all(x.records and x.records[0].guest for x in res)
    before, after = res[0].steal_at_boundary()
    assert (before, after) == (RECORDS[0]["steal_before_ns"], RECORDS[0]["steal_after_ns"])


def test_kvmharness_judge_rebuilds_steal_results(tmp_path, capsys):
    """``kvmharness judge`` on a saved steal run: the family's own table, today's
    verdicts, and the exit code; a record edited as a broken kernel is 1."""
    from kvmharness.cli import main

    run = {"schema": 2, "host": DOC["runs"][0]["host"], "results": copy.deepcopy(RECORDS[:16])}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert main(["judge", str(path)]) == 0
    out = capsys.readouterr().out
    assert "MSR written by" in out and "cancelled-save" in out
    run["results"][0] = _edit(run["results"][0], _scale(0.7))
    path.write_text(json.dumps(run))
    assert main(["judge", str(path)]) == 1
    assert "not-alive" in capsys.readouterr().out


def test_unreadable_records_are_refused():
    record = copy.deepcopy(PROMISES[0])
    with pytest.raises(RecordError):
        judge_record({**record, "schema": 1})
    with pytest.raises(RecordError):
        js.judge({**record, "variant": "no-such-variant"})
    del record["records"][0]["events"]["t_ns"]
    with pytest.raises(RecordError):
        js.judge(record)


def test_an_error_record_keeps_its_blame():
    record = {**PROMISES[0], "error": "KVM_SET_MSRS failed", "blame": "kernel", "records": []}
    assert js.judge(record).verdict is Verdict.BROKEN
    record["blame"] = "harness"
    assert js.judge(record).verdict is Verdict.ERROR


# -- the table's figures and the record's compact form (synthetic vCPUs) ----------


def _quiet_vcpu(n: int, boundary: int, *, index: int = 0, tid: int = 10) -> js.VcpuRecord:
    """``n`` readings where nothing but the version moves (all quiet but the kept ones)."""
    r = js.VcpuRecord(index=index, boundary=boundary, max_run_ns=1_000)
    for i in range(n):
        s = Sample(1_000 * i, 5_000, 2 * i + 2)
        r.guest.append(s)
        r.host.append(s)
        r.ctx.append(js.RunCtx(tid, 0, 0, 0))
    return r


def test_table_figures_sum_the_vcpus_and_keep_the_sign_of_the_largest_jump():
    """same-vm/new-thread x2: steal drops at the boundary; the table shows the drop
    as a negative jump, and before/after summed over both vCPUs."""
    record = next(r for r in RECORDS if r["variant"] == "same-vm/new-thread" and r["vcpus"] == 2)
    recs = js.records_of(record)
    before = sum(r.guest[r.boundary - 1].value for r in recs)
    after = sum(r.guest[r.boundary].value for r in recs)
    jumps = [b.value - a.value for r in recs for a, b in zip(r.guest, r.guest[1:], strict=False)]
    largest = min(jumps)
    assert -largest > max(jumps) > 0  # the drop is the largest jump
    assert js.steal_at_boundary(recs) == (before, after)
    assert js.largest_jump_ns(recs) == largest
    assert (before, after, largest) == (
        record["steal_before_ns"],
        record["steal_after_ns"],
        record["largest_jump_ns"],
    )


def test_largest_jump_between_adjacent_readings_only():
    r = _quiet_vcpu(4, 2)
    r.guest = [replace(s, value=v) for s, v in zip(r.guest, [0, 10, 13, 14], strict=True)]
    assert js.largest_jump_ns([r]) == 10
    r.guest = r.guest[:1]
    assert js.largest_jump_ns([r]) is None


@pytest.mark.parametrize("boundary", [0, 5])
def test_no_boundary_figures_without_readings_on_both_sides(boundary):
    r = _quiet_vcpu(5, boundary)
    assert js.steal_at_boundary([r]) == (None, None)
    assert js.steal_at_boundary([_quiet_vcpu(5, 1), r]) == (None, None)


@pytest.mark.parametrize("boundary", [1, 4])
def test_boundary_figures_at_the_first_and_last_possible_boundary(boundary):
    r = _quiet_vcpu(5, boundary)
    r.guest = [replace(s, value=100 * i) for i, s in enumerate(r.guest)]
    assert js.steal_at_boundary([r]) == (100 * (boundary - 1), 100 * boundary)


def test_quiet_readings_are_not_written_and_come_back_exactly():
    r = _quiet_vcpu(50, 20)
    d = r.to_json()
    # only the ends and the readings either side of the boundary are written
    assert d["events"]["quiet_before"] == [0, 18, 0, 28]
    back = js.VcpuRecord.from_json(d)
    assert [(s.value, s.version) for s in back.guest] == [(s.value, s.version) for s in r.guest]
    assert back.host == back.guest and back.ctx == r.ctx
    assert back.to_json() == d


def test_a_later_process_s_readings_extend_the_vcpu_as_a_new_life():
    """cross-process: the restore process's readings follow the save process's."""
    a = _quiet_vcpu(6, 3, tid=10)
    a.ctx[-1] = js.RunCtx(11, 1, 0, 0)  # a second life already
    a.phases = [(1, 2, 7)]
    a.max_run_ns = 5_000
    a.writer_run_delay_ns = 42
    b = _quiet_vcpu(4, 2, tid=20)
    b.phases = [(0, 3, 9)]
    b.max_run_ns = 9_000
    b.stuck = Stopped(rip=0x1234, waited_ns=1, cpu_ns=2, queued_ns=3)
    a.extend(b)
    assert len(a.guest) == len(a.host) == len(a.ctx) == 10
    assert a.guest[6:] == b.guest and a.host[6:] == b.host
    assert [c.life for c in a.ctx] == [0] * 5 + [1] + [2] * 4
    assert [c.tid for c in a.ctx[6:]] == [20] * 4
    assert a.phases == [(1, 2, 7), (6, 9, 9)]
    assert a.max_run_ns == 9_000 and a.stuck == b.stuck and a.writer_run_delay_ns == 42
    c = _quiet_vcpu(2, 1)
    c.max_run_ns = 10
    c.writer_run_delay_ns = 7
    a.extend(c)
    assert a.max_run_ns == 9_000 and a.stuck == b.stuck and a.writer_run_delay_ns == 7
    assert [x.life for x in a.ctx[10:]] == [3, 3]
    first = _quiet_vcpu(0, 0)
    first.extend(_quiet_vcpu(2, 1))
    assert [x.life for x in first.ctx] == [0, 0]


def _following(waits: list[tuple[int, int]], tids: list[int] | None = None) -> js.VcpuRecord:
    """A vCPU whose steal is its runner's run_delay before each KVM_RUN (a live clock)."""
    r = js.VcpuRecord(index=0, boundary=1, max_run_ns=1_000)
    for i, (pre, post) in enumerate(waits):
        s = Sample(1_000 * i, pre, 2 * i + 2)
        r.guest.append(s)
        r.host.append(s)
        r.ctx.append(js.RunCtx(tids[i] if tids else 7, 0, pre, post))
    return r


def test_a_stretch_whose_ends_waited_enough_is_judged_though_its_tight_pairs_did_not():
    """The tight pairs saw 2 ms of waiting, under the 4 ms needed; the stretch's
    ends saw 9 ms (the last KVM_RUN waited 3 ms inside, too much for a tight pair).
    A live clock there holds: it is not 'too short to judge'."""
    ms = 1_000_000
    r = _following([(0, 0), (0, 0), (1 * ms, 1 * ms), (2 * ms, 2 * ms), (10 * ms, 13 * ms)])
    assert checks.ALIVE_MIN_RUN_DELAY_NS == 4 * ms
    assert js.judge_records([r], 30.0) == ([], None)


def test_a_one_reading_stretch_is_reported_as_no_waiting():
    """A new runner thread for the last reading only: nothing to judge "alive"
    over, reported with 0 ns waited (not the KVM_RUN's own wait, negated)."""
    ms = 1_000_000
    waits = [(0, 0), (0, 0), (1 * ms, 1 * ms), (5 * ms, 5 * ms), (10 * ms, 10 * ms)]
    r = _following([*waits, (13 * ms, 14 * ms)], tids=[7] * 5 + [8])
    r.guest[-1] = r.host[-1] = replace(r.guest[-1], value=10 * ms)
    violations, why = js.judge_records([r], 30.0)
    assert violations == []
    assert why == (
        "vcpu0's thread waited only 0 ns on a run queue over readings 5-5 (at least 4 ms is "
        "needed to tell a live steal clock from a dead one)"
    )


# vCPU 0 of fresh-vm/vcpu-thread on stock Debian 6.1.0-57 (kvm_amd nested under
# QEMU TCG, two helpers' TCG guests and a mutmut run beside it): its first phase
# ended after three readings, all waiting inside their own KVM_RUN and the first
# two fresh, so the judge had nothing to judge "alive" over and the run came out
# untestable (exit 125: a bisect would have skipped a good kernel).
SLOW_HOST_VCPU0 = {
    "index": 0,
    "readings": 7,
    "boundary": 3,
    "max_run_ns": 344511005,
    "phases": [[0, 2, 100000000], [3, 6, 100000000]],
    "stuck": None,
    "writer_run_delay_ns": None,
    "runs": [[0, 272, 0], [3, 284, 1]],
    "events": {
        "quiet_before": [0, 0, 0, 0, 0, 0, 0],
        "t_ns": [84681211979, 110362671, 88102517, 10541670724, 1029380, 27141728, 7535353],
        "since_previous_ns": [0, 110362671, 88102517, 10541670724, 1029380, 27141728, 7535353],
        "guest_value": [154941169, 27581767, 72622835, 18442773, 7305082, 0, 15271619],
        "guest_version": [2, 2, 4, 2, 2, 2, 2],
        "host_minus_guest_value": [0, 0, 0, 0, 0, 0, 0],
        "host_minus_guest_version": [0, 0, 0, 0, 0, 0, 0],
        "run_delay_before_ns": [143176599, 7162267, 314667, -260931702, 0, 0, 0],
        "run_delay_during_ns": [32184070, 48698298, 47838574, 7305082, 0, 15271619, 13201700],
    },
}


def test_a_phase_too_short_to_judge_alive_is_not_over_yet():
    """The runner ends a phase only where the judge can judge "alive" over it
    (before, it stopped once the thread had waited 8 ms in all, and the phase
    above was untestable).  Two more readings that did not wait inside their
    KVM_RUN, 10 ms apart on the run queue, make it judgeable."""
    r = js.VcpuRecord.from_json(copy.deepcopy(SLOW_HOST_VCPU0))
    assert js.judge_records([r], 30.0)[1] is not None, "the record as taken is untestable"
    head = js.VcpuRecord(
        r.index, r.guest[:3], r.host[:3], r.ctx[:3], boundary=0, max_run_ns=r.max_run_ns
    )
    assert not head.alive_judgeable(0)
    last_g, last_h, last_c = head.guest[-1], head.host[-1], head.ctx[-1]
    for k in (1, 2):
        value = last_g.value + 10_000_000 * k
        head.guest.append(
            checks.Sample(last_g.t_ns + 20_000_000 * k, value, last_g.version + 2 * k)
        )
        head.host.append(checks.Sample(last_h.t_ns + 20_000_000 * k, value, last_h.version + 2 * k))
        rd = last_c.post_ns + 10_000_000 * k
        head.ctx.append(js.RunCtx(last_c.tid, last_c.life, rd, rd))
    assert head.alive_judgeable(0)
    # ... and judged, a steal clock that stopped there is caught, not untestable
    dead = js.VcpuRecord(**{**head.__dict__})
    dead.guest = head.guest[:3] + [replace(s, value=head.guest[2].value) for s in head.guest[3:]]
    dead.host = head.host[:3] + [replace(s, value=head.host[2].value) for s in head.host[3:]]
    dead.phases = [(0, len(dead.guest) - 1, 100_000_000)]
    violations, why_not = js.judge_records([dead], 30.0)
    assert checks.KIND_NOT_ALIVE in {v.kind for v in violations}, (violations, why_not)


@pytest.mark.parametrize("last_pre_ms, judged", [(4, True), (3.999999, False)])
def test_four_ms_of_waiting_is_enough_to_judge_alive(last_pre_ms, judged):
    ms = 1_000_000
    r = _following([(0, 0), (0, 0), (1 * ms, 1 * ms), (int(last_pre_ms * ms),) * 2])
    violations, why = js.judge_records([r], 30.0)
    assert violations == []
    assert (why is None) is judged, why


def test_what_held_names_each_vcpu_s_steal_across_the_boundary():
    with_boundary = _quiet_vcpu(3, 1, index=0)
    with_boundary.guest[1:] = [replace(s, value=2_000_000) for s in with_boundary.guest[1:]]
    with_boundary.ctx[1] = js.RunCtx(10, 0, 0, 1_500_000)
    no_boundary = _quiet_vcpu(3, 0, index=1)
    past_the_end = _quiet_vcpu(3, 3, index=2)
    last = _quiet_vcpu(3, 2, index=3)
    text = js.describe([with_boundary, no_boundary, past_the_end, last], [])
    assert text == (
        "steal monotonic and within run_delay; vcpu0 5 us->2 ms (runner's run_delay 1.5 ms), "
        "vcpu3 5 us->5 us (runner's run_delay 0 ns)"
    )


MS = 1_000_000
#: tid, pre, post, guest (value, version), host (value, version)
NEW_THREAD_ROWS = [
    # tid, pre, post, guest (value, version), host (value, version)
    (7, 0, 0, (0, 2), (0, 2)),
    (7, 5 * MS, 5 * MS, (5 * MS, 4), (5 * MS, 4)),
    (7, 10 * MS, 10 * MS, (10 * MS, 6), (10 * MS, 6)),
    (7, 15 * MS, 15 * MS, (15 * MS, 8), (15 * MS, 8)),
    (8, 50 * MS, 50 * MS, (15 * MS, 8), (15 * MS, 8)),
    (8, 50 * MS, 50 * MS, (15 * MS, 8), (65 * MS, 10)),
    (8, 50 * MS, 50 * MS, (65 * MS, 10), (65 * MS, 10)),
    (8, 55 * MS, 55 * MS, (70 * MS, 12), (70 * MS, 12)),
    (8, 60 * MS, 60 * MS, (75 * MS, 14), (75 * MS, 14)),
]


def _rows(rows) -> js.VcpuRecord:
    r = js.VcpuRecord(index=0, boundary=1, max_run_ns=1_000)
    for i, (tid, pre, post, g, h) in enumerate(rows):
        r.guest.append(Sample(1_000 * i, *g))
        r.host.append(Sample(1_000 * i, *h))
        r.ctx.append(js.RunCtx(tid, 0, pre, post))
    return r


def test_a_new_runner_thread_s_whole_run_delay_may_reach_the_guest_one_reading_late():
    """KVM_RUN moves to thread 8 at reading 4; KVM's first update under it comes
    in reading 5's KVM_RUN and charges thread 8's whole run_delay (50 ms); the
    guest reads it at reading 6.  A good kernel: no violation.  (Fresh readings
    run until one after the first update that differs from the area before the
    new thread, not from the new thread's first reading.)"""
    r = _rows(NEW_THREAD_ROWS)
    assert [rd.fresh for rd in r.run_delays()][4:] == [True, True, True, False, False]
    assert js.judge_records([r], 30.0) == ([], None)


def test_the_new_thread_s_charge_seen_at_its_stretch_s_last_reading_is_allowed():
    """The same, with reading 6 the last under thread 8 (the run then ends):
    the guest's reading of the charge is still fresh."""
    violations, _why = js.judge_records([_rows(NEW_THREAD_ROWS[:7])], 30.0)
    assert violations == []


def test_a_steal_clock_that_stops_at_a_change_of_runner_thread_is_caught():
    """KVM never updates the area under thread 8, though it waited 40 ms."""
    rows = [*NEW_THREAD_ROWS[:4]]
    for pre in (20, 30, 40, 50, 60):
        rows.append((8, pre * MS, pre * MS, (15 * MS, 8), (15 * MS, 8)))
    violations, _why = js.judge_records([_rows(rows)], 30.0)
    assert {v.kind for v in violations} == {checks.KIND_NOT_ALIVE}
    assert {v.index for v in violations} == {8}


def test_a_steal_clock_that_stops_at_the_boundary_is_caught_after_a_long_first_phase():
    """cancelled-save's shape, one runner thread: phase A waited 100 ms and steal
    followed; phase B waited 6 ms and steal stood still.  Over both phases steal
    grew 94% of the waiting; judged per phase, B is dead."""
    rows = []
    for i, pre in enumerate((0, 25, 50, 75, 100)):
        rows.append((7, pre * MS, pre * MS, (pre * MS, 2 * i + 2), (pre * MS, 2 * i + 2)))
    for i, pre in enumerate((101, 103, 105, 107), start=5):
        rows.append((7, pre * MS, pre * MS, (100 * MS, 2 * i + 2), (100 * MS, 2 * i + 2)))
    r = _rows(rows)
    r.boundary = 5
    r.phases = [(0, 4, 100 * MS), (5, 8, 100 * MS)]
    violations, _why = js.judge_records([r], 30.0)
    assert {v.kind for v in violations} == {checks.KIND_NOT_ALIVE}
    r.phases = []
    assert js.judge_records([r], 30.0) == ([], None), "judged whole, it holds"


def test_every_vcpu_s_violations_are_kept_and_named_by_their_series():
    """vcpu0's guest view decreases, shows an odd version and grows past
    run_delay; vcpu1 is clean and vcpu2 was stopped in KVM_RUN having spun.
    Each violation names the vCPU and the view it was found in."""
    bad = _rows(NEW_THREAD_ROWS[:4])
    g = bad.guest
    g[2] = replace(g[2], value=g[1].value - 1)  # decrease at 2 (guest view only)
    g[3] = replace(g[3], version=7)  # odd version at 3
    bad.host[3] = replace(bad.host[3], value=bad.host[3].value + 50 * MS)  # over run_delay
    clean = _rows(NEW_THREAD_ROWS)
    clean.index = 1
    stuck = _rows(NEW_THREAD_ROWS)
    stuck.index = 2
    stuck.stuck = Stopped(rip=0x10, waited_ns=2_000 * MS, cpu_ns=1_900 * MS, queued_ns=0)
    violations, _why = js.judge_records([bad, clean, stuck], 2.0)
    found = {(v.kind, v.series) for v in violations}
    assert (checks.KIND_DECREASE, "vcpu0") in found
    assert (checks.KIND_ODD_VERSION, "vcpu0") in found
    assert (checks.KIND_OVER_RUN_DELAY, "vcpu0/host") in found
    assert not {s for _k, s in found} & {"vcpu1", "vcpu1/host"}
    assert [(v.series, v.index) for v in violations if v.kind == checks.KIND_STUCK] == [
        ("vcpu2", len(stuck.guest))
    ]


def test_what_a_broken_run_says_counts_each_kind():
    bad = _rows(NEW_THREAD_ROWS[:4])
    bad.guest[2] = replace(bad.guest[2], value=bad.guest[1].value - 1)
    bad.guest[3] = replace(bad.guest[3], version=7)
    bad.host[3] = replace(bad.host[3], value=bad.host[3].value + 50 * MS)
    violations, _why = js.judge_records([bad], 2.0)
    assert js.describe([bad], violations).startswith(
        "decrease x1, odd-version x1, over-run-delay x2; first: vcpu0[2] steal went from "
    )


def test_an_error_record_says_why_it_could_not_run():
    record = {**PROMISES[0], "error": "KVM_SET_MSRS failed", "blame": "kernel", "records": []}
    j = js.judge(record)
    assert (j.verdict, j.observed, j.violations) == (
        Verdict.BROKEN,
        "could not run (kernel): KVM_SET_MSRS failed",
        [],
    )
    characterize = next(r for r in RECORDS if js.KINDS[r["variant"]] is Kind.CHARACTERIZE)
    record = {**characterize, "error": "KVM_SET_MSRS failed", "blame": "kernel", "records": []}
    assert js.judge(record).verdict is Verdict.CHARACTERIZED


def test_an_unknown_variant_is_refused_naming_the_known_ones():
    with pytest.raises(RecordError) as exc:
        js.judge({**PROMISES[0], "variant": "no-such-variant"})
    assert str(exc.value) == (
        "steal record of unknown variant 'no-such-variant' (known: " + ", ".join(js.KINDS) + ")"
    )
    assert "fresh-vm/vcpu-thread, fresh-vm/main-thread, " in str(exc.value)
