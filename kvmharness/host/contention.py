"""CPU contention that creates real steal time.

KVM's steal time is the run-queue delay (schedstat run_delay) of the host
thread that issues KVM_RUN.  That delay only grows while the thread is
runnable and another task holds its CPU.  A busy Python *thread* would not
do: waiting on the GIL is sleeping, not runnable.  So the stealer is a
separate process pinned to the vCPU thread's CPU, spinning on command.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

log = logging.getLogger(__name__)

#: No single spin lasts longer than this, whatever a caller asks.
MAX_SPIN_S = 60.0

# The child: ignore SIGINT, die with its parent, pin itself, say "ready", then for each
# "spin SECONDS" line busy-loop that long and answer "done".  EOF ends it.
_CHILD = r"""
import ctypes, os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it; ^C must not print here
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[2]):
    sys.exit(0)  # the parent died before prctl took effect
os.sched_setaffinity(0, {int(sys.argv[1])})
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "spin":
        end = time.monotonic() + min(float(arg), MAX_SPIN_S)
        while time.monotonic() < end:
            pass
        out.write("done\n"); out.flush()
"""


class Stealer:
    """A busy process pinned to ``cpu``.

    ``Stealer(cpu)`` then ``spin(seconds)`` / ``wait()``; or
    ``Stealer(cpu, duration_s=0.2)`` as a context manager that spins once on entry.
    """

    def __init__(self, cpu: int, *, duration_s: float | None = None) -> None:
        if cpu not in os.sched_getaffinity(0):
            raise ValueError(
                f"CPU {cpu} is not available to this process "
                f"(allowed: {sorted(os.sched_getaffinity(0))})"
            )
        self.cpu = cpu
        self.duration_s = duration_s
        self.proc: subprocess.Popen[str] | None = None
        self._spinning = False

    def start(self) -> Stealer:
        code = _CHILD.replace("MAX_SPIN_S", repr(MAX_SPIN_S))
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-P", "-c", code, str(self.cpu), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd="/",
            # its own process group: the terminal's ^C reaches only the parent,
            # which kills it while unwinding (no KeyboardInterrupt traceback here)
            process_group=0,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.close()
            raise RuntimeError("stealer process did not start")
        return self

    def spin(self, seconds: float) -> float:
        """Start spinning for ``seconds``; returns the monotonic start time."""
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        if self._spinning:
            self.wait()
        self.proc.stdin.write(f"spin {seconds}\n")
        self.proc.stdin.flush()
        self._spinning = True
        return time.monotonic()

    def wait(self) -> None:
        if not self._spinning or self.proc is None:
            return
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.stdout.readline()
        self._spinning = False

    def close(self, *, kill: bool = False) -> None:
        """End the process: at once with ``kill`` (e.g. while unwinding from an
        error or SIGTERM), else after its current spin."""
        if self.proc is not None:
            try:
                if kill:
                    self.proc.kill()
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=5 if kill else MAX_SPIN_S + 5)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
            self._spinning = False

    def __enter__(self) -> Stealer:
        self.start()
        if self.duration_s is not None:
            self.spin(self.duration_s)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.close(kill=True)
            return
        try:
            self.wait()
        finally:
            self.close()


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (PR_SET_PDEATHSIG);
    exit now if the parent is already gone."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def run_delay_ns(tid: int | None = None) -> int:
    """Nanoseconds the thread ``tid`` (default: the caller) has waited on a run queue."""
    import threading

    tid = tid or threading.get_native_id()
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[1])
