"""userfaultfd: open a descriptor and negotiate the API (the base for postcopy)."""

from __future__ import annotations

import os

from kvmharness import ioctls as nr
from kvmharness.errors import IoctlError
from kvmharness.ffi import ffi, lib

SYS_USERFAULTFD = 323  # x86-64


def open_userfaultfd(features: int = 0) -> tuple[int, int]:
    """Open a userfaultfd and run UFFDIO_API; returns (fd, features the kernel offers)."""
    fd = lib.syscall(SYS_USERFAULTFD, lib.O_CLOEXEC | lib.O_NONBLOCK)
    if fd < 0:
        err = ffi.errno
        raise OSError(err, f"userfaultfd(2) failed: {os.strerror(err)}")
    api = ffi.new("struct uffdio_api *", {"api": lib.UFFD_API, "features": features})
    if lib.ioctl(fd, nr.UFFDIO_API, api) < 0:
        err = ffi.errno
        os.close(fd)
        raise IoctlError("UFFDIO_API", f"userfaultfd(fd {fd})", err)
    return fd, api.features


def userfaultfd_available() -> str:
    """A one-line description: usable (with thread ids or not) or why not."""
    try:
        fd, feats = open_userfaultfd()
    except OSError as exc:
        return f"unavailable: {exc}"
    os.close(fd)
    tid = "with" if feats & lib.UFFD_FEATURE_THREAD_ID else "without"
    return f"usable ({tid} UFFD_FEATURE_THREAD_ID, features {feats:#x})"
