"""findings/: each finding is a directory a kernel developer can run alone.

Each holds a README.md (what was seen, where, why it matters, what KVM's
documentation says, the table across the swept kernels) and a pytest file
that imports only the public SDK (``kvmharness.testing``) and marks every
test ``kvm``.  The reproducers themselves run with the suite (testpaths
includes findings/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FINDINGS = ROOT / "findings"
EXPECTED = {"thread-hop", "reused-thread", "pvm-tsc", "tsc-skew-at-save"}


def finding_dirs() -> list[Path]:
    return sorted(p for p in FINDINGS.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def test_every_finding_of_issue_20_has_its_directory():
    assert {p.name for p in finding_dirs()} >= EXPECTED


def test_the_suite_runs_the_findings():
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "findings" in conf["tool"]["pytest"]["ini_options"]["testpaths"]


@pytest.mark.parametrize("d", finding_dirs(), ids=lambda p: p.name)
def test_a_finding_is_readme_and_a_public_sdk_reproducer(d: Path):
    readme = (d / "README.md").read_text()
    for part in ("**Seen", "**Why it matters.**", "**What KVM's documentation says.**"):
        assert part in readme, f"{d.name}/README.md lacks {part}"
    assert f"pytest -s findings/{d.name}" in readme
    assert "<!-- sweep-table:" in readme and "<!-- /sweep-table -->" in readme
    tests = list(d.glob("test_*.py"))
    assert len(tests) == 1, f"{d.name}: one reproducer file"
    tree = ast.parse(tests[0].read_text(), str(tests[0]))
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    private = sorted(
        m for m in mods if m and m.startswith("kvmharness") and m != "kvmharness.testing"
    )
    assert private == [], f"{tests[0]} imports {private}: use kvmharness.testing"
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert funcs
    src = tests[0].read_text()
    assert "pytest.mark.kvm" in src
