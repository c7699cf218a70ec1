"""Reused thread: a vCPU restored onto a host thread that already ran one is
charged that thread's whole run_delay again.

A VM runs on thread T, which waits behind a busy process (its run_delay is
charged as steal).  The VM is saved, and a new VM is restored from the save
(memory, so the steal-time area with its steal; MSRs, so MSR_KVM_STEAL_TIME)
and run on the same thread T.  The new vCPU starts counting from 0, not from
T's run_delay, so its first KVM_RUN adds all of T's run_delay to the steal
the guest already had: steal about doubles while T did not wait again.
"""

from __future__ import annotations

import time

import pytest

from kvmharness.testing import (
    Stealer,
    VcpuThread,
    capture,
    expect_sync,
    read_symbol,
    restore_guest,
    run_delay_ns,
    usable_cpus,
)

CONTEND_S = 0.3


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.kvm
@pytest.mark.timeout(60)
def test_restore_on_a_used_thread_charges_its_run_delay_again(kvm, make_guest):
    gvm = make_guest(source="steal_guest.c")
    cpu = usable_cpus()[-1]
    with VcpuThread("T", cpu=cpu) as t, Stealer(cpu) as stealer:
        t.call(expect_sync, gvm, gvm.vcpus[0])  # steal time on
        stealer.spin(CONTEND_S)
        t.call(busy, CONTEND_S)
        stealer.wait()
        t.call(expect_sync, gvm, gvm.vcpus[0])
        # what the save carries: the area in guest memory (KVM may have
        # updated it after the guest's last read, at a re-entry in KVM_RUN)
        steal_saved = read_symbol(gvm, "area", "struct kvm_steal_time").steal
        state = capture(gvm.vm, program=gvm.program)
        gvm.close()
        with restore_guest(kvm, state) as new:
            rd_before = run_delay_ns(t.tid)
            steal_restored = t.call(expect_sync, new, new.vcpus[0])[0]
            rd_after = run_delay_ns(t.tid)

    charged = steal_restored - steal_saved
    print(
        f"\nsteal at the save {steal_saved / 1e6:.3f} ms; thread T's run_delay "
        f"{rd_before / 1e6:.3f}..{rd_after / 1e6:.3f} ms"
        f"\nsteal after the restore on T {steal_restored / 1e6:.3f} ms (+{charged / 1e6:.3f} ms)"
    )
    assert rd_before >= 5_000_000, "control: thread T waited on its run queue"
    # as measured: the first KVM_RUN charges T's whole run_delay once more,
    # though T waited at most rd_after - rd_before since the save
    assert rd_before <= charged <= rd_after, (
        "the restored vCPU no longer charges the thread's whole run_delay: the finding changed"
    )
