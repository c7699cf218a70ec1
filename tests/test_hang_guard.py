"""The hang guard (issue 18): a scenario whose vCPU ioctl sleeps for ever.

A kernel that leaves vcpu->mutex held after KVM_SET_MSRS makes every later
ioctl on that vCPU sleep in mutex_lock_killable(); the run must end with exit
1 (hung, broken) within its deadline, its report and --json written, not hang
until bisect-kernel's --timeout (128, which aborts a bisect).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmharness import checks
from kvmharness.host.hangguard import HANG_MARGIN_S, scenario_deadline_s
from kvmharness.judges import judge_record
from kvmharness.judges.hang import ThreadSample, hang_record, judge_threads
from kvmharness.judges.stopped import KIND_HUNG
from kvmharness.scenarios.base import Verdict

WRAPPER = Path(__file__).with_name("hang_wrapper.py")
W = 10_000_000_000  # a 10 s window


def _t(name: str, cpu: int, queued: int, where: str = "") -> ThreadSample:
    return ThreadSample(1, name, cpu, queued, "D", "mutex_lock_killable", where)


def test_asleep_is_hung_and_names_the_thread() -> None:
    main = _t("MainThread", 1_000_000, 2_000_000, "KVM_GET_MSRS (kvm.py:207 ioctl)")
    v, why = judge_threads([main, _t("vcpu0", 0, 0)], W, "steal/restore")
    assert why is None and v is not None
    assert v.kind == KIND_HUNG
    assert "MainThread" in v.detail and "mutex_lock_killable" in v.detail
    assert "KVM_GET_MSRS" in v.detail


def test_runnable_is_untestable_not_hung() -> None:
    # the same threads, but one waited on a run queue most of the window: load
    v, why = judge_threads([_t("MainThread", 0, 0), _t("vcpu0", 0, 8 * W // 10)], W, "s")
    assert v is None and why is not None and "too loaded" in why


def test_ran_is_stuck() -> None:
    v, why = judge_threads([_t("MainThread", 0, 0), _t("vcpu0", 3 * W // 10, 0)], W, "s")
    assert why is None and v is not None and v.kind == checks.KIND_STUCK


def test_a_hang_record_rejudges_alone() -> None:
    threads = [_t("MainThread", 0, 0), _t("vcpu0", 0, 0)]
    record = {
        "schema": 2,
        "family": "steal",
        "variant": "restore/main-thread",
        "hang": hang_record(threads, W, 64.0),
    }
    j = judge_record(record)
    assert j.verdict == Verdict.BROKEN and j.violations[0].kind == KIND_HUNG
    record["hang"]["threads"][1]["queued_ns"] = W  # the same record under load
    assert judge_record(record).verdict == Verdict.UNTESTABLE


def test_the_deadline_leaves_a_slow_host_its_minute() -> None:
    # a healthy cross-process scenario takes up to ~60 s under QEMU TCG
    assert scenario_deadline_s(2, 150, 50) > 60
    assert scenario_deadline_s(30, 150, 50) >= 2 * 30 + HANG_MARGIN_S


def _gone(pgid: int) -> bool:
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _bisect(tmp_path: Path, release_s: float, margin_s: float) -> tuple[int, str, Path, float]:
    out = tmp_path / "run.json"
    argv = ["bisect", "--scenario", "steal/fresh-vm/main-thread", "--budget-s", "2"]
    cmd = [sys.executable, str(WRAPPER), str(release_s), str(margin_s), *argv, "--json", str(out)]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    bound = scenario_deadline_s(2, 150, 50) - HANG_MARGIN_S + margin_s + 30
    try:
        stdout, _ = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the harness did not exit within {bound:.0f} s: it hung")
    assert _gone(proc.pid), "a process of the run was left behind"
    return proc.returncode, stdout, out, time.monotonic() - t0


@pytest.mark.kvm
def test_a_held_vcpu_mutex_ends_the_run_hung(tmp_path: Path) -> None:
    code, stdout, out, _ = _bisect(tmp_path, -1, 8)
    assert code == 1, stdout
    line = next(x for x in stdout.splitlines() if x.startswith("kvmharness bisect:"))
    assert "hung" in line and "KVM_GET_MSRS" in line, line
    doc = json.loads(out.read_text())
    assert doc["exit_code"] == 1
    (rec,) = doc["results"]
    assert rec["verdict"] == "broken" and rec["violations"][0]["kind"] == KIND_HUNG
    judged = subprocess.run(
        [sys.executable, "-m", "kvmharness.cli", "judge", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert judged.returncode == 1, judged.stdout + judged.stderr
    assert "hung" in judged.stdout


@pytest.mark.kvm
def test_a_slow_but_finishing_ioctl_is_not_hung(tmp_path: Path) -> None:
    code, stdout, out, _ = _bisect(tmp_path, 0.5, 8)
    assert code in (0, 125), stdout
    doc = json.loads(out.read_text())
    assert all("hang" not in r for r in doc["results"])
    assert "hung" not in stdout


def test_die_kills_the_children_and_exits_with_its_code() -> None:
    code = (
        "import subprocess, sys\n"
        "from kvmharness.host.hangguard import die\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        "print(p.pid, flush=True)\n"
        "die(1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    child = int(proc.stdout.split()[0])
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("die() left its child running")


def test_die_leaves_no_private_build_directory_behind(tmp_path):
    # die() ends the process with os._exit, which skips atexit: the private
    # guest build directory (made when the cache is unusable) must still go
    code = (
        "from kvmharness.guest import build\n"
        "from kvmharness.host.hangguard import die\n"
        "d = build._private_dir()\n"
        "(d / 'x.elf').write_bytes(b'x')\n"
        "print(d, flush=True)\n"
        "die(3)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3, p.stderr
    made = Path(p.stdout.strip())
    assert made.name.startswith("kvmharness-guest-")
    assert not made.exists(), f"{made} left behind"
