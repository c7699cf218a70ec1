"""kvmclock and the TSC: monotonic per vCPU, no warps across vCPUs, host-CPU
migration, pvti consistency, continuity across save/restore, frequency.

Modelled on two real failures (README bug 3 and 4): kvmclock
readers going backwards across vCPUs when KVM's per-vCPU areas were not
updated in lockstep (2015), and guest time jumping at migration because the
clock the guest was told was stable counted host time (Xen, 2012).

The guest (``programs/clock.c``) enables kvmclock on every vCPU and reads it
in batches with the version protocol; with ``CLOCK_MODE_WARP`` each reading
is compared with one value shared by all vCPUs, and with ``CLOCK_MODE_VDSO``
it also reads vCPU 0's area as the vDSO does.  The host collects every
reading from guest memory after each batch's SYNC, with the host time just
before and just after that KVM_RUN, and decodes the vCPU's area itself with
:mod:`kvmharness.pvclock` to check the guest's arithmetic.

Every bound comes from a measurement, never from a guess of CPU share:

* a reading inside a KVM_RUN happened between the host's timestamps around
  it, so the real time between two readings lies in
  ``[t0_b - t1_a, t1_b - t0_a]`` (before/after timestamps of the KVM_RUNs);
* kvmclock follows the host's raw clock, and the host measures with
  CLOCK_MONOTONIC, which NTP may slew by at most 500 ppm
  (:data:`~kvmharness.checks.RATE_SLACK_PPM`), plus 1 ns of pvclock
  truncation: :func:`~kvmharness.checks.rate_slack_ns`;
* the downtime is the host time from just after KVM_GET_CLOCK to just
  before KVM_SET_CLOCK; a TSC is judged at the frequency KVM reports
  (KVM_GET_TSC_KHZ).

Which properties depend on a stable TSC (KVM's master clock, reported as
KVM_CLOCK_TSC_STABLE by KVM_GET_CLOCK): the per-vCPU monotonic, warp and
migration promises.  Where the host clock is not stable they are
UNTESTABLE with the figures measured, never broken.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from kvmharness import checks
from kvmharness.checks import Violation
from kvmharness.ffi import lib
from kvmharness.guest.machine import GuestVm
from kvmharness.host.threads import VcpuThread
from kvmharness.kvm import ClockData, Kvm, Vm
from kvmharness.scenarios.base import (
    DEFAULTS,
    Blame,
    Boundary,
    Family,
    Kind,
    NotSupported,
    RunOptions,
    Variant,
    Verdict,
    Writer,
)
from kvmharness.scenarios.clock_puts import (
    CLOCK_PUTS,
    TSC_PUTS,
    Put,
    host_tsc_and_realtime,
)
from kvmharness.scenarios.clock_reader import (
    MSR_IA32_TSC,
    PROGRAM,
    Reader,
    measured_phase,
    pvti_of,
    pvti_snapshot,
    set_mode,
)
from kvmharness.scenarios.clock_record import (
    BoundaryFacts,
    ClockPut,
    ClockRecord,
    RateProbe,
    Run,
    TscPut,
)
from kvmharness.scenarios.clock_storm import MARK_US
from kvmharness.scenarios.lifecycle import (
    Live,
    Phases,
    ScenarioConfig,
    child_main,
    restore_in_new_vm,
    run_phases,
    start_vm,
)

log = logging.getLogger(__name__)

#: The frequency the frequency variant moves a vCPU to, relative to KVM's default.
FREQUENCY_RATIO = 0.9


@dataclass(frozen=True)
class ClockVariant(Variant):
    boundary: Boundary = Boundary.NONE
    clock: ClockPut = ClockPut.NONE
    tsc: TscPut = TscPut.STATE
    writer: Writer = Writer.NONE
    needs_stable: bool = False
    """Its point is a property KVM has only with a stable TSC (master clock)."""
    hop: bool = False
    """Each vCPU thread moves to another host CPU before every KVM_RUN."""
    mode: int = lib.CLOCK_MODE_WARP | lib.CLOCK_MODE_VDSO
    pvti_check: bool = False
    khz_ratio: float | None = None
    """Restore at this multiple of KVM's TSC frequency (KVM_SET_TSC_KHZ)."""
    storm: bool = False
    """The main thread forces kvmclock updates (KVM_SET_CLOCK) while the vCPUs read."""


VARIANTS: dict[str, ClockVariant] = {
    v.name: v
    for v in [
        ClockVariant(
            "monotonic",
            Kind.PROMISE,
            "with a stable TSC KVM runs one master clock; a vCPU's own readings never "
            "go back and are taken under an even version",
            needs_stable=True,
            mode=0,
        ),
        ClockVariant(
            "warp",
            Kind.PROMISE,
            "with PVCLOCK_TSC_STABLE_BIT guests (the vDSO) read vCPU 0's area from any "
            "vCPU: safe only if KVM updates every area in lockstep; no reading may go "
            "below one another vCPU published before it began",
            needs_stable=True,
        ),
        ClockVariant(
            "migrate",
            Kind.PROMISE,
            "each vCPU thread hops between host CPUs before every KVM_RUN (the 2015 "
            "report): KVM must update the vCPU's area, or not need to, so that no "
            "reading goes back, per vCPU or across vCPUs",
            needs_stable=True,
            hop=True,
        ),
        ClockVariant(
            "updates",
            Kind.PROMISE,
            "the main thread forces kvmclock updates (KVM_SET_CLOCK with "
            "KVM_CLOCK_REALTIME, every vCPU's area rewritten) and vCPU 0 has KVM rewrite "
            "its area in a loop (MSR_KVM_SYSTEM_TIME_NEW) while vCPUs read vCPU 0's "
            "area vDSO-style: KVM must keep the version odd while it writes, so no "
            "reading is torn (a step back or a warp under an even version; the mark "
            "watch is shown), and KVM_SET_CLOCK keeps the master clock",
            needs_stable=True,
            storm=True,
            mode=lib.CLOCK_MODE_WARP | lib.CLOCK_MODE_AREA0 | lib.CLOCK_MODE_MARK,
        ),
        ClockVariant(
            "pvti",
            Kind.PROMISE,
            "every area's stable bit agrees with KVM_GET_CLOCK's KVM_CLOCK_TSC_STABLE, "
            "and when stable every vCPU holds the same (tsc_timestamp, system_time)",
            pvti_check=True,
        ),
        ClockVariant(
            "restore/downtime",
            Kind.PROMISE,
            "KVM_GET_CLOCK, downtime, KVM_SET_CLOCK(saved + downtime) on a new VM, "
            "state put by the vCPU threads: never back, forward at most the real time",
            Boundary.IN_PROCESS,
            ClockPut.DOWNTIME,
            writer=Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "restore/realtime",
            Kind.PROMISE,
            "KVM_SET_CLOCK with KVM_CLOCK_REALTIME: KVM itself adds the real time that "
            "passed, so the jump is the real time between the readings, no less, no more",
            Boundary.IN_PROCESS,
            ClockPut.REALTIME,
            writer=Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "restore/frozen",
            Kind.PROMISE,
            "KVM_SET_CLOCK(saved): the clock stood still, so the jump is about zero "
            "(at most the real time outside the downtime)",
            Boundary.IN_PROCESS,
            ClockPut.FROZEN,
            writer=Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "restore/main-thread",
            Kind.PROMISE,
            "as restore/downtime, but the main thread puts every vCPU's state (QEMU's pattern)",
            Boundary.IN_PROCESS,
            ClockPut.DOWNTIME,
            writer=Writer.MAIN_THREAD,
        ),
        ClockVariant(
            "restore/cross-process/vcpu-thread",
            Kind.PROMISE,
            "savevm/loadvm through a snapshot file in a new process, state put by the "
            "vCPU threads, kvmclock advanced by the downtime",
            Boundary.CROSS_PROCESS,
            ClockPut.DOWNTIME,
            writer=Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "restore/cross-process/main-thread",
            Kind.PROMISE,
            "savevm/loadvm through a snapshot file, state put by the main thread, "
            "KVM_CLOCK_REALTIME",
            Boundary.CROSS_PROCESS,
            ClockPut.REALTIME,
            writer=Writer.MAIN_THREAD,
        ),
        ClockVariant(
            "tsc/msr",
            Kind.PROMISE,
            "the TSC written with MSR_IA32_TSC (at the start, and the saved value at a "
            "restore) is the TSC the guest reads; it never goes back and stands still "
            "over the downtime",
            Boundary.IN_PROCESS,
            ClockPut.DOWNTIME,
            TscPut.MSR,
            Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "tsc/offset",
            Kind.PROMISE,
            "KVM_VCPU_TSC_OFFSET, where KVM_HAS_DEVICE_ATTR offers it, with the "
            "api.rst migration recipe: the guest reads host TSC + offset, and its TSC "
            "advances by the real downtime",
            Boundary.IN_PROCESS,
            ClockPut.REALTIME,
            TscPut.OFFSET,
            Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "frequency",
            Kind.PROMISE,
            "KVM_SET_TSC_KHZ (KVM_CAP_TSC_CONTROL): restored at another TSC frequency, "
            "the area's scale is KVM's for that frequency, the TSC runs at it, and "
            "kvmclock stays continuous",
            Boundary.IN_PROCESS,
            ClockPut.DOWNTIME,
            writer=Writer.VCPU_THREAD,
            khz_ratio=FREQUENCY_RATIO,
        ),
        ClockVariant(
            "new-vm/start",
            Kind.CHARACTERIZE,
            "where a new VM's TSC and kvmclock start: KVM documents no start value "
            "(stock KVM starts the TSC near 0), so it is only measured",
            mode=0,
        ),
    ]
}

DEFAULT_VARIANTS = list(VARIANTS)


@dataclass
class ClockConfig(ScenarioConfig):
    """One clock scenario; its phases are as long as a contended time is
    (RunOptions' ``contend_ms``, bounded as it is, ``phase_ms`` here and in
    the record)."""

    family = "clock"
    renamed = {"contend_ms": "phase_ms"}
    variant: str
    vcpus: int = 2
    phase_ms: int = DEFAULTS.contend_ms
    downtime_ms: int = DEFAULTS.downtime_ms
    budget_s: float = DEFAULTS.budget_s


@dataclass
class ClockResult:
    config: ClockConfig
    clock_variant: ClockVariant
    records: list[ClockRecord]
    violations: list[Violation]
    verdict: Verdict
    observed: str
    wall_s: float
    stable: bool | None = None  # KVM_GET_CLOCK's KVM_CLOCK_TSC_STABLE once the vCPUs ran
    stable_after: bool | None = None  # the same after the boundary (None: no boundary)
    facts: BoundaryFacts = field(default_factory=BoundaryFacts)
    pvti_areas: list[list[int]] = field(default_factory=list)
    error: str | None = None
    not_supported: bool = False
    """a lasting property of this host rules the variant out (verdict NOT_SUPPORTED)"""
    khz: int = 0
    probes: list[list[RateProbe]] = field(default_factory=list)
    storm: list[dict[str, int]] = field(default_factory=list)
    failure: dict[str, str] | None = None  # blame and text when the run could not finish
    notes: dict[str, Any] = field(default_factory=dict)

    family = "clock"

    @property
    def variant(self) -> ClockVariant:
        return self.clock_variant

    @property
    def vcpus(self) -> int:
        return self.config.vcpus

    def reads(self) -> int:
        return sum(len(r.samples) for r in self.records)

    def warps(self) -> tuple[int, int, int, int]:
        """(warps, largest ns, vDSO-style warps, largest ns) over every vCPU."""
        bs = [b for r in self.records for b in r.batches]
        return (
            sum(b.warps for b in bs),
            max((b.max_warp_ns for b in bs), default=0),
            sum(b.vdso_warps for b in bs),
            max((b.max_vdso_warp_ns for b in bs), default=0),
        )

    def reads_per_s(self) -> float | None:
        """Guest readings per second per vCPU (host time spent in the KVM_RUNs)."""
        rates = []
        for r in self.records:
            run_ns = sum(b.t1_ns - b.t0_ns for b in r.batches)
            if run_ns:
                rates.append(len(r.samples) / (run_ns / 1e9))
        return sum(rates) / len(rates) if rates else None

    def boundary_jumps(self) -> list[tuple[int, int, int]]:
        """(vCPU, kvmclock jump ns, TSC jump ticks) across the boundary, per vCPU."""
        out = []
        for r in self.records:
            if 0 < r.boundary < len(r.batches):
                a = r.batches[r.boundary - 1]
                b = r.batches[r.boundary]
                if a.n and b.n:
                    sa, sb = r.samples[a.first + a.n - 1], r.samples[b.first]
                    out.append((r.index, sb[0] - sa[0], sb[1] - sa[1]))
        return out

    def record(self) -> dict[str, Any]:
        """What the judge reads (the record without the verdict)."""
        from kvmharness.judges import SCHEMA_VERSION

        v = self.clock_variant
        return {
            "schema": SCHEMA_VERSION,
            "family": "clock",
            "variant": v.name,
            "kind": str(v.kind),
            "vcpus": self.config.vcpus,
            "config": {
                "phase_ms": self.config.phase_ms,
                "downtime_ms": self.config.downtime_ms,
                "budget_s": self.config.budget_s,
                "kind": str(v.kind),
                "boundary": str(v.boundary),
                "clock_put": str(v.clock),
                "tsc_put": str(v.tsc),
                "writer": str(v.writer),
                "hop": v.hop,
                "needs_stable": v.needs_stable,
                "warp": bool(v.mode & lib.CLOCK_MODE_WARP),
                "vdso": bool(v.mode & lib.CLOCK_MODE_VDSO),
                "area0": bool(v.mode & lib.CLOCK_MODE_AREA0),
                "pvti_check": v.pvti_check,
                "khz_ratio": v.khz_ratio,
                "storm": v.storm,
            },
            "failure": self.failure,
            "stable": {"before": self.stable, "after": self.stable_after},
            "tsc_khz": self.khz,
            "rate_probes": [
                [[*p.raw_ns, *p.mono_ns, p.tsc] for p in phase] for phase in self.probes
            ],
            "facts": asdict(self.facts),
            "pvti_areas": self.pvti_areas,
            "storm": self.storm,
            "vcpu_records": [r.to_record(self.khz) for r in self.records],
        }

    def to_json(self) -> dict[str, Any]:
        w = self.warps()
        return {
            **self.record(),
            "why": self.clock_variant.why,
            "verdict": str(self.verdict),
            "observed": self.observed,
            "error": self.error,
            "not_supported": self.not_supported,
            "wall_s": self.wall_s,
            "reads": self.reads(),
            "warps": w[0],
            "largest_warp_ns": w[1],
            "vdso_warps": w[2],
            "largest_vdso_warp_ns": w[3],
            "violations": [x.to_dict() for x in self.violations],
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClockResult:
        """A result rebuilt from its record (the view needs nothing else); the
        verdict is the one recorded, or today's judge's when there is none."""
        from kvmharness.judges.clock import judge, run_of

        c = d["config"]
        cfg = ClockConfig(d["variant"], d["vcpus"], c["phase_ms"], c["downtime_ms"], c["budget_s"])
        v = VARIANTS.get(d["variant"]) or ClockVariant(
            d["variant"], Kind(c["kind"]), d.get("why", "")
        )
        run = run_of(d)
        res = cls(
            cfg,
            v,
            run.records,
            [],
            Verdict(d.get("verdict", Verdict.ERROR)),
            d.get("observed", ""),
            d.get("wall_s", 0.0),
            stable=run.stable,
            stable_after=run.stable_after,
            facts=run.facts,
            pvti_areas=run.pvti_areas,
            error=d.get("error"),
            not_supported=d.get("not_supported", False),
            khz=run.khz,
            probes=run.probes,
            storm=run.storm,
            failure=d.get("failure"),
            notes=d.get("notes", {}),
        )
        if "verdict" not in d:
            res.apply(judge(d))
        else:
            res.violations = [checks.Violation(**x) for x in d.get("violations", [])]
        return res

    def apply(self, j: Any) -> None:
        """Take a judgement's verdict, text, violations and notes."""
        self.verdict, self.observed, self.violations, self.notes = (
            j.verdict,
            j.observed,
            j.violations,
            j.notes,
        )
        self.not_supported = j.verdict is Verdict.NOT_SUPPORTED


# --------------------------------------------------------------------------
# the run


def clock_stable(vm: Vm) -> tuple[bool, ClockData]:
    c = vm.get_clock()
    return bool(c.flags & lib.KVM_CLOCK_TSC_STABLE), c


def put_clock(
    vm: Vm, saved: ClockData, how: ClockPut, get_ns: tuple[int, int], facts: BoundaryFacts
) -> None:
    """KVM_SET_CLOCK as the variant says (:data:`CLOCK_PUTS`; the negative
    controls replace this)."""
    facts.put = str(how)
    t0 = time.monotonic_ns()
    method = CLOCK_PUTS.get(how) or CLOCK_PUTS[ClockPut.FROZEN]
    value = method.put(vm, saved, get_ns[1], t0)
    facts.set_clock_ns = (t0, time.monotonic_ns())
    facts.set_value_ns = value


def _put(
    gvm: GuestVm, threads: list[VcpuThread], records: list[ClockRecord], khz: int, **kw: Any
) -> Put:
    """What a TSC put works on, running vCPUs through :class:`Reader`."""

    def run_once(i: int) -> None:
        Reader(gvm, gvm.vcpus[i], records[i]).run(0)

    return Put(gvm, threads, records, khz, run_once, **kw)


def start_tsc(
    gvm: GuestVm, threads: list[VcpuThread], records: list[ClockRecord], how: TscPut, khz: int
) -> None:
    """Put every vCPU's TSC as ``how`` says before the first run, then run each
    vCPU once to judge what its guest reads (:data:`TSC_PUTS`)."""
    TSC_PUTS[how].at_start(_put(gvm, threads, records, khz))


# ---- the boundary


def capture(gvm: GuestVm, threads: list[VcpuThread], facts: BoundaryFacts) -> Any:
    from kvmharness.snapshot.state import capture as capture_vm
    from kvmharness.snapshot.state import capture_vcpu

    states = [t.call(capture_vcpu, gvm.kvm, gvm.vcpus[i]) for i, t in enumerate(threads)]
    t0 = time.monotonic_ns()
    state = capture_vm(gvm.vm, states, program=PROGRAM)
    facts.get_clock_ns = (t0, time.monotonic_ns())
    c = state.clock
    facts.saved_clock = [c.clock_ns, c.flags, c.realtime_ns, c.host_tsc]
    facts.khz_before = state.vcpus[0].tsc_khz
    return state


def restore(
    kvm: Kvm,
    state: Any,
    v: ClockVariant,
    threads: list[VcpuThread],
    records: list[ClockRecord],
    facts: BoundaryFacts,
) -> GuestVm:
    """A new VM from ``state``: vCPU state put by the variant's writer, then the
    TSC and kvmclock as it says; each vCPU then runs once so that what it reads
    first is judged against what was put."""
    from kvmharness.snapshot.state import restore_vcpu, restore_vm

    if v.khz_ratio:
        khz = round(state.vcpus[0].tsc_khz * v.khz_ratio)
        for vs in state.vcpus:
            vs.tsc_khz = khz
    saved = state.clock
    vm = restore_vm(kvm, state)
    try:
        main = v.writer is Writer.MAIN_THREAD
        # the state load writes each vCPU's saved MSR_IA32_TSC: KVM may sync
        # the restore's own write with these (see tsc_msr_range)
        loads: list[tuple[int, tuple[int, int]]] = []
        for i, vs in enumerate(state.vcpus):
            t0 = time.monotonic_ns()
            if main:
                restore_vcpu(vm, state, i)
            else:
                threads[i].call(restore_vcpu, vm, state, i)
            if MSR_IA32_TSC in vs.msrs:
                loads.append((vs.msrs[MSR_IA32_TSC], (t0, time.monotonic_ns())))
        gvm = GuestVm.adopt(kvm, vm, PROGRAM)
        khz = vm.vcpus[0].get_tsc_khz()
        facts.khz_after = khz
        tsc = TSC_PUTS[v.tsc]
        put = _put(gvm, threads, records, khz, main=main, loads=loads)
        writes = tsc.after_state(put, state)
        if loads or writes:
            facts.tsc_write_ns = min(w[0] for _, w in loads + writes)
        put_clock(vm, saved, tsc.clock_put(v.clock, saved), facts.get_clock_ns, facts)
        tsc.first_runs(put, state, writes)
        facts.pvti_scale_after = [
            [pvti_of(gvm, i).mul, pvti_of(gvm, i).shift] for i in range(len(state.vcpus))
        ]
        return gvm
    except BaseException:
        vm.close()
        raise


def first_entry_of_vcpu0(
    gvm: GuestVm, threads: list[VcpuThread], records: list[ClockRecord]
) -> None:
    """Run vCPU 0 once before any other vCPU after a restore.

    Guest memory comes back with every area as the source last wrote it, and
    KVM rewrites an area only when its own vCPU enters.  A vDSO-style reader on
    another vCPU that ran before vCPU 0 did would read the source's vCPU 0
    area against the destination's TSC: with kvmclock advanced by the downtime
    and the TSC put back as saved, that reading lags by the downtime.  Seen
    under single-threaded QEMU TCG (vCPU 1 scheduled first): 'warps' of up to
    the downtime, and a reading of 2^64 ticks scaled when the stale
    tsc_timestamp was ahead.  That is the restoring VMM's order, not a promise
    of KVM's, so every restore lets vCPU 0 in first (the MSR variant's first
    runs go in vCPU order, the offset's watch runs vCPU 0 before the rest)."""
    threads[0].call(Reader(gvm, gvm.vcpus[0], records[0]).run, 0)


def _tsc_extra(gvm: GuestVm, state: Any) -> None:
    """What the TSC restores need beyond the VM state: the largest saved TSC,
    vCPU 0's offset and the host TSC at the save."""
    state.meta_extra["tsc_max"] = max(vs.msrs.get(MSR_IA32_TSC, 0) for vs in state.vcpus)
    v0 = gvm.vcpus[0]
    if v0.has_tsc_offset_attr():
        off = v0.get_tsc_offset()
        state.meta_extra["tsc_offset"] = off - checks.U64 if off >= checks.WRAP_THRESHOLD else off
        _, state.meta_extra["host_tsc"], state.meta_extra["realtime_ns"] = host_tsc_and_realtime(v0)


class ClockRun(Phases):
    """One run of a clock variant: the hooks the lifecycle drives
    (:func:`~kvmharness.scenarios.lifecycle.run_phases`) and what they
    measured (:attr:`run`)."""

    def __init__(self, cfg: ClockConfig) -> None:
        super().__init__(cfg)
        self.cfg: ClockConfig = cfg
        self.variant = VARIANTS[cfg.variant]
        self.run = Run([ClockRecord(i) for i in range(cfg.vcpus)])

    def start(self, kvm: Kvm, threads: list[VcpuThread]) -> GuestVm:
        """The VM, its TSC put as the variant says before the first run, and
        vCPU 0's area enabled before any vCPU reads it (CLOCK_MODE_AREA0)."""
        v, run = self.variant, self.run
        if v.khz_ratio and not kvm.check_extension(lib.KVM_CAP_TSC_CONTROL):
            raise NotSupported(
                "KVM_SET_TSC_KHZ needs KVM_CAP_TSC_CONTROL, which "
                "is 0 here: no vCPU can run at another TSC frequency"
            )
        gvm = start_vm(kvm, PROGRAM, threads, partial(set_mode, mode=v.mode))
        try:
            run.khz = gvm.vcpus[0].get_tsc_khz()
            gvm.sym("clock_mark_ticks", "uint64_t")[0] = run.khz * MARK_US // 1000
            if v.tsc is not TscPut.STATE:
                start_tsc(gvm, threads, run.records, v.tsc, run.khz)
            if v.mode & lib.CLOCK_MODE_AREA0:
                first_entry_of_vcpu0(gvm, threads, run.records)
        except BaseException:
            gvm.close()
            raise
        return gvm

    def phase(self, live: Live) -> None:
        """The first phase (with the forced updates and the pvti snapshot where
        the variant has them) or the second; KVM_GET_CLOCK's stable flag after it."""
        v, run, gvm = self.variant, self.run, live.gvm
        dur = self.cfg.phase_ms * 1_000_000
        if live.second:
            measured_phase(gvm, live.threads, run, dur, self.cfg.budget_s, v.hop)
            run.stable_after = clock_stable(gvm.vm)[0]
            return
        measured_phase(gvm, live.threads, run, dur, self.cfg.budget_s, v.hop, v.storm)
        if v.pvti_check and not self.stuck():
            run.pvti_areas = pvti_snapshot(gvm, live.threads, run.records)
        run.stable = clock_stable(gvm.vm)[0]

    def stuck(self) -> bool:
        return any(r.stuck for r in self.run.records)

    def mark_boundary(self) -> None:
        for r in self.run.records:
            r.boundary = len(r.batches)

    def capture(self, live: Live) -> Any:
        """The state, what the TSC restores need, and the boundary's facts so
        far (for a restore child); the downtime runs from KVM_GET_CLOCK."""
        facts = self.run.facts
        state = capture(live.gvm, live.threads, facts)
        _tsc_extra(live.gvm, state)
        state.meta_extra["facts"] = json.loads(json.dumps(asdict(facts)))
        self.captured_ns = facts.get_clock_ns[1]
        return state

    def restore(self, kvm: Kvm, threads: list[VcpuThread], state: Any, downtime_ns: int) -> GuestVm:
        return restore(kvm, state, self.variant, threads, self.run.records, self.run.facts)

    def adopt(self, state: Any) -> None:
        f = state.meta_extra["facts"]
        self.run.facts = BoundaryFacts(
            tuple(f["get_clock_ns"]), (0, 0), f["saved_clock"], khz_before=f["khz_before"]
        )

    def payload(self) -> dict[str, Any]:
        run = self.run
        return {
            "records": [r.to_json() for r in run.records],
            "stable": run.stable,
            "stable_after": run.stable_after,
            "facts": asdict(run.facts),
            "khz": run.khz,
            "probes": [[asdict(p) for p in phase] for phase in run.probes],
        }

    def join(self, save: dict[str, Any], restore: dict[str, Any] | None) -> None:
        """The save child's records, each extended by the restore child's; the
        facts of the boundary are the restore child's."""
        run = Run([ClockRecord.from_json(d) for d in save["records"]], save["stable"])
        run.khz, run.probes = save["khz"], _probes_from(save)
        self.run = run
        if restore is None:
            return
        run.facts = BoundaryFacts.from_json(restore["facts"])
        run.stable_after = restore["stable_after"]
        run.probes += _probes_from(restore)
        for r, d in zip(run.records, restore["records"], strict=True):
            r.boundary = len(r.batches)
            r.extend(ClockRecord.from_json(d))


def _probes_from(d: dict[str, Any]) -> list[list[RateProbe]]:
    return [
        [RateProbe(tuple(p["raw_ns"]), tuple(p["mono_ns"]), p["tsc"]) for p in phase]
        for phase in d["probes"]
    ]


def run_scenario(cfg: ClockConfig, kvm: Kvm | None = None) -> ClockResult:
    """Run one variant, build its record, and judge the record
    (:func:`kvmharness.judges.clock.judge`, the same code ``kvmharness judge``
    runs on a saved record)."""
    from kvmharness.judges.clock import judge

    cfg.validate()
    v = VARIANTS[cfg.variant]
    sc = ClockRun(cfg)
    out = run_phases(
        f"clock scenario {cfg.variant}",
        sc,
        kvm,
        boundary=None if v.boundary is Boundary.NONE else partial(restore_in_new_vm, sc),
        cross=v.boundary is Boundary.CROSS_PROCESS,
    )
    failure = None
    if out.blame is not None:
        text = (
            out.error
            if out.blame is Blame.NOT_SUPPORTED
            else f"could not run ({out.blame}): {out.error}"
        )
        failure = {"blame": str(out.blame), "observed": text}
    res = unjudged_result(cfg, sc.run if out.value else Run([]), error=out.error, failure=failure)
    res.apply(judge(res.record()))
    res.wall_s = out.wall_s
    return res


def unjudged_result(
    cfg: ClockConfig,
    run: Run,
    *,
    error: str | None = None,
    failure: dict[str, str] | None = None,
) -> ClockResult:
    """What a run measured, as a result whose record the judge has yet to see."""
    return ClockResult(
        cfg,
        VARIANTS[cfg.variant],
        run.records,
        [],
        Verdict.ERROR,
        "",
        0.0,
        stable=run.stable,
        stable_after=run.stable_after,
        facts=run.facts,
        pvti_areas=run.pvti_areas,
        error=error,
        khz=run.khz,
        probes=run.probes,
        storm=run.storm,
        failure=failure,
    )


def from_record(record: dict[str, Any], judgement: Any) -> ClockResult:
    """``kvmharness judge``'s hook: the result a record shows, with today's judgement."""
    res = ClockResult.from_json(record)
    res.apply(judgement)
    return res


def run_one(name: str, vcpus: int, options: RunOptions, kvm: Kvm | None = None) -> ClockResult:
    return run_scenario(ClockConfig.of(name, vcpus, options), kvm)


#: bisect's quick profile: per-vCPU and cross-vCPU reading, reading vCPU 0's
#: area while kvmclock updates are forced (a version left even while KVM
#: writes), the master clock,
#: an in-process main-thread restore, a cross-process restore with
#: KVM_CLOCK_REALTIME, and both ways of putting the TSC.  Left out: migrate,
#: and the restores whose mistakes these already catch.
QUICK = (
    "monotonic",
    "warp",
    "updates",
    "pvti",
    "restore/frozen",
    "restore/main-thread",
    "restore/cross-process/main-thread",
    "tsc/msr",
    "tsc/offset",
    "frequency",
)

FAMILY = Family(
    "clock",
    dict(VARIANTS),
    DEFAULT_VARIANTS,
    [2],
    run_one,
    "kvmharness.scenarios.clock_view",
    quick=QUICK,
)

if __name__ == "__main__":  # a save or restore child (lifecycle.across_processes)
    sys.exit(child_main(sys.argv[1:], lambda cfg: ClockRun(ClockConfig(**cfg))))
