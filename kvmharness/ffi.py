"""The one cffi FFI object of kvmharness (ABI mode: no compiler at import).

The declarations live in the top-level ``cdefs/`` folder of the repository; the
wheel ships that folder inside the package as ``kvmharness/cdefs`` (see
pyproject.toml), so any install (venv, ``--user``, ``--target``) finds them
beside this module, and a source checkout or editable install finds the
repository's folder.
"""

from __future__ import annotations

from pathlib import Path

import cffi

CDEF_FILES = ("kvm.h", "userfaultfd.h", "libc.h", "guest_abi.h")


def cdefs_dir() -> Path:
    """Where the C declaration files are (in the installed package, else the source tree)."""
    here = Path(__file__).resolve().parent
    candidates = [here / "cdefs", here.parent / "cdefs"]
    for path in candidates:
        if (path / "kvm.h").is_file():
            return path
    raise FileNotFoundError(
        "kvmharness: cannot find the cdefs/ declaration files (looked in "
        + ", ".join(str(p) for p in candidates)
        + ")"
    )


def _build() -> tuple[cffi.FFI, object]:
    ffi = cffi.FFI()
    base = cdefs_dir()
    for name in CDEF_FILES:
        ffi.cdef((base / name).read_text())
    lib = ffi.dlopen(None)  # the C library already loaded into this process
    return ffi, lib


ffi, lib = _build()
