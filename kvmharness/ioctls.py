"""Every ioctl number kvmharness uses, computed with ioctl-opt.

The size field of each number is ``ffi.sizeof`` of the struct the kernel
declares for it, so a declaration in ``cdefs/`` that drifts from the kernel
changes the number and the kernel refuses the call (and tests/test_layout.py
catches the drift first).  No number is typed as a hex literal.
"""

from __future__ import annotations

import ioctl_opt

from kvmharness.ffi import ffi, lib

KVMIO = lib.KVMIO
UFFDIO = lib.UFFDIO


def _io(kind: int, nr: int) -> int:
    return ioctl_opt.IO(kind, nr)


def _ior(kind: int, nr: int, ctype: str) -> int:
    return ioctl_opt.IOC(ioctl_opt.IOC_READ, kind, nr, ffi.sizeof(ctype))


def _iow(kind: int, nr: int, ctype: str) -> int:
    return ioctl_opt.IOC(ioctl_opt.IOC_WRITE, kind, nr, ffi.sizeof(ctype))


def _iowr(kind: int, nr: int, ctype: str) -> int:
    return ioctl_opt.IOC(ioctl_opt.IOC_READ | ioctl_opt.IOC_WRITE, kind, nr, ffi.sizeof(ctype))


# system ioctls (on the /dev/kvm fd)
KVM_GET_API_VERSION = _io(KVMIO, 0x00)
KVM_CREATE_VM = _io(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(KVMIO, 0x02, "struct kvm_msr_list")
KVM_CHECK_EXTENSION = _io(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(KVMIO, 0x05, "struct kvm_cpuid2")

# VM ioctls
KVM_CREATE_VCPU = _io(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _iow(KVMIO, 0x46, "struct kvm_userspace_memory_region")
KVM_SET_CLOCK = _iow(KVMIO, 0x7B, "struct kvm_clock_data")
KVM_GET_CLOCK = _ior(KVMIO, 0x7C, "struct kvm_clock_data")

# vCPU ioctls
KVM_RUN = _io(KVMIO, 0x80)
KVM_GET_REGS = _ior(KVMIO, 0x81, "struct kvm_regs")
KVM_SET_REGS = _iow(KVMIO, 0x82, "struct kvm_regs")
KVM_GET_SREGS = _ior(KVMIO, 0x83, "struct kvm_sregs")
KVM_SET_SREGS = _iow(KVMIO, 0x84, "struct kvm_sregs")
KVM_GET_MSRS = _iowr(KVMIO, 0x88, "struct kvm_msrs")
KVM_SET_MSRS = _iow(KVMIO, 0x89, "struct kvm_msrs")
KVM_GET_FPU = _ior(KVMIO, 0x8C, "struct kvm_fpu")
KVM_SET_FPU = _iow(KVMIO, 0x8D, "struct kvm_fpu")
KVM_SET_CPUID2 = _iow(KVMIO, 0x90, "struct kvm_cpuid2")
KVM_GET_CPUID2 = _iowr(KVMIO, 0x91, "struct kvm_cpuid2")
KVM_GET_MP_STATE = _ior(KVMIO, 0x98, "struct kvm_mp_state")
KVM_SET_MP_STATE = _iow(KVMIO, 0x99, "struct kvm_mp_state")
KVM_GET_VCPU_EVENTS = _ior(KVMIO, 0x9F, "struct kvm_vcpu_events")
KVM_SET_VCPU_EVENTS = _iow(KVMIO, 0xA0, "struct kvm_vcpu_events")
KVM_GET_DEBUGREGS = _ior(KVMIO, 0xA1, "struct kvm_debugregs")
KVM_SET_DEBUGREGS = _iow(KVMIO, 0xA2, "struct kvm_debugregs")
KVM_SET_TSC_KHZ = _io(KVMIO, 0xA2)
KVM_GET_TSC_KHZ = _io(KVMIO, 0xA3)
KVM_GET_XSAVE = _ior(KVMIO, 0xA4, "struct kvm_xsave")
KVM_SET_XSAVE = _iow(KVMIO, 0xA5, "struct kvm_xsave")
KVM_GET_XCRS = _ior(KVMIO, 0xA6, "struct kvm_xcrs")
KVM_SET_XCRS = _iow(KVMIO, 0xA7, "struct kvm_xcrs")
KVM_KVMCLOCK_CTRL = _io(KVMIO, 0xAD)
KVM_SET_DEVICE_ATTR = _iow(KVMIO, 0xE1, "struct kvm_device_attr")
KVM_GET_DEVICE_ATTR = _iow(KVMIO, 0xE2, "struct kvm_device_attr")
KVM_HAS_DEVICE_ATTR = _iow(KVMIO, 0xE3, "struct kvm_device_attr")

# userfaultfd
UFFDIO_API = _iowr(UFFDIO, lib._UFFDIO_API, "struct uffdio_api")
UFFDIO_REGISTER = _iowr(UFFDIO, lib._UFFDIO_REGISTER, "struct uffdio_register")
UFFDIO_UNREGISTER = _ior(UFFDIO, lib._UFFDIO_UNREGISTER, "struct uffdio_range")
UFFDIO_WAKE = _ior(UFFDIO, lib._UFFDIO_WAKE, "struct uffdio_range")
UFFDIO_COPY = _iowr(UFFDIO, lib._UFFDIO_COPY, "struct uffdio_copy")
UFFDIO_ZEROPAGE = _iowr(UFFDIO, lib._UFFDIO_ZEROPAGE, "struct uffdio_zeropage")

NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith(("KVM_", "UFFDIO_")) and isinstance(value, int)
}
"""ioctl number -> name, for error messages. (KVM_SET_TSC_KHZ has no struct so
it cannot collide with KVM_SET_DEBUGREGS, which carries its size.)"""


def name_of(request: int) -> str:
    return NAMES.get(request, f"ioctl {request:#x}")
