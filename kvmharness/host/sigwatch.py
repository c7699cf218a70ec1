"""^C while the main thread sleeps in the kernel.

Python runs its signal handlers on the main thread, between bytecodes.  A
main thread asleep in an ioctl that only a fatal signal ends (a vcpu->mutex
left held: :mod:`kvmharness.host.hangguard`) never runs them, so SIGINT and
SIGTERM would wait for the hang guard's deadline, minutes away.
:class:`SignalWatch` sees such a signal arrive anyway (``signal.set_wakeup_fd``:
the C-level handler writes its number from whichever thread took it) and, if
the main thread has not unwound within :data:`GRACE_S`, calls ``on_stuck``
from its own thread, which reports what finished and ends the process
(:func:`kvmharness.host.hangguard.die`).  A main thread that does unwind
leaves the ``with`` block first, and the watch then does nothing.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: How long the main thread has to take a signal before it counts as asleep.
GRACE_S = 3.0
WATCHED = (signal.SIGINT, signal.SIGTERM)


class SignalWatch:
    """``with SignalWatch(on_stuck):`` around work the main thread may never
    return from.  Only on the main thread (elsewhere it does nothing)."""

    def __init__(self, on_stuck: Callable[[int], None], grace_s: float = GRACE_S) -> None:
        self.on_stuck = on_stuck
        self.grace_s = grace_s
        self._done = threading.Event()
        self._fds: tuple[int, int] | None = None
        self._old_fd = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(r)
            os.close(w)
            return self
        self._fds = (r, w)
        self._thread = threading.Thread(target=self._watch, name="kvmharness-sigwatch", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        assert self._fds is not None
        r = self._fds[0]
        while not self._done.is_set():
            ready, _, _ = select.select([r], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(r, 64)
            except OSError:
                return
            sigs = [b for b in data if b in WATCHED]
            if sigs and not self._done.wait(self.grace_s):
                log.warning(
                    "the main thread did not take signal %d: it sleeps in the kernel", sigs[0]
                )
                self.on_stuck(sigs[0])
                return

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._fds is None:
            return
        signal.set_wakeup_fd(self._old_fd)
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        for fd in self._fds:
            os.close(fd)
        self._fds = None
