"""kvm_pvm: TSC writes are accepted and not applied, and the master clock is
lost at every restore.

1. KVM_SET_MSRS(MSR_IA32_TSC) succeeds, yet the guest keeps reading the host
   TSC, and KVM_GET_MSRS reads back the host TSC, not the value written.
2. KVM_HAS_DEVICE_ATTR offers KVM_VCPU_TSC_OFFSET and KVM_SET_DEVICE_ATTR
   succeeds, yet the guest reads host TSC + 0 and the offset reads back as 0.
3. KVM_GET_CLOCK says KVM_CLOCK_TSC_STABLE while a VM runs; a VM restored
   from its saved state (which writes each vCPU's saved MSR_IA32_TSC) runs
   without it, although no TSC changed.

Only kvm_pvm does this: the tests skip elsewhere.
"""

from __future__ import annotations

import os

import pytest

from kvmharness.testing import capture, expect_sync, restore_guest

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not os.path.isdir("/sys/module/kvm_pvm"), reason="a kvm_pvm finding: kvm_pvm not loaded"
    ),
]

MSR_IA32_TSC = 0x10
KVM_CLOCK_TSC_STABLE = 2
AHEAD_S = 1000  # write the TSC this far ahead


def test_msr_ia32_tsc_write_is_accepted_and_not_applied(make_guest):
    gvm = make_guest(source="tsc_guest.c")
    vcpu = gvm.vcpus[0]
    ahead = AHEAD_S * vcpu.get_tsc_khz() * 1000
    t0 = expect_sync(gvm, vcpu)[0]
    vcpu.set_msr(MSR_IA32_TSC, t0 + ahead)  # accepted: no error
    read_back = vcpu.get_msr(MSR_IA32_TSC)
    t1 = expect_sync(gvm, vcpu)[0]
    print(
        f"\nwrote MSR_IA32_TSC = {t0 + ahead}; KVM_GET_MSRS read {read_back}; "
        f"the guest read {t1} ({(t1 - t0) / (ahead / AHEAD_S) * 1000:.3f} ms after {t0})"
    )
    assert t0 <= t1 < t0 + ahead // 2, "the guest now reads the TSC written: the finding changed"
    assert read_back < t0 + ahead // 2


def test_tsc_offset_attribute_is_accepted_and_not_applied(make_guest):
    gvm = make_guest(source="tsc_guest.c")
    vcpu = gvm.vcpus[0]
    assert vcpu.has_tsc_offset_attr(), "KVM_HAS_DEVICE_ATTR offers KVM_VCPU_TSC_OFFSET"
    offset = AHEAD_S * vcpu.get_tsc_khz() * 1000
    t0 = expect_sync(gvm, vcpu)[0]
    vcpu.set_tsc_offset(offset)  # accepted: no error
    read_back = vcpu.get_tsc_offset()
    t1 = expect_sync(gvm, vcpu)[0]
    print(f"\nset KVM_VCPU_TSC_OFFSET = {offset}; it reads back {read_back}; guest TSC +{t1 - t0}")
    assert read_back == 0, "the offset now reads back: the finding changed"
    assert t0 <= t1 < t0 + offset // 2, "the guest now reads the offset TSC: the finding changed"


def test_master_clock_lost_at_every_restore(kvm, make_guest):
    gvm = make_guest(source="tsc_guest.c", vcpus=2)
    for v in gvm.vcpus:
        expect_sync(gvm, v)
    before = gvm.vm.get_clock().flags
    state = capture(gvm.vm, program=gvm.program)
    saved = [vs.msrs[MSR_IA32_TSC] for vs in state.vcpus]
    with restore_guest(kvm, state) as new:
        for v in new.vcpus:
            expect_sync(new, v)
        after = new.vm.get_clock().flags
    print(
        f"\nKVM_GET_CLOCK flags {before:#x} before the save, {after:#x} after the restore "
        f"(saved TSCs {saved[1] - saved[0]} ticks apart)"
    )
    assert before & KVM_CLOCK_TSC_STABLE, "control: the running VM has a master clock"
    assert not after & KVM_CLOCK_TSC_STABLE, "the restored VM keeps it now: the finding changed"
