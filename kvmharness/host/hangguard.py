"""The hang guard: what ends a run whose scenario never returns.

A kernel that leaves a lock held (e.g. vcpu->mutex after KVM_SET_MSRS) makes
the next ioctl on that vCPU sleep in ``mutex_lock_killable()`` for ever: no
signal but a fatal one wakes it, so neither the watchdog's kick nor a
timeout in Python can end the scenario, and a main thread that made such an
ioctl sleeps too.  :class:`HangGuard` is a daemon thread armed around one
scenario.  Halfway to its deadline it reads every thread of this process and
of its children (CPU time and run_delay from ``schedstat``) and the
progress of the harness's KVM calls (:mod:`kvmharness.host.progress`); at
the deadline, if the scenario has not returned, it reads them again.  A
scenario whose calls kept returning, none staying inside one call, is slow,
not hung: the guard reads again a half-deadline later, and so on up to its
cap.  Otherwise it hands the threads' growth over the window (with each
thread's state, ``wchan`` and Python stack) and what it saw of the progress
to ``on_hang``, which judges it (:mod:`kvmharness.judges.hang`), writes the
report and ends the process with :func:`die` (threads asleep in the kernel
cannot be joined; only a fatal exit ends them).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from kvmharness.host import progress
from kvmharness.judges.hang import ThreadSample, progress_facts

log = logging.getLogger(__name__)

#: Seconds added to a scenario's deadline beyond its budget and phases.  The
#: deadline is when the guard first looks, not a limit on a slow scenario (it
#: waits while the scenario progresses); it is also the shortest window (half
#: of it) over which "no KVM call returned" is judged, so it must exceed what a
#: step without KVM calls (a child process starting) can take on a slow host.
HANG_MARGIN_S = 60.0


def scenario_deadline_s(budget_s: float, contend_ms: int, downtime_ms: int) -> float:
    """How long a scenario may take before the guard judges its threads:
    twice the vCPU budget (a scenario runs its vCPUs for at most the budget,
    then the watchdog stops them, and a save/restore may run them again), four
    times each phase (contention and downtime, before and after a boundary),
    and :data:`HANG_MARGIN_S`."""
    return 2 * budget_s + 4 * (contend_ms + downtime_ms) / 1000 + HANG_MARGIN_S


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for tid in _tids(p):
            for c in _read(f"/proc/{p}/task/{tid}/children").split():
                out.append(int(c))
                todo.append(int(c))
    return out


def _tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def sample_threads(skip: frozenset[int] = frozenset()) -> dict[tuple[int, int], tuple[int, int]]:
    """(pid, tid) -> (CPU time, run_delay) of every thread of this process and
    its descendants, but ``skip``."""
    me = os.getpid()
    out = {}
    for pid in [me, *_descendants(me)]:
        for tid in _tids(pid):
            if tid in skip:
                continue
            f = _read(f"/proc/{pid}/task/{tid}/schedstat").split()
            if len(f) >= 2:
                out[(pid, tid)] = (int(f[0]), int(f[1]))
    return out


def _where(native: dict[int, int], tid: int) -> str:
    """What thread ``tid`` of this process is doing in the harness: the ioctl it
    is in, if any, and its innermost harness frames."""
    from kvmharness.ioctls import name_of

    ident = native.get(tid)
    frame = sys._current_frames().get(ident) if ident is not None else None
    ioctl, places = "", []
    while frame is not None and len(places) < 3:
        code = frame.f_code
        if "/kvmharness/" in code.co_filename and "/host/hangguard" not in code.co_filename:
            if code.co_filename.endswith("/kvm.py") and not ioctl:
                if code.co_name == "run":
                    ioctl = "KVM_RUN"
                elif isinstance(frame.f_locals.get("request"), int):
                    ioctl = name_of(frame.f_locals["request"])
            path = code.co_filename.rsplit("/kvmharness/", 1)[1]
            places.append(f"{path}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    where = " < ".join(places)
    return f"{ioctl} ({where})" if ioctl else where


def describe(
    before: dict[tuple[int, int], tuple[int, int]], after: dict[tuple[int, int], tuple[int, int]]
) -> list[ThreadSample]:
    """The threads present at both readings, with their growth, state, wchan and
    place; those of this process that hold a harness frame first, the main
    thread next."""
    me = os.getpid()
    threads = [t for t in threading.enumerate() if t.native_id and t.ident]
    native = {t.native_id: t.ident for t in threads}
    names = {t.native_id: t.name for t in threads}
    out = []
    for (pid, tid), (cpu1, rd1) in after.items():
        if (pid, tid) not in before:
            continue
        cpu0, rd0 = before[(pid, tid)]
        stat = _read(f"/proc/{pid}/task/{tid}/stat")
        state = stat.rsplit(")", 1)[1].split()[0] if ")" in stat else "?"
        name = names.get(tid) or _read(f"/proc/{pid}/task/{tid}/comm").strip() or str(tid)
        if pid != me:
            name = f"{name}[pid {pid}]"
        out.append(
            ThreadSample(
                tid,
                name,
                cpu1 - cpu0,
                rd1 - rd0,
                state,
                _read(f"/proc/{pid}/task/{tid}/wchan").strip(),
                _where(native, tid) if pid == me else "",
            )
        )

    def interest(t: ThreadSample) -> tuple[int, int]:
        return (0 if "kvm.py" in t.where else 1 if t.where else 2, t.tid != me)

    return sorted(out, key=interest)


#: How many deadlines a scenario that keeps making progress may take before
#: the guard gives up on it (untestable: the host is too slow to judge it).
HANG_CAP_FACTOR = 10


def _mark_stalled(threads: list[ThreadSample], calls: list[progress.Call]) -> list[ThreadSample]:
    """``threads`` with those stalled in a call first, each naming its call."""
    from kvmharness.ioctls import name_of

    by_tid = {c.tid: c for c in calls}
    out = []
    for t in threads:
        c = by_tid.get(t.tid)
        if c is not None and not t.where:
            t = replace(t, where=f"{name_of(c.request)} (a child process's call)")
        out.append(t)
    return sorted(out, key=lambda t: t.tid not in by_tid)


class HangGuard:
    """Calls ``on_hang(threads, window_ns, facts)`` from a daemon thread if the
    ``with`` block has not ended ``deadline_s`` after it began *and* it stopped
    making progress: over the last window (the deadline's second half, then
    each further half-deadline) some thread stayed inside the same harness
    call, or no harness call returned (:mod:`kvmharness.host.progress`).
    While calls keep returning the scenario is slow, not hung: the guard waits
    another window, up to ``cap_s`` (:data:`HANG_CAP_FACTOR` deadlines), and
    then calls ``on_hang`` with facts that say it was still progressing
    (judged untestable, never broken).  ``threads`` are sampled over the last
    window; ``facts`` is :func:`kvmharness.judges.hang.progress_facts`."""

    def __init__(
        self,
        deadline_s: float,
        on_hang: Callable[[list[ThreadSample], int, dict[str, Any]], None],
        cap_s: float | None = None,
    ) -> None:
        self.deadline_s = deadline_s
        self.cap_s = cap_s if cap_s is not None else HANG_CAP_FACTOR * deadline_s
        self._on_hang = on_hang
        self._done = threading.Event()
        self._t_start = 0
        self._thread = threading.Thread(target=self._watch, name="kvmharness-hang", daemon=True)

    def _watch(self) -> None:
        window = self.deadline_s / 2
        if self._done.wait(window):
            return
        skip = frozenset({threading.get_native_id()})
        before, p0 = sample_threads(skip), progress.read()
        while True:
            if self._done.wait(window):
                return
            after, p1 = sample_threads(skip), progress.read()
            if self._done.is_set():
                return
            stuck_calls = progress.stalled(p0, p1)
            facts = progress_facts(
                p1.returns - p0.returns,
                [c.tid for c in stuck_calls],
                p1.at_ns - self._t_start,
                self.cap_s,
            )
            window_ns = p1.at_ns - p0.at_ns
            if stuck_calls or p1.returns == p0.returns:
                log.error(
                    "scenario past its %.0f s deadline and not progressing: judging its threads",
                    self.deadline_s,
                )
                self._on_hang(_mark_stalled(describe(before, after), stuck_calls), window_ns, facts)
                return
            elapsed_s = (p1.at_ns - self._t_start) / 1e9
            if elapsed_s >= self.cap_s:
                log.error("scenario still progressing after %.0f s: giving up on it", elapsed_s)
                self._on_hang(describe(before, after), window_ns, facts)
                return
            log.warning(
                "scenario past its %.0f s deadline but progressing (%d KVM calls returned "
                "in the last %.0f s): waiting for it (%.0f s so far, at most %.0f s)",
                self.deadline_s,
                p1.returns - p0.returns,
                window_ns / 1e9,
                elapsed_s,
                self.cap_s,
            )
            before, p0 = after, p1

    def __enter__(self) -> HangGuard:
        self._t_start = time.monotonic_ns()
        progress.guarded.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        progress.guarded.clear()


def die(code: int) -> None:
    """Flush, SIGKILL every descendant process (a child asleep in the kernel
    ends only so), and end this process now with ``code``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    # os._exit skips atexit: run its functions first, so what they remove
    # (e.g. a private guest build directory) is not left behind; they touch
    # no lock a thread asleep in the kernel can hold
    try:
        atexit._run_exitfuncs()
    except Exception:  # a cleanup that fails must not change the exit code
        pass
    logging.shutdown()
    os._exit(code)
