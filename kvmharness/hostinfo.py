"""Facts about this host that a user bisecting or running CI needs to know.

Gathered without failing: every fact that cannot be read says why.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvmharness.ffi import lib

# Capabilities the scenarios depend on: name -> KVM_CAP_* constant.
CAPABILITIES = {
    "ADJUST_CLOCK": lib.KVM_CAP_ADJUST_CLOCK,
    "VCPU_EVENTS": lib.KVM_CAP_VCPU_EVENTS,
    "XSAVE": lib.KVM_CAP_XSAVE,
    "XCRS": lib.KVM_CAP_XCRS,
    "MP_STATE": lib.KVM_CAP_MP_STATE,
    "TSC_CONTROL": lib.KVM_CAP_TSC_CONTROL,
    "GET_TSC_KHZ": lib.KVM_CAP_GET_TSC_KHZ,
    "KVMCLOCK_CTRL": lib.KVM_CAP_KVMCLOCK_CTRL,
    "VCPU_ATTRIBUTES": lib.KVM_CAP_VCPU_ATTRIBUTES,
    "IMMEDIATE_EXIT": lib.KVM_CAP_IMMEDIATE_EXIT,
    "MAX_VCPUS": lib.KVM_CAP_MAX_VCPUS,
}

KVM_FEATURE_BITS = {
    "clocksource": 0,
    "nop_io_delay": 1,
    "mmu_op": 2,
    "clocksource2": lib.KVM_FEATURE_CLOCKSOURCE2,
    "async_pf": 4,
    "steal_time": lib.KVM_FEATURE_STEAL_TIME,
    "pv_eoi": 6,
    "pv_unhalt": 7,
    "pv_tlb_flush": 9,
    "pv_send_ipi": 11,
    "poll_control": 12,
    "pv_sched_yield": 13,
    "msi_ext_dest_id": 15,
    "clocksource_stable_bit": lib.KVM_FEATURE_CLOCKSOURCE_STABLE_BIT,
}


@dataclass
class HostInfo:
    kernel_release: str
    kvm_backend: str
    kvm_modules: list[str]
    dev_kvm: str
    api_version: int | None = None
    capabilities: dict[str, int] = field(default_factory=dict)
    kvm_features: list[str] = field(default_factory=list)
    steal_time: bool | None = None
    clocksource2: bool | None = None
    stable_bit: bool | None = None
    invariant_tsc: bool | None = None
    tsc_khz: int | None = None
    tsc_offset_attr: bool | None = None
    sched_info_live: bool | None = None
    kvmclock_stable: bool | None = None
    """KVM_GET_CLOCK's KVM_CLOCK_TSC_STABLE once a vCPU has run (KVM's master clock)"""
    pvti_stable: bool | None = None
    """PVCLOCK_TSC_STABLE_BIT in that vCPU's kvmclock area"""
    userfaultfd: str = "unknown"
    cpus: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        def yn(v: bool | None) -> str:
            return "unknown" if v is None else ("yes" if v else "no")

        return (
            [
                ("kernel release", self.kernel_release),
                ("KVM backend", self.kvm_backend),
                ("KVM modules", ", ".join(self.kvm_modules) or "-"),
                ("/dev/kvm", self.dev_kvm),
                ("KVM API version", str(self.api_version) if self.api_version is not None else "-"),
            ]
            + [(f"KVM_CAP_{k}", str(v)) for k, v in self.capabilities.items()]
            + [
                ("KVM PV features (CPUID 0x40000001)", ", ".join(self.kvm_features) or "-"),
                ("steal time", yn(self.steal_time)),
                ("kvmclock (clocksource2)", yn(self.clocksource2)),
                ("kvmclock stable bit", yn(self.stable_bit)),
                ("invariant TSC (CPUID 0x80000007 EDX[8])", yn(self.invariant_tsc)),
                ("TSC kHz (vCPU default)", str(self.tsc_khz) if self.tsc_khz else "-"),
                ("KVM_VCPU_TSC_OFFSET attribute", yn(self.tsc_offset_attr)),
                (
                    "kvmclock stable (KVM_GET_CLOCK TSC_STABLE after a run)",
                    yn(self.kvmclock_stable),
                ),
                ("kvmclock area PVCLOCK_TSC_STABLE_BIT", yn(self.pvti_stable)),
                (
                    "CPUID vs kvmclock",
                    clock_consistency(
                        self.invariant_tsc, self.stable_bit, self.kvmclock_stable, self.pvti_stable
                    ),
                ),
                ("sched_info run_delay live", yn(self.sched_info_live)),
                ("userfaultfd", self.userfaultfd),
                ("host CPUs", str(self.cpus)),
            ]
            + [("note", e) for e in self.errors]
        )


def clock_consistency(
    invariant_tsc: bool | None,
    stable_feature: bool | None,
    clock_stable: bool | None,
    pvti_stable: bool | None,
) -> str:
    """Whether the CPUID KVM offers matches what its clock really is.

    The dangerous mismatch is invariant TSC (CPUID 0x80000007 EDX[8]) offered
    while KVM's clock is not stable: a guest told its TSC is invariant treats
    it (and kvmclock) as a stable sched_clock, and its time jumps when the
    host's clock is not (the 2012 Xen jumps).  KVM_FEATURE_CLOCKSOURCE_STABLE_BIT
    only says the area's stable flag is meaningful, so it is a mismatch only
    when the area's flag disagrees with KVM_GET_CLOCK.
    """
    if clock_stable is None:
        return "unknown (no vCPU could run to ask KVM_GET_CLOCK)"
    problems = []
    if invariant_tsc and not clock_stable:
        problems.append(
            "invariant TSC is offered but KVM_GET_CLOCK says kvmclock is not "
            "stable (no master clock): guests would trust an unstable TSC, as in "
            "the 2012 Xen time jumps"
        )
    if stable_feature and pvti_stable is not None and pvti_stable != clock_stable:
        problems.append(
            f"the area's PVCLOCK_TSC_STABLE_BIT is {int(pvti_stable)} but "
            f"KVM_GET_CLOCK says {'' if clock_stable else 'not '}stable"
        )
    if problems:
        return "MISMATCH: " + "; ".join(problems)
    return "consistent: " + (
        "stable clock" if clock_stable else "unstable clock, and no invariant TSC offered"
    )


def probe_kvmclock(kvm: Any) -> tuple[bool, bool]:
    """(KVM_GET_CLOCK stable, area stable bit) after one vCPU of the clock guest
    ran one reading: KVM turns its master clock on only once a vCPU has run."""
    from kvmharness.guest.machine import GuestVm
    from kvmharness.pvclock import Pvti

    with GuestVm(kvm, "clock", vcpus=1) as gvm:
        gvm.sym("clock_mode", "uint32_t")[0] = 0
        gvm.sym("clock_batch", "uint32_t")[0] = 1
        gvm.expect(gvm.vcpus[0], lib.UCALL_SYNC)
        area = Pvti.from_cdata(gvm.sym("pvti", "struct pvclock_vcpu_time_info"))
        return bool(gvm.vm.get_clock().flags & lib.KVM_CLOCK_TSC_STABLE), area.stable


def kvm_modules() -> list[str]:
    mods = []
    for name in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm"):
        if Path("/sys/module", name).exists():
            mods.append(name)
    return mods


def kvm_backend(mods: list[str]) -> str:
    for mod, name in (("kvm_intel", "vmx"), ("kvm_amd", "svm"), ("kvm_pvm", "pvm")):
        if mod in mods:
            return name
    return "none" if not mods else "unknown"


def sched_info_live(spin_s: float = 0.02) -> bool | None:
    """Does schedstat's run_delay move?  Make this thread wait on a run queue once.

    Pins two busy children and this thread to one CPU for a moment; if
    run_delay stays at 0 the kernel is built without sched_info and KVM
    cannot publish steal time.
    """
    from kvmharness.host.contention import Stealer, run_delay_ns

    try:
        before = run_delay_ns()
    except (OSError, IndexError, ValueError):
        return None
    if before > 0:
        return True

    cpu = min(os.sched_getaffinity(0))
    old = os.sched_getaffinity(0)
    try:
        with Stealer(cpu, duration_s=spin_s * 4):
            os.sched_setaffinity(0, {cpu})
            end = time.monotonic() + spin_s
            while time.monotonic() < end:
                pass
    finally:
        os.sched_setaffinity(0, old)
    return run_delay_ns() > before


def userfaultfd_state() -> str:
    from kvmharness.host.uffd import userfaultfd_available

    return userfaultfd_available()


def gather(
    path: str = "/dev/kvm", *, probe_sched: bool = True, probe_clock: bool = False
) -> HostInfo:
    mods = kvm_modules()
    info = HostInfo(
        kernel_release=platform.release(),
        kvm_backend=kvm_backend(mods),
        kvm_modules=mods,
        dev_kvm="present" if os.path.exists(path) else "missing",
        cpus=os.cpu_count() or 0,
    )
    try:
        info.userfaultfd = userfaultfd_state()
    except Exception as exc:  # a fact we cannot read is reported, not fatal
        info.userfaultfd = f"unknown ({exc})"
    if probe_sched:
        try:
            info.sched_info_live = sched_info_live()
        except Exception as exc:
            info.errors.append(f"sched_info probe failed: {exc}")
    if info.dev_kvm == "missing":
        return info
    from kvmharness.errors import KvmError
    from kvmharness.kvm import Kvm

    try:
        kvm = Kvm(path)
    except KvmError as exc:
        info.dev_kvm = f"unusable: {exc}"
        return info
    with kvm:
        info.api_version = kvm.api_version
        for name, cap in CAPABILITIES.items():
            info.capabilities[name] = kvm.check_extension(cap)
        cpuid = {(e.function, e.index): e for e in kvm.supported_cpuid()}
        feat = cpuid.get((0x40000001, 0))
        if feat is not None:
            info.kvm_features = [n for n, b in KVM_FEATURE_BITS.items() if feat.eax >> b & 1]
            info.steal_time = "steal_time" in info.kvm_features
            info.clocksource2 = "clocksource2" in info.kvm_features
            info.stable_bit = "clocksource_stable_bit" in info.kvm_features
        ext = cpuid.get((0x80000007, 0))
        info.invariant_tsc = bool(ext.edx >> 8 & 1) if ext is not None else False
        try:
            with kvm.create_vm() as vm:
                vcpu = vm.create_vcpu(0)
                info.tsc_khz = vcpu.get_tsc_khz()
                info.tsc_offset_attr = vcpu.has_tsc_offset_attr()
        except KvmError as exc:
            info.errors.append(f"vCPU probe failed: {exc}")
        if probe_clock:
            try:
                info.kvmclock_stable, info.pvti_stable = probe_kvmclock(kvm)
            except Exception as exc:  # a fact we cannot read is reported, not fatal
                info.errors.append(f"kvmclock probe failed: {exc}")
    return info
