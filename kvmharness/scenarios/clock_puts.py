"""How the clock variants put the TSC and kvmclock: one class per way, one row
in :data:`TSC_PUTS` or :data:`CLOCK_PUTS`.

A TSC put (:class:`TscMethod`) acts at two moments: at the start of the
first phase (:meth:`~TscMethod.at_start`: the TSC moved an hour ahead, so a
write that is not applied cannot pass for one that is) and at a restore
(:meth:`~TscMethod.after_state`, then :meth:`~TscMethod.first_runs` once
kvmclock is set).  Each records, per vCPU, where the guest's first reading
must lie (:class:`~kvmharness.scenarios.clock_record.TscWrite`), which the
judge checks.  A kvmclock put (:class:`ClockMethod`) is the KVM_SET_CLOCK of
a restore.  The variant names its puts by their record names
(:class:`~kvmharness.scenarios.clock_record.TscPut`,
:class:`~kvmharness.scenarios.clock_record.ClockPut`).

A new put is one class here and one row in its table (and its record name).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmharness import checks
from kvmharness.ffi import lib
from kvmharness.guest.machine import GuestVm
from kvmharness.host.threads import VcpuThread
from kvmharness.judges import clock as clock_judge
from kvmharness.kvm import ClockData, Vcpu, Vm
from kvmharness.scenarios.base import NotSupported
from kvmharness.scenarios.clock_record import ClockPut, ClockRecord, TscPut, TscWrite

MSR_IA32_TSC = lib.MSR_IA32_TSC
#: The TSC variants first move every vCPU's TSC an hour ahead of where it is:
#: far outside KVM's 1-second "synchronize" window around the value it
#: expects, and far from the host's TSC, so a write that is not applied
#: cannot pass for one that is.
TSC_START_AHEAD_S = 3600

tsc_msr_range = clock_judge.tsc_msr_range

Writes = list[tuple[int, tuple[int, int]]]
"""(value written, (host ns before, after)) per MSR_IA32_TSC write."""


def khz_ticks(ns: int, khz: int) -> int:
    return ns * khz // 1_000_000


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


def host_tsc_and_realtime(vcpu: Vcpu) -> tuple[int, int, int]:
    """(realtime before, host TSC, realtime after): the host TSC between two
    CLOCK_REALTIME readings (the new VM has no master clock yet, so no
    KVM_GET_CLOCK pair)."""
    r0 = time.time_ns()
    h = host_tsc(vcpu)
    return r0, h, time.time_ns()


def tsc_offset_recipe(
    src_offset: int,
    src_host_tsc: int,
    src_real_after: int,
    dst_host_tsc: int,
    dst_real_before: int,
    khz: int,
) -> int:
    """api.rst's recipe, offset_dst = offset_src + host_tsc_src - host_tsc_dst +
    the real time that passed in ticks, with each host TSC paired with a
    realtime reading that can only shorten that time: the one after it at the
    source, the one before it at the destination.  Paired the other way, a
    thread delayed between the two reads (ms under TCG) puts the guest's TSC
    ahead of the real time by the delay: the Debian 6.1.0-47 tsc/offset red."""
    elapsed = max(dst_real_before - src_real_after, 0)
    offset = (src_offset + src_host_tsc - dst_host_tsc + khz_ticks(elapsed, khz)) & (checks.U64 - 1)
    return offset - checks.U64 if offset >= checks.WRAP_THRESHOLD else offset


@dataclass
class Put:
    """What a put works on: the VM, its vCPU threads and records, KVM's TSC
    frequency, and how to run one vCPU for one batch on its thread."""

    gvm: GuestVm
    threads: list[VcpuThread]
    records: list[ClockRecord]
    khz: int
    run_once: Callable[[int], None]
    """Run vCPU i once on the calling thread (its batch lands in records[i])."""
    main: bool = False
    """The main thread puts the vCPU state (else each vCPU's thread)."""
    loads: Writes = field(default_factory=list)
    """The state load's own MSR_IA32_TSC writes (KVM may sync a later write with them)."""

    def on_vcpu(self, i: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` from whichever thread puts vCPU i's state."""
        return fn(*args) if self.main else self.threads[i].call(fn, *args)

    def first_run_in_order(self) -> None:
        """Each vCPU runs once, vCPU 0 first and the others after it."""
        for i, t in enumerate(self.threads):
            t.call(self.run_once, i)


def watch_offset(p: Put, offset: int, what: str) -> None:
    """Bracket the host TSC around each vCPU's next KVM_RUN, so its guest's
    reading is judged against host TSC + offset exactly (vCPU 0 first)."""

    def one(i: int) -> None:
        r, vcpu = p.records[i], p.gvm.vcpus[i]
        h0 = host_tsc(vcpu)
        p.run_once(i)
        h1 = host_tsc(vcpu)
        # the guest TSC is host TSC + offset modulo 2^64 (a negative offset is
        # stored as a large u64)
        r.tsc_writes.append(
            TscWrite(
                len(r.batches) - 1,
                (h0 + offset) % checks.U64,
                (h1 + offset) % checks.U64,
                what,
            )
        )

    p.threads[0].call(one, 0)
    for f in [t.submit(one, i) for i, t in enumerate(p.threads) if i]:
        f.result()


def judge_msr_writes(p: Put, value: int, writes: Writes, what: str, earlier: Writes) -> None:
    """Each vCPU runs once (vCPU 0 first); the range its reading must lie in
    after ``value`` was written at ``writes[i]``."""
    for i, t in enumerate(p.threads):
        r = p.records[i]
        t.call(p.run_once, i)
        lo, hi = tsc_msr_range(value, writes[i][1], r.batches[-1], p.khz, earlier + writes[:i])
        r.tsc_writes.append(
            TscWrite(len(r.batches) - 1, lo, hi, what, value, writes[i][1], earlier + writes[:i])
        )


class TscMethod:
    """A way of putting the TSC.  The default: as captured with the state."""

    kind = TscPut.STATE

    def at_start(self, p: Put) -> None:
        """Before the first phase: nothing."""

    def after_state(self, p: Put, state: Any) -> Writes:
        """Right after the vCPU state is put, before kvmclock: the writes made."""
        return []

    def clock_put(self, how: ClockPut, saved: ClockData) -> ClockPut:
        """The kvmclock put this TSC put goes with (the variant's, by default)."""
        return how

    def first_runs(self, p: Put, state: Any, writes: Writes) -> None:
        """Once kvmclock is set: vCPU 0 runs first, before any vCPU reads its
        area (``kvmharness.scenarios.clock.first_entry_of_vcpu0`` says why)."""
        p.threads[0].call(p.run_once, 0)


class TscByMsr(TscMethod):
    """MSR_IA32_TSC written: an hour ahead at the start, the largest saved
    value at a restore; the guest reads what was written."""

    kind = TscPut.MSR

    def at_start(self, p: Put) -> None:
        base = p.gvm.vcpus[0].get_msr(MSR_IA32_TSC) + TSC_START_AHEAD_S * p.khz * 1000
        vcpus = p.gvm.vcpus
        writes = [(base, t.call(put_tsc_msr, vcpus[i], base)) for i, t in enumerate(p.threads)]
        judge_msr_writes(p, base, writes, f"MSR_IA32_TSC written {base} at the start", [])

    def after_state(self, p: Put, state: Any) -> Writes:
        value = state.meta_extra.get("tsc_max")
        return [
            (value, p.on_vcpu(i, put_tsc_msr, p.gvm.vcpus[i], value))
            for i in range(len(state.vcpus))
        ]

    def first_runs(self, p: Put, state: Any, writes: Writes) -> None:
        value = state.meta_extra.get("tsc_max")
        what = f"MSR_IA32_TSC written {value} (the largest saved) at the restore"
        judge_msr_writes(p, value, writes, what, p.loads)


class TscByOffset(TscMethod):
    """KVM_VCPU_TSC_OFFSET (where KVM_HAS_DEVICE_ATTR offers it): an hour ahead
    at the start, api.rst's migration recipe at a restore."""

    kind = TscPut.OFFSET

    def at_start(self, p: Put) -> None:
        v0 = p.gvm.vcpus[0]
        if not v0.has_tsc_offset_attr():
            raise NotSupported(
                "KVM_HAS_DEVICE_ATTR says this KVM has no KVM_VCPU_TSC_OFFSET attribute"
            )
        offset = TSC_START_AHEAD_S * p.khz * 1000 + v0.get_tsc_offset()
        for i, t in enumerate(p.threads):
            t.call(put_tsc_offset, p.gvm.vcpus[i], offset)
        watch_offset(p, offset, f"KVM_VCPU_TSC_OFFSET set to {offset} at the start")

    def clock_put(self, how: ClockPut, saved: ClockData) -> ClockPut:
        # the TSC is the point here: without KVM_CLOCK_REALTIME (a host clock
        # that is not the TSC) kvmclock is put as saved + downtime instead
        return how if saved.flags & lib.KVM_CLOCK_REALTIME else ClockPut.DOWNTIME

    def first_runs(self, p: Put, state: Any, writes: Writes) -> None:
        vm0 = p.gvm.vcpus[0]
        real_before, host_now, _ = host_tsc_and_realtime(vm0)
        offset = tsc_offset_recipe(
            state.meta_extra.get("tsc_offset"),
            state.meta_extra.get("host_tsc"),
            state.meta_extra["realtime_ns"],
            host_now,
            real_before,
            p.khz,
        )
        for i in range(len(state.vcpus)):
            p.on_vcpu(i, put_tsc_offset, p.gvm.vcpus[i], offset)
        watch_offset(p, offset, f"KVM_VCPU_TSC_OFFSET set to {offset} at the restore")


TSC_PUTS: dict[TscPut, TscMethod] = {m.kind: m for m in (TscMethod(), TscByMsr(), TscByOffset())}


class ClockMethod:
    """A KVM_SET_CLOCK at a restore: the value it puts, given what was saved
    (``saved``), when KVM_GET_CLOCK returned (``got_ns``) and now (``now_ns``)."""

    kind: ClockPut

    def put(self, vm: Vm, saved: ClockData, got_ns: int, now_ns: int) -> int:
        raise NotImplementedError


class ClockAdvanced(ClockMethod):
    """saved + the downtime the host measured: the guest sees the real time pass."""

    kind = ClockPut.DOWNTIME

    def put(self, vm: Vm, saved: ClockData, got_ns: int, now_ns: int) -> int:
        value = saved.clock_ns + (now_ns - got_ns)
        vm.set_clock(ClockData(value))
        return value


class ClockRealtime(ClockMethod):
    """saved with its realtime and KVM_CLOCK_REALTIME: KVM adds the real time."""

    kind = ClockPut.REALTIME

    def put(self, vm: Vm, saved: ClockData, got_ns: int, now_ns: int) -> int:
        if not saved.flags & lib.KVM_CLOCK_REALTIME:
            raise NotSupported(
                "KVM_GET_CLOCK returned no realtime "
                "(KVM_CLOCK_REALTIME: the host clock is not TSC-based) to "
                "restore with KVM_CLOCK_REALTIME from"
            )
        vm.set_clock(
            ClockData(saved.clock_ns, realtime_ns=saved.realtime_ns), flags=lib.KVM_CLOCK_REALTIME
        )
        return saved.clock_ns


class ClockFrozen(ClockMethod):
    """saved as it was: the downtime is hidden from the guest."""

    kind = ClockPut.FROZEN

    def put(self, vm: Vm, saved: ClockData, got_ns: int, now_ns: int) -> int:
        vm.set_clock(ClockData(saved.clock_ns))
        return saved.clock_ns


CLOCK_PUTS: dict[ClockPut, ClockMethod] = {
    m.kind: m for m in (ClockAdvanced(), ClockRealtime(), ClockFrozen())
}
