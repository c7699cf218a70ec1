"""The clock family on real KVM: promises hold (or are strict xfail where the
known-issues file says they break on this host), and deliberately broken
restores and readings are caught: every check is shown able to fail."""

from __future__ import annotations

import json
import struct
import threading

import pytest

from kvmharness import checks
from kvmharness.ffi import lib
from kvmharness.judges import clock as jc
from kvmharness.judges import judge_record
from kvmharness.scenarios import clock
from kvmharness.scenarios.base import BROKEN, CHARACTERIZED, HOLDS, PROMISE, Verdict
from kvmharness.scenarios.clock import VARIANTS, ClockConfig, run_scenario
from kvmharness.testing import assert_holds

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(120)]

NOT_SUPPORTED = Verdict.NOT_SUPPORTED
PROMISES = [n for n, v in VARIANTS.items() if v.kind == PROMISE and n != "frequency"]


def _supported(res):
    """Skip, with its reason, where a lasting host property rules the variant out
    (no master clock, no KVM_CLOCK_REALTIME, a capability absent), as the
    kernel's selftests do; never where the kernel broke the promise."""
    if res.verdict == NOT_SUPPORTED:
        pytest.skip(f"{res.variant.name}: not supported on this host: {res.observed}")
    return res


def _no_master_clock(res) -> bool:
    return not any(res.notes["stability"]["phases_stable"])


def _explain(res) -> str:
    lines = [f"{res.variant.name} {res.vcpus} vCPUs: {res.verdict}: {res.observed}"]
    lines += [f"  {v.kind} {v.series}[{v.index}] {v.detail}" for v in res.violations[:10]]
    return "\n".join(lines)


@pytest.mark.parametrize(
    "variant", [pytest.param(n, marks=pytest.mark.kvm_scenario(f"clock/{n}")) for n in PROMISES]
)
def test_promise_holds(kvm, variant, characterize):
    res = _supported(run_scenario(ClockConfig(variant, 2, phase_ms=80), kvm))
    # a broken promise fails with its violation kinds: where a known issue
    # covers the variant, the plugin keeps the xfail only if it excuses them all
    assert_holds(res)
    for rec in res.records:
        assert rec.samples, "the guest read kvmclock"
        if VARIANTS[variant].boundary is not clock.Boundary.NONE:
            assert 0 < rec.boundary < len(rec.batches), "readings on both sides"
    rec = json.loads(json.dumps(res.to_json()))
    assert len(json.dumps(rec, separators=(",", ":"))) <= 40_000, "the record stays compact"
    # the saved record, re-judged alone, gives the live verdict
    assert judge_record(rec).verdict == res.verdict
    characterize(f"{variant}: {res.observed}")


def test_frequency_runs_or_says_not_supported(kvm):
    res = run_scenario(ClockConfig("frequency", 1, phase_ms=60), kvm)
    if kvm.check_extension(lib.KVM_CAP_TSC_CONTROL):
        assert res.verdict == HOLDS, _explain(res)
    else:
        assert res.verdict == NOT_SUPPORTED and res.not_supported
        assert "KVM_CAP_TSC_CONTROL" in res.observed


def test_tsc_broken_here_names_the_value_written_and_read(kvm):
    """On kvm_pvm the TSC promise breaks (the known issue); the report must give
    the value written and the value the guest read."""
    from kvmharness.known import Host, find, load

    if find(load(), "clock/tsc/msr", Host.this()) is None:
        pytest.skip("no known TSC issue on this host: test_promise_holds covers it")
    res = run_scenario(ClockConfig("tsc/msr", 1, phase_ms=60), kvm)
    assert res.verdict == BROKEN
    v = next(v for v in res.violations if v.kind == checks.KIND_TSC_NOT_APPLIED)
    assert "MSR_IA32_TSC written" in v.detail and "the guest read TSC" in v.detail


def test_warp_at_many_vcpus(kvm, characterize):
    n = min(lib.GUEST_MAX_VCPUS, 16)
    res = _supported(run_scenario(ClockConfig("warp", n, phase_ms=150), kvm))
    assert res.verdict == HOLDS, _explain(res)
    assert all(len(r.samples) for r in res.records)
    characterize(f"warp at {n} vCPUs: {res.observed}; {res.reads_per_s():.0f} reads/s per vCPU")


def test_characterization(kvm, characterize):
    res = run_scenario(ClockConfig("new-vm/start", 1, phase_ms=40), kvm)
    assert res.verdict == CHARACTERIZED and "first reading" in res.observed
    characterize(res.observed)


# ---- negative controls


def _patch_restore(monkeypatch, after_restore_vm=None, drop_msrs=()):
    import kvmharness.snapshot.state as state

    real_restore_vm, real_set_msrs = state.restore_vm, state.set_msrs_tolerant

    def restore_vm(k, st):
        vm = real_restore_vm(k, st)
        if after_restore_vm:
            after_restore_vm(vm, st)
        return vm

    def set_msrs(vcpu, msrs):
        return real_set_msrs(vcpu, {k: v for k, v in msrs.items() if k not in drop_msrs})

    monkeypatch.setattr(state, "restore_vm", restore_vm)
    monkeypatch.setattr(state, "set_msrs_tolerant", set_msrs)


def _symbol(name):
    from kvmharness.guest.build import load_program

    return load_program("clock").symbols[name].value


def test_restore_without_set_clock_is_broken(kvm, monkeypatch):
    """The required negative control: a restore that drops KVM_SET_CLOCK leaves
    the new VM's kvmclock near 0, so the guest's time goes back."""
    real = clock.put_clock

    def no_set_clock(vm, saved, how, get_ns, facts):
        real(vm, saved, how, get_ns, facts)  # for the recorded facts ...
        vm.set_clock(clock.ClockData(0))  # ... then undone: a VM whose clock was never set

    monkeypatch.setattr(clock, "put_clock", no_set_clock)
    res = run_scenario(ClockConfig("restore/downtime", 1, phase_ms=80), kvm)
    assert res.verdict == BROKEN, _explain(res)
    back = [v for v in res.violations if v.kind == checks.KIND_DECREASE]
    assert back and back[0].index == res.records[0].boundary


def test_clock_set_too_far_ahead_is_an_over_long_jump(kvm, monkeypatch):
    def ahead(vm, saved, how, get_ns, facts):
        clock.ClockPut  # noqa: B018
        facts.set_clock_ns = (get_ns[1], get_ns[1])
        vm.set_clock(clock.ClockData(saved.clock_ns + 2_000_000_000))

    monkeypatch.setattr(clock, "put_clock", ahead)
    res = run_scenario(ClockConfig("restore/frozen", 1, phase_ms=60), kvm)
    assert res.verdict == BROKEN, _explain(res)
    assert checks.KIND_OVERLONG_JUMP in {v.kind for v in res.violations}


def test_realtime_ignored_is_a_short_jump(kvm, monkeypatch):
    """A kernel that ignored KVM_CLOCK_REALTIME would hide the downtime."""

    def ignore_realtime(vm, saved, how, get_ns, facts):
        t0 = clock.time.monotonic_ns()
        vm.set_clock(clock.ClockData(saved.clock_ns))
        facts.set_clock_ns = (t0, clock.time.monotonic_ns())

    monkeypatch.setattr(clock, "put_clock", ignore_realtime)
    res = run_scenario(ClockConfig("restore/realtime", 1, phase_ms=60, downtime_ms=200), kvm)
    assert res.verdict == BROKEN, _explain(res)
    assert checks.KIND_SHORT_JUMP in {v.kind for v in res.violations}


def test_warps_are_counted_on_real_kvm(kvm, monkeypatch):
    """A shared last value far ahead (as a vCPU with a clock gone wild would
    publish) makes every later reading a warp, own area and vCPU 0's."""
    from kvmharness.scenarios import clock_reader

    real = clock.set_mode

    def far_ahead(gvm, mode, batch=clock_reader.BATCH):
        real(gvm, mode, batch)
        for sym in ("clock_last_ns", "clock_last_vdso_ns"):
            gvm.sym(sym, "uint64_t")[0] = 1 << 62

    monkeypatch.setattr(clock, "set_mode", far_ahead)
    res = run_scenario(ClockConfig("warp", 2, phase_ms=60), kvm)
    assert res.verdict == BROKEN, _explain(res)
    warps = {v.series for v in res.violations if v.kind == checks.KIND_WARP}
    # without a master clock no area has the stable bit, so no vDSO-style reading
    want = {"all vCPUs"} if _no_master_clock(res) else {"all vCPUs", "all vCPUs/vdso"}
    assert warps == want, _explain(res)


def test_version_stuck_odd_is_reported_not_hung(kvm, monkeypatch):
    """kvmclock left mid-update (odd version, never published again): the guest
    gives up after a bounded number of tries and the reading is judged."""

    def make_odd(vm, st):
        for i in range(len(st.vcpus)):
            vm.pointer(_symbol("pvti") + 32 * i, "struct pvclock_vcpu_time_info").version |= 1

    # both kvmclock MSRs: the legacy MSR_KVM_SYSTEM_TIME (0x12) names the same area
    _patch_restore(monkeypatch, make_odd, drop_msrs=(lib.MSR_KVM_SYSTEM_TIME_NEW, 0x12))
    res = run_scenario(ClockConfig("restore/downtime", 1, phase_ms=40), kvm)
    assert res.verdict == BROKEN, _explain(res)
    assert checks.KIND_ODD_VERSION in {v.kind for v in res.violations}
    assert res.wall_s < 30


def test_decode_mismatch_is_caught_on_real_data(kvm, monkeypatch):
    """The host's decode of the same area and TSC disagreeing with the guest's
    (here: a host decode off by 1 ns) is reported."""
    from kvmharness.pvclock import Pvti

    real = Pvti.ns_at
    monkeypatch.setattr(Pvti, "ns_at", lambda self, tsc: real(self, tsc) + 1)
    res = run_scenario(ClockConfig("monotonic", 1, phase_ms=40), kvm)
    assert res.verdict == BROKEN, _explain(res)
    assert {v.kind for v in res.violations} == {checks.KIND_DECODE_MISMATCH}


def test_pvti_disagreeing_with_get_clock_is_caught(kvm, monkeypatch):
    """A KVM_GET_CLOCK that disagreed with the areas' stable bit is reported."""
    real = clock.clock_stable

    def flipped(vm):
        stable, c = real(vm)
        return not stable, c

    monkeypatch.setattr(clock, "clock_stable", flipped)
    res = run_scenario(ClockConfig("pvti", 2, phase_ms=40), kvm)
    kinds = {v.kind for v in res.violations}
    assert checks.KIND_PVTI_FLAGS in kinds, _explain(res)
    assert res.verdict == BROKEN, _explain(res)


@pytest.mark.parametrize("variant", ["restore/main-thread", "restore/frozen", "tsc/offset"])
def test_after_a_restore_vcpu0_enters_before_any_other_vcpu(kvm, variant):
    """Until vCPU 0 enters, its area in guest memory is the source's, and a
    vDSO-style reader on another vCPU would judge KVM by stale data."""
    from functools import partial

    from kvmharness.scenarios.lifecycle import in_process, restore_in_new_vm

    sc = clock.ClockRun(ClockConfig(variant, 2, phase_ms=40))
    try:
        in_process(kvm, sc, partial(restore_in_new_vm, sc))
    except clock.NotSupported as exc:
        pytest.skip(f"{variant}: not supported on this host: {exc}")
    first = [r.batches[r.boundary] for r in sc.run.records]
    assert first[0].t1_ns <= first[1].t0_ns, (first[0], first[1])


def test_updates_forces_kvmclock_updates_that_readers_race(kvm):
    """The updates scenario really rewrites the areas while vCPUs read vCPU 0's:
    many KVM_SET_CLOCKs, every vCPU's readings from area 0 under changing
    versions, and host decodes of area 0 taken under the version protocol."""
    res = _supported(run_scenario(ClockConfig("updates", 3, phase_ms=200), kvm))
    assert res.verdict == HOLDS, _explain(res)
    assert res.storm and res.storm[0]["sets"] >= 10, res.storm
    for rec in res.records:
        versions = {s[3] for s in rec.samples}
        assert len(versions) >= 3, f"vcpu{rec.index}: area 0 rewritten while it read: {versions}"
    assert res.notes["forced_updates"] == res.storm


def test_updates_watches_kvm_rewrite_vcpu0s_marked_area(kvm):
    """CLOCK_MODE_MARK on real KVM: vCPU 0 marks its area and has KVM rewrite
    it (every round rewritten, the mark always overwritten), and the watchers
    really read the area while it changes (they see the guest's own marks).
    KVM's version over the guest's mark (torn) is judged, so the run holds
    only with none; a mark of another version (mixed: two instants in one
    8-byte access, which kvm_pvm gives under load) is shown, not judged."""
    res = _supported(run_scenario(ClockConfig("updates", 2, phase_ms=50), kvm))
    assert res.verdict == HOLDS, _explain(res)
    rows = res.storm[0]["watch"]
    assert [len(r) for r in rows] == [9, 9], rows
    rounds, rewritten, kept = rows[0][:3]
    assert rounds >= 100 and rewritten == rounds and kept == 0, rows
    assert rows[1][3] >= 100 and rows[1][4] > 0 and rows[1][5] == 0, rows
    assert bool(rows[1][7]) == bool(res.notes.get("mark_watch")), rows


def test_updates_catches_kvms_version_published_before_its_record(kvm, monkeypatch):
    """Negative control on real KVM: a host thread puts in vCPU 0's area what
    kvmclock-version-even-while-writing leaves there while it copies (the
    guest's mark of version m under KVM's m + 2) whenever it finds the
    guest's mark; the watchers read it, and the run is BROKEN, torn-update."""
    from kvmharness.guest.build import load_program
    from kvmharness.scenarios import clock_reader, clock_storm

    head = load_program("clock").symbols["pvti"].value
    forged = []

    class Forging(clock_storm.ClockStorm):
        def _loop(self) -> None:
            stop = threading.Event()

            def forge() -> None:
                while not stop.is_set():
                    version, pad0 = struct.unpack("<II", self.vm.read(head, 8))
                    if version % 4 == 0 and pad0 >> 24 == 0x6B:
                        self.vm.write(head, struct.pack("<II", version + 2, pad0))
                        forged.append(version)

            t = threading.Thread(target=forge, daemon=True)
            t.start()
            try:
                super()._loop()
            finally:
                stop.set()
                t.join()

    monkeypatch.setattr(clock_reader, "ClockStorm", Forging)
    res = _supported(run_scenario(ClockConfig("updates", 2, phase_ms=50), kvm))
    assert forged, "the forging thread never found the guest's mark"
    assert res.verdict == BROKEN, _explain(res) + f"\n  watch: {res.storm[0]['watch']}"
    assert {v.kind for v in res.violations} == {jc.KIND_TORN_UPDATE}, _explain(res)


def test_updates_catches_an_update_that_steps_the_clock_back(kvm, monkeypatch):
    """Negative control on real KVM: forced updates that each put kvmclock 1 ms
    back (what a torn or stale area shows the readers) come out BROKEN."""
    from kvmharness.scenarios import clock_storm

    monkeypatch.setattr(clock_storm, "STORM_MARGIN_NS", -1_000_000)
    monkeypatch.setattr(clock_storm, "STORM_MARGIN_SHARE", 0.0)
    res = _supported(run_scenario(ClockConfig("updates", 2, phase_ms=150), kvm))
    assert res.verdict == BROKEN, _explain(res) + f"\n  forced updates: {res.storm}"
    assert {v.kind for v in res.violations} & {checks.KIND_DECREASE, checks.KIND_WARP}


def test_every_put_a_variant_names_has_its_class_in_the_tables():
    """A TSC or kvmclock put is one class and one row (clock_puts): every put a
    variant names has its row, and the row's class says it is that put."""
    from kvmharness.scenarios.clock_puts import CLOCK_PUTS, TSC_PUTS
    from kvmharness.scenarios.clock_record import ClockPut

    for v in VARIANTS.values():
        assert TSC_PUTS[v.tsc].kind is v.tsc, v.name
        if v.clock is not ClockPut.NONE:
            assert CLOCK_PUTS[v.clock].kind is v.clock, v.name


@pytest.mark.kvm
def test_a_tsc_put_acts_through_its_row_at_the_start_and_at_the_restore(kvm, monkeypatch):
    """The run asks the put in the table at each moment: a row replaced by a
    subclass that counts is what tsc/msr runs (at the start, after the state,
    and at the first runs), and the variant still judges its writes."""
    from kvmharness.scenarios import clock_puts
    from kvmharness.scenarios.clock_record import TscPut

    calls: list[str] = []

    class Counted(clock_puts.TscByMsr):
        def at_start(self, p):
            calls.append("start")
            super().at_start(p)

        def after_state(self, p, state):
            calls.append("after_state")
            return super().after_state(p, state)

        def first_runs(self, p, state, writes):
            calls.append("first_runs")
            super().first_runs(p, state, writes)

    monkeypatch.setitem(clock_puts.TSC_PUTS, TscPut.MSR, Counted())
    res = run_scenario(ClockConfig("tsc/msr", 1, phase_ms=40), kvm)
    assert calls == ["start", "after_state", "first_runs"], _explain(res)
    assert len(res.records[0].tsc_writes) == 2, "the start's write and the restore's, judged"
