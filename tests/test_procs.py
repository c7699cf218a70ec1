"""kvmharness.procs, the one process helper of the kernel tools: exit statuses,
output kept and relayed, nothing left behind on a timeout or a signal."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmharness import procs


def _gone(pid: int, within: float = 30.0) -> bool:
    """The process is gone (or a zombie nobody reaps yet)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_run_keeps_and_relays_the_output_and_its_exit_status() -> None:
    echo = io.BytesIO()
    done = procs.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30, echo=echo)
    assert (done.status, done.timed_out, done.out, done.err) == (3, False, "out\n", "err\n")
    assert sorted(echo.getvalue().split()) == [b"err", b"out"]


def test_a_child_killed_by_a_signal_is_128_plus_n() -> None:
    done = procs.run(["sh", "-c", "kill -TERM $$"], timeout=30)
    assert done.status == 128 + signal.SIGTERM
    assert procs.exit_status(-9) == 137 and procs.exit_status(1) == 1


def test_a_timeout_ends_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    done = procs.run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=1.0, grace=1.0)
    assert done.timed_out and time.monotonic() - t0 < 20
    assert _gone(int(pidfile.read_text())), "the grandchild outlived the timeout"


def test_output_to_a_file(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with open(log, "wb") as f:
        done = procs.run(["sh", "-c", "echo a; echo b >&2"], timeout=30, output=f)
    assert done.status == 0 and done.out == "" and sorted(log.read_text().split()) == ["a", "b"]


CHILD = """
import sys
from kvmharness import procs
try:
    with procs.signals_raise():
        procs.run(["sh", "-c", "echo $$ > " + sys.argv[1] + "; exec sleep 60"], timeout=60)
except procs.Interrupted as exc:
    sys.exit(exc.exit_code)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_unwinds_ends_the_child_and_exits_128_plus_n(tmp_path: Path, sig: int) -> None:
    pidfile = tmp_path / "pid"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(pidfile)])
    # Python's start-up and imports can take many seconds on a loaded host
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=30) == 128 + sig
    assert _gone(child), "the child outlived the tool"


def test_a_signal_during_the_childs_start_still_ends_it(tmp_path: Path, monkeypatch) -> None:
    # the signal lands after the fork, before Popen returns the child's handle
    # (a window a loaded host widens): the child must still be ended
    real = subprocess.Popen
    started: list[int] = []

    def popen(*a, **k):
        p = real(*a, **k)
        started.append(p.pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside the start
        return p

    monkeypatch.setattr(procs.subprocess, "Popen", popen)
    with pytest.raises(procs.Interrupted) as exc, procs.signals_raise():
        procs.run(["sleep", "60"], timeout=60, grace=1.0)
    assert exc.value.exit_code == 128 + signal.SIGTERM
    assert _gone(started[0]), "the child outlived the signal"
