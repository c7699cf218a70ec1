"""Progress of the harness's KVM calls, for the hang guard.

Every ioctl the harness issues goes through :func:`kvmharness.kvm._ioctl`
(KVM_RUN through ``Vcpu.run``).  Each thread that issues one owns a *slot* in
a small shared page of int64s: its native tid, how many calls it has
returned from (the slot's count, which only grows), the request of the call
it is in (0: in none) and when it entered that call (CLOCK_MONOTONIC ns;
not written by KVM_RUN, the hot path, where it keeps an older call's).
Writing them costs a few stores per call; reading them costs the hang guard
one pass over the page.

From two readings the guard knows, exactly, whether the scenario made
progress (some call returned) and which threads stayed inside the *same*
call throughout (in a call at both readings with the same count and entry
time): a KVM_RUN that a kick does not end, a KVM_GET_MSRS asleep on a mutex
left held.  A scenario that is slow but progressing is neither.

A call that waits on the harness itself is not stuck while the harness
serves it: a vCPU inside KVM_RUN on a userfaultfd fault waits for the
pager's UFFDIO_COPY, and one KVM_RUN may take many such faults.  The pager
counts each fault it resolves in the faulting thread's slot
(:func:`served`), so a thread whose faults keep being served is progressing;
one asleep on a fault nobody resolves is not.

A cross-process scenario's child maps its own page from a memfd the parent
creates (:class:`ChildPage`; the child finds it in
:data:`ENV`), so the parent's guard reads the child's calls as its own.
Thread ids are system-wide, so the readings of all pages merge by tid.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: The environment variable that gives a child process the fd of its page.
ENV = "KVMHARNESS_PROGRESS_FD"

SLOTS = 256
_FIELDS = 5  # tid, returns, request (0: in no call), entry ns, faults served
TID, RETURNS, REQUEST, ENTRY_NS, SERVED = range(_FIELDS)
_SIZE = SLOTS * _FIELDS * 8


def _map(fd: int = -1) -> memoryview:
    m = mmap.mmap(fd, _SIZE) if fd >= 0 else mmap.mmap(-1, _SIZE)
    return memoryview(m).cast("q")


def _own_page() -> memoryview:
    fd_s = os.environ.pop(ENV, None)  # popped: the child's own children get none
    if fd_s is not None:
        try:
            fd = int(fd_s)
            page = _map(fd)
            os.close(fd)
            return page
        except (ValueError, OSError) as exc:
            log.warning("%s=%s unusable (%s): progress not shared", ENV, fd_s, exc)
    return _map()


#: This process's page (the one its threads write).
page = _own_page()
_lock = threading.Lock()
_claimed: dict[int, int] = {}  # slot -> tid, under _lock
tls = threading.local()  # .base: the thread's slot, once claimed


def slot() -> int:
    """The base index in :data:`page` of the calling thread's slot (claimed on
    its first call; the slot of a thread that ended is reused, keeping its
    count, so the page's total count never goes back)."""
    try:
        return int(tls.base)
    except AttributeError:
        pass
    tid = threading.get_native_id()
    with _lock:
        free = next((i for i in range(SLOTS) if i not in _claimed), None)
        if free is None:
            alive = {t.native_id for t in threading.enumerate()}
            free = next((i for i, t in _claimed.items() if t not in alive), None)
        if free is None:  # more live threads than slots: share the last one
            log.warning("more than %d threads issue KVM calls; progress merged", SLOTS)
            free = SLOTS - 1
        _claimed[free] = tid
        base = free * _FIELDS
        page[base + REQUEST] = 0
        page[base + TID] = tid
    tls.base = base
    return base


@dataclass(frozen=True)
class Call:
    """A thread inside a call at a reading."""

    tid: int
    request: int
    returns: int  # the slot's count when it entered: with the tid, the call's identity
    entry_ns: int  # when it entered (an older call's for KVM_RUN)
    served: int = 0  # its faults the pager had resolved (see :func:`served`)


@dataclass(frozen=True)
class Reading:
    """All pages at one moment: the calls returned so far and the calls in flight."""

    at_ns: int
    returns: int
    calls: dict[int, Call]


_children: list[memoryview] = []
#: Returns of the children that ended, plus one for each child started and
#: ended (a step of the scenario too), so the total never goes back.
_retired = 0
_pages_lock = threading.Lock()


def _count(p: memoryview) -> int:
    return sum(p[RETURNS::_FIELDS]) + sum(p[SERVED::_FIELDS])


_served_lock = threading.Lock()


def served(tid: int) -> None:
    """Count one userfaultfd fault of thread ``tid`` (of this process) as
    resolved: the call it is in waited on the harness and was answered.  A
    thread with no slot (it issued no KVM call yet) has nothing to count.
    The slot in a call wins over an ended thread's slot that kept a reused tid."""
    with _lock:  # the slots claimed by this tid: a few, not a pass over the page
        mine = [i * _FIELDS for i, t in _claimed.items() if t == tid]
    with _served_lock:
        for base in sorted(mine, key=lambda b: page[b + REQUEST] == 0)[:1]:
            page[base + SERVED] += 1


def read() -> Reading:
    """Read this process's page and those of its running children."""
    import time

    with _pages_lock:
        now = time.monotonic_ns()
        total, calls = _retired, {}
        for p in [page, *_children]:
            for base in range(0, _SIZE // 8, _FIELDS):
                tid, n, req, entry, done = p[base : base + _FIELDS]
                total += n + done
                if tid and req:
                    calls[tid] = Call(tid, req, n, entry, done)
    return Reading(now, total, calls)


def stalled(before: Reading, after: Reading) -> list[Call]:
    """The threads inside the same call at both readings (it never returned
    between them, and none of its faults was served)."""
    return [c for tid, c in after.calls.items() if before.calls.get(tid) == c]


class ChildPage:
    """A page for one child process: pass it :attr:`fd` and :attr:`env`.
    Until :meth:`close` the child's calls are read with this process's."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("kvmharness-progress", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, _SIZE)
            self._page = _map(self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        self.env = {**os.environ, ENV: str(self.fd)}
        global _retired
        with _pages_lock:
            _children.append(self._page)
            _retired += 1

    def close(self) -> None:
        global _retired
        if self.fd >= 0:
            with _pages_lock:
                _children.remove(self._page)
                _retired += _count(self._page) + 1
            os.close(self.fd)
            self.fd = -1


#: Set while a hang guard watches a scenario: it, not a timeout of one
#: step, decides when waiting has become a hang.
guarded = threading.Event()
