"""The Kvm/Vm/Vcpu binding: state round trips, errors that name what failed, no leaks."""

from __future__ import annotations

import os
import threading

import pytest

from kvmharness.errors import IoctlError, KvmUnavailable, MemorySlotError, MsrError
from kvmharness.ffi import ffi, lib
from kvmharness.hostinfo import kvm_backend, kvm_modules
from kvmharness.kvm import ClockData, Kvm, cdata_to_dict, dict_to_cdata, from_raw, raw_bytes

MSR_KVM_STEAL_TIME = lib.MSR_KVM_STEAL_TIME
MSR_KVM_SYSTEM_TIME_NEW = lib.MSR_KVM_SYSTEM_TIME_NEW
MSR_IA32_TSC = 0x10


def test_missing_dev_kvm_gives_clear_message(tmp_path):
    with pytest.raises(KvmUnavailable, match="does not exist: this host has no KVM"):
        Kvm(str(tmp_path / "kvm"))


def test_unopenable_device_names_the_path(tmp_path):
    path = tmp_path / "notkvm"
    path.write_text("")
    with pytest.raises(KvmUnavailable, match="notkvm"):
        Kvm(str(path))


@pytest.mark.kvm
def test_system_queries(kvm):
    assert kvm.api_version == 12
    assert kvm.vcpu_mmap_size >= 4096
    cpuid = {(e.function, e.index) for e in kvm.supported_cpuid()}
    assert (0x40000000, 0) in cpuid and (0x40000001, 0) in cpuid
    msrs = kvm.msr_index_list()
    assert MSR_KVM_STEAL_TIME in msrs and MSR_KVM_SYSTEM_TIME_NEW in msrs
    assert kvm.check_extension(lib.KVM_CAP_IMMEDIATE_EXIT) == 1


@pytest.mark.kvm
def test_overlapping_memory_slot_is_refused_with_both_ranges(kvm):
    with kvm.create_vm() as vm:
        vm.add_memory(0, 0, 1 << 20)
        with pytest.raises(MemorySlotError, match=r"overlaps slot 0 \[0x0, 0x100000\)"):
            vm.add_memory(1, 0x80000, 1 << 20)
        with pytest.raises(MemorySlotError, match="multiples"):
            vm.add_memory(2, 0x200001, 4096)


@pytest.mark.kvm
def test_ioctl_error_names_ioctl_object_and_errno(kvm):
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        with pytest.raises(IoctlError) as info:
            vm.create_vcpu(0)  # same id twice: EEXIST
        assert info.value.ioctl == "KVM_CREATE_VCPU"
        assert "vm(fd" in str(info.value) and "EEXIST" in str(info.value)
        with pytest.raises(MsrError) as minfo:
            vcpu.set_msrs({MSR_KVM_STEAL_TIME: 0, 0xDEADBEEF: 1, MSR_IA32_TSC: 5})
        assert minfo.value.failed_index == 0xDEADBEEF
        assert "0xdeadbeef" in str(minfo.value) and "1 of 3" in str(minfo.value)
        with pytest.raises(MsrError, match="0xdeadbeef"):
            vcpu.get_msrs([MSR_IA32_TSC, 0xDEADBEEF])


@pytest.mark.kvm
def test_register_state_round_trips(guest_vm, vcpu):
    regs = vcpu.get_regs()
    regs.rax, regs.r15 = 0x1234, 0xFEED
    vcpu.set_regs(regs)
    assert (vcpu.get_regs().rax, vcpu.get_regs().r15) == (0x1234, 0xFEED)
    sregs = vcpu.get_sregs()
    again = from_raw("struct kvm_sregs", raw_bytes(sregs))
    vcpu.set_sregs(again)
    assert cdata_to_dict(vcpu.get_sregs()) == cdata_to_dict(sregs)
    assert sregs.efer & 0x500 == 0x500, "long mode active"
    events = dict_to_cdata("struct kvm_vcpu_events", cdata_to_dict(vcpu.get_vcpu_events()))
    vcpu.set_vcpu_events(events)
    assert vcpu.get_mp_state() == lib.KVM_MP_STATE_RUNNABLE
    vcpu.set_xsave(vcpu.get_xsave())
    vcpu.set_fpu(vcpu.get_fpu())
    vcpu.set_msrs({MSR_KVM_STEAL_TIME: guest_vm.symbol("steal_areas") | 1})
    assert vcpu.get_msr(MSR_KVM_STEAL_TIME) == guest_vm.symbol("steal_areas") | 1
    cpuid = vcpu.get_cpuid()
    assert any(e.function == 0x40000001 for e in cpuid)


@pytest.mark.kvm
def test_clock_and_tsc_controls(guest_vm, vcpu, characterize):
    vm = guest_vm.vm
    before = vm.get_clock()
    vm.set_clock(ClockData(before.clock_ns + 10**9))
    after = vm.get_clock()
    assert after.clock_ns >= before.clock_ns + 10**9
    assert after.clock_ns < before.clock_ns + 10**9 + 10**9, "clock jumped far beyond the set"
    khz = vcpu.get_tsc_khz()
    assert khz > 0
    if vcpu.has_tsc_offset_attr():
        off = vcpu.get_tsc_offset()
        want = (off + 1_000_000_000) % 2**64
        vcpu.set_tsc_offset(want)
        got = vcpu.get_tsc_offset()
        if kvm_backend(kvm_modules()) == "pvm" and got == off:
            # kvm_pvm runs guests on the host TSC: it accepts the attribute and
            # MSR_IA32_TSC writes but applies neither (measured on this backend).
            characterize(f"pvm ignores KVM_VCPU_TSC_OFFSET (set {want}, read {got})")
        elif got != want and host_tsc_unstable():
            pytest.skip(
                "the host's TSC is marked unstable (not in available_clocksource): KVM "
                "re-bases a vCPU's TSC offset at every vcpu_load (TSC catch-up), so an "
                f"offset set does not read back (set {want}, read {got})"
            )
        else:
            assert got == want, f"KVM_VCPU_TSC_OFFSET set {want}, read back {got}"


def host_tsc_unstable(sysfs: str = "/sys/devices/system/clocksource/clocksource0") -> bool:
    """The kernel marked the TSC unstable: it has left the clocksources offered
    (an unstable TSC loses CLOCK_SOURCE_VALID_FOR_HRES, and available_clocksource
    lists only those), though the CPU has one."""
    try:
        with open(os.path.join(sysfs, "available_clocksource")) as f:
            offered = f.read().split()
    except OSError:
        return False
    with open("/proc/cpuinfo") as f:
        has_tsc = " tsc " in f.read()
    return has_tsc and "tsc" not in offered


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.kvm
@pytest.mark.timeout(300)
def test_no_fd_or_thread_leak_over_1000_create_destroy_cycles(kvm):
    from kvmharness.guest.machine import GuestVm

    # warm up caches (guest build, cffi types) so they do not count as leaks
    GuestVm(kvm, "selftest").close()
    fds, threads = _fd_count(), _thread_count()
    for i in range(1000):
        with kvm.create_vm() as vm:
            vm.add_memory(0, 0, 2 << 20)
            vm.create_vcpu(0)
            if i % 100 == 0:
                assert _fd_count() == fds + 2  # the vm fd and the vcpu fd
    for _ in range(20):
        GuestVm(kvm, "selftest", vcpus=2).close()
    assert _fd_count() == fds
    assert _thread_count() == threads


@pytest.mark.kvm
def test_closed_objects_refuse_use(kvm):
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    vm.close()
    with pytest.raises(Exception, match="closed"):
        vcpu.run()
    with pytest.raises(Exception, match="closed"):
        vm.create_vcpu(1)
    vm.close()  # idempotent


def test_ffi_sizes_match_kernel_basics():
    # The full check is tests/test_layout.py; this guards the two hot structs.
    assert ffi.sizeof("struct kvm_regs") == 144
    assert ffi.offsetof("struct kvm_run", "kvm_valid_regs") == 288


def test_thread_identity_helper_reports_native_id():
    from kvmharness.host.threads import VcpuThread, current_tid

    with VcpuThread("t") as t:
        assert t.call(current_tid) == t.tid != threading.get_native_id()


def test_host_tsc_unstable_reads_the_clocksources_offered(tmp_path):
    (tmp_path / "available_clocksource").write_text("hpet acpi_pm \n")
    assert host_tsc_unstable(str(tmp_path))
    (tmp_path / "available_clocksource").write_text("tsc hpet acpi_pm \n")
    assert not host_tsc_unstable(str(tmp_path))
    assert not host_tsc_unstable(str(tmp_path / "absent"))
