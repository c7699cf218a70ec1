"""Thread hop: when KVM_RUN of a live vCPU moves to another host thread, the
guest's steal time falls to the new thread's run_delay.

The vCPU runs on thread "old", which waits behind a busy process on its CPU
(its run_delay grows, KVM charges it as steal).  Then thread "new", which
has hardly waited, issues KVM_RUN: the steal the guest reads afterwards is
that thread's run_delay, and everything charged before is gone.
"""

from __future__ import annotations

import time

import pytest

from kvmharness.testing import (
    Stealer,
    VcpuThread,
    expect_sync,
    run_delay_ns,
    usable_cpus,
)

CONTEND_S = 0.3  # the old thread spins this long beside a busy process


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.kvm
@pytest.mark.timeout(60)
def test_steal_falls_to_the_new_threads_run_delay(make_guest):
    gvm = make_guest(source="steal_guest.c")
    vcpu = gvm.vcpus[0]
    cpu = usable_cpus()[-1]
    with VcpuThread("old", cpu=cpu) as old, Stealer(cpu) as stealer:
        old.call(expect_sync, gvm, vcpu)  # steal time on
        stealer.spin(CONTEND_S)
        old.call(busy, CONTEND_S)  # the old thread waits on its run queue
        stealer.wait()
        steal_old = old.call(expect_sync, gvm, vcpu)[0]
        rd_old = run_delay_ns(old.tid)
        with VcpuThread("new", cpu=cpu) as new:
            rd_new_before = run_delay_ns(new.tid)
            steal_new = new.call(expect_sync, gvm, vcpu)[0]
            rd_new_after = run_delay_ns(new.tid)

    print(
        f"\nold thread: run_delay {rd_old / 1e6:.3f} ms, guest steal {steal_old / 1e6:.3f} ms"
        f"\nnew thread: run_delay {rd_new_before / 1e6:.3f}..{rd_new_after / 1e6:.3f} ms, "
        f"guest steal after the hop {steal_new / 1e6:.3f} ms"
    )
    assert steal_old >= 5_000_000, "control: the old thread's wait was charged as steal"
    # as measured: steal goes back, to exactly what the new thread has waited
    assert steal_new < steal_old, "steal no longer falls at a thread hop: the finding changed"
    assert rd_new_before <= steal_new <= rd_new_after
