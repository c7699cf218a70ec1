"""The hang guard judges a scenario that stopped progressing, not a slow one.

Each test drives the real call path (``kvm._ioctl``, which keeps the
progress page) with the system call replaced by a fake, and a real
:class:`~kvmharness.host.hangguard.HangGuard` with a deadline of a second or
so: a thread that keeps calling is progressing (on a host too slow for the
deadline), a thread inside one call through a whole window is hung (asleep)
or stuck (spinning), and a scenario still progressing at the guard's cap is
untestable, never broken.  No /dev/kvm needed.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import kvmharness.kvm as kvm
from kvmharness import checks
from kvmharness import ioctls as nr
from kvmharness.ffi import ffi
from kvmharness.host import progress
from kvmharness.host.hangguard import HangGuard
from kvmharness.judges import judge_record
from kvmharness.judges.hang import hang_record
from kvmharness.judges.stopped import KIND_HUNG
from kvmharness.scenarios.base import Verdict
from kvmharness.scenarios.child import run_child

SPIN = nr.KVM_GET_REGS  # a call that spins 5 ms and returns
SLEEP = nr.KVM_GET_MSRS  # a call that sleeps until released (a mutex left held)
STUCK = nr.KVM_SET_MSRS  # a call that spins until released (a loop in the kernel)


class Fake:
    """The system call under ``kvm._ioctl``; ``release`` ends the calls that
    never return by themselves."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        if request == SLEEP:
            self.release.wait()
        elif request == STUCK:
            while not self.release.is_set():
                pass
        else:
            end = time.monotonic() + 0.005
            while time.monotonic() < end:
                pass
        return 0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    f = Fake()
    monkeypatch.setattr(kvm, "_sys_ioctl", f)
    yield f
    f.release.set()


def call(request: int) -> None:
    kvm._ioctl(-1, request, ffi.NULL, "fake vcpu")


class Fired:
    def __init__(self) -> None:
        self.args: tuple[Any, ...] | None = None
        self.event = threading.Event()

    def __call__(self, *args: Any) -> None:
        self.args = args
        self.event.set()

    def judged(self, deadline_s: float) -> Any:
        """Judge what the guard handed over, as ``run`` does."""
        assert self.args is not None
        threads, window_ns, *facts = self.args
        record = {
            "schema": 2,
            "family": "steal",
            "variant": "fake",
            "hang": hang_record(threads, window_ns, deadline_s, *facts),
        }
        return judge_record(record)


def busy(stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            call(SPIN)

    t = threading.Thread(target=loop, name="busy-vcpu", daemon=True)
    t.start()
    return t


def in_call(request: int) -> threading.Thread:
    t = threading.Thread(target=call, args=(request,), name="held-vcpu", daemon=True)
    t.start()
    return t


def test_a_slow_but_progressing_scenario_is_not_judged(fake: Fake) -> None:
    # negative control (the old guard judged this stuck at its deadline): a
    # thread that uses CPU but keeps returning from its calls, for 3 deadlines
    fired, stop = Fired(), threading.Event()
    with HangGuard(1.0, fired):
        t = busy(stop)
        fired.event.wait(3.0)
        stop.set()
        t.join()
    assert fired.args is None, f"a progressing scenario was judged: {fired.args}"


def test_a_thread_asleep_in_one_call_is_hung_while_others_progress(fake: Fake) -> None:
    fired, stop = Fired(), threading.Event()
    with HangGuard(1.0, fired):
        b, held = busy(stop), in_call(SLEEP)
        assert fired.event.wait(10), "the guard never fired on a call that never returned"
        stop.set()
        fake.release.set()
        b.join()
        held.join()
    threads, _, facts = fired.args  # type: ignore[misc]
    assert facts["stalled"] == [held.native_id]
    assert threads[0].tid == held.native_id
    j = fired.judged(1.0)
    assert j.verdict == Verdict.BROKEN and j.violations[0].kind == KIND_HUNG, j.observed
    assert "held-vcpu" in j.observed and "KVM_GET_MSRS" in j.observed, j.observed


def test_a_thread_spinning_in_one_call_is_stuck(fake: Fake) -> None:
    # alone (a second Python thread would halve its CPU through the GIL)
    fired = Fired()
    with HangGuard(2.0, fired):
        held = in_call(STUCK)
        assert fired.event.wait(10), "the guard never fired on a call that never returned"
        fake.release.set()
        held.join()
    _, _, facts = fired.args  # type: ignore[misc]
    assert facts["stalled"] == [held.native_id]
    j = fired.judged(2.0)
    if j.verdict == Verdict.UNTESTABLE and "run queue" in j.observed:
        pytest.skip(f"the host is too loaded for a spinning thread to get CPU: {j.observed}")
    assert j.verdict == Verdict.BROKEN, j.observed
    assert j.violations[0].kind == checks.KIND_STUCK and "held-vcpu" in j.observed, j.observed


def test_still_progressing_at_the_cap_is_untestable(fake: Fake) -> None:
    fired, stop = Fired(), threading.Event()
    t0 = time.monotonic()
    with HangGuard(0.6, fired, cap_s=1.5):
        t = busy(stop)
        assert fired.event.wait(10), "the guard waited past its cap"
        stop.set()
        t.join()
    assert time.monotonic() - t0 >= 1.5
    _, _, facts = fired.args  # type: ignore[misc]
    assert facts["stalled"] == [] and facts["returns"] > 0
    j = fired.judged(0.6)
    assert j.verdict == Verdict.UNTESTABLE, j.observed
    assert "still progressing" in j.observed and "too slow" in j.observed, j.observed


def test_an_old_record_without_progress_is_judged_on_its_threads() -> None:
    # the same threads with and without the progress facts: a busy thread
    # that returned calls is no hang today, but a record from before (no
    # ``progress``) is judged as it was (stuck)
    from kvmharness.judges.hang import ThreadSample, progress_facts

    busy_t = ThreadSample(7, "vcpu0", 5_000_000_000, 0, "R", "", "")
    old = {"schema": 2, "family": "steal", "variant": "v", "hang": hang_record([busy_t], 10**10, 5)}
    assert judge_record(old).verdict == Verdict.BROKEN
    new = dict(old, hang=hang_record([busy_t], 10**10, 5, progress_facts(300, [], 4 * 10**10, 50)))
    assert judge_record(new).verdict == Verdict.UNTESTABLE


def _child(monkeypatch: pytest.MonkeyPatch, cfg: dict[str, Any], deadline_s: float) -> Any:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    fired = Fired()
    snap_fd = os.memfd_create("test-snap", os.MFD_CLOEXEC)
    try:
        with HangGuard(deadline_s, fired):
            payload = run_child("progress_child", "busy", cfg, snap_fd, 60)
    finally:
        os.close(snap_fd)
    return fired, payload


def test_the_parent_sees_a_busy_child_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    # the child spins in its calls for 8 s, almost 3 deadlines: the parent,
    # asleep in waitpid, must see the child's calls return (the old guard:
    # stuck, or too loaded)
    fired, payload = _child(monkeypatch, {"busy_s": 8.0, "sleep_s": 0}, 3.0)
    assert payload["calls"] > 50
    assert fired.args is None, f"a progressing child was judged: {fired.args}"


def test_the_parent_sees_a_child_asleep_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    fired, payload = _child(monkeypatch, {"busy_s": 1.0, "sleep_s": 7.0}, 3.0)
    assert fired.args is not None, "the guard never saw the child's call that did not return"
    threads, _, facts = fired.args
    assert facts["stalled"] == [payload["tid"]]
    assert threads[0].tid == payload["tid"] and "KVM_GET_MSRS" in threads[0].where
    j = fired.judged(3.0)
    assert j.verdict == Verdict.BROKEN and j.violations[0].kind == KIND_HUNG, j.observed


def test_a_child_page_is_read_and_released() -> None:
    page = progress.ChildPage()
    try:
        page._page[progress.TID] = 12345
        page._page[progress.RETURNS] = 3
        page._page[progress.REQUEST] = nr.KVM_RUN
        r = progress.read()
        assert r.calls[12345].request == nr.KVM_RUN and r.returns >= 3
    finally:
        page.close()
    assert 12345 not in progress.read().calls


def test_the_count_never_goes_back_when_a_child_ends() -> None:
    # a child's calls stay counted after its page is gone, and its start and
    # end count as steps: the gap between a save child and a restore child is
    # progress, not a window in which nothing returned
    before = progress.read().returns
    page = progress.ChildPage()
    page._page[progress.RETURNS] = 5
    during = progress.read().returns
    page.close()
    after = progress.read().returns
    assert before < during < after
    assert after - before == 5 + 2


def test_a_call_whose_faults_keep_being_served_is_not_hung(fake: Fake) -> None:
    # a vCPU inside one KVM_RUN that takes fault after fault, each resolved by
    # the pager (postcopy on a slow host): the harness answers it, so it is
    # progressing; the same call with nothing served is hung (the test above)
    fired, stop = Fired(), threading.Event()
    with HangGuard(1.0, fired):
        held = in_call(SLEEP)
        while held.native_id is None or held.native_id not in progress.read().calls:
            time.sleep(0.01)

        def pager() -> None:
            while not stop.wait(0.1):
                progress.served(held.native_id)  # type: ignore[arg-type]

        p = threading.Thread(target=pager, daemon=True)
        p.start()
        fired.event.wait(3.5)
        stop.set()
        fake.release.set()
        p.join()
        held.join()
    assert fired.args is None, f"a call whose faults were served was judged: {fired.args}"


def test_a_served_fault_counts_for_the_faulting_threads_call_only() -> None:
    slot = progress.slot()
    tid = threading.get_native_id()
    progress.page[slot + progress.REQUEST] = nr.KVM_RUN
    try:
        before = progress.read()
        progress.served(tid)
        progress.served(tid + 1_000_000)  # no such slot: nothing counted
        after = progress.read()
        assert progress.stalled(before, after) == []
        assert after.calls[tid].served == before.calls[tid].served + 1
        assert after.returns == before.returns + 1
        assert progress.stalled(after, progress.read()) == [after.calls[tid]]
    finally:
        progress.page[slot + progress.REQUEST] = 0


def test_a_served_fault_goes_to_the_slot_in_a_call_when_a_tid_has_two() -> None:
    # an ended thread's slot keeps its tid; a new thread given the same tid
    # claims another slot: the fault is of the one inside a call
    tid = 4_000_000_000
    ended, live = 10 * progress._FIELDS, 11 * progress._FIELDS
    saved = dict(progress._claimed)
    with progress._lock:
        progress._claimed[10] = progress._claimed[11] = tid
    page = progress.page
    old = [page[b + f] for b in (ended, live) for f in range(progress._FIELDS)]
    try:
        for b in (ended, live):
            page[b + progress.TID], page[b + progress.SERVED] = tid, 0
        page[ended + progress.REQUEST] = 0
        page[live + progress.REQUEST] = nr.KVM_RUN
        progress.served(tid)
        assert (page[ended + progress.SERVED], page[live + progress.SERVED]) == (0, 1)
    finally:
        with progress._lock:
            progress._claimed.clear()
            progress._claimed.update(saved)
        for i, v in enumerate(old):
            page[(ended, live)[i // progress._FIELDS] + i % progress._FIELDS] = v


def test_the_pager_counts_a_resolved_fault_for_each_thread_that_waited_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kvmharness.host.pager import PAGE_SIZE, Pager, PagerPlan

    class Uffd:
        def wake(self, addr: int) -> None:
            pass

    seen: list[int] = []
    monkeypatch.setattr(progress, "served", seen.append)
    plan = PagerPlan(8, 2, 0, False, False, None)
    hva = 1 << 30
    p = Pager(Uffd(), hva, ffi.NULL, plan, {101: 0, 102: 1})  # type: ignore[arg-type]
    p._on_fault(hva + 3 * PAGE_SIZE, 101, 1)
    p._on_fault(hva + 3 * PAGE_SIZE + 8, 102, 2)
    p._on_fault(hva + 5 * PAGE_SIZE, 102, 3)
    assert seen == []  # nothing placed yet: all three wait
    p._mark(3, 4, "f", 1)
    assert sorted(seen) == [101, 102]
    p._on_fault(hva + 3 * PAGE_SIZE, 101, 5)  # read after the placement: woken once
    p._on_fault(hva + 3 * PAGE_SIZE, 101, 6)  # the same fault again is no progress
    assert sorted(seen) == [101, 101, 102]
    p._mark(5, 7, "s", 1)
    assert sorted(seen) == [101, 101, 102, 102]
