"""The wheel is complete: installed on its own, away from the checkout, it runs a scenario.

The wheel is built offline (``--no-build-isolation --no-index``: setuptools and
wheel come with the ``test`` extra) from a copy of the tree, so stale ``build/``
output or another build running in the checkout cannot leak into it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("pyproject.toml", "README.md", "kvmharness", "cdefs", "tests/mutants")
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def _quiet_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "PIP_", "KVMHARNESS_CACHE"))
    }
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", **extra)
    return env


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of what the wheel is built from."""
    src = tmp_path_factory.mktemp("source")
    for name in SHIPPED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=_JUNK)  # tests/mutants: the patches
        else:
            shutil.copy2(path, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        cwd=out,
        env=_quiet_env(),
    )
    (whl,) = out.glob("kvmharness-*.whl")
    return whl


def test_the_wheel_holds_every_module_guest_source_and_cdef(source, wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = source / "kvmharness"
    modules = {f"kvmharness/{p.relative_to(tree)}" for p in tree.rglob("*.py")}
    guest = {
        f"kvmharness/{p.relative_to(tree)}"
        for p in (tree / "guest" / "src").rglob("*")
        if p.is_file()
    }
    cdefs = {f"kvmharness/cdefs/{p.name}" for p in (source / "cdefs").glob("*.h")}
    assert {
        "kvmharness/guest/src/guest.ld",
        "kvmharness/guest/src/runtime.h",
        "kvmharness/guest/src/entry.S",
        "kvmharness/guest/src/programs/steal.c",
        "kvmharness/guest/src/programs/selftest.c",
    } <= guest
    assert {"kvmharness/cdefs/kvm.h", "kvmharness/cdefs/guest_abi.h"} <= cdefs
    assert not (modules | guest | cdefs) - names, "missing from the wheel"
    assert not [n for n in names if ".data/" in n], "data-files land outside the package"
    dist_info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(dist_info).decode()
    assert "kvmharness = kvmharness.cli:main" in entry_points
    assert "kvmharness = kvmharness.pytest_plugin" in entry_points


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; the dependencies come from this
    interpreter's site-packages through a .pth line (which does not run that
    directory's own .pth files, so the editable kvmharness stays invisible)."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)])
    python = venv / "bin" / "python"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        env=_quiet_env(),
    )
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            env=_quiet_env(),
        ).stdout.strip()
    )
    (site / "zz_kvmharness_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


@pytest.mark.kvm
def test_the_installed_wheel_runs_a_steal_scenario_outside_the_checkout(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _quiet_env(KVMHARNESS_CACHE=str(tmp_path / "cache"))
    where = _run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import sys, kvmharness, kvmharness.ffi as f, kvmharness.guest.build as b\n"
            "print(kvmharness.__file__, f.cdefs_dir(), b.SRC_DIR, sep='\\n')\n"
            "print(any('__editable__' in m for m in sys.modules))",
        ],
        cwd=work,
        env=env,
    ).stdout.split("\n")
    for path in where[:3]:
        assert Path(path).is_relative_to(installed), f"{path} is not from the installed wheel"
    assert where[3] == "False", "the editable install of the checkout was imported"

    proc = subprocess.run(
        [
            str(installed / "bin" / "kvmharness"),
            "run",
            "--strategy",
            "fresh-vm/vcpu-thread",
            "--vcpus",
            "1",
            "--contend-ms",
            "50",
            "--json",
            "out.json",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    report = json.loads((work / "out.json").read_text())
    (result,) = report["results"]
    assert result["variant"] == "fresh-vm/vcpu-thread"
    assert result["verdict"] == "holds", result
    assert result["vcpus"] and result["steal_after_ns"] is not None
    assert list((tmp_path / "cache" / "guest").glob("steal-*.elf")), "not built in the cache"


def test_the_wheel_holds_the_tools_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kvmharness/tools/bisect_kernel_guest.sh" in names
    mutants = ROOT / "tests" / "mutants"
    # the patches and their ports to other series (SERIES/NAME.patch)
    patches = {p.relative_to(mutants).as_posix() for p in mutants.glob("**/*.patch")}
    prefix = "kvmharness/tools/mutant_patches/"
    shipped = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
    assert patches and any("/" in p for p in patches) and patches <= shipped


#: The kernel tools as a user of the wheel runs them, away from any checkout:
#: (argv after `kvmharness`, what its output must hold).
TOOL_RUNS = [
    (["bisect-kernel", "--help"], "KERNEL_IMAGE"),
    (["mutants", "--list"], "steal-last-steal-from-writer"),  # the patches ship too
]


@pytest.mark.parametrize(("argv", "expect"), TOOL_RUNS, ids=[" ".join(a) for a, _ in TOOL_RUNS])
def test_the_installed_wheel_runs_the_kernel_tools_outside_the_checkout(
    installed, tmp_path, argv, expect
):
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [str(installed / "bin" / "kvmharness"), *argv],
        cwd=work,
        env=_quiet_env(KVMHARNESS_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert expect in proc.stdout


def _python_sources(root: Path) -> list[Path]:
    """Files of the checkout that are Python: *.py, or a script whose first line
    names python or that starts as a sh/Python polyglot (a ``\"\"\":"`` line)."""
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if not path.is_file() or rel.parts[0].startswith(".") or "__pycache__" in rel.parts:
            continue
        if path.suffix == ".py":
            out.append(rel)
            continue
        try:
            head = path.read_bytes()[:200].decode()
        except (UnicodeDecodeError, OSError):
            continue
        lines = head.splitlines()
        if lines and ("python" in lines[0] or any(x.startswith('""":"') for x in lines[:3])):
            out.append(rel)
    return out


def test_every_python_file_is_one_ruff_formats():
    """`ruff format --check` and `ruff check` find *.py files only: Python hidden in
    a file without the suffix (the old sh/Python polyglot scripts/bisect-kernel)
    would escape both."""
    hidden = [p for p in _python_sources(ROOT) if p.suffix != ".py"]
    assert hidden == [], f"Python without a .py name, unchecked by ruff: {hidden}"


def test_the_python_file_finder_sees_a_polyglot(tmp_path):
    """Negative control: an extension-less sh/Python polyglot is found."""
    (tmp_path / "tool").write_text('#!/bin/sh\n""":"\nexec python3 "$0" "$@"\n":"""\nprint(1)\n')
    (tmp_path / "ok.py").write_text("print(1)\n")
    (tmp_path / "run").write_text("#!/bin/sh\nexec true\n")
    assert sorted(map(str, _python_sources(tmp_path))) == ["ok.py", "tool"]


@pytest.mark.kvm
def test_the_installed_wheel_runs_a_nightly_outside_the_checkout(installed, tmp_path):
    """`kvmharness nightly --no-pytest` of the wheel: the matrix (one cheap
    scenario) on this host's KVM, a history record, the report."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [
            str(installed / "bin" / "kvmharness"),
            "nightly",
            "--no-pytest",
            "--history",
            "h.jsonl",
            "--out",
            "report",
            "--run-args",
            "-s steal/cancelled-save --vcpus 1 --contend-ms 50",
        ],
        cwd=work,
        env=_quiet_env(KVMHARNESS_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    (rec,) = [json.loads(line) for line in (work / "h.jsonl").read_text().splitlines()]
    assert [(s["id"], s["status"]) for s in rec["scenarios"]] == [
        ("steal/cancelled-save@1", "holds")
    ]
    assert rec["harness"]["revision"] is None  # no checkout: no git revision to claim
    assert "latest run" in (work / "report" / "index.html").read_text()
    # without a checkout there are no KVM tests to run: said, not guessed
    proc = subprocess.run(
        [str(installed / "bin" / "kvmharness"), "nightly", "--history", "h.jsonl"],
        cwd=work,
        env=_quiet_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--no-pytest" in proc.stderr, proc.stderr


def test_scripts_test_runs_ruff_over_every_python_file():
    """scripts/test (and so .ci/run) runs `ruff check` and `ruff format --check`
    over a list of folders: every Python file the repository tracks is in one."""
    words = [line.split() for line in (ROOT / "scripts" / "test").read_text().splitlines()]
    lists = [
        w[2:] for w in words if w[:2] in ([".venv/bin/ruff", "check"], [".venv/bin/ruff", "format"])
    ]
    assert len(lists) == 2, "scripts/test runs ruff check and ruff format --check"
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "*.py"], capture_output=True, text=True
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    for dirs in lists:
        roots = [d for d in dirs if not d.startswith("-")]
        missed = [p for p in tracked if not any(p == r or p.startswith(r + "/") for r in roots)]
        assert missed == [], f"ruff in scripts/test does not see {missed}"
