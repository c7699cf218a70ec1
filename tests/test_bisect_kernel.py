"""kvmharness bisect-kernel without QEMU: arguments, exit codes, module dirs, the guest script.

Nothing here boots a kernel.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kvmharness.tools import bisect_kernel as bk

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bisect-kernel"


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
    root = bk.Home(root, root / ".venv" / "bin" / "python", root / ".venv" / "bin")
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


def test_inner_command_of_an_installed_package() -> None:
    """Installed from a wheel (no checkout): the guest runs this Python's kvmharness."""
    py = Path("/opt/venv/bin/python3")
    home = bk.Home(None, py, py.parent)
    o = bk.parse_args(["img", "--", "-s", "steal"], env={})
    assert bk.inner_argv(o, home) == [str(py), "-m", "kvmharness.cli", "bisect", "-s", "steal"]
    o = bk.parse_args(["img", "--inner-cmd", "kvmharness run"], env={})
    assert bk.inner_argv(o, home) == [str(py), "-m", "kvmharness.cli", "run"]


def test_home_is_this_checkout() -> None:
    home = bk.find_home()
    assert home.checkout == SCRIPT.parent.parent
    assert home.kvmharness == [str(SCRIPT.parent.parent / ".venv" / "bin" / "kvmharness")]


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


def _source_params(tmp_path: Path, params: str, show: str) -> str:
    """What bash sees after sourcing a params.sh: ``show`` evaluated in it."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    (tmp_path / "params.sh").write_text(params)
    r = subprocess.run(
        ["bash", "-c", f'. "$1/params.sh"; {show}', "bash", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return r.stdout


@pytest.mark.parametrize("with_modules", [False, True])
def test_guest_params_round_trip_through_bash(tmp_path: Path, with_modules: bool) -> None:
    ms = None
    if with_modules:
        ms = bk.ModuleSet(kvm=Path("kvm.ko"), amd=Path("kvm-amd.ko.xz"), intel=None)
    inner = ["/x/kvmharness", "bisect", "--json", "it's $HOME", "a\nb", "*"]
    params = bk.guest_params(
        vendor="amd", modules=ms, release="6.1.0-56-amd64", inner=inner, cwd="/some dir"
    )
    out = _source_params(
        tmp_path,
        params,
        'printf "%s\\0" "${INNER[@]}" "$VENDOR" "$RELEASE" "$KVM_KO" "$VENDOR_KO" '
        '"$INNER_CWD" "$EXIT_UNTESTABLE" "$HEARTBEAT_S"',
    )
    words = out.split("\0")[:-1]
    assert words[: len(inner)] == inner  # quoted, not expanded or split
    kvm_ko = "/run/bisect-kernel/mods/kvm.ko" if with_modules else ""
    amd_ko = "/run/bisect-kernel/mods/kvm-amd.ko" if with_modules else ""
    assert words[len(inner) :] == [
        "amd",
        "6.1.0-56-amd64",
        kvm_ko,
        amd_ko,
        "/some dir",
        "125",
        str(bk.HEARTBEAT_S),
    ]


def test_guest_params_vendor_module_absent(tmp_path: Path) -> None:
    """--modules without the vendor module the guest CPU needs: VENDOR_KO is
    empty, which the guest script reports as cannot test."""
    ms = bk.ModuleSet(kvm=Path("kvm.ko"), amd=Path("kvm-amd.ko"), intel=None)
    params = bk.guest_params(vendor="intel", modules=ms, release="r", inner=["true"], cwd="/")
    assert _source_params(tmp_path, params, 'echo "[$KVM_KO][$VENDOR_KO]"') == (
        "[/run/bisect-kernel/mods/kvm.ko][]\n"
    )
    assert 'untestable "--modules has no kvm-$VENDOR.ko' in bk.guest_script()


def test_guest_script_is_package_data_and_valid_bash() -> None:
    text = bk.guest_script()
    assert text.startswith("#!/bin/bash\n")
    assert (Path(bk.__file__).parent / bk.GUEST_SCRIPT).read_text() == text
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    r = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _fake_guest_bin(tmp_path: Path) -> Path:
    """Stand-ins for the commands the guest script runs, for a run outside a VM."""
    d = tmp_path / "bin"
    d.mkdir()
    stubs = {
        "uname": "echo 6.1.0-test",
        "modprobe": 'echo "modprobe $*" >> "$FAKE_LOG"',
        "insmod": 'echo "insmod $*" >> "$FAKE_LOG"',
        "rmmod": "true",
        "modinfo": "echo",
        "sync": "true",
    }
    for name, body in stubs.items():
        (d / name).write_text(f"#!/bin/sh\n{body}\n")
        (d / name).chmod(0o755)
    return d


def _guest_run(
    tmp_path: Path, inner: list[str], *, modules: bool = False, flag: str = "svm"
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the guest script with bash outside a VM: stand-ins for uname and the
    module tools, and /proc, /sys, /dev, /lib/modules of its own."""
    import os

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    state = tmp_path / "state"
    state.mkdir()
    proc, sys_, dev, lib = (tmp_path / d for d in ("proc", "sys", "dev", "lib"))
    for d in (proc, sys_, dev, lib / "r"):
        d.mkdir(parents=True)
    (proc / "cpuinfo").write_text(f"flags\t\t: fpu {flag} sse\n")
    (proc / "uptime").write_text("1.50 2.00\n")
    (dev / "kvm").symlink_to("/dev/null")  # a character device
    ms = bk.ModuleSet(kvm=Path("kvm.ko"), amd=Path("kvm-amd.ko"), intel=None) if modules else None
    (state / "params.sh").write_text(
        bk.guest_params(vendor="amd", modules=ms, release="r", inner=inner, cwd=str(tmp_path))
    )
    (state / "guest.sh").write_text(bk.guest_script())
    env = dict(
        os.environ,
        PATH=f"{_fake_guest_bin(tmp_path)}:{os.environ['PATH']}",
        FAKE_LOG=str(tmp_path / "log"),
        PROC=str(proc),
        SYS=str(sys_),
        DEV=str(dev),
        LIB_MODULES=str(lib),
    )
    r = subprocess.run(
        ["bash", str(state / "guest.sh"), str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return r, state


@pytest.mark.parametrize("modules", [False, True])
def test_guest_script_loads_kvm_and_runs_the_inner_command(tmp_path: Path, modules: bool) -> None:
    out = tmp_path / "argv"
    inner = ["sh", "-c", 'printf "%s|" "$@" > "$0"; exit 7', str(out), "a b", "$HOME"]
    r, state = _guest_run(tmp_path, inner, modules=modules)
    assert r.returncode == 7, r.stderr
    assert out.read_text() == "a b|$HOME|"  # the argv as given: not split, not expanded
    assert (state / "inner-rc").read_text() == "7\n"
    assert (state / "booted").read_text() == "6.1.0-test\n"
    for marker in ("kvm-loaded", "inner-started", "heartbeat"):
        assert (state / marker).exists(), marker
    assert not (state / "untestable").exists()
    # nothing of the script outlives it (its heartbeat loop ran in the background)
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(state).encode() in (proc / "cmdline").read_bytes():
                left.append(proc.name)
        except OSError:
            pass
    assert not left, f"processes left behind: {left}"
    loaded = (tmp_path / "log").read_text()
    if modules:
        assert loaded == (
            "insmod /run/bisect-kernel/mods/kvm.ko\n"
            "insmod /run/bisect-kernel/mods/kvm-amd.ko nested=1\n"
        )
    else:
        assert loaded == "modprobe kvm_amd nested=1\n"


def test_guest_script_without_the_cpu_flag_cannot_test(tmp_path: Path) -> None:
    r, state = _guest_run(tmp_path, ["true"], flag="vmx")
    assert r.returncode == 125, r.stderr
    assert (state / "untestable").read_text() == "the guest CPU has no svm flag\n"
    assert not (state / "inner-started").exists()


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
    assert 'date +%s > "$S/heartbeat"\n    sleep "$HEARTBEAT_S"' in bk.guest_script()


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


def test_an_image_whose_modules_path_vng_refuses_is_named_before_booting(tmp_path: Path) -> None:
    """vng shares the modules beside a packaged image with the guest and takes
    only letters, digits and '_+ /.-' in that path; a Debian version's '~' in
    the folder is refused up front, naming the character, not as "vng failed"."""
    for name, ok in (("img_6.12.118-1~deb12u1", False), ("img_6.12.118-1_deb12u1", True)):
        tree = tmp_path / name
        (tree / "lib" / "modules" / "6.12.118+deb12-amd64").mkdir(parents=True)
        (tree / "boot").mkdir()
        image = tree / "boot" / "vmlinuz-6.12.118+deb12-amd64"
        image.write_bytes(b"")
        if ok:
            bk.check_vng_path(image, "6.12.118+deb12-amd64")
        else:
            with pytest.raises(bk.UsageError, match=r"has '~', which vng refuses"):
                bk.check_vng_path(image, "6.12.118+deb12-amd64")
