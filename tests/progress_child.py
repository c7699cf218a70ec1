"""A cross-process child for tests/test_hang_progress.py (not a test).

Run by :func:`kvmharness.scenarios.child.run_child` as ``progress_child``
(tests/ on PYTHONPATH).  It issues harness calls through ``kvm._ioctl`` with
the system call replaced by a fake: role ``busy`` makes calls that each spin
5 ms, for ``busy_s`` seconds; then, for ``sleep_s`` seconds, one call that
sleeps (as a task asleep on a mutex left held).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import kvmharness.kvm as kvm
from kvmharness import ioctls as nr
from kvmharness.ffi import ffi
from kvmharness.scenarios.child import child_entry


def body(role: str, cfg: dict[str, Any], snap_fd: int) -> dict[str, Any]:
    def fake(fd: int, request: int, arg: Any) -> int:
        if request == nr.KVM_GET_MSRS:
            threading.Event().wait(cfg["sleep_s"])
        else:
            end = time.monotonic() + 0.005
            while time.monotonic() < end:
                pass
        return 0

    kvm._sys_ioctl = fake
    n, end = 0, time.monotonic() + cfg["busy_s"]
    while time.monotonic() < end:
        kvm._ioctl(-1, nr.KVM_GET_REGS, ffi.NULL, "fake vcpu")
        n += 1
    if cfg["sleep_s"] > 0:
        kvm._ioctl(-1, nr.KVM_GET_MSRS, ffi.NULL, "fake vcpu")
    return {"calls": n, "tid": threading.get_native_id()}


if __name__ == "__main__":
    sys.exit(child_entry(sys.argv[1:], body))
