"""The postcopy destination's host side: the fault thread, the resolver and
the background stream over one userfaultfd.

:class:`Pager` reads the fault messages, requests each missing page and
places it ``latency`` later with UFFDIO_COPY, while a stream pushes the
other pages in address order.  It decides nothing about the kernel: it
records each message (time read, page, the thread id the kernel named, how
many placements came before it) and each placement (time, page, who placed
it, when its UFFDIO_COPY began) for the judge
(:mod:`kvmharness.judges.postcopy`), which replays them.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from kvmharness.ffi import ffi
from kvmharness.host import progress
from kvmharness.host.sched import SchedStat
from kvmharness.host.uffd import PAGE_SIZE, CopyResult, Userfaultfd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PagerPlan:
    """What the pager needs to know of the run."""

    pages: int
    vcpus: int
    latency_ns: int
    stream_during: bool  # the stream runs while the vCPUs touch (else only after)
    shared_first: bool  # page 0 is placed only once every vCPU waits on it
    helper_page: int | None  # held back from the stream until every vCPU has touched
    shared_hold_s: float = 5.0  # how long page 0 waits for every vCPU


def thread_cpu_ns(tid: int) -> int:
    """A thread of this process's CPU time, to the ns and including the slice it
    is running now (schedstat's figure lags a running thread by up to a tick):
    its CLOCK_THREAD_CPUTIME clock, MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)."""
    return time.clock_gettime_ns(((~tid) << 3) | 6)


def process_sched() -> dict[int, int]:
    """CPU time + run_delay of every thread of this process, by thread id."""
    out = {}
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        try:
            with open(f"/proc/self/task/{name}/schedstat", "rb") as f:
                rd = int(f.read().split()[1])
            out[tid] = thread_cpu_ns(tid) + rd
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return out


def others_since(before: dict[int, int], exclude_tid: int) -> int:
    """CPU time + run_delay the other threads got since ``before`` (a thread
    born since counts whole; one that ended since is lost, a few us at most)."""
    now = process_sched()
    return sum(v - before.get(t, 0) for t, v in now.items() if t != exclude_tid)


class Pager:
    """The fault thread and the source thread (resolver and stream).  ``lock``
    orders the events: a placement marks the page received under it, and a
    message read afterwards finds the page there."""

    def __init__(
        self, uffd: Userfaultfd, hva: int, staging: Any, plan: PagerPlan, tids: dict[int, int]
    ) -> None:
        self.uffd, self.hva, self.plan = uffd, hva, plan
        self.staging = int(ffi.cast("uintptr_t", staging))
        self.tids = tids  # tid -> vCPU index (only to know who waits on the shared page)
        self.size = plan.pages * PAGE_SIZE
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.received = bytearray(plan.pages)
        self.placed_count = 0
        self.first_place_ns = self.last_place_ns = 0
        self.fast = (0, 0, 0)  # first, last ns and count of unpaced stream placements
        self.all_placed = threading.Event()
        self.heap: list[tuple[int, int]] = []  # (due ns, page)
        self.requested: set[int] = set()
        self.shared_waiters: set[int] = set()
        self.waiting: dict[int, set[int]] = {}  # page -> tids whose fault on it is unresolved
        self.woke: set[tuple[int, int]] = set()  # (page, tid) read after the page was placed
        self.shared_first_ns = 0
        # the raw events, for the judge
        self.faults: list[tuple[int, int, int, int]] = []  # (t read, page, tid, placements before)
        self.placements: list[tuple[int, int, str, int]] = []  # (t, page, how, t - copy start)
        self.stream_next = 0
        self.stream_fast = False
        self.touched_count = 0
        self.flush = False
        self.stop = threading.Event()
        self.abort = threading.Event()  # the run is being torn down: nobody waits any more
        self.eexist = 0
        self.ft_sched = (0, 0)
        self.errors: list[BaseException] = []
        self._threads = [
            threading.Thread(
                target=self._guard, args=(self._fault_loop,), name="pc-fault", daemon=True
            ),
            threading.Thread(
                target=self._guard, args=(self._source_loop,), name="pc-source", daemon=True
            ),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        with self.lock:
            self.wakeup.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the scenario, never lost
            log.debug("pager thread failed", exc_info=True)
            self.errors.append(exc)
            self.stop.set()

    # ---- the fault thread
    def _fault_loop(self) -> None:
        st = SchedStat()
        c0, r0 = st.read()
        try:
            while not self.stop.is_set():
                if not self.uffd.wait(0.05):
                    continue
                msgs = self.uffd.read_faults()
                if not msgs:
                    continue
                t = time.monotonic_ns()
                with self.lock:
                    for m in msgs:
                        self._on_fault(m.address, m.tid, t)
                    self.wakeup.notify_all()
                c1, r1 = st.read()
                self.ft_sched = (c1 - c0, r1 - r0)
        finally:
            st.close()

    def _on_fault(self, addr: int, tid: int, t: int) -> None:
        off = addr - self.hva
        page = off // PAGE_SIZE
        self.faults.append((t, page, tid, len(self.placements)))
        if not 0 <= off < self.size:
            return  # outside the region: the judge says so
        if self.received[page]:
            self.uffd.wake(self.hva + page * PAGE_SIZE)  # the copy woke it; nothing waits
            if (page, tid) not in self.woke:  # once: a fault that recurs is no progress
                self.woke.add((page, tid))
                progress.served(tid)
            return
        self.waiting.setdefault(page, set()).add(tid)
        if self.plan.shared_first and page == 0:
            vcpu = self.tids.get(tid)
            if vcpu is not None:
                self.shared_waiters.add(vcpu)
            if not self.shared_first_ns:
                self.shared_first_ns = t
            if len(self.shared_waiters) == self.plan.vcpus and 0 not in self.requested:
                self.requested.add(0)
                heapq.heappush(self.heap, (t + self.plan.latency_ns, 0))
            return
        if page not in self.requested:
            self.requested.add(page)
            heapq.heappush(self.heap, (t + self.plan.latency_ns, page))

    # ---- the resolver and the stream (one "source" thread)
    def _place(self, page: int, how: str) -> None:
        dst = self.hva + page * PAGE_SIZE
        t_copy = time.monotonic_ns()
        res = self.uffd.copy(dst, self.staging + page * PAGE_SIZE)
        with self.lock:
            t = time.monotonic_ns()
            if res is CopyResult.EXISTS:
                self.eexist += 1
                if not self.received[page]:
                    self._mark(page, t, "x", t_copy)  # present, and nobody here placed it
                return
            self._mark(page, t, how, t_copy)

    def _mark(self, page: int, t: int, how: str, t_copy: int) -> None:
        self.received[page] = 1
        for tid in self.waiting.pop(page, ()):
            progress.served(tid)  # its KVM_RUN waited on us and goes on: progress
        self.placements.append((t, page, how, t - t_copy))
        self.placed_count += 1
        self.first_place_ns = self.first_place_ns or t
        self.last_place_ns = t
        if how == "s" and self.stream_fast:  # the unpaced tail of the stream
            self.fast = (self.fast[0] or t, t, self.fast[2] + 1)
        if self.placed_count == self.plan.pages:
            self.all_placed.set()

    def _next_stream_page(self) -> int | None:
        """The lowest page neither placed nor requested; the helper's page is held
        back until every vCPU has touched (its fault must reach the resolver)."""
        while self.stream_next < self.plan.pages:
            p = self.stream_next
            if self.received[p] or p in self.requested:
                self.stream_next += 1
                continue
            if p == self.plan.helper_page and not (self.stream_fast or self.flush):
                return None
            return p
        return None

    def touched(self) -> None:
        """One vCPU is past its touches; once all are, the stream sends the rest."""
        with self.lock:
            self.touched_count += 1
            if self.touched_count >= self.plan.vcpus:
                self.stream_fast = True
                self.wakeup.notify_all()

    def _source_loop(self) -> None:
        lat = self.plan.latency_ns
        next_stream = time.monotonic_ns() + lat
        while not self.stop.is_set() and not self.all_placed.is_set():
            now = time.monotonic_ns()
            job: tuple[int, str] | None = None
            with self.lock:
                if self.flush:
                    missing = [p for p in range(self.plan.pages) if not self.received[p]]
                    job = (missing[0], "f") if missing else None
                elif self.heap and self.heap[0][0] <= now:
                    job = (heapq.heappop(self.heap)[1], "r")
                elif (
                    self.plan.shared_first
                    and not self.requested
                    and self.shared_first_ns
                    and now - self.shared_first_ns > self.plan.shared_hold_s * 1e9
                ):
                    self.requested.add(0)  # not every vCPU came: place it anyway
                    job = (0, "r")
                else:
                    streaming = self.stream_fast or (self.plan.stream_during and now >= next_stream)
                    p = self._next_stream_page() if streaming else None
                    if p is not None:
                        self.stream_next = p + 1
                        job = (p, "s")
                        next_stream = now + lat
                if job is None:
                    due = [self.heap[0][0]] if self.heap else []
                    if self.plan.stream_during and not self.stream_fast:
                        due.append(next_stream)
                    wait = (min(due) - now) / 1e9 if due else 0.05
                    self.wakeup.wait(min(max(wait, 0), 0.05))
                    continue
            self._place(*job)

    def request_flush(self) -> None:
        with self.lock:
            self.flush = True
            self.wakeup.notify_all()

    def stream_all(self) -> None:
        with self.lock:
            self.stream_fast = True
            self.wakeup.notify_all()
