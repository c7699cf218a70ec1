"""What every family's run shares, below the families.

A family supplies its variants, its boundary functions and its judge; this
module holds the rest of a scenario's life:

* :func:`check_variant`, :func:`check_vcpus`: the variants and vCPU counts
  a family can take (its knobs: :meth:`RunOptions.validate`);
* :func:`sleep_until`: the phase clock (a boundary waits out its downtime
  from the moment the state was captured);
* :func:`guarded_run`: run one variant, blame what stopped it
  (:func:`~kvmharness.scenarios.base.blame_of`), time it, and hand the family
  what to build its record from (:func:`on_kvm`: on the run's /dev/kvm handle
  or one of its own);
* :func:`cross_process`: the save child, the downtime and the restore child,
  with the snapshot in a memfd the parent owns
  (:mod:`kvmharness.scenarios.child`);
* :class:`RunMeter`: a vCPU thread's wall clock, CPU time and run_delay
  around each KVM_RUN, so a vCPU the watchdog stopped there becomes the
  :class:`~kvmharness.judges.stopped.Stopped` its judge reads.

The knobs, their defaults and bounds are :class:`~kvmharness.scenarios.base.RunOptions`
(a family's config copies its fields by name: they are the record's ``config``);
a vCPU the watchdog stopped is judged by :mod:`kvmharness.judges.stopped`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kvmharness.ffi import lib
from kvmharness.guest.machine import GuestStopped
from kvmharness.host.pager import thread_cpu_ns
from kvmharness.host.sched import SchedStat
from kvmharness.judges.stopped import Stopped
from kvmharness.kvm import Kvm
from kvmharness.scenarios.base import Blame, Family, ScenarioFailed, blame_of
from kvmharness.scenarios.child import keep_snapshot, run_child

log = logging.getLogger(__name__)

T = TypeVar("T")


def check_variant(family: Family, variant: str) -> None:
    """ValueError unless ``family`` has a variant named ``variant``."""
    if variant not in family.variants:
        known = ", ".join(family.variants)
        raise ValueError(f"unknown {family.name} variant {variant!r} (known: {known})")


def check_vcpus(family: Family, vcpus: int) -> None:
    """ValueError unless ``family`` runs at ``vcpus`` vCPUs."""
    limit = min(family.max_vcpus, lib.GUEST_MAX_VCPUS)
    if not (isinstance(vcpus, int) and 1 <= vcpus <= limit):
        raise ValueError(f"vcpus must be 1 to {limit} for {family.name}, got {vcpus}")


def sleep_until(deadline_ns: int) -> None:
    """Sleep until CLOCK_MONOTONIC reads ``deadline_ns`` (at once if it passed)."""
    left = deadline_ns - time.monotonic_ns()
    if left > 0:
        time.sleep(left / 1e9)


@dataclass
class Outcome(Generic[T]):
    """What :func:`guarded_run` leaves the family to build its record from."""

    value: T | None
    """What the run returned (None: it raised)."""
    wall_s: float
    blame: Blame | None = None
    error: str | None = None


def on_kvm(kvm: Kvm | None, body: Callable[[Kvm], T]) -> T:
    """``body(kvm)``, or on a /dev/kvm handle of its own when ``kvm`` is None."""
    if kvm is not None:
        return body(kvm)
    with Kvm() as k:
        return body(k)


def guarded_run(what: str, body: Callable[[], T]) -> Outcome[T]:
    """Run ``body()``, timed; an exception becomes its blame and text, never a
    traceback: the family builds the record of what ran (or of nothing), and
    its judge gives the verdict."""
    t0 = time.monotonic()
    try:
        value = body()
    except Exception as exc:
        blame = blame_of(exc)
        log.info("%s failed to run (%s)", what, blame, exc_info=True)
        return Outcome(None, time.monotonic() - t0, blame, str(exc))
    return Outcome(value, time.monotonic() - t0)


@dataclass
class Saved:
    """What the save child reported, and when it was done."""

    payload: dict[str, Any]
    done_ns: int


def cross_process(
    module: str,
    config: dict[str, Any],
    timeout_s: float,
    *,
    stopped: Callable[[dict[str, Any]], bool],
    downtime_from: Callable[[Saved], int],
    downtime_ms: int,
    keep: tuple[str, str, int],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """savevm/loadvm in two processes: ``module``'s save child runs and writes
    the snapshot into a memfd this process owns; unless ``stopped(payload)``
    (a vCPU the watchdog stopped: nothing to restore), the downtime passes from
    ``downtime_from(saved)`` (CLOCK_MONOTONIC ns, system-wide) and the restore
    child runs from the snapshot.  (save payload, restore payload or None).
    ``keep``: (family, variant, vcpus) the snapshot is kept as when the user
    asked to keep snapshots."""
    snap_fd = os.memfd_create("kvmharness-snapshot", os.MFD_CLOEXEC)
    try:
        a = run_child(module, "save", config, snap_fd, timeout_s)
        saved = Saved(a, time.monotonic_ns())
        if stopped(a):
            return a, None
        if not os.fstat(snap_fd).st_size:
            raise ScenarioFailed(Blame.HARNESS, "save process wrote no snapshot")
        keep_snapshot(snap_fd, *keep)
        sleep_until(downtime_from(saved) + downtime_ms * 1_000_000)
        b = run_child(module, "restore", config, snap_fd, timeout_s)
    finally:
        os.close(snap_fd)
    return a, b


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of a thread: CLOCK_MONOTONIC, its CPU time and run_delay (ns)."""

    t_ns: int
    cpu_ns: int
    run_delay_ns: int


class RunMeter:
    """The calling (vCPU) thread's clock, CPU time and run_delay around a KVM_RUN.

    :meth:`begin` just before the KVM_RUN; :meth:`stopped` when the watchdog
    stopped it (:class:`~kvmharness.guest.machine.GuestStopped`): how long it
    waited there and how its thread spent the wait, for
    :func:`~kvmharness.judges.stopped.judge_stopped`.  The CPU time and
    run_delay readings enclose the wall-clock ones (read before the start,
    after the end), so a thread is never counted as asleep for time it ran or
    queued.  ``exact_cpu``: CPU time from the thread's CPU clock (to the ns,
    the running slice included) rather than schedstat's (one read for both,
    lagging a running thread by up to a tick).
    """

    def __init__(self, exact_cpu: bool = False) -> None:
        self.st = SchedStat()
        self.tid = self.st.tid
        self._exact = exact_cpu
        self.start = Reading(0, 0, 0)

    def _sched(self) -> tuple[int, int]:
        cpu, delay = self.st.read()
        return (thread_cpu_ns(self.tid) if self._exact else cpu), delay

    def run_delay(self) -> int:
        """The thread's run_delay now (ns)."""
        return self.st.read()[1]

    def begin(self) -> Reading:
        """Read the thread just before a KVM_RUN; kept as :attr:`start`."""
        cpu, delay = self._sched()
        self.start = Reading(time.monotonic_ns(), cpu, delay)
        return self.start

    def end(self) -> Reading:
        """The growth of each reading since :meth:`begin` (``t_ns``: the wall time)."""
        t = time.monotonic_ns()
        cpu, delay = self._sched()
        s = self.start
        return Reading(t - s.t_ns, cpu - s.cpu_ns, delay - s.run_delay_ns)

    def stopped(self, exc: GuestStopped, d: Reading | None = None) -> Stopped:
        """What the thread did since :meth:`begin` in the KVM_RUN the watchdog
        stopped (``d``: the :meth:`end` already read for it)."""
        d = d or self.end()
        return Stopped(exc.rip, d.t_ns, d.cpu_ns, d.run_delay_ns)

    def close(self) -> None:
        self.st.close()

    def __enter__(self) -> RunMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
