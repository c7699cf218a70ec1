"""Guest programs are cached by source and compiler; a change in either rebuilds."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from kvmharness.guest import build

pytest_plugins = ["pytester"]


def test_hash_changes_with_compiler_version(monkeypatch):
    h1 = build.source_hash("selftest")
    monkeypatch.setattr(build, "compiler_version", lambda cc="gcc": "gcc (Other) 99.1")
    assert build.source_hash("selftest") != h1


def test_hash_changes_with_a_source(monkeypatch, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(build.SRC_DIR, src)
    monkeypatch.setattr(build, "SRC_DIR", src)
    h1 = build.source_hash("selftest")
    prog = src / "programs" / "selftest.c"
    prog.write_text(prog.read_text() + "\n/* edited */\n")
    assert build.source_hash("selftest") != h1


def test_build_is_cached_and_rebuilt_on_change(monkeypatch, tmp_path):
    import shutil

    monkeypatch.setenv("KVMHARNESS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    shutil.copytree(build.SRC_DIR, src)
    monkeypatch.setattr(build, "SRC_DIR", src)
    first = build.build("selftest")
    assert build.build("selftest") == first
    prog = src / "programs" / "selftest.c"
    prog.write_text(prog.read_text() + "\nvolatile unsigned long added_symbol;\n")
    second = build.build("selftest")
    assert second != first and second.is_file()
    from kvmharness.guest.elf import parse_elf

    assert "added_symbol" in parse_elf(second.read_bytes()).symbols


def test_unknown_program_and_compile_errors_are_clear(monkeypatch, tmp_path):
    import shutil

    with pytest.raises(build.GuestBuildError, match="no guest program 'nope'"):
        build.build("nope")
    monkeypatch.setenv("KVMHARNESS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    shutil.copytree(build.SRC_DIR, src)
    monkeypatch.setattr(build, "SRC_DIR", src)
    (src / "programs" / "broken.c").write_text("void guest_main(unsigned cpu) { oops; }\n")
    with pytest.raises(build.GuestBuildError, match="building guest program 'broken' failed"):
        build.build("broken")
    assert not list((tmp_path / "cache" / "guest").glob("broken*"))


@pytest.fixture
def private_cache(monkeypatch, tmp_path):
    """A fresh cache, and the fallback state of build reset so its warning is seen."""
    monkeypatch.setenv("KVMHARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_private", None)
    monkeypatch.setattr(build, "_warned", set())
    return tmp_path / "cache" / "guest"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "header-only"])
def test_a_corrupt_cache_entry_is_rebuilt(private_cache, caplog, damage):
    from kvmharness.guest.elf import parse_elf

    path = build.build("selftest")
    good = path.read_bytes()
    bad = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\x00garbage" * 100,
        "empty": b"",
        "header-only": good[:64],
    }[damage]
    path.write_bytes(bad)
    with caplog.at_level("WARNING", logger=build.__name__):
        again = build.build("selftest")
    assert again == path
    rebuilt, original = parse_elf(again.read_bytes()), parse_elf(good)
    assert rebuilt.segments == original.segments and rebuilt.entry == original.entry
    assert "is corrupt" in caplog.text
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_a_cache_path_that_is_a_file_falls_back_to_a_private_dir(
    private_cache, monkeypatch, tmp_path, caplog
):
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("not a directory\n")
    monkeypatch.setenv("KVMHARNESS_CACHE", str(not_a_dir))
    with caplog.at_level("WARNING", logger=build.__name__):
        first = build.build("selftest")
        second = build.build("steal")
        assert build.build("selftest") == first  # reused, not rebuilt
    assert first.is_file() and second.is_file()
    assert first.parent == second.parent == build._private
    assert not first.is_relative_to(not_a_dir)
    assert not_a_dir.read_text() == "not a directory\n"
    warnings = [r for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 1, caplog.text


def _read_only(monkeypatch, root: Path) -> None:
    """Make creating or removing files under ``root`` fail as on a read-only file system
    (chmod does not stop root, who runs these tests in CI)."""
    import errno
    import tempfile

    real_mkstemp, real_unlink = tempfile.mkstemp, Path.unlink

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).is_relative_to(root):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def unlink(self, *args, **kwargs):
        if self.is_relative_to(root):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(build.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(Path, "unlink", unlink)


def test_a_read_only_cache_falls_back_to_a_private_dir(private_cache, monkeypatch, caplog):
    _read_only(monkeypatch, private_cache.parent)
    with caplog.at_level("WARNING", logger=build.__name__):
        path = build.build("selftest")
        assert build.build("selftest") == path
    assert path.is_file() and path.parent == build._private
    assert "unusable" in caplog.text and "Read-only" in caplog.text
    assert len([r for r in caplog.records if "unusable" in r.getMessage()]) == 1
    assert not list(private_cache.glob("*.elf"))


def test_a_corrupt_entry_in_a_read_only_cache_is_rebuilt_elsewhere(private_cache, monkeypatch):
    from kvmharness.guest.elf import parse_elf

    cached = build.build("selftest")
    cached.write_bytes(b"junk")
    _read_only(monkeypatch, private_cache.parent)
    path = build.build("selftest")
    assert path.parent == build._private
    assert parse_elf(path.read_bytes()).segments
    assert cached.read_bytes() == b"junk"  # left alone: it could not be removed


def test_the_private_dir_is_removed_at_exit(tmp_path):
    import subprocess
    import sys

    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("")
    code = "from kvmharness.guest import build; p = build.build('selftest'); print(p.parent)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "KVMHARNESS_CACHE": str(not_a_dir)},
        check=True,
    )
    private = Path(proc.stdout.strip())
    assert private.name.startswith("kvmharness-guest-")
    assert not private.exists()
    assert "unusable" in proc.stderr


def test_a_missing_compiler_is_a_clear_error(private_cache, monkeypatch, tmp_path):
    with pytest.raises(build.GuestBuildError, match="no-such-gcc not found.*gcc and binutils"):
        build.build("selftest", cc="no-such-gcc")
    # and gcc itself missing from PATH
    build.compiler_version.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    try:
        with pytest.raises(build.GuestBuildError, match="gcc not found"):
            build.build("selftest")
    finally:
        build.compiler_version.cache_clear()


def test_a_compiler_that_cannot_run_is_a_clear_error(private_cache, tmp_path):
    fake = tmp_path / "fake-gcc"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(build.GuestBuildError, match="--version failed"):
        build.build("selftest", cc=str(fake))


# ---- guest programs from the user's tree


USER_GUEST = """\
#include "runtime.h"
#include "helper.h"
volatile uint64_t ticks;
void guest_main(uint32_t cpu)
{
    for (int i = 0; i < 3; i++)
        GUEST_SYNC(++ticks, cpu);
    GUEST_ASSERT(ticks == HELPER_LIMIT, ticks);
}
"""


@pytest.fixture
def user_src(private_cache, tmp_path) -> Path:
    """A user's guest program outside the package, with a local header."""
    tree = tmp_path / "mytests"
    tree.mkdir()
    (tree / "helper.h").write_text("#define HELPER_LIMIT 3\n")
    src = tree / "my_guest.c"
    src.write_text(USER_GUEST)
    return src


def test_a_user_file_builds_against_the_runtime_and_is_cached(user_src, monkeypatch):
    from kvmharness.guest.elf import parse_elf

    first = build.build(user_src)
    assert first.parent == build.cache_dir() and first.name.startswith("user-my_guest-")
    symbols = parse_elf(first.read_bytes()).symbols
    assert {"ticks", "guest_main", "ucall", "exception_stubs"} <= set(symbols)

    def no_compile(*a, **k):
        raise AssertionError("rebuilt although nothing changed")

    monkeypatch.setattr(build, "_compile", no_compile)
    assert build.build(user_src) == first
    assert build.build(str(user_src)) == first  # a str path with .c names the same file
    assert build.load_program(user_src).symbols["ticks"] == symbols["ticks"]


@pytest.mark.parametrize("edit", ["source", "header-next-to-it", "included-from-a-subdir"])
def test_a_user_files_hash_covers_it_and_its_headers(user_src, edit):
    h1 = build.source_hash(user_src)
    if edit == "source":
        user_src.write_text(USER_GUEST + "/* edited */\n")
    elif edit == "header-next-to-it":
        (user_src.parent / "helper.h").write_text("#define HELPER_LIMIT 3 /* edited */\n")
    else:
        sub = user_src.parent.parent / "shared"
        sub.mkdir()
        (sub / "common.h").write_text("#define COMMON 1\n")
        user_src.write_text(
            USER_GUEST.replace('"helper.h"', '"helper.h"\n#include "../shared/common.h"')
        )
        h1 = build.source_hash(user_src)
        (sub / "common.h").write_text("#define COMMON 2\n")
    assert build.source_hash(user_src) != h1


def test_unrelated_files_and_moves_of_a_user_file(user_src, tmp_path):
    h1 = build.source_hash(user_src)
    (user_src.parent / "notes.txt").write_text("not a header\n")
    (user_src.parent / "other_guest.c").write_text("/* another program */\n")
    assert build.source_hash(user_src) == h1
    # Same text elsewhere: another ELF, since GUEST_ASSERT reports the file's path.
    moved = tmp_path / "elsewhere" / "my_guest.c"
    shutil.copytree(user_src.parent, moved.parent)
    assert build.source_hash(moved) != h1


def test_names_and_paths_are_told_apart(user_src, monkeypatch):
    assert not build.is_source_path("selftest")
    assert build.is_source_path("my_guest.c") and build.is_source_path("dir/guest")
    assert build.is_source_path(user_src)
    assert build.program_label("steal") == "steal"
    monkeypatch.chdir(user_src.parent)
    assert build.program_label("my_guest.c") == str(user_src)
    assert build.build("my_guest.c") == build.build(user_src)  # relative to the cwd
    with pytest.raises(build.GuestBuildError, match="no guest program 'my_guest'.*source="):
        build.build("my_guest")
    with pytest.raises(build.GuestBuildError, match="guest source .*/missing.c not found"):
        build.build(user_src.parent / "missing.c")


def test_a_compile_error_names_the_users_file_and_line(user_src):
    broken = user_src.parent / "broken_guest.c"
    broken.write_text(
        '#include "runtime.h"\n\nvoid guest_main(uint32_t cpu)\n{\n    cpu = oops;\n}\n'
    )
    with pytest.raises(build.GuestBuildError) as info:
        build.build(broken)
    text = str(info.value)
    assert f"building guest program '{broken}' failed" in text
    assert re.search(re.escape(f"{broken}:5:11: error: ") + ".oops. undeclared", text), text
    assert not list(build.cache_dir().glob("user-broken_guest*"))


def test_warnings_are_errors_in_a_user_file_too(user_src):
    unused = user_src.parent / "unused_guest.c"
    unused.write_text('#include "runtime.h"\nvoid guest_main(uint32_t cpu) { int x; }\n')
    with pytest.raises(build.GuestBuildError, match=rf"{unused}:2:.*unused variable"):
        build.build(unused)


@pytest.mark.kvm
@pytest.mark.timeout(60)
def test_guest_vm_runs_a_user_file(kvm, user_src, monkeypatch):
    from kvmharness.guest.machine import GuestVm
    from kvmharness.testing import read_symbol, run_until_done

    with GuestVm(kvm, source=user_src) as gvm:
        assert gvm.program == str(user_src)
        assert [uc.args for uc in run_until_done(gvm, gvm.vcpus[0])] == [[1, 0], [2, 0], [3, 0]]
        assert read_symbol(gvm, "ticks") == 3
    monkeypatch.chdir(user_src.parent)
    with GuestVm(kvm, source="my_guest.c", vcpus=2) as gvm:  # relative to the cwd
        assert gvm.program == str(user_src)
    with GuestVm(kvm, user_src) as gvm:  # a Path as the program
        assert gvm.program == str(user_src)
    with GuestVm(kvm, "selftest") as gvm:
        assert gvm.program == "selftest"
    with pytest.raises(TypeError, match="either a program"):
        GuestVm(kvm, "selftest", source=user_src)
    with pytest.raises(TypeError, match="either a program"):
        GuestVm(kvm)


@pytest.mark.kvm
@pytest.mark.timeout(60)
def test_make_guest_finds_a_source_next_to_the_test_file(pytester, private_cache):
    """Run from another directory: the relative name is the test module's neighbour."""
    sub = pytester.mkdir("suite")
    (sub / "helper.h").write_text("#define HELPER_LIMIT 3\n")
    (sub / "my_guest.c").write_text(USER_GUEST)
    (sub / "test_mine.py").write_text(
        "import pytest\n"
        "from kvmharness.testing import read_symbol, run_until_done\n\n"
        "@pytest.mark.kvm\n"
        "def test_it(make_guest):\n"
        "    gvm = make_guest(source='my_guest.c')\n"
        "    assert len(run_until_done(gvm, gvm.vcpus[0])) == 3\n"
        "    assert read_symbol(gvm, 'ticks') == 3\n"
        "    assert make_guest('my_guest.c').program == gvm.program\n"
        "    with pytest.raises(Exception, match='guest source .*/suite/nope.c not found'):\n"
        "        make_guest(source='nope.c')\n"
    )
    result = pytester.runpytest_inprocess("suite", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
