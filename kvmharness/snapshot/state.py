"""Capture and restore of VM state, in memory or through a snapshot file.

What is captured: guest memory (every slot), and per vCPU regs, sregs, FPU,
XSAVE, XCRs, debug registers, vCPU events, mp_state, CPUID, TSC kHz and
every MSR in KVM's MSR index list that this vCPU can read (steal time and
kvmclock among them), plus the VM's kvmclock (KVM_GET_CLOCK).

Everything here works on :class:`~kvmharness.kvm.Vm` and
:class:`~kvmharness.kvm.Vcpu`: no guest program is built or loaded to
restore (memory comes back byte for byte).  The vCPU state is one table,
:data:`VCPU_STATE`, in restore order with the reason for each place;
capture, restore and the snapshot validation all iterate it.

Restore is split so a scenario can choose *which thread* restores each
vCPU: :func:`restore_vm` builds the VM and its memory (no vCPUs),
:func:`restore_vcpu` creates one vCPU and loads its state on the calling
thread, :func:`restore_clock` sets kvmclock last.  :func:`VmState.from_snapshot`
validates everything before any VM exists, so a bad file never leaves a
half-restored VM.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import kvmharness
from kvmharness.errors import MsrError
from kvmharness.ffi import ffi
from kvmharness.host.threads import VcpuThread
from kvmharness.kvm import ClockData, CpuidEntry, Kvm, Vcpu, Vm, from_raw, raw_bytes
from kvmharness.snapshot.fileformat import Snapshot, SnapshotFormatError, read_snapshot

log = logging.getLogger(__name__)

STATE_KIND = "kvmharness-vm-state"
STATE_VERSION = 1


@dataclass(frozen=True)
class StatePart:
    """One piece of vCPU state: how to read it, how to put it, and why it goes where it does."""

    name: str
    ctype: str | None  # a raw struct kept as a snapshot section; None: kept in meta
    get: Callable[[Vcpu], Any]
    put: Callable[[Vcpu, Any], None]
    why: str


def _struct(name: str, ctype: str, getter: str, setter: str, why: str) -> StatePart:
    return StatePart(
        name,
        ctype,
        lambda v: raw_bytes(getattr(v, getter)()),
        lambda v, data: getattr(v, setter)(from_raw(ctype, data)),
        why,
    )


def _put_tsc_khz(vcpu: Vcpu, khz: int) -> None:
    if khz and vcpu.get_tsc_khz() != khz:
        vcpu.set_tsc_khz(khz)


VCPU_STATE: tuple[StatePart, ...] = (
    StatePart(
        "cpuid",
        None,
        lambda v: v.get_cpuid(),
        lambda v, e: v.set_cpuid(e),
        "first: KVM checks XSAVE, XCRs and MSRs against the guest's CPUID; never "
        "on a vCPU that has run (Linux 5.16+ refuses a changed table)",
    ),
    StatePart(
        "tsc_khz",
        None,
        lambda v: v.get_tsc_khz(),
        _put_tsc_khz,
        "before MSRs: a written TSC value is scaled by the guest's TSC frequency",
    ),
    _struct(
        "sregs",
        "struct kvm_sregs",
        "get_sregs",
        "set_sregs",
        "before regs: CR0, CR4 and EFER set the mode the registers belong to",
    ),
    _struct("regs", "struct kvm_regs", "get_regs", "set_regs", "after sregs"),
    _struct("fpu", "struct kvm_fpu", "get_fpu", "set_fpu", "before XSAVE, which overrides it"),
    _struct(
        "xsave",
        "struct kvm_xsave",
        "get_xsave",
        "set_xsave",
        "after CPUID: its feature set is checked against CPUID's XCR0 bits",
    ),
    _struct("xcrs", "struct kvm_xcrs", "get_xcrs", "set_xcrs", "after XSAVE"),
    _struct(
        "debugregs",
        "struct kvm_debugregs",
        "get_debugregs",
        "set_debugregs",
        "independent of the rest",
    ),
    _struct(
        "events",
        "struct kvm_vcpu_events",
        "get_vcpu_events",
        "set_vcpu_events",
        "after regs and sregs: pending exceptions and NMIs refer to that context",
    ),
    StatePart(
        "mp_state",
        None,
        lambda v: v.get_mp_state(),
        lambda v, s: v.set_mp_state(s),
        "after events: a halted or INIT-pending vCPU is judged with its events",
    ),
    StatePart(
        "msrs",
        None,
        lambda v: None,
        lambda v, m: set_msrs_tolerant(v, m),
        "last: MSR_KVM_STEAL_TIME and kvmclock point into memory restored by now, "
        "and enabling them schedules KVM's first update at the next entry",
    ),
)

#: The raw struct sections per vCPU: section suffix -> C type (from the table).
VCPU_STRUCTS = {p.name: p.ctype for p in VCPU_STATE if p.ctype}

_readable_msrs: dict[tuple[int, ...], list[int]] = {}


def readable_msrs(kvm: Kvm, vcpu: Vcpu) -> list[int]:
    """The MSRs of KVM's index list this vCPU can read (refused ones dropped)."""
    listed = tuple(kvm.msr_index_list())
    if listed in _readable_msrs:
        return _readable_msrs[listed]
    todo = list(listed)
    good: list[int] = []
    while todo:
        try:
            vcpu.get_msrs(todo)
            good.extend(todo)
            break
        except MsrError as exc:
            good.extend(todo[: exc.done])
            log.debug("MSR %#x not readable here, not captured", exc.failed_index)
            todo = todo[exc.done + 1 :]
    _readable_msrs[listed] = good
    return good


@dataclass
class VcpuState:
    index: int
    structs: dict[str, bytes]
    msrs: dict[int, int]
    mp_state: int
    cpuid: list[CpuidEntry]
    tsc_khz: int


@dataclass
class VmState:
    program: str
    mem_size: int
    memory: bytes
    clock: ClockData
    vcpus: list[VcpuState]
    captured_ns: int
    meta_extra: dict[str, Any] = field(default_factory=dict)

    # ---- to and from the snapshot container
    def to_snapshot(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        meta: dict[str, Any] = {
            "kind": STATE_KIND,
            "state_version": STATE_VERSION,
            "kvmharness_version": kvmharness.__version__,
            "created_unix": time.time(),
            "kernel_release": platform.release(),
            "program": self.program,
            "mem_size": self.mem_size,
            "captured_monotonic_ns": self.captured_ns,
            "clock": {
                "clock_ns": self.clock.clock_ns,
                "flags": self.clock.flags,
                "realtime_ns": self.clock.realtime_ns,
                "host_tsc": self.clock.host_tsc,
            },
            "vcpus": [
                {
                    "index": v.index,
                    "mp_state": v.mp_state,
                    "tsc_khz": v.tsc_khz,
                    "msrs": {f"{k:#x}": val for k, val in v.msrs.items()},
                    "cpuid": [
                        [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] for e in v.cpuid
                    ],
                }
                for v in self.vcpus
            ],
            "extra": self.meta_extra,
        }
        sections: dict[str, bytes] = {"mem/slot0": self.memory}
        for v in self.vcpus:
            for name, data in v.structs.items():
                sections[f"vcpu{v.index}/{name}"] = data
        return meta, sections

    @classmethod
    def from_snapshot(cls, snap: Snapshot, name: str = "<snapshot>") -> VmState:
        """Validate a container's contents as VM state; SnapshotFormatError if anything is off."""

        def bad(problem: str) -> SnapshotFormatError:
            return SnapshotFormatError(name, f"not restorable VM state: {problem}")

        meta = snap.meta
        if not isinstance(meta, dict) or meta.get("kind") != STATE_KIND:
            raise bad(
                f"meta kind is {meta.get('kind') if isinstance(meta, dict) else None!r}, "
                f"expected {STATE_KIND!r}"
            )
        if meta.get("state_version") != STATE_VERSION:
            raise bad(
                f"state version {meta.get('state_version')!r}, "
                f"this kvmharness restores {STATE_VERSION}"
            )
        try:
            mem_size = int(meta["mem_size"])
            memory = snap.sections["mem/slot0"]
            if len(memory) != mem_size:
                raise bad(f"mem/slot0 is {len(memory)} bytes, meta says {mem_size}")
            c = meta["clock"]
            clock = ClockData(
                int(c["clock_ns"]), int(c["flags"]), int(c["realtime_ns"]), int(c["host_tsc"])
            )
            vcpus = []
            for i, v in enumerate(meta["vcpus"]):
                if int(v["index"]) != i:
                    raise bad(f"vCPU entry {i} has index {v['index']}")
                structs = {}
                for sname, ctype in VCPU_STRUCTS.items():
                    data = snap.sections.get(f"vcpu{i}/{sname}")
                    if data is None:
                        raise bad(f"section vcpu{i}/{sname} missing")
                    if len(data) != ffi.sizeof(ctype):
                        raise bad(
                            f"section vcpu{i}/{sname} is {len(data)} bytes, "
                            f"{ctype} is {ffi.sizeof(ctype)}"
                        )
                    structs[sname] = data
                vcpus.append(
                    VcpuState(
                        index=i,
                        structs=structs,
                        msrs={int(k, 16): int(val) for k, val in v["msrs"].items()},
                        mp_state=int(v["mp_state"]),
                        cpuid=[CpuidEntry(*map(int, e)) for e in v["cpuid"]],
                        tsc_khz=int(v["tsc_khz"]),
                    )
                )
            if not vcpus:
                raise bad("no vCPUs")
            return cls(
                program=str(meta["program"]),
                mem_size=mem_size,
                memory=memory,
                clock=clock,
                vcpus=vcpus,
                captured_ns=int(meta["captured_monotonic_ns"]),
                meta_extra=dict(meta.get("extra") or {}),
            )
        except SnapshotFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise bad(f"malformed meta ({type(exc).__name__}: {exc})") from None


def capture_vcpu(kvm: Kvm, vcpu: Vcpu) -> VcpuState:
    """The state of a stopped vCPU, as a VMM saves it: first the last exit's
    port or MMIO access is completed (:meth:`Vcpu.finish_exit`), or the state
    would put rip back on the instruction that made it."""
    vcpu.finish_exit()
    got = {p.name: p.get(vcpu) for p in VCPU_STATE if p.name != "msrs"}
    return VcpuState(
        index=vcpu.index,
        structs={n: got[n] for n in VCPU_STRUCTS},
        msrs=vcpu.get_msrs(readable_msrs(kvm, vcpu)),
        mp_state=got["mp_state"],
        cpuid=got["cpuid"],
        tsc_khz=got["tsc_khz"],
    )


def capture(vm: Vm, vcpu_states: list[VcpuState] | None = None, *, program: str = "") -> VmState:
    """Capture a stopped VM (memory slot 0 and its vCPUs).  ``vcpu_states`` lets
    callers capture vCPUs on their own threads; ``program`` is recorded for the
    reader of the snapshot."""
    states = vcpu_states if vcpu_states is not None else [capture_vcpu(vm.kvm, v) for v in vm.vcpus]
    slot = vm.slots[0]
    return VmState(
        program=program,
        mem_size=slot.size,
        memory=bytes(slot.buffer()),
        clock=vm.get_clock(),
        vcpus=states,
        captured_ns=time.monotonic_ns(),
    )


def restore_vm(kvm: Kvm, state: VmState) -> Vm:
    """A new VM with the saved memory and no vCPUs yet."""
    vm = kvm.create_vm()
    try:
        vm.add_memory(0, 0, state.mem_size).buffer()[:] = state.memory
    except BaseException:
        vm.close()
        raise
    return vm


def restore_vcpu(vm: Vm, state: VmState, index: int) -> Vcpu:
    """Create vCPU ``index`` and load its saved state, from the calling thread."""
    vcpu = vm.create_vcpu(index)
    load_vcpu_state(vcpu, state.vcpus[index])
    return vcpu


def load_vcpu_state(vcpu: Vcpu, vs: VcpuState, *, msrs: bool = True, cpuid: bool = True) -> None:
    """Put ``vs`` into ``vcpu`` in :data:`VCPU_STATE` order.  ``cpuid=False`` for
    a vCPU that has run: no VMM re-sets CPUID there."""
    values: dict[str, Any] = {
        **vs.structs,
        "cpuid": vs.cpuid,
        "tsc_khz": vs.tsc_khz,
        "mp_state": vs.mp_state,
        "msrs": vs.msrs,
    }
    skip = {n for n, keep in (("cpuid", cpuid), ("msrs", msrs)) if not keep}
    for part in VCPU_STATE:
        if part.name not in skip:
            part.put(vcpu, values[part.name])


def set_msrs_tolerant(vcpu: Vcpu, msrs: dict[int, int]) -> list[int]:
    """KVM_SET_MSRS of a saved set; an MSR KVM refuses is skipped only if the new
    vCPU already holds the saved value (nothing would change), else MsrError.
    Returns the skipped indices."""
    items = list(msrs.items())
    skipped: list[int] = []
    while items:
        try:
            vcpu.set_msrs(dict(items))
            break
        except MsrError as exc:
            index, value = items[exc.done]
            try:
                current = vcpu.get_msr(index)
            except MsrError:
                current = None
            if current != value:
                raise
            log.debug("MSR %#x refused on restore but already %#x; skipped", index, value)
            skipped.append(index)
            items = items[exc.done + 1 :]
    return skipped


def restore_clock(vm: Vm, state: VmState, downtime_ns: int = 0) -> None:
    """Set kvmclock to the saved value plus the downtime the guest should see."""
    vm.set_clock(ClockData(state.clock.clock_ns + downtime_ns))


def restore(
    kvm: Kvm,
    state: VmState,
    *,
    vcpu_threads: Sequence[VcpuThread] | None = None,
    downtime_ns: int = 0,
) -> Vm:
    """A new VM with the saved state.  vCPU ``i`` is created and loaded on
    ``vcpu_threads[i]`` when given (the thread that will run it), else on the
    calling thread; kvmclock is set last, advanced by ``downtime_ns``."""
    vm = restore_vm(kvm, state)
    try:
        for i in range(len(state.vcpus)):
            if vcpu_threads is None:
                restore_vcpu(vm, state, i)
            else:
                vcpu_threads[i].call(restore_vcpu, vm, state, i)
        restore_clock(vm, state, downtime_ns)
    except BaseException:
        vm.close()
        raise
    return vm


def load_state_file(path: str) -> VmState:
    """Read and validate a snapshot file as VM state (SnapshotFormatError on any problem)."""
    return VmState.from_snapshot(read_snapshot(path), str(path))
