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
import os
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from kvmharness import checks
from kvmharness.checks import Violation
from kvmharness.ffi import ffi, lib
from kvmharness.guest.build import load_program
from kvmharness.guest.machine import GuestStopped, GuestVm, mem_size_for
from kvmharness.host.sched import Watchdog, cpu_for, wait_or_stop
from kvmharness.host.threads import VcpuThread
from kvmharness.kvm import ClockData, Kvm, Vcpu, Vm
from kvmharness.pvclock import Pvti
from kvmharness.scenarios.base import (
    DEFAULTS,
    Blame,
    Boundary,
    Family,
    Kind,
    NotSupported,
    OptionError,
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
from kvmharness.scenarios.clock_record import (
    Batch,
    BoundaryFacts,
    ClockPut,
    ClockRecord,
    RateProbe,
    TscPut,
)
from kvmharness.scenarios.lifecycle import (
    Live,
    Phases,
    RunMeter,
    check_variant,
    check_vcpus,
    child_main,
    restore_in_new_vm,
    run_phases,
)

log = logging.getLogger(__name__)

PROGRAM = "clock"
MSR_IA32_TSC = lib.MSR_IA32_TSC
SAMPLE_SIZE = ffi.sizeof("struct clock_sample")
SAMPLE_FMT = "<QQQIBBH"
PVTI_SIZE = ffi.sizeof("struct pvclock_vcpu_time_info")
#: Reads per SYNC: enough to keep exits a small share of guest time, few
#: enough that one batch lasts about a millisecond where instructions are slow.
BATCH = 8
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
class ClockConfig:
    variant: str
    vcpus: int = 2
    phase_ms: int = DEFAULTS.contend_ms
    downtime_ms: int = DEFAULTS.downtime_ms
    budget_s: float = DEFAULTS.budget_s

    def validate(self) -> None:
        """The variant, the vCPU count, and the knobs by :meth:`RunOptions.validate`
        (a phase is bounded as a contended time is)."""
        check_variant(FAMILY, self.variant)
        check_vcpus(FAMILY, self.vcpus)
        try:
            RunOptions(self.phase_ms, self.downtime_ms, self.budget_s).validate()
        except OptionError as exc:
            field = "phase_ms" if exc.field == "contend_ms" else exc.field
            raise OptionError(field, exc.text) from None


# ---- records: kvmharness.scenarios.clock_record


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
# running


def pvti_of(gvm: GuestVm, index: int) -> Pvti:
    return Pvti.from_cdata(
        gvm.vm.pointer(gvm.symbol("pvti") + PVTI_SIZE * index, "struct pvclock_vcpu_time_info")
    )


class Reader:
    """Runs one vCPU on the calling thread and collects its batches."""

    def __init__(self, gvm: GuestVm, vcpu: Vcpu, rec: ClockRecord) -> None:
        self.gvm, self.vcpu, self.rec = gvm, vcpu, rec
        base = gvm.symbol("clock_samples") + vcpu.index * lib.CLOCK_BATCH_MAX * SAMPLE_SIZE
        slot = gvm.vm.slot_for(base, lib.CLOCK_BATCH_MAX * SAMPLE_SIZE)
        self._buf = slot.buffer()
        self._off = base - slot.gpa
        # the area its readings use: its own, or vCPU 0's (CLOCK_MODE_AREA0)
        area0 = gvm.sym("clock_mode", "uint32_t")[0] & lib.CLOCK_MODE_AREA0
        self._area = gvm.vm.pointer(
            gvm.symbol("pvti") + PVTI_SIZE * (0 if area0 else vcpu.index),
            "struct pvclock_vcpu_time_info",
        )

    def run(self, duration_ns: int, cpus: list[int] | None = None) -> None:
        rec, clock = self.rec, time.monotonic_ns
        end = clock() + duration_ns
        hop = 0
        with RunMeter() as meter:
            while True:
                cpu = -1
                if cpus:
                    cpu = cpus[(hop + self.vcpu.index) % len(cpus)]
                    hop += 1
                    os.sched_setaffinity(0, {cpu})
                t0 = meter.begin().t_ns
                try:
                    uc = self.gvm.expect(self.vcpu, lib.UCALL_SYNC)
                except GuestStopped as exc:
                    rec.stuck = meter.stopped(exc)
                    return
                t1 = clock()
                self._collect(uc.args, t0, t1, cpu)
                if t1 >= end:
                    break

    def _collect(self, args: list[int], t0: int, t1: int, cpu: int) -> None:
        _seq, n, warps, mw, vw, mvw, _g0, _g1 = args
        n = min(n, lib.CLOCK_BATCH_MAX)
        rec = self.rec
        raw = self._buf[self._off : self._off + n * SAMPLE_SIZE]
        first = len(rec.samples)
        rec.samples += [tuple(s) for s in struct.iter_unpack(SAMPLE_FMT, raw)]
        rec.batches.append(Batch(t0, t1, first, n, warps, mw, vw, mvw, cpu))
        if n:
            # The host decodes the area the last reading used, if it is unchanged.
            last = rec.samples[-1]
            # Another vCPU's thread may be rewriting the area (CLOCK_MODE_AREA0):
            # the host takes it with the version protocol too.
            area = Pvti.from_cdata(self._area)
            if area.version == last[3] == self._area.version and not area.version % 2:
                rec.decode.append((len(rec.samples) - 1, last[0], area.ns_at(last[1])))


def run_phase(
    gvm: GuestVm,
    threads: list[VcpuThread],
    records: list[ClockRecord],
    duration_ns: int,
    budget_s: float,
    hop: bool = False,
) -> None:
    """Every vCPU reads on its own thread for ``duration_ns``."""
    cpus = sorted(os.sched_getaffinity(0)) if hop else None
    with Watchdog(gvm.stop, [r.index for r in records], duration_ns / 1e9 + budget_s):
        futures = [
            t.submit(Reader(gvm, gvm.vcpus[r.index], r).run, duration_ns, cpus)
            for t, r in zip(threads, records, strict=True)
        ]
        wait_or_stop(futures, gvm.stop, [r.index for r in records])
    if hop:  # back where each thread belongs
        for i, t in enumerate(threads):
            t.call(os.sched_setaffinity, 0, {cpu_for(i)})


def set_mode(gvm: GuestVm, mode: int, batch: int = BATCH) -> None:
    gvm.sym("clock_mode", "uint32_t")[0] = mode
    gvm.sym("clock_batch", "uint32_t")[0] = batch


def start_vm(kvm: Kvm, n: int, threads: list[VcpuThread], mode: int) -> GuestVm:
    image = load_program(PROGRAM)
    gvm = GuestVm(kvm, image, vcpus=0, mem_size=mem_size_for(image.end, n))
    try:
        set_mode(gvm, mode)
        for i, t in enumerate(threads):
            t.call(gvm.add_vcpu, i)
    except BaseException:
        gvm.close()
        raise
    return gvm


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


@dataclass
class Run:
    records: list[ClockRecord]
    stable: bool | None = None
    stable_after: bool | None = None  # KVM_GET_CLOCK's stable flag after the boundary
    facts: BoundaryFacts = field(default_factory=BoundaryFacts)
    pvti_areas: list[list[int]] = field(default_factory=list)
    khz: int = 0
    probes: list[list[RateProbe]] = field(default_factory=list)
    storm: list[dict[str, int]] = field(default_factory=list)
    """per phase of an "updates" run: KVM_SET_CLOCKs issued and the ns they added"""


#: Pause between two forced kvmclock updates: the vCPUs get the CPU between them.
STORM_PAUSE_S = 0.0005
#: CLOCK_MODE_MARK: how long vCPU 0 marks (and the others watch) after each reading.
MARK_US = 1500
#: The forced-updates phase lasts at least this long: thousands of rewrites of
#: vCPU 0's area where the host's CPUs run in parallel.  (Under single-threaded
#: QEMU TCG the host's vCPUs interleave only where QEMU switches them, between
#: translated blocks at an interrupt, and a switch almost never lands inside
#: KVM's write of the area: see README, "Detection power".)
STORM_MIN_PHASE_MS = 1000
#: Each forced update puts kvmclock this share of the last update's duration
#: ahead (plus STORM_MARGIN_NS), so that a TSC whose KVM scale is off (0.76%
#: seen under TCG) never makes our own KVM_SET_CLOCK step the clock back.
STORM_MARGIN_SHARE = 0.05
STORM_MARGIN_NS = 2_000


def watch_counts(gvm: GuestVm, n: int) -> list[list[int]]:
    """CLOCK_MODE_MARK's counters per vCPU (rounds, rewritten, kept, watches,
    marked, torn, torn_version), since the VM started."""
    rows = gvm.sym("clock_watch", "struct clock_watch")
    return [
        [
            int(rows[i].rounds),
            int(rows[i].rewritten),
            int(rows[i].kept),
            int(rows[i].watches),
            int(rows[i].marked),
            int(rows[i].torn),
            int(rows[i].torn_version),
        ]
        for i in range(n)
    ]


class ClockStorm:
    """KVM_GET_CLOCK then KVM_SET_CLOCK(clock + margin, KVM_CLOCK_REALTIME) in a
    loop on its own thread: each set makes every vCPU rewrite its area (KVM's
    pvclock update), with the clock continuous (KVM adds the real time since
    the get) and a little ahead, never back."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.sets = 0
        self.added_ns = 0
        self.max_set_ns = 0
        self.gets_without_realtime = 0
        self.stable_gets = 0
        """KVM_GET_CLOCKs with KVM_CLOCK_TSC_STABLE (the VM had a master clock)"""
        self.lost_after_sets: int | None = None
        """KVM_SET_CLOCKs issued when a KVM_GET_CLOCK first lacked KVM_CLOCK_TSC_STABLE
        after one had it (the master clock lost); None: never lost"""
        self.clocksource: list[str] = [host_clocksource()]
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="clock-storm", daemon=True)

    def __enter__(self) -> ClockStorm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.clocksource.append(host_clocksource())

    def summary(self) -> dict[str, Any]:
        """The phase's record of the storm."""
        return {
            "sets": self.sets,
            "added_ns": self.added_ns,
            "max_set_ns": self.max_set_ns,
            "gets_without_realtime": self.gets_without_realtime,
            "stable_gets": self.stable_gets,
            "lost_after_sets": self.lost_after_sets,
            "clocksource": self.clocksource,
        }

    def _loop(self) -> None:
        last = 0
        try:
            while not self._stop.wait(STORM_PAUSE_S):
                t0 = time.monotonic_ns()
                c = self.vm.get_clock()
                if c.flags & lib.KVM_CLOCK_TSC_STABLE:
                    self.stable_gets += 1
                elif self.stable_gets and self.lost_after_sets is None:
                    # stable before, not now: only our KVM_SET_CLOCKs came between
                    self.lost_after_sets = self.sets
                if not c.flags & lib.KVM_CLOCK_REALTIME:
                    # no master clock (yet: a new VM has one once its vCPUs ran)
                    self.gets_without_realtime += 1
                    continue
                margin = STORM_MARGIN_NS + int(STORM_MARGIN_SHARE * last)
                self.vm.set_clock(
                    ClockData(max(c.clock_ns + margin, 0), realtime_ns=c.realtime_ns),
                    flags=lib.KVM_CLOCK_REALTIME,
                )
                last = time.monotonic_ns() - t0
                self.sets += 1
                self.added_ns += margin
                self.max_set_ns = max(self.max_set_ns, last)
        except BaseException as exc:  # reported by the phase
            self.error = exc


CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"


def host_clocksource() -> str:
    """The host's clocksource (KVM has a master clock only on "tsc"), or "" if unknown."""
    try:
        with open(CLOCKSOURCE) as f:
            return f.read().strip()
    except OSError:
        return ""


def rate_probe(vcpu: Vcpu) -> RateProbe:
    """The guest's TSC (KVM_GET_MSRS) between readings of CLOCK_MONOTONIC_RAW
    and CLOCK_MONOTONIC (the clock the batches are timed with)."""
    raw, mono = time.clock_gettime_ns, time.monotonic_ns
    r0 = raw(time.CLOCK_MONOTONIC_RAW)
    m0 = mono()
    tsc = vcpu.get_msr(MSR_IA32_TSC)
    m1 = mono()
    return RateProbe((r0, raw(time.CLOCK_MONOTONIC_RAW)), (m0, m1), tsc)


def narrowest_probe(vcpu: Vcpu, tries: int = 3) -> RateProbe:
    """The probe with the narrowest bracket of ``tries``: a thread preempted
    mid-probe only widens the uncertainty of the rate, and one of a few is
    rarely preempted."""
    return min((rate_probe(vcpu) for _ in range(tries)), key=lambda p: p.mono_ns[1] - p.mono_ns[0])


def measured_phase(
    gvm: GuestVm,
    threads: list[VcpuThread],
    run: Run,
    duration_ns: int,
    budget_s: float,
    hop: bool = False,
    storm: bool = False,
) -> None:
    """:func:`run_phase`, with vCPU 0's TSC probed before and after it: the
    TSC rate the phase ran at, which the judge's TSC bounds rest on."""
    probes = [threads[0].call(narrowest_probe, gvm.vcpus[0])]
    run.probes.append(probes)
    if storm:
        duration_ns = max(duration_ns, STORM_MIN_PHASE_MS * 1_000_000)
        with ClockStorm(gvm.vm) as st:
            run_phase(gvm, threads, run.records, duration_ns, budget_s, hop)
        if st.error:
            raise st.error
        if not st.sets and st.gets_without_realtime:
            raise NotSupported(
                "KVM_GET_CLOCK returned no realtime (KVM_CLOCK_REALTIME: "
                "the host clock is not TSC-based) to force continuous kvmclock updates with"
            )
        run.storm.append(st.summary())
        if gvm.sym("clock_mode", "uint32_t")[0] & lib.CLOCK_MODE_MARK:
            run.storm[-1]["watch"] = watch_counts(gvm, len(run.records))
    else:
        run_phase(gvm, threads, run.records, duration_ns, budget_s, hop)
    if not any(r.stuck for r in run.records):
        probes.append(threads[0].call(narrowest_probe, gvm.vcpus[0]))


def pvti_snapshot(
    gvm: GuestVm, threads: list[VcpuThread], records: list[ClockRecord]
) -> list[list[int]]:
    """Every vCPU runs one more batch (so pending clock updates land), then with
    all of them stopped: each area, and KVM_GET_CLOCK's flags last."""
    for f in [
        t.submit(Reader(gvm, gvm.vcpus[i], records[i]).run, 0) for i, t in enumerate(threads)
    ]:
        f.result()
    return [pvti_of(gvm, i).to_list() for i in range(len(threads))]


class ClockRun(Phases):
    """One run of a clock variant: the hooks the lifecycle drives
    (:func:`~kvmharness.scenarios.lifecycle.run_phases`) and what they
    measured (:attr:`run`)."""

    def __init__(self, cfg: ClockConfig) -> None:
        self.cfg = cfg
        self.variant = VARIANTS[cfg.variant]
        self.vcpus, self.downtime_ms = cfg.vcpus, cfg.downtime_ms
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
        gvm = start_vm(kvm, self.vcpus, threads, v.mode)
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

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

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
        keep=("clock", cfg.variant, cfg.vcpus),
        timeout_s=2 * cfg.phase_ms / 1000 + cfg.budget_s + 120,
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
    return run_scenario(
        ClockConfig(
            name,
            vcpus,
            options.contend_ms,
            options.downtime_ms,
            options.budget_s,
        ),
        kvm,
    )


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
