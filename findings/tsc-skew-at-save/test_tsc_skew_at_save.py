"""TSC skew at save: vCPUs saved in turn carry TSCs apart by the time between
their saves; KVM's 1-second synchronization hides it at the restore.

A VMM saves vCPU 0's state, then vCPU 1's: MSR_IA32_TSC of vCPU 1 is later
by the time that took.  The restore writes each saved value back, in turn.
KVM takes a host write of MSR_IA32_TSC that lands within one second of
where the previous write's TSC is now as the same TSC ("synchronizing") and
gives the vCPU the previous vCPU's offset: the restored vCPUs read the same
TSC, and the skew the save carried is gone, silently.  Values one second or
more apart are applied as written.
"""

from __future__ import annotations

import os
import time

import pytest

from kvmharness.testing import capture, expect_sync, restore_guest

MSR_IA32_TSC = 0x10
PVM = os.path.isdir("/sys/module/kvm_pvm")


def tscs_now(vcpus) -> tuple[int, int, int]:
    """Both vCPUs' TSCs read back to back, and the most ticks the reads can be apart."""
    khz = vcpus[0].get_tsc_khz()
    t0 = time.monotonic_ns()
    a, b = vcpus[0].get_msr(MSR_IA32_TSC), vcpus[1].get_msr(MSR_IA32_TSC)
    window = (time.monotonic_ns() - t0 + 1000) * khz // 1_000_000 + 1
    return a, b, window


@pytest.mark.kvm
@pytest.mark.timeout(60)
def test_skew_at_save_is_gone_after_restore(kvm, make_guest):
    gvm = make_guest(source="tsc_guest.c", vcpus=2)
    for v in gvm.vcpus:
        expect_sync(gvm, v)
    khz = gvm.vcpus[0].get_tsc_khz()
    state = capture(gvm.vm, program=gvm.program)  # vCPU 0, then vCPU 1
    saved = [vs.msrs[MSR_IA32_TSC] for vs in state.vcpus]
    skew = saved[1] - saved[0]
    with restore_guest(kvm, state) as new:  # writes saved[0], then saved[1]
        a, b, window = tscs_now(new.vcpus)
    print(
        f"\nsaved TSCs {skew} ticks apart ({skew / khz:.3f} ms); restored TSCs "
        f"{b - a} ticks apart ({(b - a) / khz:.3f} ms; the reads were at most {window} apart)"
    )
    assert skew > 0, "vCPU 1 was saved after vCPU 0"
    # as measured: the restored vCPUs are apart only by the time between the reads
    assert 0 <= b - a <= window, "the restore keeps the skew now: the finding changed"


@pytest.mark.kvm
@pytest.mark.timeout(60)
@pytest.mark.parametrize("apart_s", [0.5, 2.0])
def test_one_second_rule(make_guest, apart_s):
    # kvm_pvm applies no TSC write at all (findings/pvm-tsc): nothing is kept there
    kept = apart_s >= 1 and not PVM
    gvm = make_guest(source="tsc_guest.c", vcpus=2)
    for v in gvm.vcpus:
        expect_sync(gvm, v)
    khz = gvm.vcpus[0].get_tsc_khz()
    base = gvm.vcpus[0].get_msr(MSR_IA32_TSC)
    gvm.vcpus[0].set_msr(MSR_IA32_TSC, base)
    gvm.vcpus[1].set_msr(MSR_IA32_TSC, base + int(apart_s * khz * 1000))
    a, b, window = tscs_now(gvm.vcpus)
    print(f"\nwritten {apart_s} s apart: the vCPUs read {(b - a) / khz:.3f} ms apart")
    if kept:
        assert abs((b - a) - apart_s * khz * 1000) <= window + khz  # within 1 ms
    else:
        assert 0 <= b - a <= window
