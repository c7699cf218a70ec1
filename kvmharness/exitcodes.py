"""Exit codes and the exceptions that choose them: a leaf module any layer may import.

The codes follow ``git bisect run``, because ``kvmharness run`` and
``kvmharness bisect`` are run by it:

==========  =================================================================
0           good: every promise tested held (or the command did its job)
1           bad: a promise broke on this kernel (a KVM ioctl failing on a
            promised path included); for ``procstat``, an anomaly was found
125         cannot test: no /dev/kvm, no KVM module, sched_info off, a
            promise this run could not judge, a scenario the user named not
            supported here, nothing selected testable.  ``git bisect run``
            skips the commit.  (A scenario *not supported* here that the user
            did not name is shown and left out.)
128         a harness fault (a bug of kvmharness, a broken environment such as
            a missing compiler), or bad usage of ``run``/``bisect``: ``git
            bisect run`` aborts instead of blaming the kernel
2           bad usage or bad input, for the commands no bisect runs
            (``judge``, ``info``, ``procstat``, ``snapshot``)
128+N       killed by signal N (SIGTERM: 143, SIGINT: 130)
==========  =================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_USAGE = 2
EXIT_UNTESTABLE = 125
EXIT_HARNESS = 128


class UsageError(Exception):
    """Bad input from the user: printed on one line without a traceback."""


class Untestable(Exception):
    """This host or kernel cannot be tested (exit 125); the message says why."""


class HarnessFault(Exception):
    """kvmharness or its environment failed, not the kernel (exit 128)."""


def signal_exit(signum: int) -> int:
    """The shell's exit status for a process ended by signal ``signum``."""
    return 128 + signum


class Terminated(BaseException):
    """SIGTERM arrived: unwind (closing VMs, killing children, removing temp
    files) and exit 128+SIGTERM.  A BaseException so no ``except Exception``
    on the way swallows it (``kvmharness run`` reports what finished first)."""
