"""userfaultfd: open a descriptor, register memory, read faults, place pages.

The base of the postcopy scenarios.  :class:`Userfaultfd` owns one
descriptor; its methods are thin, typed wrappers of the uapi
(Documentation/admin-guide/mm/userfaultfd.rst):

* :meth:`Userfaultfd.register` a range in MISSING mode: a thread touching a
  page of it that has none (anonymous private memory: no page yet; shmem: no
  page in the cache) sleeps in the kernel and a message with the address,
  and with ``UFFD_FEATURE_THREAD_ID`` the thread id, becomes readable;
* :meth:`Userfaultfd.read_faults` reads the pending messages without blocking,
  :meth:`Userfaultfd.wait` polls with a timeout (never an unbounded wait);
* :meth:`Userfaultfd.copy` places a page atomically (UFFDIO_COPY) and wakes
  the threads asleep on it; a page already there is EEXIST, reported as
  :data:`CopyResult.EXISTS`, not an error.

Closing the descriptor wakes every thread still asleep on it: the kernel
drops the registration and their faults are retried as ordinary faults
(anonymous memory gets a zero page), so no thread is left asleep however a
scenario ends.

Privilege: faults raised inside the kernel (KVM's get_user_pages on a
guest access, copy_from_user) are delivered only to a descriptor opened
without ``UFFD_USER_MODE_ONLY``, which needs CAP_SYS_PTRACE, or
``vm.unprivileged_userfaultfd = 1``, or read-write access to
/dev/userfaultfd (tried second).  Without any of them
:class:`UffdUnavailable` says which.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import select
from dataclasses import dataclass
from typing import Any

import ioctl_opt

from kvmharness import ioctls as nr
from kvmharness.errors import IoctlError, KvmError, KvmUnavailable
from kvmharness.ffi import ffi, lib

log = logging.getLogger(__name__)

SYS_USERFAULTFD = 323  # x86-64
DEV_USERFAULTFD = "/dev/userfaultfd"
#: /dev/userfaultfd's one ioctl: a new descriptor, flags in the argument.
USERFAULTFD_IOC_NEW = ioctl_opt.IO(lib.USERFAULTFD_IOC, 0)
MSG_SIZE = ffi.sizeof("struct uffd_msg")
PAGE_SIZE = 4096


class UffdUnavailable(KvmUnavailable):
    """No usable userfaultfd here (no permission, no kernel support, no thread ids)."""


def _open_fd(flags: int) -> int:
    """A raw descriptor from userfaultfd(2), else from /dev/userfaultfd."""
    fd = lib.syscall(SYS_USERFAULTFD, flags)
    if fd >= 0:
        return fd
    err = ffi.errno
    if err not in (errno.EPERM, errno.EACCES, errno.ENOSYS):
        raise OSError(err, f"userfaultfd(2) failed: {os.strerror(err)}")
    try:
        dev = os.open(DEV_USERFAULTFD, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise UffdUnavailable(
            f"userfaultfd(2) refused ({errno.errorcode.get(err, err)}: kernel faults need "
            "CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1) and "
            f"{DEV_USERFAULTFD} is not usable ({exc.strerror})"
        ) from None
    try:
        fd = lib.ioctl(dev, USERFAULTFD_IOC_NEW, ffi.cast("void *", flags))
        if fd < 0:
            raise UffdUnavailable(
                f"{DEV_USERFAULTFD}: USERFAULTFD_IOC_NEW failed: {os.strerror(ffi.errno)}"
            )
        return fd
    finally:
        os.close(dev)


def open_userfaultfd(features: int = 0) -> tuple[int, int]:
    """Open a userfaultfd (non-blocking, close-on-exec) and run UFFDIO_API asking
    for ``features``; returns (fd, features the kernel granted)."""
    fd = _open_fd(lib.O_CLOEXEC | lib.O_NONBLOCK)
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
    except UffdUnavailable as exc:
        return f"unavailable: {exc}"
    os.close(fd)
    tid = "with" if feats & lib.UFFD_FEATURE_THREAD_ID else "without"
    return f"usable ({tid} UFFD_FEATURE_THREAD_ID, features {feats:#x})"


@dataclass(frozen=True)
class Fault:
    """One UFFD_EVENT_PAGEFAULT message."""

    address: int  # the faulting address (page-aligned unless UFFD_FEATURE_EXACT_ADDRESS)
    flags: int
    tid: int  # the faulting thread (0 without UFFD_FEATURE_THREAD_ID)

    @property
    def write(self) -> bool:
        return bool(self.flags & lib.UFFD_PAGEFAULT_FLAG_WRITE)

    @property
    def page(self) -> int:
        return self.address & ~(PAGE_SIZE - 1)


class CopyResult(enum.Enum):
    COPIED = "copied"
    EXISTS = "exists"  # EEXIST: the page was already there (placed by someone else)


class Userfaultfd:
    """One userfaultfd with UFFD_FEATURE_THREAD_ID (required: blocktime needs the tid)."""

    def __init__(self, *, require_thread_id: bool = True) -> None:
        try:
            self.fd, self.features = open_userfaultfd(lib.UFFD_FEATURE_THREAD_ID)
        except IoctlError as exc:
            raise UffdUnavailable(f"UFFDIO_API refused UFFD_FEATURE_THREAD_ID: {exc}") from None
        if require_thread_id and not self.features & lib.UFFD_FEATURE_THREAD_ID:
            os.close(self.fd)
            raise UffdUnavailable("this kernel's userfaultfd has no UFFD_FEATURE_THREAD_ID")
        self._msgs = ffi.new("struct uffd_msg[]", 64)
        self._msg_buf = ffi.buffer(self._msgs)
        self._copy = ffi.new("struct uffdio_copy *")
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)
        self.registered: list[tuple[int, int]] = []

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def _what(self) -> str:
        return f"userfaultfd(fd {self.fd})"

    def close(self) -> None:
        """Close the descriptor: every thread asleep on it wakes (see the module doc)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> Userfaultfd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ioctl(self, request: int, arg: Any) -> None:
        if self.fd < 0:
            raise KvmError("userfaultfd is closed")
        if lib.ioctl(self.fd, request, arg) < 0:
            raise IoctlError(nr.name_of(request), self._what(), ffi.errno)

    def register(
        self, start: int, length: int, mode: int = lib.UFFDIO_REGISTER_MODE_MISSING
    ) -> int:
        """Register [start, start+length); returns the range ioctls the kernel offers
        (a bit per ``_UFFDIO_*`` number)."""
        reg = ffi.new(
            "struct uffdio_register *", {"range": {"start": start, "len": length}, "mode": mode}
        )
        self._ioctl(nr.UFFDIO_REGISTER, reg)
        self.registered.append((start, length))
        if not reg.ioctls & (1 << lib._UFFDIO_COPY):
            raise UffdUnavailable(
                f"range {start:#x}+{length:#x} registered but the kernel "
                "offers no UFFDIO_COPY on it"
            )
        return int(reg.ioctls)

    def unregister(self, start: int, length: int) -> None:
        self._ioctl(
            nr.UFFDIO_UNREGISTER, ffi.new("struct uffdio_range *", {"start": start, "len": length})
        )

    def wait(self, timeout_s: float) -> bool:
        """Whether a message is readable within ``timeout_s`` (poll; EINTR retried by Python)."""
        if self.fd < 0:
            return False
        return bool(self._poll.poll(max(0, int(timeout_s * 1000))))

    def read_faults(self) -> list[Fault]:
        """Every message readable now (up to 64), without blocking; [] if none."""
        try:
            n = os.readv(self.fd, [self._msg_buf])
        except BlockingIOError:
            return []
        if n % MSG_SIZE:
            raise KvmError(
                f"{self._what()}: read {n} bytes, not a whole number of {MSG_SIZE}-byte messages"
            )
        out = []
        for i in range(n // MSG_SIZE):
            m = self._msgs[i]
            if m.event != lib.UFFD_EVENT_PAGEFAULT:
                log.warning("userfaultfd: unexpected event %#x ignored", m.event)
                continue
            pf = m.arg.pagefault
            out.append(Fault(pf.address, pf.flags, pf.feat.ptid))
        return out

    def copy(self, dst: int, src: int, length: int = PAGE_SIZE, *, wake: bool = True) -> CopyResult:
        """UFFDIO_COPY ``length`` bytes from ``src`` to ``dst`` (both page-aligned
        addresses of this process), waking the threads asleep on the range unless
        ``wake`` is False.  EEXIST (the page is already there) is
        :data:`CopyResult.EXISTS`; EAGAIN (the kernel asks to retry) is retried."""
        c = self._copy
        for _ in range(100):
            c.dst, c.src, c.len = dst, src, length
            c.mode = 0 if wake else lib.UFFDIO_COPY_MODE_DONTWAKE
            c.copy = 0
            if self.fd < 0:
                raise KvmError("userfaultfd is closed")
            if lib.ioctl(self.fd, nr.UFFDIO_COPY, c) >= 0:
                return CopyResult.COPIED
            err = ffi.errno
            if err == errno.EEXIST:
                return CopyResult.EXISTS
            if err != errno.EAGAIN:
                raise IoctlError("UFFDIO_COPY", self._what(), err, f"dst {dst:#x} len {length:#x}")
            if c.copy > 0:  # a partial copy: continue after what was placed
                dst, src, length = dst + c.copy, src + c.copy, length - c.copy
        raise IoctlError("UFFDIO_COPY", self._what(), errno.EAGAIN, "EAGAIN 100 times")

    def wake(self, start: int, length: int = PAGE_SIZE) -> None:
        self._ioctl(
            nr.UFFDIO_WAKE, ffi.new("struct uffdio_range *", {"start": start, "len": length})
        )


def map_anonymous(size: int) -> tuple[Any, int]:
    """A private anonymous mapping with no page in it yet: (cdata pointer, address)."""
    ptr = lib.mmap(
        ffi.NULL,
        size,
        lib.PROT_READ | lib.PROT_WRITE,
        lib.MAP_PRIVATE | lib.MAP_ANONYMOUS | lib.MAP_NORESERVE,
        -1,
        0,
    )
    addr = int(ffi.cast("uintptr_t", ptr))
    if addr == (1 << 64) - 1:
        raise OSError(ffi.errno, f"mmap of {size:#x} bytes failed: {os.strerror(ffi.errno)}")
    return ptr, addr
