"""Run the kvmharness CLI with a vcpu->mutex left held, simulated in userspace.

``python tests/hang_wrapper.py RELEASE_S MARGIN_S ARGS...``: after the first
KVM_SET_MSRS on a vCPU fd, every later ioctl on that fd (KVM_RUN included)
sleeps on an Event inside the harness's call (where the kernel would sleep),
as a task sleeps in mutex_lock_killable() on a mutex the kernel never
released: no CPU, no run_delay, no signal but a fatal one ends it.
RELEASE_S < 0: the Event is never set (the hang); else it is set RELEASE_S
after that KVM_SET_MSRS (a slow but finishing ioctl).  MARGIN_S
replaces the hang guard's margin, so the test does not wait a minute.  Only
the tests use this; nothing in the package reads it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import kvmharness.kvm as kvm
from kvmharness import ioctls as nr
from kvmharness.cli import main
from kvmharness.host import hangguard


def install(release_s: float) -> None:
    held: set[int] = set()
    gate = threading.Event()
    ioctl, fioctl = kvm._sys_ioctl, kvm._fioctl

    def sleep_if_held(fd: int) -> None:
        if fd in held:
            gate.wait()

    def held_ioctl(fd: int, request: int, arg: Any) -> int:
        sleep_if_held(fd)
        rc = ioctl(fd, request, arg)
        if request == nr.KVM_SET_MSRS and not held:
            held.add(fd)
            if release_s >= 0:
                t = threading.Timer(release_s, gate.set)
                t.daemon = True
                t.start()
        return rc

    def held_fioctl(fd: int, request: int, *args: Any) -> Any:
        sleep_if_held(fd)
        return fioctl(fd, request, *args)

    kvm._sys_ioctl = held_ioctl
    kvm._fioctl = held_fioctl


if __name__ == "__main__":
    install(float(sys.argv[1]))
    hangguard.HANG_MARGIN_S = float(sys.argv[2])
    sys.exit(main(sys.argv[3:]))
