"""Child processes of the kernel tools: signals as exceptions, the end of a
process group, output relayed as it comes.  A leaf module (standard library
only): ``kvmharness bisect-kernel`` runs it under the system's Python before
the checkout's .venv exists.

Every child runs in its own session (``start_new_session``), so ending its
group ends what it started too (vng's QEMU, pytest's KVM children, make's
compilers), and a signal sent to the tool is turned into :class:`Interrupted`
by :func:`signals_raise`, so the ``finally`` blocks that end children and
remove temporary files run before the tool exits 128+N.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import IO, Any

from kvmharness.exitcodes import signal_exit

#: The signals a tool turns into :class:`Interrupted`.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):
    """A signal arrived (SIGINT, SIGTERM, SIGHUP): unwind, then exit 128+signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return signal_exit(self.signum)


#: signals that came while :func:`run` started a child, one list per start
#: under way: a signal raised inside ``Popen`` (the child already forked, its
#: handle not yet returned) would leave the child running
_HELD: list[list[int]] = []


@contextlib.contextmanager
def signals_raise(signals: Sequence[int] = SIGNALS) -> Iterator[None]:
    """Within the block, each of ``signals`` raises :class:`Interrupted` in
    the main thread; the previous handlers come back after it."""

    def handler(signum: int, _frame: object) -> None:
        if _HELD:  # inside a child's start: raised once the child can be ended
            _HELD[-1].append(signum)
            return
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def exit_status(returncode: int) -> int:
    """A Popen return code as the shell shows it: 128+N for death by signal N."""
    return signal_exit(-returncode) if returncode < 0 else returncode


def end_group(proc: subprocess.Popen[Any], *, grace: float = 5.0, term_group: bool = True) -> None:
    """End ``proc`` and its process group: SIGTERM (to the whole group, or with
    ``term_group=False`` to the child alone, for a child that ends its own
    children when told), up to ``grace`` seconds to exit, then SIGKILL to the
    group, also when the child had already exited (a grandchild left behind,
    e.g. a QEMU that outlived vng).  Reaps the child."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if term_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def relay(
    src: IO[bytes] | None, dest: IO[bytes] | None = None, keep: list[bytes] | None = None
) -> threading.Thread:
    """A started daemon thread copying ``src`` to ``dest`` (a binary stream,
    flushed after each chunk; None: not echoed) as the child writes it, and
    appending each chunk to ``keep``.  Ends at the child's end of file."""

    def pump() -> None:
        assert src is not None
        read = getattr(src, "read1", src.read)
        while chunk := read(65536):
            if keep is not None:
                keep.append(chunk)
            if dest is not None:
                with contextlib.suppress(OSError, ValueError):
                    dest.write(chunk)
                    dest.flush()
        src.close()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


@dataclasses.dataclass
class Finished:
    """How a child run by :func:`run` ended."""

    status: int  # exit status, 128+N when killed by signal N (see exit_status)
    timed_out: bool
    out: str = ""  # its stdout, when captured
    err: str = ""  # its stderr, when captured


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    echo: IO[bytes] | None = None,
    output: IO[bytes] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    grace: float = 5.0,
    term_group: bool = True,
) -> Finished:
    """Run ``cmd`` in its own session with stdin from /dev/null.

    Its output is captured (and echoed to ``echo`` as it comes), or with
    ``output`` written straight to that file (stderr included).  After
    ``timeout`` seconds, or when an exception (:class:`Interrupted`) unwinds
    through here, its group is ended by :func:`end_group`, so nothing it
    started outlives the call."""
    out: list[bytes] = []
    err: list[bytes] = []
    held: list[int] = []
    _HELD.append(held)
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=output if output is not None else subprocess.PIPE,
            stderr=subprocess.STDOUT if output is not None else subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        relays = (
            []
            if output is not None
            else [relay(proc.stdout, echo, out), relay(proc.stderr, echo, err)]
        )
    except BaseException:
        _HELD.remove(held)
        if held:
            raise Interrupted(held[0]) from None
        raise
    _HELD.remove(held)
    timed_out = False
    try:
        if held:
            raise Interrupted(held[0])
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        end_group(proc, grace=grace, term_group=term_group)
        for t in relays:
            t.join(timeout=5)
    return Finished(
        exit_status(proc.returncode if proc.returncode is not None else -signal.SIGKILL),
        timed_out,
        b"".join(out).decode(errors="replace"),
        b"".join(err).decode(errors="replace"),
    )
