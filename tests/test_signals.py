"""SIGTERM, SIGINT and SIGKILL mid-scenario: nothing may be left behind, and
SIGTERM and SIGINT keep the work done (the tables and --json of the scenarios
that finished, which `kvmharness judge` reads).

CI timeouts send SIGTERM; an OOM killer or a impatient user sends SIGKILL.
Either way no process (busy stealers, cross-process children) may run on and
no temp file may stay.  Each run gets its own session and TMPDIR, so what is
left is found exactly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(120)]


def _as_from_a_terminal() -> None:
    """In the child before exec: SIGINT as a terminal's job has it.  A shell
    starts a background job with SIGINT ignored, and Python keeps an ignored
    SIGINT ignored, so under `.ci/run &` the ^C these tests send was lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _session_members(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            out.append(int(entry))
    return out


def _start(tmp_path: Path, variant: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvmharness.cli",
            "run",
            "-s",
            variant,
            "--vcpus",
            "2",
            "--contend-ms",
            "8000",
            "--json",
            str(tmp_path / "out.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=_as_from_a_terminal,
    )


def _wait_for_children(proc: subprocess.Popen[bytes], want: int, timeout: float) -> None:
    """Until the session holds ``want`` processes besides the leader (mid-phase)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(_session_members(proc.pid)) > want:
            time.sleep(0.5)  # well into the contended phase
            return
        time.sleep(0.05)
    pytest.fail("the scenario never reached its contended phase")


def _assert_nothing_left(sid: int, tmp_path: Path, *, report: bool = False) -> None:
    """No process of the run's session, no temp file; the run's JSON only
    where it was ``report``ed (SIGTERM, SIGINT), never a half-written one."""
    end = time.monotonic() + 1.5  # far less than the 8 s phase
    while _session_members(sid) and time.monotonic() < end:
        time.sleep(0.05)
    assert _session_members(sid) == [], "processes outlived the run"
    assert list((tmp_path / "tmp").iterdir()) == [], "temp files left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["out.json", "tmp"] if report else ["tmp"]
    )


@pytest.mark.parametrize("variant", ["cross-process/main-thread", "fresh-vm/vcpu-thread"])
def test_sigterm_unwinds_and_exits_143(tmp_path, variant):
    proc = _start(tmp_path, variant)
    try:
        # cross-process: leader, save child, its stealers; in-process: leader, stealers
        _wait_for_children(proc, 2 if variant.startswith("cross") else 1, 60)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, err.decode()
        assert time.monotonic() - t0 < 7, (
            "SIGTERM stops the vCPUs; it must not wait out the 8 s phase"
        )
        assert b"Traceback" not in err, err.decode()
        _assert_nothing_left(proc.pid, tmp_path, report=True)
        doc = _judged(tmp_path / "out.json", "SIGTERM")
        assert doc["results"] == [] and doc["exit_code"] == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _judged(path: Path, signame: str) -> dict:
    """The interrupted run's JSON, checked to say so and to be read by judge."""
    import json

    from kvmharness.cli.judge import judge_run, read_run

    doc = json.loads(path.read_text())
    assert doc["interrupted"]["signal"] == signame, doc.get("interrupted")
    judge_run(read_run(str(path)), str(path))  # raises RunFileError if judge cannot read it
    return doc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_keeps_the_scenarios_that_finished(tmp_path, sig):
    """^C (SIGINT to the terminal's whole process group) or SIGTERM after two
    scenarios: their table, a JSON with them that `judge` reads, exit 130 or
    143, no traceback from any child, nothing left behind."""
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), COLUMNS="80")
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmharness.cli", "run", "--contend-ms", "1000"]
        + ["-s", "fresh-vm/vcpu-thread,cross-process/vcpu-thread", "--vcpus", "1,2"]
        + ["--json", str(tmp_path / "out.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=_as_from_a_terminal,
    )
    try:
        assert proc.stderr is not None
        progress = b""
        while len(re.findall(rb"\[\d+/\d+\][^\n]*\n", progress)) < 2:  # two finished
            chunk = proc.stderr.read1(4096)
            assert chunk, progress.decode()
            progress += chunk
        time.sleep(1.0)  # into the cross-process scenario (2 x 1 s of contention): its child runs
        os.killpg(proc.pid, sig)  # as a terminal's ^C reaches every process of its group
        out, err = proc.communicate(timeout=60)
        err = progress + err
        assert proc.returncode == 128 + sig, err.decode()
        assert b"Traceback" not in err, err.decode()
        assert b"fresh-vm/vcpu-thread" in out and b"2 holds" in out, out.decode()
        _assert_nothing_left(proc.pid, tmp_path, report=True)
        doc = _judged(tmp_path / "out.json", signal.Signals(sig).name)
        assert doc["exit_code"] == 128 + sig
        assert [r["variant"] for r in doc["results"]][:2] == ["fresh-vm/vcpu-thread"] * 2
    finally:
        if _session_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigkill_leaves_no_process_and_no_file(tmp_path):
    proc = _start(tmp_path, "cross-process/vcpu-thread")
    try:
        _wait_for_children(proc, 2, 60)
        proc.kill()
        _, err = proc.communicate(timeout=30)
        assert b"Traceback" not in err, err.decode()
        _assert_nothing_left(proc.pid, tmp_path)
    finally:
        if _session_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


#: The CLI with the hang of tests/hang_wrapper.py, and a main thread that, as
#: one asleep in the kernel, cannot take SIGINT or SIGTERM while it sleeps.
_STUCK_MAIN = """
import signal, sys, threading
sys.path.insert(0, sys.argv[1])
import hang_wrapper
import kvmharness.kvm as kvm
from kvmharness.cli import main
from kvmharness.host import hangguard

hang_wrapper.install(-1)
inner = kvm._ioctl

def ioctl(*args):
    if threading.current_thread() is not threading.main_thread():
        return inner(*args)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return inner(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

kvm._ioctl = ioctl
hangguard.HANG_MARGIN_S = 60.0  # the guard must not be what ends it
sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_reaches_a_run_whose_main_thread_sleeps_in_the_kernel(tmp_path):
    """A vcpu->mutex left held: the main thread sleeps in an ioctl and never
    runs Python's handlers.  ^C still ends the run within seconds (not at the
    hang guard's deadline, a minute away): exit 130, the JSON written and
    readable by judge, no traceback, nothing left behind."""
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    argv = ["run", "-s", "steal/fresh-vm/main-thread", "--vcpus", "1", "--budget-s", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK_MAIN, str(Path(__file__).parent), *argv]
        + ["--json", str(tmp_path / "out.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=_as_from_a_terminal,
    )
    try:
        assert proc.stderr is not None
        progress = b""
        while b"[1/1]" not in progress:
            chunk = proc.stderr.read1(4096)
            assert chunk, progress.decode()
            progress += chunk
        time.sleep(3.0)  # past the restore: the main thread sleeps in a held ioctl
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        err = progress + err
        took = time.monotonic() - t0
        assert proc.returncode == 128 + signal.SIGINT, err.decode() + out.decode()
        assert took < 15, f"{took:.0f} s: ^C waited for the hang guard"
        assert b"Traceback" not in err, err.decode()
        _assert_nothing_left(proc.pid, tmp_path, report=True)
        _judged(tmp_path / "out.json", "SIGINT")
    finally:
        if _session_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
