"""Which host thread issues each vCPU ioctl is the caller's choice, and provably so."""

from __future__ import annotations

import threading

import pytest

from kvmharness.ffi import lib
from kvmharness.host.contention import run_delay_ns
from kvmharness.host.threads import VcpuThread, current_tid

MSR_KVM_STEAL_TIME = lib.MSR_KVM_STEAL_TIME


@pytest.mark.kvm
@pytest.mark.timeout(60)
def test_set_msrs_and_run_are_issued_by_the_chosen_threads(make_guest):
    gvm = make_guest("steal")
    vcpu = gvm.vcpus[0]
    main_tid = threading.get_native_id()
    with VcpuThread("writer") as writer, VcpuThread("runner") as runner:
        assert len({main_tid, writer.tid, runner.tid}) == 3

        def write_msr():
            vcpu.set_msrs({MSR_KVM_STEAL_TIME: gvm.symbol("steal_areas") | 1})
            return current_tid()

        def run_once():
            tid = current_tid()
            uc = gvm.expect(vcpu, lib.UCALL_SYNC)
            return tid, uc.args[1], run_delay_ns()

        assert writer.call(write_msr) == writer.tid
        tid, _steal, _ = runner.call(run_once)
        assert tid == runner.tid
        # KVM charges steal against the thread that issues KVM_RUN: after a second
        # entry on the runner, the published steal equals that thread's run_delay
        # as of the entry (it started from last_steal = 0), never the writer's.
        tid, steal, delay_after = runner.call(run_once)
        assert tid == runner.tid
        assert steal <= delay_after


def test_calls_run_in_order_and_exceptions_reach_the_caller():
    with VcpuThread("t") as t:
        order: list[int] = []
        futures = [t.submit(order.append, i) for i in range(50)]
        for f in futures:
            f.result()
        assert order == list(range(50))
        with pytest.raises(ZeroDivisionError):
            t.call(lambda: 1 / 0)
        assert t.call(current_tid) == t.tid


def test_pinning_applies_to_the_thread_only():
    import os

    allowed = sorted(os.sched_getaffinity(0))
    with VcpuThread("pinned", cpu=allowed[-1]) as t:
        assert t.call(os.sched_getaffinity, 0) == {allowed[-1]}
    assert sorted(os.sched_getaffinity(0)) == allowed
