"""What the scheduler says about a host thread, and where vCPU threads go.

:class:`SchedStat` reads a thread's CPU time and run_delay from
``/proc/self/task/TID/schedstat``: run_delay is the very quantity KVM adds to
steal time, and CPU time tells a starved thread from a stuck guest, so the
checks take their bounds from these readings.  :func:`cpu_for` spreads vCPU
threads over the CPUs this process may use; :class:`Watchdog` stops vCPUs
that overrun their budget.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


class SchedStat:
    """A thread's /proc schedstat, kept open: about 1 us a reading."""

    def __init__(self, tid: int | None = None) -> None:
        self.tid = tid or threading.get_native_id()
        self.fd = os.open(f"/proc/self/task/{self.tid}/schedstat", os.O_RDONLY)

    def read(self) -> tuple[int, int]:
        """(CPU time, run_delay) of the thread in ns."""
        f = os.pread(self.fd, 128, 0).split()
        return int(f[0]), int(f[1])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SchedStat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cpu_for(index: int) -> int:
    """The CPU vCPU ``index``'s thread is pinned to: round robin over the allowed
    CPUs, vCPU 0 on the last, leaving CPU 0 to the main thread where possible."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[(len(cpus) - 1 - index) % len(cpus)]


class Watchdog:
    """Calls ``stop(i)`` for each index from another thread once ``seconds`` pass
    (e.g. ``GuestVm.stop``: the vCPU's KVM_RUN returns and its loop raises)."""

    def __init__(self, stop: Callable[[int], None], indices: Iterable[int], seconds: float) -> None:
        self._stop = stop
        self._indices = list(indices)
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self.fired = False

    def _fire(self) -> None:
        self.fired = True
        for i in self._indices:
            log.warning("vcpu%d past its budget: stopping it", i)
            self._stop(i)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def wait_or_stop(
    futures: Iterable[Any],
    stop: Callable[[int], None],
    indices: Iterable[int],
    grace_s: float = 10.0,
) -> None:
    """Wait for every vCPU thread's future.  If the wait itself is cut short (an
    error, or SIGTERM unwinding the main thread), stop the vCPUs at once, so
    their loops end now rather than at the end of their phase, give them
    ``grace_s`` to finish, and re-raise."""
    futures = list(futures)
    try:
        for f in futures:
            f.result()
    except BaseException:
        for i in indices:
            stop(i)
        for f in futures:
            try:
                f.exception(timeout=grace_s)
            except BaseException:  # noqa: S110 - already unwinding; the first error wins
                pass
        raise
