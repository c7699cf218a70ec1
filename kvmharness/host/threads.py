"""Run calls on one dedicated OS thread, so a caller decides *which host
thread* issues each vCPU ioctl (KVM_SET_MSRS, KVM_RUN, ...).

KVM charges steal time against the run-queue delay of whichever thread
issues KVM_RUN, so the identity of that thread is a test parameter.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_STOP = object()


class VcpuThread:
    """One OS thread executing submitted calls in order."""

    def __init__(self, name: str = "vcpu", *, cpu: int | None = None) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._tid_ready = threading.Event()
        self.tid: int = 0
        self.born_ns: int = 0  # CLOCK_MONOTONIC when the OS thread started
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self._tid_ready.wait()
        if cpu is not None:
            self.call(pin_current_thread, cpu)

    @property
    def ident(self) -> int:
        """The pthread identity (for signal.pthread_kill)."""
        assert self._thread.ident is not None
        return self._thread.ident

    def _loop(self) -> None:
        self.born_ns = time.monotonic_ns()
        self.tid = threading.get_native_id()
        self._tid_ready.set()
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fut, fn, args, kwargs = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # delivered to the caller
                fut.set_exception(exc)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        if not self._thread.is_alive():
            raise RuntimeError(f"thread {self.name} has stopped")
        fut: Future[T] = Future()
        self._queue.put((fut, fn, args, kwargs))
        return fut

    def call(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> T:
        """Run ``fn(*args, **kwargs)`` on this thread and return its result."""
        return self.submit(fn, *args, **kwargs).result(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def __enter__(self) -> VcpuThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pin_current_thread(cpu: int) -> None:
    """Pin the calling OS thread (not the process) to one CPU."""
    os.sched_setaffinity(0, {cpu})


def current_tid() -> int:
    return threading.get_native_id()


def new_threads(n: int, tag: str) -> list[VcpuThread]:
    """``n`` vCPU threads, thread ``i`` pinned to :func:`~kvmharness.host.sched.cpu_for` (i)."""
    from kvmharness.host.sched import cpu_for

    return [VcpuThread(f"{tag}-vcpu{i}", cpu=cpu_for(i)) for i in range(n)]


def close_threads(threads: list[VcpuThread]) -> None:
    for t in threads:
        t.close()
