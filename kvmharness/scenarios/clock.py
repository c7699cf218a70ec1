"""kvmclock and the TSC: monotonic per vCPU, no warps across vCPUs, host-CPU
migration, pvti consistency, continuity across save/restore, frequency.

Modelled on two real failures (BACKGROUND.md sections 3 and 4): kvmclock
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
UNTESTABLE with the figures measured, never BROKEN.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kvmharness import checks
from kvmharness.checks import Sample, Violation
from kvmharness.ffi import ffi, lib
from kvmharness.guest.build import load_program
from kvmharness.guest.machine import GuestStopped, GuestVm, mem_size_for
from kvmharness.host.sched import SchedStat, Watchdog, cpu_for, wait_or_stop
from kvmharness.host.threads import VcpuThread, close_threads, new_threads
from kvmharness.kvm import ClockData, Kvm, Vcpu, Vm
from kvmharness.pvclock import Pvti
from kvmharness.scenarios.base import (
    Blame,
    Family,
    Kind,
    RunOptions,
    ScenarioFailed,
    Variant,
    Verdict,
    classify,
    verdict_for,
)
from kvmharness.scenarios.child import (
    child_entry,
    run_child,
    snapshot_path,
    write_snapshot_fd,
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
#: The TSC variants first move every vCPU's TSC an hour ahead of where it is:
#: far outside KVM's 1-second "synchronize" window around the value it
#: expects, and far from the host's TSC, so a write that is not applied
#: cannot pass for one that is.
TSC_START_AHEAD_S = 3600
#: kvm_synchronize_tsc() treats a host write within one second (of guest
#: TSC) of the value KVM expects as a request to synchronize with the other
#: vCPUs: the written vCPU then gets the VM's current TSC instead.
TSC_SYNC_WINDOW_S = 1
MIN_PHASE_MS = 20
MAX_PHASE_MS = 10_000
MAX_DOWNTIME_MS = 60_000
#: The frequency the frequency variant moves a vCPU to, relative to KVM's default.
FREQUENCY_RATIO = 0.9
#: A vCPU stopped by the watchdog is the kernel's fault only if its thread got
#: this share of the budget as CPU time meanwhile (as in the steal family).
STUCK_MIN_CPU_SHARE = 0.1

#: Kinds whose truth depends on a stable TSC (KVM's master clock).
STABLE_ONLY_KINDS = frozenset({checks.KIND_DECREASE, checks.KIND_WARP, checks.KIND_MASTER_CLOCK})


class NotSupported(ScenarioFailed):
    """This KVM does not offer what the variant is about (a capability or an
    attribute it reports absent): untestable, and said so, but no reason to
    call the whole run untestable."""

    def __init__(self, message: str) -> None:
        super().__init__(Blame.UNTESTABLE, message)


class ClockPut(enum.StrEnum):
    """How kvmclock is put at a restore (KVM_SET_CLOCK)."""

    NONE = "-"
    DOWNTIME = "saved + downtime"
    """clock = saved + the host-measured downtime: the guest sees the real time pass"""
    REALTIME = "KVM_CLOCK_REALTIME"
    """clock = saved, realtime = saved realtime: KVM adds the real time that passed"""
    FROZEN = "saved"
    """clock = saved: the downtime is hidden from the guest (the clock stood still)"""


class TscPut(enum.StrEnum):
    """How the TSC is put at the start and at a restore."""

    STATE = "as captured"  # the saved MSRs, MSR_IA32_TSC among them (not judged)
    MSR = "MSR_IA32_TSC"
    OFFSET = "KVM_VCPU_TSC_OFFSET"


class Writer(enum.StrEnum):
    """Which host thread puts the vCPU state at a restore."""

    VCPU_THREAD = "vcpu thread"
    MAIN_THREAD = "main thread"
    NONE = "-"


class Boundary(enum.StrEnum):
    NONE = "-"
    IN_PROCESS = "new VM, same process"
    CROSS_PROCESS = "new process"


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


P, C = Kind.PROMISE, Kind.CHARACTERIZE
B = Boundary
VARIANTS: dict[str, ClockVariant] = {
    v.name: v
    for v in [
        ClockVariant(
            "monotonic",
            P,
            "with a stable TSC KVM runs one master clock; a vCPU's own readings never "
            "go back and are taken under an even version",
            needs_stable=True,
            mode=0,
        ),
        ClockVariant(
            "warp",
            P,
            "with PVCLOCK_TSC_STABLE_BIT guests (the vDSO) read vCPU 0's area from any "
            "vCPU: safe only if KVM updates every area in lockstep; no reading may go "
            "below one another vCPU published before it began",
            needs_stable=True,
        ),
        ClockVariant(
            "migrate",
            P,
            "each vCPU thread hops between host CPUs before every KVM_RUN (the 2015 "
            "report): KVM must update the vCPU's area, or not need to, so that no "
            "reading goes back, per vCPU or across vCPUs",
            needs_stable=True,
            hop=True,
        ),
        ClockVariant(
            "pvti",
            P,
            "every area's stable bit agrees with KVM_GET_CLOCK's KVM_CLOCK_TSC_STABLE, "
            "and when stable every vCPU holds the same (tsc_timestamp, system_time)",
            pvti_check=True,
        ),
        ClockVariant(
            "restore/downtime",
            P,
            "KVM_GET_CLOCK, downtime, KVM_SET_CLOCK(saved + downtime) on a new VM, "
            "state put by the vCPU threads: never back, forward at most the real time",
            B.IN_PROCESS,
            ClockPut.DOWNTIME,
            writer=Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "restore/realtime",
            P,
            "KVM_SET_CLOCK with KVM_CLOCK_REALTIME: KVM itself adds the real time that "
            "passed, so the jump is the real time between the readings, no less, no more",
            B.IN_PROCESS,
            ClockPut.REALTIME,
            writer=Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "restore/frozen",
            P,
            "KVM_SET_CLOCK(saved): the clock stood still, so the jump is about zero "
            "(at most the real time outside the downtime)",
            B.IN_PROCESS,
            ClockPut.FROZEN,
            writer=Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "restore/main-thread",
            P,
            "as restore/downtime, but the main thread puts every vCPU's state (QEMU's pattern)",
            B.IN_PROCESS,
            ClockPut.DOWNTIME,
            writer=Writer.MAIN_THREAD,
        ),
        ClockVariant(
            "restore/cross-process/vcpu-thread",
            P,
            "savevm/loadvm through a snapshot file in a new process, state put by the "
            "vCPU threads, kvmclock advanced by the downtime",
            B.CROSS_PROCESS,
            ClockPut.DOWNTIME,
            writer=Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "restore/cross-process/main-thread",
            P,
            "savevm/loadvm through a snapshot file, state put by the main thread, "
            "KVM_CLOCK_REALTIME",
            B.CROSS_PROCESS,
            ClockPut.REALTIME,
            writer=Writer.MAIN_THREAD,
        ),
        ClockVariant(
            "tsc/msr",
            P,
            "the TSC written with MSR_IA32_TSC (at the start, and the saved value at a "
            "restore) is the TSC the guest reads; it never goes back and stands still "
            "over the downtime",
            B.IN_PROCESS,
            ClockPut.DOWNTIME,
            TscPut.MSR,
            Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "tsc/offset",
            P,
            "KVM_VCPU_TSC_OFFSET, where KVM_HAS_DEVICE_ATTR offers it, with the "
            "api.rst migration recipe: the guest reads host TSC + offset, and its TSC "
            "advances by the real downtime",
            B.IN_PROCESS,
            ClockPut.REALTIME,
            TscPut.OFFSET,
            Writer.VCPU_THREAD,
        ),
        ClockVariant(
            "frequency",
            P,
            "KVM_SET_TSC_KHZ (KVM_CAP_TSC_CONTROL): restored at another TSC frequency, "
            "the area's scale is KVM's for that frequency, the TSC runs at it, and "
            "kvmclock stays continuous",
            B.IN_PROCESS,
            ClockPut.DOWNTIME,
            writer=Writer.VCPU_THREAD,
            khz_ratio=FREQUENCY_RATIO,
        ),
        ClockVariant(
            "new-vm/start",
            C,
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
    phase_ms: int = 150
    downtime_ms: int = 50
    budget_s: float = 30.0

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(
                f"unknown clock variant {self.variant!r} (known: {', '.join(VARIANTS)})"
            )
        if not 1 <= self.vcpus <= lib.GUEST_MAX_VCPUS:
            raise ValueError(f"vcpus must be 1 to {lib.GUEST_MAX_VCPUS}, got {self.vcpus}")
        if not MIN_PHASE_MS <= self.phase_ms <= MAX_PHASE_MS:
            raise ValueError(
                f"phase_ms must be {MIN_PHASE_MS} to {MAX_PHASE_MS}, got {self.phase_ms}"
            )
        if not 0 <= self.downtime_ms <= MAX_DOWNTIME_MS:
            raise ValueError(f"downtime_ms must be 0 to {MAX_DOWNTIME_MS}, got {self.downtime_ms}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be positive, got {self.budget_s}")


# --------------------------------------------------------------------------
# records


@dataclass
class Batch:
    """One KVM_RUN that ended in a batch's SYNC."""

    t0_ns: int  # host CLOCK_MONOTONIC just before KVM_RUN
    t1_ns: int  # just after it returned
    first: int  # index of its first sample in the record
    n: int
    warps: int
    max_warp_ns: int
    vdso_warps: int
    max_vdso_warp_ns: int
    cpu: int  # host CPU the thread was allowed on (-1: not pinned by the scenario)
    guest_ticks: int  # guest TSC from the batch's first to its last reading


@dataclass
class Stuck:
    rip: int
    waited_ns: int
    cpu_ns: int


@dataclass
class TscWrite:
    """A TSC put into a vCPU, and where the guest's next reading must lie."""

    batch: int  # the first batch after the write
    lo: int
    hi: int
    what: str


@dataclass
class ClockRecord:
    """What one vCPU saw."""

    index: int
    samples: list[tuple[int, int, int, int, int, int, int]] = field(default_factory=list)
    """(ns, tsc, vdso_ns, version, flags, vdso_used, tries) per reading"""
    batches: list[Batch] = field(default_factory=list)
    boundary: int = 0  # index of the first batch after the boundary (0: none)
    decode: list[tuple[int, int, int]] = field(default_factory=list)
    """(sample index, guest ns, host ns) where the host decoded the same area and TSC"""
    tsc_writes: list[TscWrite] = field(default_factory=list)
    pvti_after: list[list[int]] = field(default_factory=list)  # last area seen per phase
    stuck: Stuck | None = None

    def series(self, lo: int = 0, hi: int | None = None, *, vdso: bool = False) -> list[Sample]:
        """kvmclock readings of batches [lo, hi) as Samples (t_ns: the batch's end)."""
        out = []
        for b in self.batches[lo:hi]:
            for s in self.samples[b.first : b.first + b.n]:
                if vdso and not s[5]:
                    continue
                out.append(Sample(b.t1_ns, s[2] if vdso else s[0], None if vdso else s[3]))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "boundary": self.boundary,
            "samples": self.samples,
            "batches": [asdict(b) for b in self.batches],
            "decode": self.decode,
            "tsc_writes": [asdict(w) for w in self.tsc_writes],
            "pvti_after": self.pvti_after,
            "stuck": asdict(self.stuck) if self.stuck else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClockRecord:
        return cls(
            d["index"],
            [tuple(s) for s in d["samples"]],
            [Batch(**b) for b in d["batches"]],
            d["boundary"],
            [tuple(x) for x in d["decode"]],
            [TscWrite(**w) for w in d["tsc_writes"]],
            d["pvti_after"],
            Stuck(**d["stuck"]) if d.get("stuck") else None,
        )

    def extend(self, other: ClockRecord) -> None:
        """Append a later process's record (its batches come after the boundary)."""
        s0, b0 = len(self.samples), len(self.batches)
        self.samples += other.samples
        for b in other.batches:
            self.batches.append(Batch(**{**asdict(b), "first": b.first + s0}))
        self.decode += [(i + s0, g, h) for i, g, h in other.decode]
        self.tsc_writes += [TscWrite(w.batch + b0, w.lo, w.hi, w.what) for w in other.tsc_writes]
        self.pvti_after += other.pvti_after
        self.stuck = self.stuck or other.stuck


@dataclass
class BoundaryFacts:
    """What the host measured at the boundary (all times CLOCK_MONOTONIC ns)."""

    get_clock_ns: tuple[int, int] = (0, 0)  # around KVM_GET_CLOCK
    set_clock_ns: tuple[int, int] = (0, 0)  # around KVM_SET_CLOCK
    saved_clock: list[int] = field(default_factory=list)  # clock_ns, flags, realtime, host_tsc
    put: str = "-"
    set_value_ns: int | None = None
    # when the destination's first MSR_IA32_TSC write began (the state load's,
    # or 0 when none): from then on the restored TSC may count (see tsc_msr_range)
    tsc_write_ns: int = 0
    khz_before: int = 0
    khz_after: int = 0
    pvti_scale_after: list[list[int]] = field(default_factory=list)  # (mul, shift) per vCPU

    @property
    def downtime_ns(self) -> int:
        return self.set_clock_ns[0] - self.get_clock_ns[1]


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
    """UNTESTABLE because this KVM lacks what the variant is about: reported,
    but it does not make the run "cannot test" (the other variants ran)."""

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
                sa, sb = r.samples[a.first + a.n - 1], r.samples[b.first]
                out.append((r.index, sb[0] - sa[0], sb[1] - sa[1]))
        return out

    def to_json(self) -> dict[str, Any]:
        w = self.warps()
        v = self.clock_variant
        return {
            "scenario": "clock",
            "strategy": v.name,
            "kind": str(v.kind),
            "why": v.why,
            "boundary": str(v.boundary),
            "clock_put": str(v.clock),
            "tsc_put": str(v.tsc),
            "writer": str(v.writer),
            "hop": v.hop,
            "config": asdict(self.config),
            "verdict": str(self.verdict),
            "observed": self.observed,
            "error": self.error,
            "not_supported": self.not_supported,
            "wall_s": self.wall_s,
            "stable": self.stable,
            "stable_after": self.stable_after,
            "reads": self.reads(),
            "reads_per_s_per_vcpu": self.reads_per_s(),
            "warps": w[0],
            "largest_warp_ns": w[1],
            "vdso_warps": w[2],
            "largest_vdso_warp_ns": w[3],
            "boundary_jumps": [
                {"vcpu": i, "kvmclock_ns": c, "tsc_ticks": t} for i, c, t in self.boundary_jumps()
            ],
            "facts": asdict(self.facts),
            "pvti_areas": self.pvti_areas,
            "violations": [x.to_dict() for x in self.violations],
            "vcpus": [r.to_json() for r in self.records],
        }


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
        self._area = gvm.vm.pointer(
            gvm.symbol("pvti") + PVTI_SIZE * vcpu.index, "struct pvclock_vcpu_time_info"
        )

    def run(self, duration_ns: int, cpus: list[int] | None = None) -> None:
        rec, clock = self.rec, time.monotonic_ns
        end = clock() + duration_ns
        hop = 0
        st = SchedStat()
        try:
            while True:
                cpu = -1
                if cpus:
                    cpu = cpus[(hop + self.vcpu.index) % len(cpus)]
                    hop += 1
                    os.sched_setaffinity(0, {cpu})
                cpu0 = st.read()[0]
                t0 = clock()
                try:
                    uc = self.gvm.expect(self.vcpu, lib.UCALL_SYNC)
                except GuestStopped as exc:
                    rec.stuck = Stuck(exc.rip, clock() - t0, st.read()[0] - cpu0)
                    return
                t1 = clock()
                self._collect(uc.args, t0, t1, cpu)
                if t1 >= end:
                    break
        finally:
            st.close()
        rec.pvti_after.append(Pvti.from_cdata(self._area).to_list())

    def _collect(self, args: list[int], t0: int, t1: int, cpu: int) -> None:
        _seq, n, warps, mw, vw, mvw, g0, g1 = args
        n = min(n, lib.CLOCK_BATCH_MAX)
        rec = self.rec
        raw = self._buf[self._off : self._off + n * SAMPLE_SIZE]
        first = len(rec.samples)
        rec.samples += [tuple(s) for s in struct.iter_unpack(SAMPLE_FMT, raw)]
        rec.batches.append(Batch(t0, t1, first, n, warps, mw, vw, mvw, cpu, g1 - g0))
        if n:
            # The host decodes the area the last reading used, if it is unchanged.
            last = rec.samples[-1]
            area = Pvti.from_cdata(self._area)
            if area.version == last[3] and not area.version % 2:
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


def _khz_ticks(ns: int, khz: int) -> int:
    return ns * khz // 1_000_000


# ---- putting the TSC


def tsc_msr_range(
    written: int,
    write_ns: tuple[int, int],
    run: Batch,
    khz: int,
    earlier: Sequence[tuple[int, tuple[int, int]]] = (),
) -> tuple[int, int]:
    """Where the guest's first TSC reading in ``run`` must lie after ``written``
    was put with MSR_IA32_TSC at host time ``write_ns`` (before, after the ioctl).

    ``earlier`` holds the VM's earlier TSC writes (value, its write times),
    including the one a state load makes.  KVM treats a write within
    :data:`TSC_SYNC_WINDOW_S` of what it expects from the VM's last write as
    "synchronize with it" and keeps the offset of the write that began the
    run of matching writes, so the guest may read that write's value plus the
    time since it; the check accepts either outcome for each earlier write the
    new one is that close to."""

    def rng(value: int, w: tuple[int, int]) -> tuple[int, int]:
        early = max(run.t0_ns - w[1], 0)
        late = run.t1_ns - w[0]
        return (
            value + _khz_ticks(early - checks.rate_slack_ns(early), khz) - 1,
            value + _khz_ticks(late + checks.rate_slack_ns(late), khz) + 1,
        )

    lo, hi = rng(written, write_ns)
    for ref, ref_ns in earlier:
        expected = ref + _khz_ticks(write_ns[0] - ref_ns[1], khz)
        if abs(written - expected) < TSC_SYNC_WINDOW_S * khz * 1000:
            slo, shi = rng(ref, ref_ns)
            lo, hi = min(lo, slo), max(hi, shi)
    return lo, hi


def put_tsc_msr(vcpu: Vcpu, value: int) -> tuple[int, int]:
    t0 = time.monotonic_ns()
    vcpu.set_msr(MSR_IA32_TSC, value)
    return t0, time.monotonic_ns()


def put_tsc_offset(vcpu: Vcpu, offset: int) -> None:
    vcpu.set_tsc_offset(offset)


def host_tsc(vcpu: Vcpu) -> int:
    """The host TSC now as KVM sees it: the vCPU's TSC (KVM_GET_MSRS) less its
    offset (KVM_VCPU_TSC_OFFSET), at KVM's default frequency.  Unlike
    KVM_GET_CLOCK's host_tsc this needs no master clock, which a new VM has
    only once its vCPUs have run."""
    return (vcpu.get_msr(MSR_IA32_TSC) - vcpu.get_tsc_offset()) & (checks.U64 - 1)


class OffsetWatch:
    """Brackets the host TSC around the next KVM_RUN of each vCPU so that the
    guest's reading can be judged against host TSC + offset exactly."""

    def __init__(self, records: list[ClockRecord], offset: int, what: str) -> None:
        self.records, self.offset, self.what = records, offset, what

    def first_run(self, gvm: GuestVm, threads: list[VcpuThread]) -> None:
        def one(i: int) -> None:
            r, vcpu = self.records[i], gvm.vcpus[i]
            h0 = host_tsc(vcpu)
            Reader(gvm, vcpu, r).run(0)
            h1 = host_tsc(vcpu)
            r.tsc_writes.append(
                # the guest TSC is host TSC + offset modulo 2^64 (a negative
                # offset is stored as a large u64)
                TscWrite(
                    len(r.batches) - 1,
                    (h0 + self.offset) % checks.U64,
                    (h1 + self.offset) % checks.U64,
                    self.what,
                )
            )

        threads[0].call(one, 0)  # vCPU 0 first: see first_entry_of_vcpu0
        for f in [t.submit(one, i) for i, t in enumerate(threads) if i]:
            f.result()


def start_tsc(
    gvm: GuestVm, threads: list[VcpuThread], records: list[ClockRecord], how: TscPut, khz: int
) -> None:
    """Put every vCPU's TSC an hour ahead of the host's before the first run,
    then run each vCPU once to judge what its guest reads."""
    if how is TscPut.MSR:
        base = gvm.vcpus[0].get_msr(MSR_IA32_TSC) + TSC_START_AHEAD_S * khz * 1000
        writes: list[tuple[int, tuple[int, int]]] = []
        for i, t in enumerate(threads):
            writes.append((base, t.call(put_tsc_msr, gvm.vcpus[i], base)))
        for i, t in enumerate(threads):
            r = records[i]
            t.call(Reader(gvm, gvm.vcpus[i], r).run, 0)
            lo, hi = tsc_msr_range(base, writes[i][1], r.batches[-1], khz, writes[:i])
            r.tsc_writes.append(
                TscWrite(len(r.batches) - 1, lo, hi, f"MSR_IA32_TSC written {base} at the start")
            )
    elif how is TscPut.OFFSET:
        if not gvm.vcpus[0].has_tsc_offset_attr():
            raise NotSupported(
                "not supported: KVM_HAS_DEVICE_ATTR says this KVM has no "
                "KVM_VCPU_TSC_OFFSET attribute"
            )
        offset = TSC_START_AHEAD_S * khz * 1000 + gvm.vcpus[0].get_tsc_offset()
        for i, t in enumerate(threads):
            t.call(put_tsc_offset, gvm.vcpus[i], offset)
        OffsetWatch(records, offset, f"KVM_VCPU_TSC_OFFSET set to {offset} at the start").first_run(
            gvm, threads
        )


# ---- the boundary


def put_clock(
    vm: Vm, saved: ClockData, how: ClockPut, get_ns: tuple[int, int], facts: BoundaryFacts
) -> None:
    """KVM_SET_CLOCK as the variant says (the negative control replaces this)."""
    facts.put = str(how)
    t0 = time.monotonic_ns()
    if how is ClockPut.DOWNTIME:
        value = saved.clock_ns + (t0 - get_ns[1])
        vm.set_clock(ClockData(value))
    elif how is ClockPut.REALTIME:
        if not saved.flags & lib.KVM_CLOCK_REALTIME:
            raise ScenarioFailed(
                Blame.UNTESTABLE,
                "KVM_GET_CLOCK returned no realtime "
                "(KVM_CLOCK_REALTIME: the host clock is not TSC-based) to "
                "restore with KVM_CLOCK_REALTIME from",
            )
        value = saved.clock_ns
        vm.set_clock(
            ClockData(saved.clock_ns, realtime_ns=saved.realtime_ns), flags=lib.KVM_CLOCK_REALTIME
        )
    else:
        value = saved.clock_ns
        vm.set_clock(ClockData(saved.clock_ns))
    facts.set_clock_ns = (t0, time.monotonic_ns())
    facts.set_value_ns = value


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
    src_offset = state.meta_extra.get("tsc_offset")
    src_host_tsc = state.meta_extra.get("host_tsc")
    tsc_value = state.meta_extra.get("tsc_max")
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
        writes: list[tuple[int, tuple[int, int]]] = []
        if v.tsc is TscPut.MSR:
            for i in range(len(state.vcpus)):
                if main:
                    writes.append((tsc_value, put_tsc_msr(vm.vcpus[i], tsc_value)))
                else:
                    writes.append((tsc_value, threads[i].call(put_tsc_msr, vm.vcpus[i], tsc_value)))
        if loads or writes:
            facts.tsc_write_ns = min(w[0] for _, w in loads + writes)
        put_clock(vm, saved, v.clock, facts.get_clock_ns, facts)
        if v.tsc is TscPut.OFFSET:
            # api.rst's recipe: offset_dst = offset_src + host_tsc_src - host_tsc_dst
            # + the real time that passed, in ticks (host TSC and realtime read together).
            host_now, real_now = host_tsc(vm.vcpus[0]), time.time_ns()
            elapsed = real_now - state.meta_extra["realtime_ns"]
            offset = (src_offset + src_host_tsc - host_now + _khz_ticks(elapsed, khz)) & (
                checks.U64 - 1
            )
            if offset >= checks.WRAP_THRESHOLD:
                offset -= checks.U64
            for i in range(len(state.vcpus)):
                if main:
                    put_tsc_offset(vm.vcpus[i], offset)
                else:
                    threads[i].call(put_tsc_offset, vm.vcpus[i], offset)
            OffsetWatch(
                records, offset, f"KVM_VCPU_TSC_OFFSET set to {offset} at the restore"
            ).first_run(gvm, threads)
        elif v.tsc is TscPut.STATE:
            first_entry_of_vcpu0(gvm, threads, records)
        elif v.tsc is TscPut.MSR:
            for i, t in enumerate(threads):  # vCPU 0 first
                r = records[i]
                t.call(Reader(gvm, vm.vcpus[i], r).run, 0)
                lo, hi = tsc_msr_range(
                    tsc_value, writes[i][1], r.batches[-1], khz, loads + writes[:i]
                )
                r.tsc_writes.append(
                    TscWrite(
                        len(r.batches) - 1,
                        lo,
                        hi,
                        f"MSR_IA32_TSC written {tsc_value} (the largest saved) at the restore",
                    )
                )
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
    runs go in vCPU order, OffsetWatch runs vCPU 0 before the rest)."""
    threads[0].call(Reader(gvm, gvm.vcpus[0], records[0]).run, 0)


def _tsc_extra(gvm: GuestVm, state: Any) -> None:
    """What the TSC restores need beyond the VM state: the largest saved TSC,
    vCPU 0's offset and the host TSC at the save."""
    state.meta_extra["tsc_max"] = max(vs.msrs.get(MSR_IA32_TSC, 0) for vs in state.vcpus)
    v0 = gvm.vcpus[0]
    if v0.has_tsc_offset_attr():
        off = v0.get_tsc_offset()
        state.meta_extra["tsc_offset"] = off - checks.U64 if off >= checks.WRAP_THRESHOLD else off
        state.meta_extra["host_tsc"] = host_tsc(v0)
        state.meta_extra["realtime_ns"] = time.time_ns()


def _sleep_until(deadline_ns: int) -> None:
    left = deadline_ns - time.monotonic_ns()
    if left > 0:
        time.sleep(left / 1e9)


@dataclass
class Run:
    records: list[ClockRecord]
    stable: bool | None = None
    stable_after: bool | None = None  # KVM_GET_CLOCK's stable flag after the boundary
    facts: BoundaryFacts = field(default_factory=BoundaryFacts)
    pvti_areas: list[list[int]] = field(default_factory=list)
    khz: int = 0


def _first_phase(
    kvm: Kvm, cfg: ClockConfig, v: ClockVariant, threads: list[VcpuThread], run: Run
) -> GuestVm:
    gvm = start_vm(kvm, cfg.vcpus, threads, v.mode)
    try:
        run.khz = gvm.vcpus[0].get_tsc_khz()
        if v.tsc is not TscPut.STATE:
            start_tsc(gvm, threads, run.records, v.tsc, run.khz)
        run_phase(gvm, threads, run.records, cfg.phase_ms * 1_000_000, cfg.budget_s, v.hop)
        if v.pvti_check and not any(r.stuck for r in run.records):
            run.pvti_areas = pvti_snapshot(gvm, threads, run.records)
        run.stable = clock_stable(gvm.vm)[0]
    except BaseException:
        gvm.close()
        raise
    return gvm


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


def run_in_process(kvm: Kvm, cfg: ClockConfig) -> Run:
    v = VARIANTS[cfg.variant]
    if v.khz_ratio and not kvm.check_extension(lib.KVM_CAP_TSC_CONTROL):
        raise NotSupported(
            "not supported: KVM_SET_TSC_KHZ needs KVM_CAP_TSC_CONTROL, which "
            "is 0 here: no vCPU can run at another TSC frequency"
        )
    run = Run([ClockRecord(i) for i in range(cfg.vcpus)])
    threads = new_threads(cfg.vcpus, "a")
    gvm = _first_phase(kvm, cfg, v, threads, run)
    try:
        if v.boundary is Boundary.NONE or any(r.stuck for r in run.records):
            return run
        for r in run.records:
            r.boundary = len(r.batches)
        state = capture(gvm, threads, run.facts)
        _tsc_extra(gvm, state)
        gvm.close()
        close_threads(threads)
        _sleep_until(run.facts.get_clock_ns[1] + cfg.downtime_ms * 1_000_000)
        threads = new_threads(cfg.vcpus, "b")
        gvm = restore(kvm, state, v, threads, run.records, run.facts)
        run_phase(gvm, threads, run.records, cfg.phase_ms * 1_000_000, cfg.budget_s, v.hop)
        run.stable_after = clock_stable(gvm.vm)[0]
        return run
    finally:
        gvm.close()
        close_threads(threads)


# ---- cross-process: as in the steal family, a save child and a restore child,
# the snapshot and results in memfds the parent owns; children die with it.


def child_main(argv: list[str]) -> int:
    """``python -P -m kvmharness.scenarios.clock save|restore CONFIG SNAP_FD OUT_FD PARENT``."""
    return child_entry(argv, lambda role, cfg, fd: _child_run(role, ClockConfig(**cfg), fd))


def _child_run(role: str, cfg: ClockConfig, snap_fd: int) -> dict[str, Any]:
    from kvmharness.snapshot.state import load_state_file

    v = VARIANTS[cfg.variant]
    run = Run([ClockRecord(i) for i in range(cfg.vcpus)])
    with Kvm() as kvm:
        if role == "save":
            threads = new_threads(cfg.vcpus, "a")
            gvm = _first_phase(kvm, cfg, v, threads, run)
            try:
                if not any(r.stuck for r in run.records):
                    state = capture(gvm, threads, run.facts)
                    _tsc_extra(gvm, state)
                    state.meta_extra["facts"] = json.loads(json.dumps(asdict(run.facts)))
                    write_snapshot_fd(snap_fd, *state.to_snapshot())
            finally:
                gvm.close()
                close_threads(threads)
        else:
            state = load_state_file(snapshot_path(snap_fd))
            f = state.meta_extra["facts"]
            run.facts = BoundaryFacts(
                tuple(f["get_clock_ns"]), (0, 0), f["saved_clock"], khz_before=f["khz_before"]
            )
            threads = new_threads(cfg.vcpus, "b")
            gvm = restore(kvm, state, v, threads, run.records, run.facts)
            try:
                run_phase(gvm, threads, run.records, cfg.phase_ms * 1_000_000, cfg.budget_s)
                run.stable_after = clock_stable(gvm.vm)[0]
            finally:
                gvm.close()
                close_threads(threads)
    return {
        "records": [r.to_json() for r in run.records],
        "stable": run.stable,
        "stable_after": run.stable_after,
        "facts": asdict(run.facts),
        "khz": run.khz,
    }


def _run_child(role: str, cfg: ClockConfig, snap_fd: int) -> dict[str, Any]:
    return run_child(
        "kvmharness.scenarios.clock",
        role,
        asdict(cfg),
        snap_fd,
        2 * cfg.phase_ms / 1000 + cfg.budget_s + 120,
    )


def _facts_from(d: dict[str, Any]) -> BoundaryFacts:
    return BoundaryFacts(
        **{k: tuple(v) if k.endswith("_ns") and isinstance(v, list) else v for k, v in d.items()}
    )


def run_cross_process(cfg: ClockConfig) -> Run:
    snap_fd = os.memfd_create("kvmharness-clock-snapshot", os.MFD_CLOEXEC)
    try:
        a = _run_child("save", cfg, snap_fd)
        run = Run([ClockRecord.from_json(d) for d in a["records"]], a["stable"], khz=a["khz"])
        if any(r.stuck for r in run.records):
            return run
        if not os.fstat(snap_fd).st_size:
            raise ScenarioFailed(Blame.HARNESS, "save process wrote no snapshot")
        _sleep_until(_facts_from(a["facts"]).get_clock_ns[1] + cfg.downtime_ms * 1_000_000)
        b = _run_child("restore", cfg, snap_fd)
    finally:
        os.close(snap_fd)
    run.facts = _facts_from(b["facts"])
    run.stable_after = b["stable_after"]
    for r, d in zip(run.records, b["records"], strict=True):
        r.boundary = len(r.batches)
        r.extend(ClockRecord.from_json(d))
    return run


# --------------------------------------------------------------------------
# judging


def _jump_bounds(
    v: ClockVariant, a: Batch, b: Batch, facts: BoundaryFacts
) -> tuple[int, int, str, str]:
    """(min, max) kvmclock jump from the last reading before the boundary to the
    first after, with where each bound comes from."""
    e_max = b.t1_ns - a.t0_ns  # the real time between the readings is at most this
    e_min = max(b.t0_ns - a.t1_ns, 0)  # ... and at least this
    down = max(facts.downtime_ns, 0)
    if v.clock is ClockPut.FROZEN:
        hi = e_max - down
        why = (
            f"the real time between the readings, {checks.format_ns(e_max)}, less the "
            f"{checks.format_ns(down)} the clock stood still, + rate slack"
        )
    else:
        hi = e_max
        why = f"the real time between the readings, {checks.format_ns(e_max)}, + rate slack"
    lo, why_lo = 0, ""
    if v.clock is ClockPut.REALTIME:
        lo = e_min - checks.rate_slack_ns(e_min)
        why_lo = (
            f"KVM_CLOCK_REALTIME adds the real time that passed: at least "
            f"{checks.format_ns(e_min)} between the readings, - rate slack"
        )
    return max(lo, 0), hi + checks.rate_slack_ns(hi), why, why_lo


def judge(cfg: ClockConfig, run: Run) -> list[Violation]:
    v = VARIANTS[cfg.variant]
    out: list[Violation] = []
    for r in run.records:
        name = f"vcpu{r.index}"
        cut = r.boundary if 0 < r.boundary < len(r.batches) else len(r.batches)
        for lo, hi in ((0, cut), (cut, len(r.batches))):
            series = r.series(lo, hi)
            out += checks.check_monotonic(name, series, counter="kvmclock")
            out += checks.check_even_versions(name, series)
            out += checks.check_monotonic(
                f"{name}/vdso", r.series(lo, hi, vdso=True), counter="kvmclock (vCPU 0's area)"
            )
        for i, g, h in r.decode:
            out += checks.check_decode(name, i, g, h)
        for w in r.tsc_writes:
            if w.batch < len(r.batches) and r.batches[w.batch].n:
                read = r.samples[r.batches[w.batch].first][1]
                out += checks.check_tsc_applied(
                    name, w.batch, lo=w.lo, hi=w.hi, read=read, written=w.what
                )
        if 0 < r.boundary < len(r.batches):
            a, b = r.batches[r.boundary - 1], r.batches[r.boundary]
            if a.n and b.n:
                sa, sb = r.samples[a.first + a.n - 1], r.samples[b.first]
                lo_ns, hi_ns, why, why_lo = _jump_bounds(v, a, b, run.facts)
                # judged whatever the TSC: KVM_SET_CLOCK fixes the clock at the boundary
                out += checks.check_jump(
                    f"{name}/boundary",
                    r.boundary,
                    sa[0],
                    sb[0],
                    max_ns=hi_ns,
                    min_ns=lo_ns,
                    why_max=why,
                    why_min=why_lo,
                )
                out += _tsc_jump(v, f"{name}/boundary", r.boundary, sa[1], sb[1], a, b, run)
        if r.stuck and r.stuck.cpu_ns >= STUCK_MIN_CPU_SHARE * cfg.budget_s * 1e9:
            out.append(
                checks.violation(
                    checks.KIND_STUCK,
                    name,
                    len(r.batches),
                    None,
                    None,
                    f"KVM_RUN did not return in {checks.format_ns(r.stuck.waited_ns)} though its "
                    f"thread ran {checks.format_ns(r.stuck.cpu_ns)}; stopped at rip "
                    f"{r.stuck.rip:#x}",
                    counter="run",
                )
            )
    bs = [(r.index, b) for r in run.records for b in r.batches]
    reads = sum(b.n for _, b in bs)
    if v.mode & lib.CLOCK_MODE_WARP:
        out += checks.check_warps(
            "all vCPUs",
            sum(b.warps for _, b in bs),
            max((b.max_warp_ns for _, b in bs), default=0),
            reads,
        )
        out += checks.check_warps(
            "all vCPUs/vdso",
            sum(b.vdso_warps for _, b in bs),
            max((b.max_vdso_warp_ns for _, b in bs), default=0),
            reads,
            what="kvmclock (vCPU 0's area)",
        )
    if v.pvti_check and run.pvti_areas and run.stable is not None:
        out += checks.check_pvti_consistency(
            [(a[0], a[1], a[2], a[5]) for a in run.pvti_areas], run.stable
        )
    if v.khz_ratio and run.facts.khz_after:
        out += _frequency(run)
    return out


def _tsc_jump(
    v: ClockVariant, name: str, index: int, before: int, after: int, a: Batch, b: Batch, run: Run
) -> list[Violation]:
    """The TSC across the boundary, for the variants that put it: never back; at
    most the real time (offset recipe) or the real time outside the time it
    stood still (the saved value written back), in ticks at KVM's frequency.

    Written back, the TSC stands still from its reading (before KVM_GET_CLOCK
    began) to the destination's first write of it: KVM may keep counting from
    that write, the state load's, when the next write synchronizes with it."""
    if v.tsc is TscPut.STATE:
        return []
    facts = run.facts
    khz = facts.khz_after or run.khz
    e_max = b.t1_ns - a.t0_ns
    if v.tsc is TscPut.MSR:
        still = (
            facts.tsc_write_ns - facts.get_clock_ns[0] if facts.tsc_write_ns else facts.downtime_ns
        )
        e_max = max(e_max - max(still, 0), 0)
        why = "the real time between the readings less the time the TSC stood still, in ticks"
    else:
        why = "the real time between the readings, in ticks"
    hi = _khz_ticks(e_max + checks.rate_slack_ns(e_max), khz) + 1
    return checks.check_jump(
        name, index, before, after, max_ns=hi, what="TSC", unit="ticks", why_max=why
    )


def _frequency(run: Run) -> list[Violation]:
    """At the new frequency: each area's scale is KVM's for it, and the guest's
    TSC runs at it against kvmclock (after the boundary)."""
    from kvmharness.pvclock import scale_for_khz

    out: list[Violation] = []
    khz = run.facts.khz_after
    want = list(scale_for_khz(khz))
    for i, got in enumerate(run.facts.pvti_scale_after):
        if list(got) != want:
            out.append(
                checks.violation(
                    checks.KIND_DECODE_MISMATCH,
                    f"vcpu{i}/pvti",
                    0,
                    None,
                    None,
                    f"after KVM_SET_TSC_KHZ {khz} the area's (mul, shift) is {tuple(got)}, "
                    f"the scale for {khz} kHz is {tuple(want)}",
                    counter="scale",
                    delta=None,
                )
            )
    for r in run.records:
        after = r.samples[r.batches[r.boundary].first :] if r.boundary < len(r.batches) else []
        if len(after) < 2:
            continue
        d_ns, d_tsc = after[-1][0] - after[0][0], after[-1][1] - after[0][1]
        if d_ns <= 0:
            continue
        measured = d_tsc * 1_000_000 // d_ns
        tol = khz * checks.RATE_SLACK_PPM // 1_000_000 + 1_000_000 * 2 // d_ns + 1
        if abs(measured - khz) > tol:
            out.append(
                checks.violation(
                    checks.KIND_TSC_NOT_APPLIED,
                    f"vcpu{r.index}",
                    r.boundary,
                    khz,
                    measured,
                    f"the guest's TSC ran at {measured} kHz against kvmclock after "
                    f"KVM_SET_TSC_KHZ {khz}",
                    counter="tsc_khz",
                )
            )
    return out


def untestable_reason(cfg: ClockConfig, run: Run, violations: list[Violation]) -> str | None:
    v = VARIANTS[cfg.variant]
    for r in run.records:
        if r.stuck and r.stuck.cpu_ns < STUCK_MIN_CPU_SHARE * cfg.budget_s * 1e9:
            return (
                f"vcpu{r.index} was stopped after {checks.format_ns(r.stuck.waited_ns)} "
                f"in KVM_RUN with only {checks.format_ns(r.stuck.cpu_ns)} of CPU: the "
                "host is too loaded to judge"
            )
    if run.stable is False or run.stable_after is False:
        judged = [
            x
            for x in violations
            if x.kind not in STABLE_ONLY_KINDS or x.series.endswith("/boundary")
        ]
        if v.needs_stable or (violations and not judged):
            return (
                "the host clock is not stable (KVM_GET_CLOCK without KVM_CLOCK_TSC_STABLE: "
                "no master clock), so KVM promises no monotonic kvmclock across updates; "
                f"measured: {summary(run, violations)}"
            )
    if (
        v.clock is ClockPut.REALTIME
        and run.facts.saved_clock
        and not run.facts.saved_clock[1] & lib.KVM_CLOCK_REALTIME
    ):
        return "KVM_GET_CLOCK returned no realtime (KVM_CLOCK_REALTIME) to restore from"
    return None


def summary(run: Run, violations: list[Violation]) -> str:
    bs = [b for r in run.records for b in r.batches]
    reads = sum(b.n for b in bs)
    w = sum(b.warps for b in bs)
    mw = max((b.max_warp_ns for b in bs), default=0)
    vw = sum(b.vdso_warps for b in bs)
    text = f"{reads} reads, {w} warps" + (f" (largest {checks.format_ns(mw)})" if w else "")
    if vw:
        text += f", {vw} vDSO-style warps"
    jumps = []
    for r in run.records:
        if 0 < r.boundary < len(r.batches):
            a, b = r.batches[r.boundary - 1], r.batches[r.boundary]
            if a.n and b.n:
                sa, sb = r.samples[a.first + a.n - 1], r.samples[b.first]
                jumps.append(f"vcpu{r.index} {checks.format_ns(sb[0] - sa[0])}")
    if jumps:
        text += (
            f"; jump over {checks.format_ns(max(run.facts.downtime_ns, 0))} downtime: "
            + ", ".join(jumps)
        )
    firsts = [r.samples[0] for r in run.records if r.samples]
    if firsts and run.khz and not any(r.boundary for r in run.records) and not w:
        tsc = firsts[0][1]
        text += (
            f"; first reading: kvmclock {checks.format_ns(firsts[0][0])}, TSC {tsc} "
            f"ticks ({checks.format_ns(tsc * 1_000_000 // run.khz)} at KVM's frequency)"
        )
    if violations:
        counts = checks.summarize(violations)
        first = violations[0]
        text = (
            ", ".join(f"{k} x{n}" for k, n in counts.items())
            + f"; first: {first.series}[{first.index}] {first.detail}; "
            + text
        )
    return text


def run_scenario(cfg: ClockConfig, kvm: Kvm | None = None) -> ClockResult:
    cfg.validate()
    v = VARIANTS[cfg.variant]
    t0 = time.monotonic()
    run = Run([])
    try:
        if v.boundary is Boundary.CROSS_PROCESS:
            run = run_cross_process(cfg)
        else:
            own = kvm is None
            k = Kvm() if own else kvm
            try:
                run = run_in_process(k, cfg)
            finally:
                if own:
                    k.close()
    except Exception as exc:
        blame = classify(exc)
        log.info("clock scenario %s failed to run (%s)", cfg.variant, blame, exc_info=True)
        unsupported = isinstance(exc, NotSupported)
        return ClockResult(
            cfg,
            v,
            run.records,
            [],
            verdict_for(v.kind, blame=blame),
            str(exc) if unsupported else f"could not run ({blame}): {exc}",
            time.monotonic() - t0,
            stable=run.stable,
            facts=run.facts,
            error=str(exc),
            not_supported=unsupported,
        )
    violations = judge(cfg, run)
    why_not = untestable_reason(cfg, run, violations)
    wall = time.monotonic() - t0
    if why_not:
        return ClockResult(
            cfg,
            v,
            run.records,
            violations,
            Verdict.UNTESTABLE,
            why_not,
            wall,
            stable=run.stable,
            stable_after=run.stable_after,
            facts=run.facts,
            pvti_areas=run.pvti_areas,
        )
    return ClockResult(
        cfg,
        v,
        run.records,
        violations,
        verdict_for(v.kind, broken=bool(violations)),
        summary(run, violations),
        wall,
        stable=run.stable,
        stable_after=run.stable_after,
        facts=run.facts,
        pvti_areas=run.pvti_areas,
    )


def run_one(name: str, vcpus: int, options: RunOptions, kvm: Kvm | None = None) -> ClockResult:
    return run_scenario(
        ClockConfig(
            name,
            vcpus,
            max(options.contend_ms, MIN_PHASE_MS),
            options.downtime_ms,
            options.budget_s,
        ),
        kvm,
    )


#: bisect's quick profile: per-vCPU and cross-vCPU reading, the master clock,
#: an in-process main-thread restore, a cross-process restore with
#: KVM_CLOCK_REALTIME, and both ways of putting the TSC.  Left out: migrate,
#: and the restores whose mistakes these already catch.
QUICK = (
    "monotonic",
    "warp",
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

if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
