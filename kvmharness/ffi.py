"""The one cffi FFI object of kvmharness (ABI mode: no compiler at import).

The declarations live in the top-level ``cdefs/`` folder; an installed
(non-editable) kvmharness finds them under ``<prefix>/share/kvmharness/cdefs``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cffi

CDEF_FILES = ("kvm.h", "userfaultfd.h", "libc.h", "guest_abi.h")


def cdefs_dir() -> Path:
    """Where the C declaration files are (source tree first, then the install prefix)."""
    candidates = [
        Path(__file__).resolve().parent.parent / "cdefs",
        Path(sys.prefix) / "share" / "kvmharness" / "cdefs",
    ]
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
