"""Build guest programs from source with the host's gcc and binutils.

A program is a C file linked with the runtime (``entry.S``, ``runtime.c``)
at 1 MiB, with ``runtime.h`` and ``guest_abi.h`` on the include path:

* a *built-in* program, named by a ``str``: ``src/programs/<name>.c``;
* a *user* program, any C file, named by an ``os.PathLike`` or by a ``str``
  that ends in ``.c`` or holds a ``/`` (a relative one is taken from the
  current directory; the pytest plugin resolves it against the test file).

The ELF is cached under ``$KVMHARNESS_CACHE`` (default ``~/.cache/kvmharness``)
by a hash of every source, the flags and ``gcc --version``, so editing a
source or changing the compiler rebuilds it.  For a user program the hash also
covers its absolute path (``__FILE__`` in a guest assertion names it), every
``.h`` in its directory and every header it includes with ``#include "..."``
(followed recursively).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import re
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
    "-m64",
    "-std=gnu11",
    "-O2",
    "-g0",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdlib",
    "-static",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-mno-sse",
    "-mno-mmx",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=4096",
)


class GuestBuildError(Exception):
    pass


def cache_dir() -> Path:
    base = os.environ.get("KVMHARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvmharness"
    )
    return Path(base) / "guest"


def programs() -> list[str]:
    """The built-in programs' names."""
    return sorted(p.stem for p in (SRC_DIR / "programs").glob("*.c"))


#: A guest program: a built-in name, or a user's C file.
Program = str | os.PathLike[str]


def is_source_path(program: Program) -> bool:
    """Whether ``program`` names a user's C file rather than a built-in program."""
    if isinstance(program, os.PathLike):
        return True
    return program.endswith(".c") or os.sep in program or "/" in program


def source_path(program: Program) -> Path | None:
    """The absolute path of a user program's C file; None for a built-in name."""
    if not is_source_path(program):
        return None
    return Path(os.path.abspath(os.fspath(program)))


def program_label(program: Program) -> str:
    """How a program is named in messages and snapshots: the built-in name, or the
    absolute path of the user's file (which :func:`build` accepts back)."""
    path = source_path(program)
    return program if path is None else str(path)  # type: ignore[return-value]


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


def _program_file(program: Program) -> Path:
    path = source_path(program)
    if path is None:
        prog = SRC_DIR / "programs" / f"{program}.c"
        if not prog.is_file():
            raise GuestBuildError(
                f"no guest program {program!r} (built-in: {', '.join(programs())}; "
                f"for your own C file pass a path: source='my_guest.c' or Path(...))"
            )
        return prog
    if not path.is_file():
        raise GuestBuildError(
            f"guest source {path} not found"
            + ("" if path.suffix == ".c" else " (a guest program is a .c file)")
        )
    return path


def _inputs(program: Program) -> list[Path]:
    return [SRC_DIR / s for s in RUNTIME_SOURCES] + [_program_file(program)]


_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)


def local_headers(source: Path) -> list[Path]:
    """The headers a user's C file may use from its own tree: every ``.h`` in its
    directory, and every file it (or one of those) includes with ``#include "..."``
    that exists relative to the including file, followed recursively."""
    found: dict[Path, None] = dict.fromkeys(sorted(source.parent.glob("*.h")))
    todo = [source, *found]
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        try:
            text = f.read_bytes()
        except OSError:
            continue
        for m in _INCLUDE.finditer(text):
            inc = Path(os.path.normpath(f.parent / m.group(1).decode(errors="replace")))
            if inc.is_file() and inc not in found:
                found[inc] = None
                todo.append(inc)
    return sorted(found)


def source_hash(program: Program, cc: str = "gcc") -> str:
    h = hashlib.sha256()
    headers = sorted(SRC_DIR.glob("*.h")) + [SRC_DIR / "guest.ld", cdefs_dir() / "guest_abi.h"]
    for path in _inputs(program) + headers:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    user = source_path(program)
    if user is not None:
        h.update(b"user\0" + str(user).encode() + b"\0")
        for path in local_headers(user):
            h.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(" ".join(CFLAGS).encode())
    h.update(compiler_version(cc).encode())
    return h.hexdigest()[:24]


def _cache_stem(program: Program) -> str:
    path = source_path(program)
    if path is None:
        return str(program)
    return "user-" + (re.sub(r"[^A-Za-z0-9_.+-]", "_", path.stem) or "program")


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


def _compile(program: Program, cc: str, out: Path) -> None:
    """Compile into a temp file beside ``out`` and rename it there (atomic for readers).

    OSError means ``out``'s directory is unusable; GuestBuildError, that the build failed.
    A user's file is passed to gcc by its absolute path, so gcc's messages and
    ``__FILE__`` name it as it is on disk.
    """
    name = program_label(program)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{_cache_stem(program)}-", suffix=".elf", dir=out.parent)
    os.close(fd)
    try:
        cmd = [
            cc,
            *CFLAGS,
            f"-ffile-prefix-map={SRC_DIR}/=",
            "-I",
            str(SRC_DIR),
            "-I",
            str(cdefs_dir()),
            "-T",
            str(SRC_DIR / "guest.ld"),
            "-o",
            tmp,
            *map(str, _inputs(program)),
        ]
        log.info("building guest program %s: %s", name, " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:  # gcc vanished or is not executable
            raise GuestBuildError(
                f"building guest program {name!r}: cannot run {cc}: {exc}"
            ) from exc
        if proc.returncode != 0:
            raise GuestBuildError(f"building guest program {name!r} failed:\n{proc.stderr}")
        problem = _check_elf(Path(tmp))
        if problem:
            raise GuestBuildError(
                f"building guest program {name!r}: {cc} made a bad ELF: {problem}"
            )
        os.replace(tmp, out)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def build(program: Program, cc: str = "gcc") -> Path:
    """Return the path of the program's ELF, compiling it if the cache misses.

    ``program`` is a built-in name or a user's C file (see the module docstring).
    A cached file that is not a valid ELF (truncated, overwritten) is rebuilt. If the
    cache directory cannot be used (not a directory, read-only, ...), the program is
    built in a private temporary directory removed at exit, with one warning.
    """
    filename = f"{_cache_stem(program)}-{source_hash(program, cc)}.elf"
    cached = cache_dir() / filename
    if _valid_cached(cached):
        return cached
    try:
        _compile(program, cc, cached)
        return cached
    except OSError as exc:
        out = _private_dir() / filename
        if cached.parent not in _warned:
            _warned.add(cached.parent)
            log.warning(
                "guest build cache %s is unusable (%s); building in %s instead, "
                "removed at exit (set KVMHARNESS_CACHE to a writable directory)",
                cached.parent,
                exc,
                out.parent,
            )
    if not _valid_cached(out):
        _compile(program, cc, out)
    return out


@functools.cache
def _load_builtin(name: str) -> ElfImage:
    path = build(name)
    return parse_elf(path.read_bytes(), str(path))


@functools.lru_cache(maxsize=64)
def _load_elf(path: Path) -> ElfImage:
    return parse_elf(path.read_bytes(), str(path))


def load_program(program: Program) -> ElfImage:
    """The parsed ELF of a program, built if needed.  A built-in program is built once
    per process; a user's file is checked for changes on every call (its ELF's name
    holds the source hash)."""
    if source_path(program) is None:
        return _load_builtin(str(program))
    return _load_elf(build(program))
