"""The hang guard: what ends a run whose scenario never returns.

A kernel that leaves a lock held (e.g. vcpu->mutex after KVM_SET_MSRS) makes
the next ioctl on that vCPU sleep in ``mutex_lock_killable()`` for ever: no
signal but a fatal one wakes it, so neither the watchdog's kick nor a
timeout in Python can end the scenario, and a main thread that made such an
ioctl sleeps too.  :class:`HangGuard` is a daemon thread armed around one
scenario.  Halfway to its deadline it reads every thread of this process and
of its children (CPU time and run_delay from ``schedstat``); at the deadline,
if the scenario has not returned, it reads them again, with each thread's
state, ``wchan`` and Python stack, and hands the growth over that window to
``on_hang``, which judges it (:mod:`kvmharness.judges.hang`), writes the
report and ends the process with :func:`die` (threads asleep in the kernel
cannot be joined; only a fatal exit ends them).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from kvmharness.judges.hang import ThreadSample

log = logging.getLogger(__name__)

#: Seconds added to a scenario's deadline beyond its budget and phases: a
#: healthy cross-process scenario takes up to ~60 s under QEMU TCG.
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


class HangGuard:
    """Calls ``on_hang(threads, window_ns)`` from a daemon thread if the
    ``with`` block has not ended ``deadline_s`` after it began; ``threads``
    are sampled over the deadline's second half."""

    def __init__(
        self, deadline_s: float, on_hang: Callable[[list[ThreadSample], int], None]
    ) -> None:
        self.deadline_s = deadline_s
        self._on_hang = on_hang
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="kvmharness-hang", daemon=True)

    def _watch(self) -> None:
        half = self.deadline_s / 2
        if self._done.wait(half):
            return
        skip = frozenset({threading.get_native_id()})
        t0, before = time.monotonic_ns(), sample_threads(skip)
        if self._done.wait(self.deadline_s - half):
            return
        after, window = sample_threads(skip), time.monotonic_ns() - t0
        if self._done.is_set():
            return
        log.error("scenario past its %.0f s deadline: judging its threads", self.deadline_s)
        self._on_hang(describe(before, after), window)

    def __enter__(self) -> HangGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()


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
    logging.shutdown()
    os._exit(code)
