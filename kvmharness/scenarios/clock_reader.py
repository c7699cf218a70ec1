"""How the host reads what the clock guest read (``programs/clock.c``).

The guest reads kvmclock (and the TSC) in batches and stops at a SYNC after
each; :class:`Reader` runs one vCPU on its thread, times each KVM_RUN and
copies the batch's readings out of guest memory, decoding the area the last
one used itself (:mod:`kvmharness.pvclock`).  :func:`measured_phase` is one
phase of every vCPU, with vCPU 0's TSC probed around it (the rate the
judge's TSC bounds rest on) and the forced updates where the variant has
them (:mod:`kvmharness.scenarios.clock_storm`).  Its own reason to change:
the guest program's sample layout and how readings are collected, not what
a variant does at its boundary.
"""

from __future__ import annotations

import os
import struct
import time

from kvmharness.ffi import ffi, lib
from kvmharness.guest.machine import GuestStopped, GuestVm
from kvmharness.host.sched import Watchdog, cpu_for, wait_or_stop
from kvmharness.host.threads import VcpuThread
from kvmharness.kvm import Vcpu
from kvmharness.pvclock import Pvti
from kvmharness.scenarios.base import NotSupported
from kvmharness.scenarios.clock_record import Batch, ClockRecord, RateProbe, Run
from kvmharness.scenarios.clock_storm import STORM_MIN_PHASE_MS, ClockStorm, watch_counts
from kvmharness.scenarios.lifecycle import RunMeter

PROGRAM = "clock"
MSR_IA32_TSC = lib.MSR_IA32_TSC
SAMPLE_SIZE = ffi.sizeof("struct clock_sample")
SAMPLE_FMT = "<QQQIBBH"
PVTI_SIZE = ffi.sizeof("struct pvclock_vcpu_time_info")
#: Reads per SYNC: enough to keep exits a small share of guest time, few
#: enough that one batch lasts about a millisecond where instructions are slow.
BATCH = 8


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
