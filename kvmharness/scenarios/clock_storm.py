"""The "updates" variant's forced kvmclock updates, and the mark watch its
guest keeps (``CLOCK_MODE_MARK``).

:class:`ClockStorm` has the main thread issue KVM_GET_CLOCK then
KVM_SET_CLOCK(KVM_CLOCK_REALTIME) in a loop while the vCPUs read, so KVM
rewrites every vCPU's area again and again; :func:`watch_counts` reads what
the guest's watchers saw.  Its own reason to change: how the updates are
forced (the pause, the margin), not what the variants are.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kvmharness.ffi import lib
from kvmharness.guest.machine import GuestVm
from kvmharness.kvm import ClockData, Vm

#: Pause between two forced kvmclock updates: the vCPUs get the CPU between them.
STORM_PAUSE_S = 0.0005
#: CLOCK_MODE_MARK: how long vCPU 0 marks (and the others watch) after each reading.
MARK_US = 1500
#: The forced-updates phase lasts at least this long: thousands of rewrites of
#: vCPU 0's area where the host's CPUs run in parallel.  (Under single-threaded
#: QEMU TCG the host's vCPUs interleave only where QEMU switches them, between
#: translated blocks at an interrupt, and a switch almost never lands inside
#: KVM's write of the area: see README, "Detection power".)
STORM_MIN_PHASE_MS = 1000
#: Each forced update puts kvmclock this share of the last update's duration
#: ahead (plus STORM_MARGIN_NS), so that a TSC whose KVM scale is off (0.76%
#: seen under TCG) never makes our own KVM_SET_CLOCK step the clock back.
STORM_MARGIN_SHARE = 0.05
STORM_MARGIN_NS = 2_000


def watch_counts(gvm: GuestVm, n: int) -> list[list[int]]:
    """CLOCK_MODE_MARK's counters per vCPU (rounds, rewritten, kept, watches,
    marked, torn, torn_version, mixed, mixed_head), since the VM started.  The
    eighth column, mixed, also says the marks carry their version (guest_abi.h): a
    record of seven columns was taken with one fixed mark, whose torn count
    cannot tell KVM's early version from a load of two instants."""
    rows = gvm.sym("clock_watch", "struct clock_watch")
    return [
        [
            int(rows[i].rounds),
            int(rows[i].rewritten),
            int(rows[i].kept),
            int(rows[i].watches),
            int(rows[i].marked),
            int(rows[i].torn),
            int(rows[i].torn_version),
            int(rows[i].mixed),
            int(rows[i].mixed_head),
        ]
        for i in range(n)
    ]


class ClockStorm:
    """KVM_GET_CLOCK then KVM_SET_CLOCK(clock + margin, KVM_CLOCK_REALTIME) in a
    loop on its own thread: each set makes every vCPU rewrite its area (KVM's
    pvclock update), with the clock continuous (KVM adds the real time since
    the get) and a little ahead, never back."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.sets = 0
        self.added_ns = 0
        self.max_set_ns = 0
        self.gets_without_realtime = 0
        self.stable_gets = 0
        """KVM_GET_CLOCKs with KVM_CLOCK_TSC_STABLE (the VM had a master clock)"""
        self.lost_after_sets: int | None = None
        """KVM_SET_CLOCKs issued when a KVM_GET_CLOCK first lacked KVM_CLOCK_TSC_STABLE
        after one had it (the master clock lost); None: never lost"""
        self.clocksource: list[str] = [host_clocksource()]
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="clock-storm", daemon=True)

    def __enter__(self) -> ClockStorm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.clocksource.append(host_clocksource())

    def summary(self) -> dict[str, Any]:
        """The phase's record of the storm."""
        return {
            "sets": self.sets,
            "added_ns": self.added_ns,
            "max_set_ns": self.max_set_ns,
            "gets_without_realtime": self.gets_without_realtime,
            "stable_gets": self.stable_gets,
            "lost_after_sets": self.lost_after_sets,
            "clocksource": self.clocksource,
        }

    def _loop(self) -> None:
        last = 0
        try:
            while not self._stop.wait(STORM_PAUSE_S):
                t0 = time.monotonic_ns()
                c = self.vm.get_clock()
                if c.flags & lib.KVM_CLOCK_TSC_STABLE:
                    self.stable_gets += 1
                elif self.stable_gets and self.lost_after_sets is None:
                    # stable before, not now: only our KVM_SET_CLOCKs came between
                    self.lost_after_sets = self.sets
                if not c.flags & lib.KVM_CLOCK_REALTIME:
                    # no master clock (yet: a new VM has one once its vCPUs ran)
                    self.gets_without_realtime += 1
                    continue
                margin = STORM_MARGIN_NS + int(STORM_MARGIN_SHARE * last)
                self.vm.set_clock(
                    ClockData(max(c.clock_ns + margin, 0), realtime_ns=c.realtime_ns),
                    flags=lib.KVM_CLOCK_REALTIME,
                )
                last = time.monotonic_ns() - t0
                self.sets += 1
                self.added_ns += margin
                self.max_set_ns = max(self.max_set_ns, last)
        except BaseException as exc:  # reported by the phase
            self.error = exc


CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"


def host_clocksource() -> str:
    """The host's clocksource (KVM has a master clock only on "tsc"), or "" if unknown."""
    try:
        with open(CLOCKSOURCE) as f:
            return f.read().strip()
    except OSError:
        return ""
