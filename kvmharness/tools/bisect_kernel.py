"""``kvmharness bisect-kernel KERNEL_IMAGE``: one ``git bisect run`` step.

Boot a kernel image under QEMU (virtme-ng) with this host's root file system,
load KVM inside it and run ``kvmharness bisect`` against that kernel's
/dev/kvm; exit with a git bisect run code.  The guest side is a real bash
script shipped beside this module (``bisect_kernel_guest.sh``), fed its
parameters for one boot in a ``params.sh`` the host writes.

Standard library only (and :mod:`kvmharness.exitcodes`, :mod:`kvmharness.procs`):
``scripts/bisect-kernel`` runs it with the system's Python before the
checkout's .venv exists, and sets that .venv up itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib.resources
import json
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kvmharness.exitcodes import EXIT_BROKEN, EXIT_HARNESS, EXIT_OK, EXIT_UNTESTABLE
from kvmharness.procs import Interrupted, end_group, relay, signals_raise
from kvmharness.tools.home import checkout_root

PROG = "bisect-kernel"

DEFAULT_TIMEOUT_S = 1800.0
# The guest touches a heartbeat file every HEARTBEAT_S; with none for FREEZE_S
# while the inner command runs, the guest kernel has frozen (seen under TCG:
# both QEMU vCPUs busy, no process inside getting to run, not even a shell loop)
HEARTBEAT_S = 5
FREEZE_S = 90.0
# One host thread for all guest CPUs under TCG (--tcg-threads single): with
# QEMU 7.2's default multi-threaded TCG a nested kernel froze in about 4 boots
# of 10 here; single-threaded, none froze in 8, and a step took as long.
TCG_SINGLE_ARGS = ("-accel", "tcg,thread=single")
CRASH_EXIT = {"skip": EXIT_UNTESTABLE, "bad": EXIT_BROKEN, "abort": EXIT_HARNESS}
GUEST_STATE = "/run/bisect-kernel"  # our temp dir, as the guest sees it
GUEST_CACHE = "/run/bisect-kernel-cache"  # the guest-program build cache
GUEST_SCRIPT = "bisect_kernel_guest.sh"  # package data beside this module
TCG_KERNEL_ARGS = ("clocksource=tsc", "tsc=reliable")
# Options of ``kvmharness run``/``bisect`` that name a file the guest writes.
OUTPUT_OPTIONS = ("--json", "--plot")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
APT_PACKAGES = {  # command -> Debian package
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "modprobe": "kmod",
    "depmod": "kmod",
    "file": "file",
    "udevadm": "udev",
}

HELP_EPILOG = """\
exit codes (git bisect run):
  0    good: the inner command (kvmharness bisect) exited 0 on this kernel
  1    bad: it exited 1 (or, with --on-crash bad, the kernel died while it ran)
  125  cannot test this kernel: it did not boot (panic, hang, no virtio/9p
       support) within --timeout, KVM could not be loaded in it (no module
       for this release, modprobe/insmod failed, wrong-kernel module, no
       /dev/kvm afterwards), --modules DIR holds no kvm.ko, or the inner
       command exited 125, or (--on-crash skip, the default) the kernel died
       (panic, reset) or froze (no heartbeat from inside for 90 s) while the
       inner command ran, on every one of 1 + --retries boots: under TCG a
       guest kernel can die of the emulation (an int3 oops from text patching
       was seen) or freeze (about 1 boot in 4 on a busy host here), so this
       is not taken as the commit's fault unless you say so; git bisect
       skips the commit
  128  a fault of this tool, the host or the harness, never of the kernel:
       bad usage, a missing tool after the install attempt, vng failing
       before QEMU started, the inner command not finishing within --timeout,
       or an exit status outside 0/1/125/128+ from it, or (--on-crash abort)
       the kernel died while it ran; git bisect aborts
  >128 passed through from the inner command (a harness fault) or, when this
       tool is killed, 128+signal (SIGINT 130, SIGTERM 143): the VM is
       killed and temporary files removed

The inner command defaults to `kvmharness bisect`: this checkout's
.venv/bin/kvmharness, or, installed from a wheel, `python -m kvmharness.cli`
of the Python running this command (the guest shares this host's files);
--inner-cmd or $KVMHARNESS_BISECT_INNER replace it (shell words; ARGS are
appended), e.g. --inner-cmd 'kvmharness run --strategy fresh-vm --vcpus 1'.
A leading 'kvmharness' means that same kvmharness.

Kernel modules: for an image from an extracted package (DIR/boot/vmlinuz-R)
the kernel's own modules are DIR/lib/modules/R; for a kernel source tree
(arch/x86/boot/bzImage next to .config) its built modules; otherwise
/lib/modules/R of this host.  --modules DIR loads DIR/kvm.ko and
DIR/kvm-amd.ko or kvm-intel.ko (.ko, .ko.xz, .ko.zst, .ko.gz) instead,
as built by `make M=arch/x86/kvm`.
"""


class UsageError(Exception):
    """Bad arguments: exit 128 so that git bisect aborts instead of blaming the commit."""


class Untestable(Exception):
    """This kernel cannot be tested (exit 125)."""


class Fault(Exception):
    """The host or this tool failed (exit 128)."""


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# arguments


@dataclasses.dataclass
class Options:
    image: Path
    modules: Path | None
    timeout: float
    accel: str
    memory: str
    cpus: int
    append: list[str]
    cache: Path | None
    inner_cmd: str | None
    no_install: bool
    verbose: bool
    timing_json: Path | None
    inner_args: list[str]
    on_crash: str = "skip"
    retries: int = 1
    tcg_threads: str = "single"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kvmharness bisect-kernel",
        usage="%(prog)s KERNEL_IMAGE [--modules DIR] [--timeout S] [options] [-- ARGS]",
        description="Boot KERNEL_IMAGE under QEMU with this host's root file system "
        "(read-only, virtme-ng), load KVM inside it and run `kvmharness bisect ARGS` "
        "against its /dev/kvm; exit with a git bisect run code.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "image",
        metavar="KERNEL_IMAGE",
        type=Path,
        help="bzImage to boot (arch/x86/boot/bzImage, DIR/boot/vmlinuz-R)",
    )
    p.add_argument(
        "--modules",
        metavar="DIR",
        type=Path,
        help="insmod DIR/kvm.ko and DIR/kvm-{amd,intel}.ko instead of the kernel's own KVM modules",
    )
    p.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds for the whole step, boot included (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="QEMU accelerator; auto uses KVM only when this host's /dev/kvm "
        "can run QEMU with nested virtualization, else TCG with -cpu max",
    )
    p.add_argument("--memory", "-m", default="2G", help="guest memory (default 2G)")
    p.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
    p.add_argument(
        "--append",
        action="append",
        default=[],
        metavar="KARG",
        help="extra kernel command-line argument (repeatable)",
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        type=Path,
        help="guest-program build cache shared with the guest (default "
        "$KVMHARNESS_CACHE or ~/.cache/kvmharness)",
    )
    p.add_argument(
        "--inner-cmd",
        metavar="CMD",
        help="command to run instead of `kvmharness bisect` (for testing)",
    )
    p.add_argument(
        "--no-install", action="store_true", help="do not apt-get/pip install missing dependencies"
    )
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show the guest's boot console (to debug a kernel that does not boot)",
    )
    p.add_argument(
        "--on-crash",
        choices=tuple(CRASH_EXIT),
        default="skip",
        help="exit code when the kernel dies or freezes while the inner "
        "command runs, after --retries boots: skip 125 (default), bad 1, "
        "abort 128",
    )
    p.add_argument(
        "--tcg-threads",
        choices=("single", "multi"),
        default="single",
        help="under TCG, one host thread for all guest CPUs (single, the "
        "default: nested kernels froze under multi-threaded TCG) or one each",
    )
    p.add_argument(
        "--retries",
        metavar="N",
        type=int,
        default=1,
        help="boot again up to N times when the kernel died or froze while "
        "the inner command ran (default 1: QEMU TCG itself sometimes "
        "freezes or crashes a nested kernel)",
    )
    p.add_argument(
        "--timing-json",
        metavar="FILE",
        type=Path,
        help="write the exit code and phase timings as JSON",
    )
    return p


def parse_args(argv: Sequence[str], env: dict[str, str] | None = None) -> Options:
    """Parse ``KERNEL_IMAGE [options] [-- ARGS]``; raises UsageError."""
    env = dict(os.environ) if env is None else env
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        own, inner = argv[:cut], argv[cut + 1 :]
    else:
        own, inner = argv, []
    ns = build_parser().parse_args(own)
    if not ns.timeout > 0:
        raise UsageError("--timeout must be > 0")
    if not 0 <= ns.retries <= 10:
        raise UsageError("--retries must be 0..10")
    if ns.cpus < 1:
        raise UsageError("--cpus must be >= 1")
    inner_cmd = ns.inner_cmd if ns.inner_cmd is not None else env.get("KVMHARNESS_BISECT_INNER")
    if inner_cmd is not None:
        try:
            if not shlex.split(inner_cmd):
                raise UsageError("--inner-cmd is empty")
        except ValueError as exc:
            raise UsageError(f"--inner-cmd: {exc}") from exc
    return Options(
        image=ns.image,
        modules=ns.modules,
        timeout=ns.timeout,
        accel=ns.accel,
        memory=ns.memory,
        cpus=ns.cpus,
        append=list(ns.append),
        cache=ns.cache,
        inner_cmd=inner_cmd,
        no_install=ns.no_install,
        verbose=ns.verbose,
        timing_json=ns.timing_json,
        inner_args=inner,
        on_crash=ns.on_crash,
        retries=ns.retries,
        tcg_threads=ns.tcg_threads,
    )


@dataclasses.dataclass(frozen=True)
class Home:
    """Where the harness that runs inside the guest lives: a checkout (with its
    .venv, set up by scripts/bootstrap.sh) or an installed package (the Python
    running this tool).  The guest shares the host's root file system, so it
    runs the same files."""

    checkout: Path | None  # the checkout's root; None: an installed package
    python: Path  # an interpreter with kvmharness and its dependencies
    bin_dir: Path  # where vng is, or is installed by pip

    @property
    def kvmharness(self) -> list[str]:
        """The ``kvmharness`` command."""
        if self.checkout is not None:
            return [str(self.checkout / ".venv" / "bin" / "kvmharness")]
        return [str(self.python), "-m", "kvmharness.cli"]

    @property
    def package(self) -> Path:
        return Path(__file__).resolve().parent.parent


def find_home() -> Home:
    """A checkout when this module is in one (``scripts/bootstrap.sh`` beside the
    package), else the installed package run by this Python."""
    root = checkout_root()
    if root is not None:
        venv = root / ".venv" / "bin"
        return Home(root, venv / "python", venv)
    return Home(None, Path(sys.executable), Path(sys.executable).parent)


def inner_argv(opts: Options, home: Home) -> list[str]:
    """The command run inside the guest: ``kvmharness bisect ARGS`` by default."""
    if opts.inner_cmd is None:
        words = [*home.kvmharness, "bisect"]
    else:
        words = shlex.split(opts.inner_cmd)
        if words[0] == "kvmharness":
            words[0:1] = home.kvmharness
    return words + list(opts.inner_args)


def map_inner_exit(code: int) -> tuple[int, str]:
    """The step's exit code for the inner command's, with a word on why."""
    if code == EXIT_OK:
        return EXIT_OK, "good"
    if code == EXIT_BROKEN:
        return EXIT_BROKEN, "bad"
    if code == EXIT_UNTESTABLE:
        return EXIT_UNTESTABLE, "cannot test (skip)"
    if 128 <= code <= 255:
        return code, "harness fault (aborts git bisect)"
    return EXIT_HARNESS, (
        f"unexpected exit status {code} (not 0/1/125/128+): treated as a "
        "harness fault (aborts git bisect)"
    )


# ---------------------------------------------------------------------------
# the kernel image and its modules


def kernel_release(image: Path) -> str:
    """The release (``uname -r``) of an x86 bzImage, from its setup header."""
    try:
        with open(image, "rb") as f:
            head = f.read(0x10000 + 512)
    except OSError as exc:
        raise UsageError(f"cannot read kernel image {image}: {exc.strerror}") from exc
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise UsageError(f"{image} is not an x86 bzImage (no 'HdrS' setup header)")
    (ptr,) = struct.unpack_from("<H", head, 0x20E)
    start = ptr + 0x200
    if ptr == 0 or start >= len(head):
        raise UsageError(f"{image}: setup header has no kernel version string")
    raw = head[start : head.find(b"\0", start)]
    words = raw.decode("ascii", "replace").split()
    if not words:
        raise UsageError(f"{image}: empty kernel version string")
    return words[0]


def own_modules_dir(image: Path, release: str) -> Path | None:
    """DIR/lib/modules/RELEASE (or DIR/usr/lib/modules) of an extracted package tree
    holding the image in DIR/boot/, the same search vng makes; None if there is none."""
    image = image.resolve()
    for d in image.parents:
        if d == Path("/"):
            break
        for cand in (d / "lib" / "modules" / release, d / "usr" / "lib" / "modules" / release):
            if cand.is_dir():
                return cand
    return None


#: the characters vng takes in the path of a directory it shares with the
#: guest (virtme's _SAFE_PATH_PATTERN); the modules beside a packaged image
#: are shared so
VNG_PATH_CHARS = "a-zA-Z0-9_+ /.-"
VNG_SAFE_PATH = re.compile(f"^[{VNG_PATH_CHARS}]+$")


def vng_safe_name(name: str) -> str:
    """``name`` as a folder name vng takes in such a path: every other
    character (a Debian version's ``~``, ``:``), and ``/`` and space, as ``_``."""
    return re.sub(f"[^{VNG_PATH_CHARS}]|[/ ]", "_", name)


def check_vng_path(image: Path, release: str) -> None:
    """Refuse, naming the cause, an image whose modules directory vng would
    refuse ("invalid --rodir parameter") after the step had begun."""
    own = None if is_kernel_tree_image(image) else own_modules_dir(image, release)
    if own is not None and not VNG_SAFE_PATH.match(str(own)):
        bad = sorted({c for c in str(own) if not VNG_SAFE_PATH.match(c)})
        raise UsageError(
            f"the modules directory of {image}, {own}, has {' '.join(map(repr, bad))}, "
            "which vng refuses in a path it shares with the guest (it takes letters, "
            "digits and '_+ /.-'): extract the image under a path without them"
        )


def is_kernel_tree_image(image: Path) -> bool:
    """vng's "kernel source tree" case: .../arch/x86/boot/bzImage with a .config."""
    parts = image.resolve().parts
    if tuple(parts[-4:]) != ("arch", "x86", "boot", "bzImage"):
        return False
    return (Path(*parts[:-4]) / ".config").is_file()


def _find_module(d: Path, stem: str) -> Path | None:
    for name in (stem.replace("_", "-"), stem.replace("-", "_")):
        for suffix in MODULE_SUFFIXES:
            p = d / (name + suffix)
            if p.is_file():
                return p
    return None


@dataclasses.dataclass
class ModuleSet:
    kvm: Path
    amd: Path | None
    intel: Path | None


def find_kvm_modules(d: Path) -> ModuleSet:
    """Validate a ``--modules`` directory.  A missing directory is bad usage (a typo);
    one without kvm.ko or without any vendor module is a commit that cannot be tested."""
    if not d.exists():
        raise UsageError(f"--modules {d}: no such directory")
    if not d.is_dir():
        raise UsageError(f"--modules {d}: not a directory")
    kvm = _find_module(d, "kvm")
    if kvm is None:
        raise Untestable(f"--modules {d} holds no kvm.ko (did `make M=arch/x86/kvm` build?)")
    amd = _find_module(d, "kvm-amd")
    intel = _find_module(d, "kvm-intel")
    if amd is None and intel is None:
        raise Untestable(f"--modules {d} holds kvm.ko but neither kvm-amd.ko nor kvm-intel.ko")
    return ModuleSet(kvm=kvm, amd=amd, intel=intel)


def decompress_module(src: Path, dest_dir: Path) -> Path:
    """Copy a module into dest_dir as a plain .ko (insmod of xz/zstd needs kmod support
    the guest's kernel and kmod may lack)."""
    name = src.name.split(".ko")[0] + ".ko"
    dest = dest_dir / name
    if src.name.endswith(".ko.xz"):
        dest.write_bytes(lzma.decompress(src.read_bytes()))
    elif src.name.endswith(".ko.gz"):
        dest.write_bytes(gzip.decompress(src.read_bytes()))
    elif src.name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise Fault(
                f"{src} is zstd-compressed and the zstd tool is missing (apt-get install zstd)"
            )
        with open(dest, "wb") as out:
            subprocess.run([zstd, "-dc", str(src)], stdout=out, check=True)
    else:
        shutil.copyfile(src, dest)
    return dest


# ---------------------------------------------------------------------------
# the accelerator


def choose_accel(sysfs: Path = Path("/sys"), dev_kvm: Path = Path("/dev/kvm")) -> tuple[str, str]:
    """("kvm"|"tcg", why): KVM only where QEMU can use this host's /dev/kvm for a
    guest that itself runs KVM (a vmx/svm host module with nested enabled)."""
    mod = sysfs / "module"
    if (mod / "kvm_pvm").exists():
        return "tcg", "host /dev/kvm is kvm_pvm, which cannot run QEMU"
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return "tcg", "host has no usable /dev/kvm"
    for vendor in ("kvm_amd", "kvm_intel"):
        if (mod / vendor).exists():
            try:
                nested = (mod / vendor / "parameters" / "nested").read_text().strip()
            except OSError:
                nested = ""
            if nested in ("1", "Y", "y"):
                return "kvm", f"host {vendor} with nested=1"
            return "tcg", f"host {vendor} has nested virtualization off"
    return "tcg", "host KVM backend is neither kvm_amd nor kvm_intel"


def guest_vendor(accel: str, cpuinfo: str) -> str:
    """The KVM vendor module the guest will need: TCG's -cpu max has SVM only."""
    if accel == "tcg":
        return "amd"
    return "intel" if re.search(r"^flags\s*:.*\bvmx\b", cpuinfo, re.M) else "amd"


# ---------------------------------------------------------------------------
# the guest side


def rewrite_outputs(
    args: Sequence[str], cwd: Path, guest_dir: str
) -> tuple[list[str], list[tuple[str, Path]]]:
    """Point --json/--plot FILE at a writable guest dir; return the new ARGS and
    (guest name, host destination) pairs to move back after the run."""
    out: list[str] = []
    moves: list[tuple[str, Path]] = []

    def redirect(value: str) -> str:
        if value == "-":
            return value
        name = f"{len(moves)}-{Path(value).name}"
        moves.append((name, Path(os.path.normpath(cwd / value))))
        return f"{guest_dir}/{name}"

    i = 0
    while i < len(args):
        a = args[i]
        opt, eq, val = a.partition("=")
        if a == "--":
            out.extend(args[i:])
            break
        if opt in OUTPUT_OPTIONS and eq:
            out.append(f"{opt}={redirect(val)}")
        elif a in OUTPUT_OPTIONS and i + 1 < len(args):
            out.extend([a, redirect(args[i + 1])])
            i += 1
        else:
            out.append(a)
        i += 1
    return out, moves


def guest_script() -> str:
    """The bash script the guest runs (package data beside this module)."""
    return importlib.resources.files(__package__).joinpath(GUEST_SCRIPT).read_text()


def guest_params(
    *, vendor: str, modules: ModuleSet | None, release: str, inner: Sequence[str], cwd: str
) -> str:
    """The guest script's ``params.sh`` for one boot: shell assignments, every
    value quoted, the inner command an array."""
    q = shlex.quote
    kvm_ko = vendor_ko = ""
    if modules is not None:
        kvm_ko = f"{GUEST_STATE}/mods/kvm.ko"
        if (modules.amd if vendor == "amd" else modules.intel) is not None:
            vendor_ko = f"{GUEST_STATE}/mods/kvm-{vendor}.ko"
    values = {
        "VENDOR": vendor,
        "RELEASE": release,
        "KVM_KO": kvm_ko,
        "VENDOR_KO": vendor_ko,
        "INNER_CWD": cwd,
        "CACHE": GUEST_CACHE,
        "HEARTBEAT_S": str(HEARTBEAT_S),
        "EXIT_UNTESTABLE": str(EXIT_UNTESTABLE),
    }
    lines = [f"# written by {PROG} for one boot"]
    lines += [f"{k}={q(v)}" for k, v in values.items()]
    lines.append("INNER=(" + " ".join(q(w) for w in inner) + ")")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# the host side


def ensure_dependencies(home: Home, install: bool) -> None:
    """apt-get the tools vng needs, bootstrap a checkout's .venv, pip install
    virtme-ng; Fault if something is still missing."""
    missing = sorted({pkg for cmd, pkg in APT_PACKAGES.items() if shutil.which(cmd) is None})
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)} (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "update", "-qq"], stdout=sys.stderr, env=env)
        if r.returncode == 0:
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", *missing], stdout=sys.stderr, env=env
            )
    still = sorted({cmd for cmd in APT_PACKAGES if shutil.which(cmd) is None})
    if still:
        raise Fault(
            f"missing {', '.join(still)} (Debian: apt-get install "
            f"{' '.join(sorted({APT_PACKAGES[c] for c in still}))})"
        )
    if home.checkout is not None:
        if install:
            r = subprocess.run([str(home.checkout / "scripts" / "bootstrap.sh")], stdout=sys.stderr)
            if r.returncode != 0:
                raise Fault(f"scripts/bootstrap.sh failed (exit {r.returncode})")
        if not Path(home.kvmharness[0]).exists():
            raise Fault(f"{home.kvmharness[0]} is missing (run scripts/bootstrap.sh)")
    vng = home.bin_dir / "vng"
    if not vng.exists() and install:
        log(f"installing virtme-ng beside {home.python} (pip)")
        subprocess.run(
            [str(home.python), "-m", "pip", "install", "-q", "virtme-ng"], stdout=sys.stderr
        )
    if not vng.exists():
        raise Fault(f"{vng} is missing ({home.python} -m pip install virtme-ng)")


@dataclasses.dataclass
class Timing:
    boot_s: float | None = None
    kvm_load_s: float | None = None
    inner_s: float | None = None
    total_s: float | None = None
    crashed: str = ""  # "died" or "froze" while the inner command ran, else ""
    attempts: int = 1


def qemu_wrapper(real_qemu: str, started: Path, extra: Sequence[str] = ()) -> str:
    """A QEMU wrapper for vng: notes that the VM got as far as starting, and
    adds ``extra`` QEMU arguments."""
    return (
        '#!/bin/sh\nfor a; do [ "$a" = -kernel ] && : > '
        f"{shlex.quote(str(started))}; done\n"
        f'exec {shlex.join([real_qemu, *extra])} "$@"\n'
    )


def frozen_for(state: Path, now: float) -> float | None:
    """Seconds since the guest's last sign of life (its heartbeat, or the start
    of the inner command) while the inner command runs; None before it starts
    or after it ended."""
    started = _mtime(state / "inner-started")
    if started is None or (state / "inner-rc").exists():
        return None
    beat = _mtime(state / "heartbeat")
    return now - max(started, beat or started)


def precompile(home: Home) -> None:
    """Byte-compile the harness before the boot.  Inside, the checkout is a
    read-only 9p mount, so Python would compile every kvmharness module from
    source in every process it starts (each cross-process scenario starts
    two), which under TCG costs seconds each.  Best effort: a failure only
    costs that time."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    try:
        r = subprocess.run(
            [str(home.python), "-m", "compileall", "-q", "-j", "0", str(home.package)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"warning: could not byte-compile kvmharness ({exc}); the guest compiles it")
        return
    if r.returncode != 0:
        log(f"warning: byte-compiling kvmharness failed: {r.stderr.strip()[-300:]}")


def _mtime(p: Path) -> float | None:
    try:
        return p.stat().st_mtime
    except OSError:
        return None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def run_step(opts: Options, home: Home) -> tuple[int, Timing]:
    t0 = time.time()
    timing = Timing()
    image = opts.image
    if not image.is_file():
        raise UsageError(f"kernel image {image}: no such file")
    release = kernel_release(image)
    check_vng_path(image, release)
    modules = find_kvm_modules(opts.modules) if opts.modules is not None else None
    ensure_dependencies(home, install=not opts.no_install)
    precompile(home)

    if opts.accel == "auto":
        accel, why = choose_accel()
    else:
        accel, why = opts.accel, "--accel"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    vendor = guest_vendor(accel, cpuinfo)

    cache = opts.cache or Path(
        os.environ.get("KVMHARNESS_CACHE") or Path.home() / ".cache" / "kvmharness"
    )
    cache.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="bisect-kernel-"))
    proc: subprocess.Popen[bytes] | None = None
    moves: list[tuple[str, Path]] = []
    state = tmp / "state"
    try:
        state.mkdir()
        (state / "out").mkdir()
        (tmp / "vngtmp").mkdir()
        if modules is not None:
            (state / "mods").mkdir()
            decompress_module(modules.kvm, state / "mods")
            for m in (modules.amd, modules.intel):
                if m is not None:
                    decompress_module(m, state / "mods")
        args, moves = rewrite_outputs(opts.inner_args, Path.cwd(), f"{GUEST_STATE}/out")
        inner = inner_argv(dataclasses.replace(opts, inner_args=args), home)
        (state / "guest.sh").write_text(guest_script())
        (state / "params.sh").write_text(
            guest_params(
                vendor=vendor, modules=modules, release=release, inner=inner, cwd=str(Path.cwd())
            )
        )

        # a QEMU wrapper that notes that vng got as far as starting the VM
        real_qemu = shutil.which("qemu-system-x86_64")
        assert real_qemu is not None  # ensure_dependencies checked
        wrapper = tmp / "qemu-system-x86_64"
        extra = TCG_SINGLE_ARGS if accel == "tcg" and opts.tcg_threads == "single" else ()
        wrapper.write_text(qemu_wrapper(real_qemu, tmp / "qemu-started", extra))
        wrapper.chmod(0o755)

        cmd = [
            str(home.bin_dir / "vng"),
            "--run",
            str(image.resolve()),
            "--disable-microvm",
            "--qemu",
            str(wrapper),
            "-m",
            opts.memory,
            "--cpus",
            str(opts.cpus),
            f"--rwdir={GUEST_STATE}={state}",
            f"--rwdir={GUEST_CACHE}={cache}",
        ]
        if accel == "tcg":
            cmd.append("--disable-kvm")
        kargs = list(TCG_KERNEL_ARGS if accel == "tcg" else ()) + opts.append
        for k in kargs:
            cmd += ["--append", k]
        own = None  # also wanted with --modules: kvm.ko's dependencies (irqbypass, ccp)
        if not is_kernel_tree_image(image):
            own = own_modules_dir(image, release)
            if own is not None:
                # vng links /lib/modules/R to it; mount it at its own path, which the
                # guest may hide (its /var/cache, /var/tmp are tmpfs)
                cmd.append(f"--rodir={own}")
        if opts.verbose:
            cmd.append("--verbose")
        cmd += ["--exec", f"bash {GUEST_STATE}/guest.sh {GUEST_STATE}"]

        env = dict(
            os.environ,
            TMPDIR=str(tmp / "vngtmp"),
            PATH=f"{home.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        )
        if modules is not None:
            src = f"--modules {opts.modules}"
        elif is_kernel_tree_image(image):
            src = "the kernel tree's own modules"
        else:
            src = f"its own modules ({own or f'/lib/modules/{release}'})"
        log(
            f"booting {release} ({image}) under QEMU {accel.upper()} ({why}), "
            f"{opts.cpus} vCPUs, {opts.memory}; KVM from {src}; timeout {opts.timeout:.0f} s"
        )
        if opts.verbose:
            log("vng: " + shlex.join(cmd))
        # pipes, relayed: QEMU opens /proc/self/fd/1 and /proc/self/fd/2 anew, which on
        # a regular file (`git bisect run ... >log 2>&1`) would write from offset 0
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        relays = [relay(proc.stdout, sys.stdout.buffer), relay(proc.stderr, sys.stderr.buffer)]
        deadline = time.monotonic() + opts.timeout
        seen: set[str] = set()
        timed_out = frozen = False
        rc_vng: int | None = None
        while True:
            try:
                rc_vng = proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                rc_vng = None
            for name, what in (
                ("booted", "booted"),
                ("kvm-loaded", "KVM loaded"),
                ("inner-rc", "inner command done"),
            ):
                t = _mtime(state / name)
                if t is not None and name not in seen:
                    seen.add(name)
                    log(f"{what} after {t - t0:.1f} s")
            if rc_vng is not None:
                break
            silent = frozen_for(state, time.time())
            if silent is not None and silent > FREEZE_S:
                frozen = True
                log(
                    f"the guest kernel froze: no heartbeat for {silent:.0f} s while the "
                    "inner command ran; killing the VM"
                )
                end_group(proc)
                break
            if time.monotonic() > deadline:
                timed_out = True
                log(f"timeout after {opts.timeout:.0f} s: killing the VM")
                end_group(proc)
                break
        end_group(proc)  # nothing may outlive the step
        for r in relays:
            r.join(timeout=5)
        t_end = time.time()

        booted, kvm_done = _mtime(state / "booted"), _mtime(state / "kvm-loaded")
        started, done = _mtime(state / "inner-started"), _mtime(state / "inner-rc")
        timing.total_s = t_end - t0
        timing.boot_s = None if booted is None else booted - t0
        if booted is not None and kvm_done is not None:
            timing.kvm_load_s = kvm_done - booted
        if started is not None:
            timing.inner_s = (done if done is not None else t_end) - started

        for name, dest in moves:
            produced = state / "out" / name
            if produced.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(produced), str(dest))

        code, verdict = _judge(
            state,
            timed_out=timed_out,
            rc_vng=rc_vng,
            qemu_started=(tmp / "qemu-started").exists(),
            opts=opts,
            frozen=frozen,
        )
        timing.crashed = crash_kind(state, timed_out=timed_out, frozen=frozen)
        log(
            f"timing: boot {_fmt(timing.boot_s)}, KVM load {_fmt(timing.kvm_load_s)}, "
            f"inner {_fmt(timing.inner_s)}, total {_fmt(timing.total_s)}"
        )
        log(f"exit {code}: {verdict}")
        return code, timing
    finally:
        if proc is not None:
            end_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def crash_kind(state: Path, *, timed_out: bool, frozen: bool) -> str:
    """ "died" or "froze" when the kernel stopped while the inner command ran
    (what --on-crash and --retries are about), else ""."""
    if (state / "inner-rc").exists() or (state / "untestable").exists():
        return ""
    if not (state / "inner-started").exists() or timed_out:
        return ""
    return "froze" if frozen else "died"


def _judge(
    state: Path,
    *,
    timed_out: bool,
    rc_vng: int | None,
    qemu_started: bool,
    opts: Options,
    frozen: bool = False,
) -> tuple[int, str]:
    """Map what the guest left behind to the step's exit code."""
    rc_file = state / "inner-rc"
    if rc_file.exists():
        try:
            rc = int(rc_file.read_text().strip())
        except ValueError:
            return EXIT_HARNESS, f"unreadable inner exit status {rc_file.read_text()!r}"
        code, word = map_inner_exit(rc)
        return code, f"inner command exited {rc}: {word}"
    if (state / "untestable").exists():
        why = (state / "untestable").read_text().strip()
        return EXIT_UNTESTABLE, f"cannot test this kernel: {why}"
    if (state / "inner-started").exists():
        if timed_out:
            return EXIT_HARNESS, (
                f"the inner command did not finish within --timeout "
                f"{opts.timeout:.0f} s: raise --timeout, or judge this commit "
                "yourself (git bisect bad/skip) if the kernel hangs"
            )
        if frozen:
            return CRASH_EXIT[opts.on_crash], (
                f"the kernel froze (no heartbeat for {FREEZE_S:.0f} s) while the inner "
                f"command ran on it: --on-crash {opts.on_crash}"
            )
        return CRASH_EXIT[opts.on_crash], (
            f"the kernel died (panic or reset) while the inner command ran on it: "
            f"--on-crash {opts.on_crash} (rerun with --verbose to see its console)"
        )
    if (state / "booted").exists():
        what = "timed out" if timed_out else "died"
        return EXIT_UNTESTABLE, f"the kernel {what} while loading KVM: cannot test"
    if not qemu_started and not timed_out:
        return EXIT_HARNESS, f"vng failed (exit {rc_vng}) before starting QEMU"
    if timed_out:
        return EXIT_UNTESTABLE, (
            f"the kernel did not boot within {opts.timeout:.0f} s: "
            "cannot test (--verbose shows its console)"
        )
    return EXIT_UNTESTABLE, (
        "the kernel did not reach user space (panic, or no virtio/9p "
        "support): cannot test (--verbose shows its console)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        with signals_raise():
            try:
                opts = parse_args(argv)
            except SystemExit as exc:  # --help
                return int(exc.code or 0)
            code, timing = run_step(opts, find_home())
            attempt = 1
            while timing.crashed and attempt <= opts.retries:
                log(
                    f"the kernel {timing.crashed} during the test: booting again "
                    f"(retry {attempt} of {opts.retries})"
                )
                attempt += 1
                code, timing = run_step(opts, find_home())
            timing.attempts = attempt
            if opts.timing_json is not None:
                opts.timing_json.write_text(
                    json.dumps({"exit": code, **dataclasses.asdict(timing)}, indent=2) + "\n"
                )
            return code
    except UsageError as exc:
        log(f"usage: {exc} (exit {EXIT_HARNESS}; see --help)")
        return EXIT_HARNESS
    except Untestable as exc:
        log(f"cannot test: {exc} (exit {EXIT_UNTESTABLE})")
        return EXIT_UNTESTABLE
    except Fault as exc:
        log(f"fault: {exc} (exit {EXIT_HARNESS})")
        return EXIT_HARNESS
    except Interrupted as exc:
        log(f"interrupted by signal {exc.signum}: VM killed, temporary files removed")
        return exc.exit_code
    except Exception:  # a bug here must not read as "bad" (exit 1) to git bisect
        import traceback

        traceback.print_exc()
        log(f"fault: internal error (exit {EXIT_HARNESS})")
        return EXIT_HARNESS


if __name__ == "__main__":
    sys.exit(main())
