"""The examples in ``examples/`` work the way a user would use them.

Each example directory (a guest C file and a pytest file) is copied OUTSIDE the
package, into a pytester directory, and run by a separate pytest process against
real /dev/kvm: with pytest's working directory above the example, so the
relative ``make_guest(source=...)`` is found next to the test file, not in the
working directory.  It passes as shipped, and fails with the guest's own
assertion (file, line, condition) when that assertion is broken on purpose.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: Plugins a user's run does not need (the hypothesis plugin alone costs ~1.5 s to import).
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-rA")

#: (example, guest file, the assertion as shipped, the same assertion broken on purpose)
BREAKS = {
    "steal_off": (
        "steal_off_guest.c",
        "GUEST_ASSERT(st->steal == steal_off",
        "GUEST_ASSERT(st->steal != steal_off",
    ),
    "snapshot_counter": (
        "counter_guest.c",
        "GUEST_ASSERT(ticks == mine,",
        "GUEST_ASSERT(ticks == mine + 1,",
    ),
}


def example_dirs() -> list[str]:
    return sorted(p.parent.name for p in EXAMPLES.glob("*/test_*.py"))


def test_every_example_is_run_here_and_imports_only_the_public_api():
    assert example_dirs() == sorted(BREAKS), "an example is not run by this module"
    for name in example_dirs():
        for test in (EXAMPLES / name).glob("test_*.py"):
            tree = ast.parse(test.read_text(), str(test))
            mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            private = sorted(
                m for m in mods if m and m.startswith("kvmharness") and m != "kvmharness.testing"
            )
            assert private == [], f"{test} imports {private}: use kvmharness.testing"
        guest, shipped, _ = BREAKS[name]
        assert shipped in (EXAMPLES / name / guest).read_text()


@pytest.fixture
def user_tree(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A directory outside the package holding a copy of every example, with its own
    guest build cache (each copy's path is new, so its ELFs would only pile up in
    the suite's cache)."""
    monkeypatch.setenv("KVMHARNESS_CACHE", str(pytester.path / ".kvmharness-cache"))
    for name in example_dirs():
        shutil.copytree(EXAMPLES / name, pytester.path / name)
    assert not pytester.path.is_relative_to(ROOT)
    return pytester


def _run(tree: pytest.Pytester) -> pytest.RunResult:
    result = tree.runpytest_subprocess(*example_dirs(), *QUIET, timeout=120)
    print(result.stdout.str())
    return result


@pytest.mark.kvm
@pytest.mark.timeout(180)
def test_examples_pass_from_a_users_tree(user_tree):
    result = _run(user_tree)
    result.assert_outcomes(passed=len(BREAKS))


@pytest.mark.kvm
@pytest.mark.timeout(180)
def test_a_broken_guest_assertion_fails_with_the_users_file_and_line(user_tree):
    expected = []
    for name, (guest, shipped, broken) in BREAKS.items():
        path = user_tree.path / name / guest
        text = path.read_text()
        path.write_text(text.replace(shipped, broken))
        line = next(i for i, s in enumerate(path.read_text().splitlines(), 1) if broken in s)
        cond = broken.removeprefix("GUEST_ASSERT(").rstrip(",")
        expected.append((path, line, cond))
    result = _run(user_tree)
    result.assert_outcomes(failed=len(BREAKS))
    out = result.stdout.str()
    for path, line, cond in expected:
        # e.g. "E   kvmharness.guest.machine.GuestFailure: vcpu0: guest assertion failed
        #       at /tmp/.../steal_off/steal_off_guest.c:46: st->steal != steal_off && ..."
        want = re.compile(
            r"^E\s+\S*GuestFailure: vcpu0: guest assertion failed at "
            + re.escape(f"{path}:{line}: {cond}")
            + r".*\(values 0x",
            re.MULTILINE,
        )
        assert want.search(out), f"no readable failure for {path}:{line} in:\n{out}"
        assert f"FAILED {path.parent.name}/" in out
    assert "Traceback (most recent call last)" not in out
    assert os.fspath(EXAMPLES) not in out, "the failure must name the user's copy"


@pytest.mark.kvm
@pytest.mark.timeout(180)
def test_the_steal_off_example_sees_an_area_kvm_keeps_writing(user_tree):
    """Detection power: with the guest re-enabling steal time where it should
    disable it, KVM keeps writing the area and the guest's own assertion fires."""
    guest = user_tree.path / "steal_off" / "steal_off_guest.c"
    text = guest.read_text()
    disable = "    wrmsr(MSR_KVM_STEAL_TIME, 0);\n"
    assert text.count(disable) == 1
    guest.write_text(
        text.replace(
            disable,
            "    wrmsr(MSR_KVM_STEAL_TIME, (uint64_t)(uintptr_t)&area | KVM_MSR_ENABLED);\n",
        )
    )
    result = user_tree.runpytest_subprocess("steal_off", *QUIET, timeout=120)
    print(result.stdout.str())
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"E   *GuestFailure: vcpu0: guest assertion failed at {guest}:*: "
            "st->steal == steal_off && st->version == version_off (values *"
        ]
    )
