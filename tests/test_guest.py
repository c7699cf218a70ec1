"""The guest runtime on real /dev/kvm: ucalls, exceptions, assertions, vCPUs, CPUID, MSRs."""

from __future__ import annotations

import threading
import time

import pytest

from kvmharness.ffi import lib
from kvmharness.guest.build import SRC_DIR
from kvmharness.guest.machine import GuestFailure, GuestStopped

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(60)]

MODE_COMPUTE, MODE_UNMAPPED, MODE_ASSERT, MODE_CPUID = 0, 1, 2, 3
MODE_STEAL_MSR, MODE_SPIN, MODE_RDTSC, MODE_CMPXCHG = 4, 5, 7, 8
MSR_KVM_STEAL_TIME = lib.MSR_KVM_STEAL_TIME


def set_mode(gvm, mode: int) -> None:
    gvm.sym("test_mode", "uint64_t")[0] = mode


def test_sync_then_done_carries_computed_values(guest_vm, vcpu):
    set_mode(guest_vm, MODE_COMPUTE)
    sync = guest_vm.expect(vcpu, lib.UCALL_SYNC)
    assert sync.args == [0, 42, 6765]  # cpu index, 6*7, fib(20)
    guest_vm.expect(vcpu, lib.UCALL_DONE)


def test_unmapped_access_is_reported_as_page_fault(guest_vm, vcpu):
    set_mode(guest_vm, MODE_UNMAPPED)
    with pytest.raises(GuestFailure) as info:
        guest_vm.run_until_ucall(vcpu)
    uc = info.value.ucall
    vector, _err, rip, cr2 = uc.args[:4]
    assert uc.cmd == lib.UCALL_EXCEPTION
    assert vector == 14
    assert cr2 == 0x40000000
    text = guest_vm.image.symbols["guest_main"]
    assert text.value <= rip < text.value + text.size, "rip must point into guest_main"
    assert "#PF (vector 14)" in str(info.value) and f"{rip:#x}" in str(info.value)


def test_failing_assertion_reports_file_line_and_values(guest_vm, vcpu):
    set_mode(guest_vm, MODE_ASSERT)
    with pytest.raises(GuestFailure) as info:
        guest_vm.run_until_ucall(vcpu)
    uc = info.value.ucall
    assert uc.cmd == lib.UCALL_ASSERT
    assert uc.file.endswith("programs/selftest.c")
    src = (SRC_DIR / "programs" / "selftest.c").read_text().splitlines()
    assert "GUEST_ASSERT(cpu == 99" in src[uc.line - 1]
    assert uc.message == "cpu == 99"
    assert uc.args == [0, 42]


def test_each_of_four_vcpus_reports_its_own_index(make_guest):
    gvm = make_guest("selftest", vcpus=4)
    set_mode(gvm, MODE_COMPUTE)
    results = gvm.run_all()
    assert {i: [uc.args[0] for uc in ucs] for i, ucs in results.items()} == {
        0: [0],
        1: [1],
        2: [2],
        3: [3],
    }


def test_guest_finds_kvm_signature_and_steal_time_feature(guest_vm, vcpu):
    set_mode(guest_vm, MODE_CPUID)
    uc = guest_vm.expect(vcpu, lib.UCALL_SYNC)
    present, features = uc.args
    assert present == 1
    assert features >> 5 & 1, "KVM_FEATURE_STEAL_TIME missing from CPUID 0x40000001"


def test_guest_wrmsr_steal_time_is_visible_through_get_msrs(guest_vm, vcpu):
    set_mode(guest_vm, MODE_STEAL_MSR)
    assert vcpu.get_msr(MSR_KVM_STEAL_TIME) == 0
    uc = guest_vm.expect(vcpu, lib.UCALL_SYNC)
    written, read_back = uc.args
    assert written == guest_vm.symbol("steal_areas") | 1
    assert read_back == written
    assert vcpu.get_msr(MSR_KVM_STEAL_TIME) == written


def test_rdtsc_advances(guest_vm, vcpu):
    set_mode(guest_vm, MODE_RDTSC)
    t0, t1 = guest_vm.expect(vcpu, lib.UCALL_SYNC).args
    assert t1 > t0


def test_lock_cmpxchg_works_in_guest(guest_vm, vcpu):
    set_mode(guest_vm, MODE_CMPXCHG)
    word, expected = guest_vm.expect(vcpu, lib.UCALL_SYNC).args
    assert (word, expected) == (9, 5)


def test_endless_guest_loop_is_stopped_from_another_thread_with_its_rip(guest_vm, vcpu):
    set_mode(guest_vm, MODE_SPIN)
    timer = threading.Timer(0.3, guest_vm.stop, args=(0,))
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(GuestStopped) as info:
            guest_vm.run_until_ucall(vcpu)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 30
    main = guest_vm.image.symbols["guest_main"]
    assert main.value <= info.value.rip < main.value + main.size
    assert f"rip {info.value.rip:#x}" in str(info.value)
    assert guest_vm.sym("spin_counter", "uint64_t")[0] > 0, "the guest was really looping"
