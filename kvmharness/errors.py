"""Exceptions raised by the KVM binding."""

from __future__ import annotations

import errno as _errno
import os


class KvmError(Exception):
    """Base class for every error the binding raises."""


class KvmUnavailable(KvmError):
    """/dev/kvm is missing or cannot be opened."""


class IoctlError(KvmError, OSError):
    """An ioctl failed: names the ioctl, the object it was issued on, and errno."""

    def __init__(self, ioctl: str, target: str, err: int, detail: str = "") -> None:
        self.ioctl = ioctl
        self.target = target
        self.errno_value = err
        name = _errno.errorcode.get(err, str(err))
        msg = f"{ioctl} on {target} failed: {name} ({os.strerror(err)})"
        if detail:
            msg += f"; {detail}"
        OSError.__init__(self, err, msg)
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class MsrError(KvmError):
    """KVM_GET_MSRS / KVM_SET_MSRS processed fewer entries than asked."""

    def __init__(self, ioctl: str, target: str, failed_index: int, done: int, asked: int) -> None:
        self.ioctl = ioctl
        self.failed_index = failed_index
        self.done = done
        self.asked = asked
        super().__init__(
            f"{ioctl} on {target}: KVM processed {done} of {asked} MSRs; "
            f"MSR {failed_index:#x} was refused"
        )


class MemorySlotError(KvmError):
    """A memory slot request that cannot work (overlap, misalignment, bad size)."""


class GuestError(KvmError):
    """The guest did something the host did not expect (exception, bad exit, assertion)."""
