"""A broken environment is never reported as a broken kernel (exit 1).

Each case was seen as a false red: a ``kvmharness/`` folder in the working
directory shadowing the package in the cross-process child, a cache path
that is a file, a corrupt cached guest ELF.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(120)]


def _run(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cmd: tuple[str, ...] = (sys.executable, "-m", "kvmharness.cli"),
) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "out.json"
    return subprocess.run(
        [*cmd, "run", "-q", "--contend-ms", "40", "--vcpus", "1", "--json", str(out), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        timeout=100,
    )


def test_a_kvmharness_folder_in_the_working_directory_is_not_imported(tmp_path):
    """python -m puts the working directory first on the import path; the
    cross-process children run with -P from / and must import the real package."""
    fake = tmp_path / "kvmharness"
    (fake / "scenarios").mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('the wrong kvmharness')\n")
    (fake / "scenarios" / "__init__.py").write_text("")
    (fake / "scenarios" / "steal.py").write_text("raise SystemExit(3)\n")
    # The parent is the installed console script, which does not put the
    # working directory on the import path; the children must not either.
    script = Path(sys.executable).parent / "kvmharness"
    assert script.exists()
    proc = _run(tmp_path, "-s", "cross-process/vcpu-thread", cmd=(str(script),))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    assert [r["verdict"] for r in data["results"]] == ["holds"]


def test_a_cache_path_that_is_a_file_still_runs(tmp_path):
    bad = tmp_path / "cache-is-a-file"
    bad.write_text("not a directory")
    proc = _run(tmp_path, "-s", "fresh-vm/vcpu-thread", env={"KVMHARNESS_CACHE": str(bad)})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_corrupt_cached_guest_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    env = {"KVMHARNESS_CACHE": str(cache)}
    assert _run(tmp_path, "-s", "cancelled-save", env=env).returncode == 0
    elves = list(cache.rglob("steal-*.elf"))
    assert elves, "the first run cached the guest"
    for elf in elves:
        elf.write_bytes(b"garbage, not an ELF")
    proc = _run(tmp_path, "-s", "cancelled-save", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(e.read_bytes()[:4] == b"\x7fELF" for e in elves)


def test_missing_compiler_is_a_harness_fault_not_a_verdict(tmp_path):
    """No gcc: exit 128 (aborts a bisect), never 1."""
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = _run(
        tmp_path,
        "-s",
        "cancelled-save",
        env={"PATH": str(empty), "KVMHARNESS_CACHE": str(tmp_path / "fresh-cache")},
    )
    assert proc.returncode == 128, proc.stdout + proc.stderr
    assert "gcc" in proc.stdout + proc.stderr
