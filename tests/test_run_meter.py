"""lifecycle.RunMeter: how a vCPU thread spent a KVM_RUN the watchdog stopped.

Every family measures a stopped vCPU with it, and judges.stopped decides from
its figures: a thread that slept must read as asleep (hung, broken), one that
ran or queued must not.  Real threads on this host stand in for KVM_RUN: one
sleeps, one spins; a meter that swapped or dropped a figure would turn the
sleeper stuck or the spinner hung.
"""

from __future__ import annotations

import threading
import time

import pytest

from kvmharness import checks
from kvmharness.guest.machine import GuestStopped
from kvmharness.judges.stopped import KIND_HUNG, Stopped, judge_stopped
from kvmharness.scenarios.lifecycle import RunMeter

MS = 1_000_000
RIP = 0xFFFF_8000_0000_1234
#: a budget the sleeper's CPU time stays far under (10% of it: 100 ms)
BUDGET_S = 1.0


def _on_thread(body, exact_cpu: bool) -> Stopped:
    out: list[Stopped] = []

    def run() -> None:
        with RunMeter(exact_cpu=exact_cpu) as meter:
            assert meter.tid == threading.get_native_id()
            meter.begin()
            body()
            out.append(meter.stopped(GuestStopped(0, RIP)))

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert out, "the measuring thread failed"
    return out[0]


@pytest.mark.parametrize("exact_cpu", [False, True])
def test_a_thread_that_slept_reads_as_asleep_and_is_judged_hung(exact_cpu: bool) -> None:
    s = _on_thread(lambda: time.sleep(0.3), exact_cpu)
    assert s.rip == RIP
    assert s.waited_ns >= 300 * MS
    assert s.queued_ns is not None and 0 <= s.cpu_ns < 100 * MS
    v, why = judge_stopped("vcpu0", 3, s, BUDGET_S)
    assert why is None and v is not None and v.kind == KIND_HUNG, (s, why)


def _spin() -> None:
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass


@pytest.mark.parametrize("exact_cpu", [False, True])
def test_a_thread_that_spun_ran_or_queued_all_along_and_is_judged_stuck(exact_cpu: bool) -> None:
    s = _on_thread(_spin, exact_cpu)
    assert s.waited_ns >= 300 * MS and s.queued_ns is not None
    # runnable all along: on a CPU or on a run queue, never asleep (schedstat's
    # CPU time may lag a running thread by a tick: 10 ms at HZ=100)
    assert s.cpu_ns + s.queued_ns >= s.waited_ns - 20 * MS, s
    # it ran a real share of a budget it overran: stuck, not hung; on a host too
    # loaded for that, untestable, never hung
    v, why = judge_stopped("vcpu0", 3, s, 0.3)
    if v is not None:
        assert v.kind == checks.KIND_STUCK, (s, v)
    else:
        assert "too loaded" in (why or ""), (s, why)


def test_end_is_the_growth_since_begin_and_begin_is_kept() -> None:
    with RunMeter() as meter:
        start = meter.begin()
        assert meter.start is start and start.t_ns > 0 and start.cpu_ns > 0
        _spin()
        d = meter.end()
        assert 300 * MS <= d.t_ns < 30_000 * MS
        assert 0 < d.cpu_ns <= d.t_ns + 20 * MS and d.run_delay_ns >= 0
        assert meter.run_delay() >= start.run_delay_ns
