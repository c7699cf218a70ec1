"""Build guest programs from source with the host's gcc and binutils.

A program is ``src/programs/<name>.c`` linked with the runtime
(``entry.S``, ``runtime.c``) at 1 MiB.  The ELF is cached under
``$KVMHARNESS_CACHE`` (default ``~/.cache/kvmharness``) by a hash of every
source, the flags and ``gcc --version``, so editing a source or changing
the compiler rebuilds it.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kvmharness.ffi import cdefs_dir
from kvmharness.guest.elf import ElfError, ElfImage, parse_elf

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
    hint = "guest programs are built with the host's gcc and binutils (apt-get install gcc)"
    if shutil.which(cc) is None:
        raise GuestBuildError(f"{cc} not found: {hint}")
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise GuestBuildError(f"{cc} --version failed ({exc}): {hint}") from exc
    return out.stdout.splitlines()[0] if out.stdout else cc


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


def _check_elf(path: Path) -> str | None:
    """None if ``path`` holds a loadable guest ELF, else what is wrong with it."""
    try:
        parse_elf(path.read_bytes(), str(path))
    except (OSError, ElfError) as exc:
        return str(exc)
    return None


_private: Path | None = None
_warned: set[Path] = set()


def _private_dir() -> Path:
    """A build directory of this process only, removed at exit: for when the cache is unusable."""
    global _private
    if _private is None or not _private.is_dir():
        _private = Path(tempfile.mkdtemp(prefix="kvmharness-guest-"))
        atexit.register(shutil.rmtree, _private, ignore_errors=True)
    return _private


def _valid_cached(path: Path) -> bool:
    """Whether ``path`` is a usable cached ELF; a corrupt one is removed (best effort)."""
    try:
        if not path.is_file():
            return False
    except OSError:  # e.g. a cache directory we may not search
        return False
    problem = _check_elf(path)
    if problem is None:
        return True
    log.warning("cached guest program %s is corrupt (%s); rebuilding it", path, problem)
    try:
        path.unlink()
    except OSError:
        pass  # overwritten by the rebuild, or the cache is read-only and we fall back
    return False


def _compile(name: str, cc: str, out: Path) -> None:
    """Compile into a temp file beside ``out`` and rename it there (atomic for readers).

    OSError means ``out``'s directory is unusable; GuestBuildError, that the build failed.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".elf", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cc, *CFLAGS, f"-ffile-prefix-map={SRC_DIR}/=",
               "-I", str(SRC_DIR), "-I", str(cdefs_dir()),
               "-T", str(SRC_DIR / "guest.ld"), "-o", tmp, *map(str, _inputs(name))]
        log.info("building guest program %s: %s", name, " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:  # gcc vanished or is not executable
            raise GuestBuildError(f"building guest program {name!r}: cannot run {cc}: {exc}") \
                from exc
        if proc.returncode != 0:
            raise GuestBuildError(f"building guest program {name!r} failed:\n{proc.stderr}")
        problem = _check_elf(Path(tmp))
        if problem:
            raise GuestBuildError(f"building guest program {name!r}: {cc} made a bad ELF: "
                                  f"{problem}")
        os.replace(tmp, out)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def build(name: str, cc: str = "gcc") -> Path:
    """Return the path of the program's ELF, compiling it if the cache misses.

    A cached file that is not a valid ELF (truncated, overwritten) is rebuilt. If the
    cache directory cannot be used (not a directory, read-only, ...), the program is
    built in a private temporary directory removed at exit, with one warning.
    """
    filename = f"{name}-{source_hash(name, cc)}.elf"
    cached = cache_dir() / filename
    if _valid_cached(cached):
        return cached
    try:
        _compile(name, cc, cached)
        return cached
    except OSError as exc:
        out = _private_dir() / filename
        if cached.parent not in _warned:
            _warned.add(cached.parent)
            log.warning("guest build cache %s is unusable (%s); building in %s instead, "
                        "removed at exit (set KVMHARNESS_CACHE to a writable directory)",
                        cached.parent, exc, out.parent)
    if not _valid_cached(out):
        _compile(name, cc, out)
    return out


@functools.cache
def load_program(name: str) -> ElfImage:
    path = build(name)
    return parse_elf(path.read_bytes(), str(path))
