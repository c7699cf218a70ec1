"""Guest programs are cached by source and compiler; a change in either rebuilds."""

from __future__ import annotations

import pytest

from kvmharness.guest import build


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
