"""scripts/bisect-kernel without QEMU: arguments, exit codes, module dirs, the guest script.

The script has no .py extension (it starts as a POSIX sh prologue that finds
Python), so it is loaded with SourceFileLoader.  Nothing here boots a kernel.
"""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import lzma
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bisect-kernel"


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("bisect_kernel", str(SCRIPT))
    spec = importlib.util.spec_from_loader("bisect_kernel", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bisect_kernel"] = mod  # dataclasses look their module up
    loader.exec_module(mod)
    return mod


bk = _load()


def fake_bzimage(path: Path, release: str = "6.1.0-56-amd64") -> Path:
    """A file with just enough of an x86 setup header for kernel_release()."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    text = f"{release} (debian-kernel@lists.debian.org) #1 SMP Debian\0".encode()
    struct.pack_into("<H", data, 0x20E, 0x300)  # string at 0x300 + 0x200
    data[0x500 : 0x500 + len(text)] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------- arguments


def test_parse_args_splits_inner_args_at_double_dash() -> None:
    o = bk.parse_args(
        [
            "img",
            "--modules",
            "m",
            "--timeout",
            "60",
            "--",
            "--scenario",
            "fresh-vm",
            "--json",
            "x.json",
        ],
        env={},
    )
    assert o.image == Path("img")
    assert o.modules == Path("m")
    assert o.timeout == 60.0
    assert o.inner_args == ["--scenario", "fresh-vm", "--json", "x.json"]
    assert o.inner_cmd is None
    assert o.accel == "auto"


def test_parse_args_defaults_and_no_inner_args() -> None:
    o = bk.parse_args(["img"], env={})
    assert o.modules is None
    assert o.timeout == bk.DEFAULT_TIMEOUT_S
    assert o.inner_args == []
    assert (o.memory, o.cpus) == ("2G", 2)


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no image
        ["img", "--bogus"],  # unknown option
        ["img", "--timeout", "0"],
        ["img", "--timeout", "soon"],
        ["img", "--cpus", "0"],
        ["img", "--accel", "hvf"],
        ["img", "--inner-cmd", ""],
        ["img", "--inner-cmd", "'unclosed"],
        ["img", "extra-positional"],
    ],
)
def test_bad_usage_raises_usage_error(argv: list[str]) -> None:
    with pytest.raises(bk.UsageError):
        bk.parse_args(argv, env={})


def test_inner_command_default_env_and_option(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    kvmh = str(root / ".venv" / "bin" / "kvmharness")
    o = bk.parse_args(["img", "--", "-s", "fresh-vm"], env={})
    assert bk.inner_argv(o, root) == [kvmh, "bisect", "-s", "fresh-vm"]
    o = bk.parse_args(
        ["img", "--", "--vcpus", "1"],
        env={"KVMHARNESS_BISECT_INNER": "kvmharness run --strategy fresh-vm"},
    )
    assert bk.inner_argv(o, root) == [kvmh, "run", "--strategy", "fresh-vm", "--vcpus", "1"]
    o = bk.parse_args(
        ["img", "--inner-cmd", "true"], env={"KVMHARNESS_BISECT_INNER": "kvmharness run"}
    )
    assert bk.inner_argv(o, root) == ["true"]  # the option beats the environment


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("inner", "step"),
    [
        (0, 0),
        (1, 1),
        (125, 125),
        (128, 128),
        (130, 130),
        (143, 143),
        (255, 255),
        # not a bisect code: never "bad" (1-124/126/127 would blame the commit)
        (2, 128),
        (124, 128),
        (126, 128),
        (127, 128),
    ],
)
def test_map_inner_exit(inner: int, step: int) -> None:
    assert bk.map_inner_exit(inner)[0] == step


def _state(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / name.replace("_", "-")).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "timed_out", "qemu_started", "code"),
    [
        ({"booted": "r", "kvm_loaded": "", "inner_started": "", "inner_rc": "1\n"}, False, True, 1),
        ({"booted": "r", "kvm_loaded": "", "inner_started": "", "inner_rc": "0\n"}, False, True, 0),
        (
            {"booted": "r", "kvm_loaded": "", "inner_started": "", "inner_rc": "2\n"},
            False,
            True,
            128,
        ),
        ({"booted": "r", "untestable": "insmod kvm.ko failed"}, False, True, 125),
        ({"booted": "r", "kvm_loaded": "", "inner_started": ""}, False, True, 125),  # died in test
        ({"booted": "r", "kvm_loaded": "", "inner_started": ""}, True, True, 128),  # inner hung
        ({"booted": "r"}, False, True, 125),  # died loading KVM
        ({}, False, True, 125),  # panic before user space
        ({}, True, True, 125),  # boot hang
        ({}, False, False, 128),  # vng failed before QEMU: a host fault
    ],
)
def test_judge(
    tmp_path: Path, files: dict[str, str], timed_out: bool, qemu_started: bool, code: int
) -> None:
    opts = bk.parse_args(["img"], env={})
    got, why = bk._judge(
        _state(tmp_path, **files),
        timed_out=timed_out,
        rc_vng=1,
        qemu_started=qemu_started,
        opts=opts,
    )
    assert got == code, why


@pytest.mark.parametrize(("on_crash", "code"), [("skip", 125), ("bad", 1), ("abort", 128)])
def test_judge_kernel_death_during_the_test(tmp_path: Path, on_crash: str, code: int) -> None:
    opts = bk.parse_args(["img", "--on-crash", on_crash], env={})
    state = _state(tmp_path, booted="r", kvm_loaded="", inner_started="")
    got, why = bk._judge(state, timed_out=False, rc_vng=255, qemu_started=True, opts=opts)
    assert got == code, why


def test_main_bad_usage_is_128_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert bk.main(["--no-such-option"]) == 128
    assert "usage" in capsys.readouterr().err
    assert bk.main(["/nonexistent/bzImage"]) == 128


def test_main_help_documents_the_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    assert bk.main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in ("125", "128", "SIGTERM 143"):
        assert code in out


def test_main_empty_modules_dir_is_125_before_booting(tmp_path: Path) -> None:
    img = fake_bzimage(tmp_path / "bzImage")
    (tmp_path / "mods").mkdir()
    # exits before any dependency check or VM: must be fast and need no QEMU
    assert bk.main([str(img), "--modules", str(tmp_path / "mods"), "--no-install"]) == 125


def test_script_runs_through_its_sh_prologue() -> None:
    """Executed as a program (the sh prologue finds python3): bad usage is 128."""
    r = subprocess.run([str(SCRIPT), "--timeout", "5"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 128, r.stderr
    assert "KERNEL_IMAGE" in r.stderr


# ---------------------------------------------------------------- kernel image and modules


def test_kernel_release_from_setup_header(tmp_path: Path) -> None:
    img = fake_bzimage(tmp_path / "vmlinuz", "6.12.117+deb12-amd64")
    assert bk.kernel_release(img) == "6.12.117+deb12-amd64"


def test_kernel_release_rejects_non_bzimage(tmp_path: Path) -> None:
    p = tmp_path / "vmlinux"
    p.write_bytes(b"\x7fELF" + bytes(0x400))
    with pytest.raises(bk.UsageError, match="not an x86 bzImage"):
        bk.kernel_release(p)


def test_own_modules_dir_next_to_an_extracted_package(tmp_path: Path) -> None:
    rel = "6.1.0-56-amd64"
    img = fake_bzimage(tmp_path / "pkg" / "boot" / f"vmlinuz-{rel}", rel)
    assert bk.own_modules_dir(img, rel) is None
    moddir = tmp_path / "pkg" / "lib" / "modules" / rel
    moddir.mkdir(parents=True)
    assert bk.own_modules_dir(img, rel) == moddir.resolve()
    assert bk.own_modules_dir(img, "6.1.0-55-amd64") is None  # another release's


def test_kernel_tree_image(tmp_path: Path) -> None:
    img = fake_bzimage(tmp_path / "linux" / "arch" / "x86" / "boot" / "bzImage")
    assert not bk.is_kernel_tree_image(img)
    (tmp_path / "linux" / ".config").write_text("CONFIG_KVM=m\n")
    assert bk.is_kernel_tree_image(img)


def test_modules_dir_missing_is_usage(tmp_path: Path) -> None:
    with pytest.raises(bk.UsageError):
        bk.find_kvm_modules(tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(bk.UsageError):
        bk.find_kvm_modules(tmp_path / "file")


def test_modules_dir_without_kvm_is_untestable(tmp_path: Path) -> None:
    with pytest.raises(bk.Untestable, match="no kvm.ko"):
        bk.find_kvm_modules(tmp_path)
    (tmp_path / "kvm.ko").write_bytes(b"x")
    with pytest.raises(bk.Untestable, match="neither"):
        bk.find_kvm_modules(tmp_path)


def test_modules_dir_compressed_and_underscored(tmp_path: Path) -> None:
    (tmp_path / "kvm.ko.xz").write_bytes(lzma.compress(b"kvm"))
    (tmp_path / "kvm_amd.ko.gz").write_bytes(gzip.compress(b"amd"))
    ms = bk.find_kvm_modules(tmp_path)
    assert ms.kvm.name == "kvm.ko.xz"
    assert ms.amd is not None and ms.amd.name == "kvm_amd.ko.gz"
    assert ms.intel is None
    out = tmp_path / "out"
    out.mkdir()
    assert bk.decompress_module(ms.kvm, out).read_bytes() == b"kvm"
    assert bk.decompress_module(ms.amd, out).read_bytes() == b"amd"
    assert (out / "kvm.ko").exists() and (out / "kvm_amd.ko").exists()


def test_plain_module_is_copied(tmp_path: Path) -> None:
    (tmp_path / "kvm-intel.ko").write_bytes(b"\x7fELFintel")
    out = tmp_path / "out"
    out.mkdir()
    assert bk.decompress_module(tmp_path / "kvm-intel.ko", out).read_bytes() == b"\x7fELFintel"


# ---------------------------------------------------------------- accelerator


def _sysfs(tmp_path: Path, mods: dict[str, str | None]) -> Path:
    for name, nested in mods.items():
        d = tmp_path / "sys" / "module" / name / "parameters"
        d.mkdir(parents=True)
        if nested is not None:
            (d / "nested").write_text(nested + "\n")
    return tmp_path / "sys"


@pytest.mark.parametrize(
    ("mods", "dev", "accel"),
    [
        ({"kvm": None, "kvm_pvm": None}, True, "tcg"),
        ({"kvm": None, "kvm_amd": "1"}, True, "kvm"),
        ({"kvm": None, "kvm_intel": "Y"}, True, "kvm"),
        ({"kvm": None, "kvm_intel": "N"}, True, "tcg"),
        ({"kvm": None, "kvm_amd": "1"}, False, "tcg"),
        ({}, True, "tcg"),
    ],
)
def test_choose_accel(tmp_path: Path, mods: dict[str, str | None], dev: bool, accel: str) -> None:
    sysfs = _sysfs(tmp_path, mods)
    dev_kvm = tmp_path / "kvm"
    if dev:
        dev_kvm.write_text("")
    assert bk.choose_accel(sysfs, dev_kvm)[0] == accel


def test_guest_vendor() -> None:
    assert bk.guest_vendor("tcg", "flags : fpu vmx") == "amd"  # -cpu max exposes SVM
    assert bk.guest_vendor("kvm", "flags\t\t: fpu vmx sse") == "intel"
    assert bk.guest_vendor("kvm", "flags\t\t: fpu svm sse") == "amd"


# ---------------------------------------------------------------- guest side


def test_rewrite_outputs(tmp_path: Path) -> None:
    args, moves = bk.rewrite_outputs(
        ["-s", "fresh-vm", "--json", "r/out.json", "--plot=/abs/p.png", "--json", "-"],
        tmp_path,
        "/run/g",
    )
    assert args == [
        "-s",
        "fresh-vm",
        "--json",
        "/run/g/0-out.json",
        "--plot=/run/g/1-p.png",
        "--json",
        "-",
    ]
    assert moves == [("0-out.json", tmp_path / "r" / "out.json"), ("1-p.png", Path("/abs/p.png"))]


@pytest.mark.parametrize("with_modules", [False, True])
def test_guest_script_is_valid_bash(tmp_path: Path, with_modules: bool) -> None:
    ms = None
    if with_modules:
        ms = bk.ModuleSet(kvm=Path("kvm.ko"), amd=Path("kvm-amd.ko.xz"), intel=None)
    text = bk.guest_script(
        vendor="amd",
        modules=ms,
        release="6.1.0-56-amd64",
        inner=["/x/kvmharness", "bisect", "--json", "it's $HOME"],
        cwd="/some dir",
    )
    if with_modules:
        assert "insmod_dir /run/bisect-kernel/mods/kvm.ko" in text
        assert "kvm-amd.ko nested=1" in text
    else:
        assert "modprobe kvm_amd nested=1" in text
    assert "'it'\"'\"'s $HOME'" in text  # inner ARGS quoted, not expanded
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = tmp_path / "g.sh"
    script.write_text(text)
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_guest_script_intel_needed_but_absent() -> None:
    ms = bk.ModuleSet(kvm=Path("kvm.ko"), amd=Path("kvm-amd.ko"), intel=None)
    text = bk.guest_script(vendor="intel", modules=ms, release="r", inner=["true"], cwd="/")
    assert 'untestable "--modules has no kvm-intel.ko' in text


def test_script_is_ruff_clean() -> None:
    """ruff only finds *.py; check the extension-less script explicitly."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff not installed")
    r = subprocess.run(
        [ruff, "check", "--no-cache", str(SCRIPT)],
        capture_output=True,
        text=True,
        cwd=SCRIPT.parent.parent,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_frozen_for_counts_from_the_last_heartbeat(tmp_path: Path) -> None:
    import os

    state = _state(tmp_path, booted="r", kvm_loaded="")
    assert bk.frozen_for(state, 1e9) is None  # the inner command has not started
    (state / "inner-started").write_text("")
    os.utime(state / "inner-started", (1000, 1000))
    assert bk.frozen_for(state, 1050) == 50
    (state / "heartbeat").write_text("1")
    os.utime(state / "heartbeat", (1040, 1040))
    assert bk.frozen_for(state, 1050) == 10
    (state / "inner-rc").write_text("0")
    assert bk.frozen_for(state, 5000) is None  # it ended: nothing to watch


@pytest.mark.parametrize(("on_crash", "code"), [("skip", 125), ("bad", 1), ("abort", 128)])
def test_judge_kernel_freeze_during_the_test(tmp_path: Path, on_crash: str, code: int) -> None:
    opts = bk.parse_args(["img", "--on-crash", on_crash], env={})
    state = _state(tmp_path, booted="r", kvm_loaded="", inner_started="")
    got, why = bk._judge(
        state, timed_out=False, rc_vng=-9, qemu_started=True, opts=opts, frozen=True
    )
    assert got == code and "froze" in why, why


def test_the_guest_script_keeps_a_heartbeat() -> None:
    script = bk.guest_script(vendor="amd", modules=None, release="r", inner=["true"], cwd="/")
    assert f'> "$S/heartbeat"; sleep {bk.HEARTBEAT_S}' in script


def test_retries_is_bounded() -> None:
    assert bk.parse_args(["img"], env={}).retries == 1
    with pytest.raises(bk.UsageError):
        bk.parse_args(["img", "--retries", "99"], env={})


def test_qemu_wrapper_adds_single_threaded_tcg(tmp_path: Path) -> None:
    import subprocess

    started = tmp_path / "started"
    fake = tmp_path / "qemu"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    w = tmp_path / "wrapper"
    w.write_text(bk.qemu_wrapper(str(fake), started, bk.TCG_SINGLE_ARGS))
    w.chmod(0o755)
    out = subprocess.run([str(w), "-kernel", "k"], capture_output=True, text=True).stdout
    assert out.split() == ["-accel", "tcg,thread=single", "-kernel", "k"]
    assert started.exists()
    assert bk.parse_args(["img"], env={}).tcg_threads == "single"
    assert bk.parse_args(["img", "--tcg-threads", "multi"], env={}).tcg_threads == "multi"


def test_crash_kind_only_while_the_inner_command_ran(tmp_path: Path) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    running = _state(tmp_path / "a", booted="r", kvm_loaded="", inner_started="")
    assert bk.crash_kind(running, timed_out=False, frozen=False) == "died"
    assert bk.crash_kind(running, timed_out=False, frozen=True) == "froze"
    assert bk.crash_kind(running, timed_out=True, frozen=False) == ""  # a timeout is 128
    done = _state(tmp_path / "b", booted="r", kvm_loaded="", inner_started="", inner_rc="0\n")
    assert bk.crash_kind(done, timed_out=False, frozen=False) == ""
    booting = _state(tmp_path / "c", booted="r")
    assert bk.crash_kind(booting, timed_out=False, frozen=False) == ""
