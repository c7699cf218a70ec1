"""Build guest programs from source with the host's gcc and binutils.

A program is ``src/programs/<name>.c`` linked with the runtime
(``entry.S``, ``runtime.c``) at 1 MiB.  The ELF is cached under
``$KVMHARNESS_CACHE`` (default ``~/.cache/kvmharness``) by a hash of every
source, the flags and ``gcc --version``, so editing a source or changing
the compiler rebuilds it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kvmharness.ffi import cdefs_dir
from kvmharness.guest.elf import ElfImage, parse_elf

log = logging.getLogger(__name__)

SRC_DIR = Path(__file__).resolve().parent / "src"
RUNTIME_SOURCES = ("entry.S", "runtime.c")
CFLAGS = (
    "-m64", "-std=gnu11", "-O2", "-g0", "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-fno-builtin", "-nostdlib", "-static",
    "-fno-pic", "-fno-pie", "-no-pie",
    "-mno-red-zone", "-mgeneral-regs-only", "-mno-sse", "-mno-mmx",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
    "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-Wl,-z,max-page-size=4096",
)


class GuestBuildError(Exception):
    pass


def cache_dir() -> Path:
    base = os.environ.get("KVMHARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvmharness")
    return Path(base) / "guest"


def programs() -> list[str]:
    return sorted(p.stem for p in (SRC_DIR / "programs").glob("*.c"))


@functools.cache
def compiler_version(cc: str = "gcc") -> str:
    if shutil.which(cc) is None:
        raise GuestBuildError(
            f"{cc} not found: guest programs are built with the host's gcc and binutils "
            "(apt-get install gcc)")
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def _inputs(name: str) -> list[Path]:
    prog = SRC_DIR / "programs" / f"{name}.c"
    if not prog.is_file():
        raise GuestBuildError(
            f"no guest program {name!r} (have: {', '.join(programs())})")
    return [SRC_DIR / s for s in RUNTIME_SOURCES] + [prog]


def source_hash(name: str, cc: str = "gcc") -> str:
    h = hashlib.sha256()
    headers = sorted(SRC_DIR.glob("*.h")) + [SRC_DIR / "guest.ld", cdefs_dir() / "guest_abi.h"]
    for path in _inputs(name) + headers:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(" ".join(CFLAGS).encode())
    h.update(compiler_version(cc).encode())
    return h.hexdigest()[:24]


def build(name: str, cc: str = "gcc") -> Path:
    """Return the path of the program's ELF, compiling it if the cache misses."""
    digest = source_hash(name, cc)
    out = cache_dir() / f"{name}-{digest}.elf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".elf", dir=out.parent)
    os.close(fd)
    cmd = [cc, *CFLAGS, f"-ffile-prefix-map={SRC_DIR}/=",
           "-I", str(SRC_DIR), "-I", str(cdefs_dir()),
           "-T", str(SRC_DIR / "guest.ld"), "-o", tmp, *map(str, _inputs(name))]
    log.info("building guest program %s: %s", name, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise GuestBuildError(f"building guest program {name!r} failed:\n{proc.stderr}")
    os.replace(tmp, out)
    return out


@functools.cache
def load_program(name: str) -> ElfImage:
    path = build(name)
    return parse_elf(path.read_bytes(), str(path))
