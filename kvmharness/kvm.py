"""Typed objects over the KVM file descriptors: ``Kvm``, ``Vm``, ``Vcpu``.

In the spirit of rust-vmm's kvm-ioctls: each object owns its fd (and mmap)
and closes it; there is no test logic here.  Register sets are returned as
cffi cdata (``regs.rip``), convertible with :func:`cdata_to_dict` /
:func:`dict_to_cdata` and :func:`raw_bytes` for snapshots.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmharness import ioctls as nr
from kvmharness.errors import (
    IoctlError,
    KvmError,
    KvmUnavailable,
    MemorySlotError,
    MsrError,
)
from kvmharness.ffi import ffi, lib
from kvmharness.host import progress as _progress

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
DEV_KVM = "/dev/kvm"

# The signal used to kick a vCPU thread out of KVM_RUN.  A real-time signal
# so it does not collide with SIGUSR1/2 a user of the library may own.
KICK_SIGNAL = signal.SIGRTMIN + 5

EXIT_NAMES = {
    getattr(lib, name): name[len("KVM_EXIT_") :]
    for name in dir(lib)
    if name.startswith("KVM_EXIT_") and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
}

_NULL = ffi.NULL
_fioctl = fcntl.ioctl
_KVM_RUN = nr.KVM_RUN
_EXIT_INTR = lib.KVM_EXIT_INTR
_get_ident = threading.get_ident
_sys_ioctl = lib.ioctl
# the hang guard's progress page: each call marks its thread's slot on entry
# (request, entry time) and on return (count + 1, request 0); see host/progress.py
_page = _progress.page
_slot = _progress.slot
_tls = _progress.tls
_mono_ns = time.monotonic_ns
_RETURNS, _REQUEST, _ENTRY_NS = _progress.RETURNS, _progress.REQUEST, _progress.ENTRY_NS


def _ioctl(fd: int, request: int, arg: Any, target: str) -> int:
    """Issue one ioctl; raise IoctlError naming it on failure."""
    try:
        b = _tls.base
    except AttributeError:
        b = _slot()
    _page[b + _ENTRY_NS] = _mono_ns()
    _page[b + _REQUEST] = request
    try:
        rc = _sys_ioctl(fd, request, arg)
        if rc < 0:
            raise IoctlError(nr.name_of(request), target, ffi.errno)
    finally:
        _page[b + _RETURNS] += 1
        _page[b + _REQUEST] = 0
    return rc


def _int_arg(value: int) -> Any:
    return ffi.cast("void *", value)


def _flex(ctype: str, count_field: str, array_field: str, n: int) -> Any:
    """A zeroed ``ctype *`` whose trailing flexible array has ``n`` entries (cffi
    sizes the allocation from the array's length), with its count field set."""
    return ffi.new(ctype + " *", {count_field: n, array_field: max(1, n)})


# --------------------------------------------------------------------------
# cdata helpers


def cdata_to_dict(cdata: Any) -> Any:
    """Convert a cffi struct/array (pointer or value) into plain Python data."""
    tp = ffi.typeof(cdata)
    if tp.kind == "pointer":
        cdata = cdata[0]
        tp = tp.item
    if tp.kind == "struct" or tp.kind == "union":
        out: dict[str, Any] = {}
        for name, _fld in tp.fields:
            if not name:  # anonymous member: not part of any state kvmharness saves
                continue
            value = getattr(cdata, name)
            out[name] = cdata_to_dict(value) if isinstance(value, ffi.CData) else value
        return out
    if tp.kind == "array":
        return [cdata_to_dict(v) if isinstance(v, ffi.CData) else v for v in cdata]
    return cdata


def dict_to_cdata(ctype: str, data: Mapping[str, Any]) -> Any:
    """Build a freshly allocated ``ctype *`` from :func:`cdata_to_dict` output."""
    return ffi.new(ctype + " *", dict(data))


def raw_bytes(cdata: Any) -> bytes:
    """The bytes of the object a cdata pointer points to."""
    return bytes(ffi.buffer(cdata))


def from_raw(ctype: str, data: bytes) -> Any:
    obj = ffi.new(ctype + " *")
    size = ffi.sizeof(ctype)
    if len(data) != size:
        raise ValueError(f"{ctype}: expected {size} bytes, got {len(data)}")
    ffi.buffer(obj)[:] = data
    return obj


# --------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class CpuidEntry:
    function: int
    index: int = 0
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


@dataclass(frozen=True)
class ClockData:
    clock_ns: int
    flags: int = 0
    realtime_ns: int = 0
    host_tsc: int = 0


@dataclass
class VcpuExit:
    """A decoded kvm_run exit."""

    reason: int
    name: str
    io_direction: int | None = None
    io_port: int | None = None
    io_size: int | None = None
    io_count: int | None = None
    io_data: bytes | None = None
    mmio_gpa: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.reason == lib.KVM_EXIT_IO:
            way = "out" if self.io_direction == lib.KVM_EXIT_IO_OUT else "in"
            return f"IO {way} port {self.io_port:#x} size {self.io_size} count {self.io_count}"
        if self.detail:
            return f"{self.name} {self.detail}"
        return self.name


@dataclass
class MemorySlot:
    slot: int
    gpa: int
    size: int
    hva: int
    flags: int
    _ptr: Any = field(repr=False)

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.end

    def buffer(self) -> Any:
        """A writable buffer over the whole slot (cffi buffer, supports slicing)."""
        return ffi.buffer(self._ptr, self.size)


# --------------------------------------------------------------------------


class _Fd:
    """Owns one file descriptor."""

    fd: int

    def __init__(self, fd: int, what: str) -> None:
        self.fd = fd
        self.what = what

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def _check_open(self) -> None:
        if self.fd < 0:
            raise KvmError(f"{self.what} is closed")

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def ioctl(self, request: int, arg: Any = _NULL) -> int:
        self._check_open()
        return _ioctl(self.fd, request, arg, self.what)


class Kvm(_Fd):
    """The /dev/kvm system fd."""

    def __init__(self, path: str = DEV_KVM) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"{path} does not exist: this host has no KVM (load kvm_intel, kvm_amd or "
                "kvm_pvm, or run on a machine with virtualization enabled)"
            ) from None
        except PermissionError:
            raise KvmUnavailable(
                f"{path}: permission denied: run as root or add this user to the group "
                f"that owns {path} (usually 'kvm')"
            ) from None
        except OSError as exc:
            raise KvmUnavailable(f"{path}: cannot open: {exc.strerror}") from None
        super().__init__(fd, path)
        self.path = path
        try:
            self.api_version = self.ioctl(nr.KVM_GET_API_VERSION)
        except IoctlError as exc:
            self.close()
            raise KvmUnavailable(f"{path} is not a KVM device ({exc})") from None
        if self.api_version != lib.KVM_API_VERSION:
            self.close()
            raise KvmUnavailable(
                f"{path}: KVM API version {self.api_version}, kvmharness needs "
                f"{lib.KVM_API_VERSION}"
            )
        self.vcpu_mmap_size = self.ioctl(nr.KVM_GET_VCPU_MMAP_SIZE)

    def close(self) -> None:
        self._close_fd()

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_extension(self, cap: int) -> int:
        return self.ioctl(nr.KVM_CHECK_EXTENSION, _int_arg(cap))

    def supported_cpuid(self) -> list[CpuidEntry]:
        nent = 64
        while True:
            cpuid = _flex("struct kvm_cpuid2", "nent", "entries", nent)
            try:
                self.ioctl(nr.KVM_GET_SUPPORTED_CPUID, cpuid)
            except IoctlError as exc:
                if exc.errno_value == errno.E2BIG and nent < 4096:  # grow and retry
                    nent *= 2
                    continue
                raise
            return [_cpuid_from_c(cpuid.entries[i]) for i in range(cpuid.nent)]

    def msr_index_list(self) -> list[int]:
        n = 64
        while True:
            lst = _flex("struct kvm_msr_list", "nmsrs", "indices", n)
            try:
                self.ioctl(nr.KVM_GET_MSR_INDEX_LIST, lst)
            except IoctlError as exc:
                if exc.errno_value == errno.E2BIG and lst.nmsrs > n:  # it tells the real count
                    n = lst.nmsrs
                    continue
                raise
            return [lst.indices[i] for i in range(lst.nmsrs)]

    def create_vm(self) -> Vm:
        self._check_open()
        fd = self.ioctl(nr.KVM_CREATE_VM, _int_arg(0))
        return Vm(self, fd)


def _cpuid_from_c(e: Any) -> CpuidEntry:
    return CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)


def _cpuid_to_c(entries: list[CpuidEntry]) -> Any:
    cpuid = _flex("struct kvm_cpuid2", "nent", "entries", len(entries))
    for i, e in enumerate(entries):
        c = cpuid.entries[i]
        c.function, c.index, c.flags = e.function, e.index, e.flags
        c.eax, c.ebx, c.ecx, c.edx = e.eax, e.ebx, e.ecx, e.edx
    return cpuid


class Vm(_Fd):
    """A VM fd with its memory slots and vCPUs."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        super().__init__(fd, f"vm(fd {fd})")
        self.kvm = kvm
        self.slots: dict[int, MemorySlot] = {}
        self.vcpus: list[Vcpu] = []

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        self._close_fd()  # the VM goes away with its last fd; then the memory can go
        for s in self.slots.values():
            lib.munmap(s._ptr, s.size)
        self.slots.clear()

    # ---- memory
    def add_memory(self, slot: int, gpa: int, size: int, *, flags: int = 0) -> MemorySlot:
        """Back [gpa, gpa+size) with fresh anonymous shared memory in slot ``slot``."""
        self._check_open()
        if size <= 0 or size % PAGE_SIZE or gpa % PAGE_SIZE:
            raise MemorySlotError(
                f"slot {slot}: gpa {gpa:#x} and size {size:#x} must be positive multiples "
                f"of the {PAGE_SIZE}-byte page"
            )
        self._check_free(slot, gpa, size)
        ptr = lib.mmap(
            _NULL,
            size,
            lib.PROT_READ | lib.PROT_WRITE,
            lib.MAP_SHARED | lib.MAP_ANONYMOUS | lib.MAP_NORESERVE,
            -1,
            0,
        )
        if int(ffi.cast("uintptr_t", ptr)) == (1 << 64) - 1:
            raise MemorySlotError(
                f"slot {slot}: mmap of {size:#x} bytes failed: {os.strerror(ffi.errno)}"
            )
        return self._register(slot, gpa, size, ptr, flags)

    def add_mapped_memory(
        self, slot: int, gpa: int, ptr: Any, size: int, *, flags: int = 0
    ) -> MemorySlot:
        """Back [gpa, gpa+size) with a mapping the caller made (e.g. private
        anonymous memory registered with userfaultfd).  The VM owns it from
        here on: :meth:`close` unmaps it, and so does a failure here."""
        try:
            self._check_open()
            hva = int(ffi.cast("uintptr_t", ptr))
            if size <= 0 or size % PAGE_SIZE or gpa % PAGE_SIZE or hva % PAGE_SIZE:
                raise MemorySlotError(
                    f"slot {slot}: gpa {gpa:#x}, hva {hva:#x} and size "
                    f"{size:#x} must be multiples of the {PAGE_SIZE}-byte page"
                )
            self._check_free(slot, gpa, size)
        except BaseException:
            lib.munmap(ptr, size)
            raise
        return self._register(slot, gpa, size, ptr, flags)

    def _check_free(self, slot: int, gpa: int, size: int) -> None:
        """MemorySlotError unless ``slot`` is unused and [gpa, gpa+size) overlaps no slot."""
        if slot in self.slots:
            raise MemorySlotError(f"slot {slot} is already in use ({self.slots[slot]})")
        for other in self.slots.values():
            if gpa < other.end and other.gpa < gpa + size:
                raise MemorySlotError(
                    f"slot {slot} [{gpa:#x}, {gpa + size:#x}) overlaps slot {other.slot} "
                    f"[{other.gpa:#x}, {other.end:#x})"
                )

    def _register(self, slot: int, gpa: int, size: int, ptr: Any, flags: int) -> MemorySlot:
        """KVM_SET_USER_MEMORY_REGION for the mapping at ``ptr``, which the VM
        owns from here on (unmapped here if KVM refuses it)."""
        hva = int(ffi.cast("uintptr_t", ptr))
        region = ffi.new(
            "struct kvm_userspace_memory_region *",
            {
                "slot": slot,
                "flags": flags,
                "guest_phys_addr": gpa,
                "memory_size": size,
                "userspace_addr": hva,
            },
        )
        try:
            self.ioctl(nr.KVM_SET_USER_MEMORY_REGION, region)
        except BaseException:
            lib.munmap(ptr, size)
            raise
        mem = MemorySlot(slot, gpa, size, hva, flags, ptr)
        self.slots[slot] = mem
        log.debug("slot %d: gpa %#x size %#x hva %#x", slot, gpa, size, hva)
        return mem

    def slot_for(self, gpa: int, length: int = 1) -> MemorySlot:
        for s in self.slots.values():
            if s.contains(gpa, length):
                return s
        raise MemorySlotError(f"guest range [{gpa:#x}, {gpa + length:#x}) is not in one slot")

    def read(self, gpa: int, length: int) -> bytes:
        s = self.slot_for(gpa, length)
        off = gpa - s.gpa
        return ffi.buffer(s._ptr, s.size)[off : off + length]

    def write(self, gpa: int, data: bytes) -> None:
        s = self.slot_for(gpa, len(data))
        off = gpa - s.gpa
        ffi.buffer(s._ptr, s.size)[off : off + len(data)] = data

    def pointer(self, gpa: int, ctype: str) -> Any:
        """A typed pointer into guest memory (reads and writes go straight to the guest)."""
        s = self.slot_for(gpa, ffi.sizeof(ctype))
        return ffi.cast(ctype + " *", ffi.cast("char *", s._ptr) + (gpa - s.gpa))

    # ---- vCPUs
    def create_vcpu(self, index: int | None = None) -> Vcpu:
        self._check_open()
        if index is None:
            index = len(self.vcpus)
        fd = self.ioctl(nr.KVM_CREATE_VCPU, _int_arg(index))
        vcpu = Vcpu(self, index, fd)
        self.vcpus.append(vcpu)
        return vcpu

    # ---- clock
    def get_clock(self) -> ClockData:
        data = ffi.new("struct kvm_clock_data *")
        self.ioctl(nr.KVM_GET_CLOCK, data)
        return ClockData(data.clock, data.flags, data.realtime, data.host_tsc)

    def set_clock(self, clock: ClockData, *, flags: int = 0) -> None:
        data = ffi.new(
            "struct kvm_clock_data *",
            {
                "clock": clock.clock_ns,
                "flags": flags,
                "realtime": clock.realtime_ns,
                "host_tsc": clock.host_tsc,
            },
        )
        self.ioctl(nr.KVM_SET_CLOCK, data)

    def check_extension(self, cap: int) -> int:
        return self.ioctl(nr.KVM_CHECK_EXTENSION, _int_arg(cap))


_kick_lock = threading.Lock()
_kick_installed = False


def _install_kick_handler() -> None:
    """Give KICK_SIGNAL a (no-op) handler so it interrupts KVM_RUN instead of killing us.

    signal.signal only works on the main thread, so this runs at import (imports
    normally happen there) and again at each vCPU creation until it succeeds.
    Without the handler, kick() only sets immediate_exit and never signals.
    """
    global _kick_installed
    with _kick_lock:
        if _kick_installed or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(KICK_SIGNAL, lambda signum, frame: None)
        _kick_installed = True


_install_kick_handler()


class Vcpu(_Fd):
    """A vCPU fd and its mmapped kvm_run page."""

    def __init__(self, vm: Vm, index: int, fd: int) -> None:
        super().__init__(fd, f"vcpu{index}")
        self.vm = vm
        self.index = index
        size = vm.kvm.vcpu_mmap_size
        ptr = lib.mmap(_NULL, size, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_SHARED, fd, 0)
        if int(ffi.cast("uintptr_t", ptr)) == (1 << 64) - 1:
            err = ffi.errno
            os.close(fd)
            self.fd = -1
            raise IoctlError("mmap(kvm_run)", self.what, err)
        self._run_map = ptr
        self._run_size = size
        self.run_struct = ffi.cast("struct kvm_run *", ptr)
        self._in_run_ident: int | None = None
        _install_kick_handler()

    def __enter__(self) -> Vcpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._run_map is not None:
            lib.munmap(self._run_map, self._run_size)
            self._run_map = None
            self.run_struct = None
        self._close_fd()

    # ---- run
    def run(self) -> int:
        """One KVM_RUN.  Returns the exit reason (KVM_EXIT_INTR when kicked).

        The hot path of every scenario, so it uses fcntl.ioctl (a direct C call
        that releases the GIL, about 0.5 us cheaper per exit than a cffi call
        here; see scripts/bench_kvm_run.py) and module-level names.
        """
        fd = self.fd
        if fd < 0:
            raise KvmError(f"{self.what} is closed")
        self._in_run_ident = _get_ident()
        try:  # the progress slot (no entry time here: the count alone names the call)
            b = _tls.base
        except AttributeError:
            b = _slot()
        _page[b + _REQUEST] = _KVM_RUN
        try:
            _fioctl(fd, _KVM_RUN)
        except InterruptedError:  # kicked, or another signal for this thread
            self.run_struct.immediate_exit = 0
            return _EXIT_INTR
        except OSError as exc:
            raise IoctlError("KVM_RUN", self.what, exc.errno) from None
        finally:
            self._in_run_ident = None
            _page[b + _RETURNS] += 1
            _page[b + _REQUEST] = 0
        return self.run_struct.exit_reason

    def finish_exit(self) -> None:
        """Let KVM finish the emulation of the last exit, so that the state read
        next is consistent.  After KVM_EXIT_IO or KVM_EXIT_MMIO, KVM completes
        the access (and moves rip past the instruction) only when KVM_RUN is
        entered again (api.rst, the note on those exits); a KVM_RUN with
        immediate_exit set does that and returns -EINTR without entering the
        guest.  Without it, state saved after a port write restores with rip
        on the OUT, and the restored guest repeats its last report."""
        run = self.run_struct
        if run is None:
            raise KvmError(f"{self.what} is closed")
        run.immediate_exit = 1
        try:
            self.run()
        finally:
            run.immediate_exit = 0

    def kick(self) -> None:
        """Make KVM_RUN return (now, or at its next call) from any thread."""
        run = self.run_struct
        if run is None:
            return
        run.immediate_exit = 1
        ident = self._in_run_ident
        if ident is not None and _kick_installed:
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def exit_info(self) -> VcpuExit:
        """Decode the kvm_run page after run()."""
        r = self.run_struct
        reason = r.exit_reason
        ex = VcpuExit(reason, EXIT_NAMES.get(reason, f"exit {reason}"))
        if reason == lib.KVM_EXIT_IO:
            ex.io_direction = r.io.direction
            ex.io_port = r.io.port
            ex.io_size = r.io.size
            ex.io_count = r.io.count
            base = ffi.cast("char *", r)
            ex.io_data = ffi.buffer(base + r.io.data_offset, r.io.size * r.io.count)[:]
        elif reason == lib.KVM_EXIT_MMIO:
            ex.mmio_gpa = r.mmio.phys_addr
            ex.detail = {
                "gpa": hex(r.mmio.phys_addr),
                "len": r.mmio.len,
                "is_write": bool(r.mmio.is_write),
            }
        elif reason == lib.KVM_EXIT_INTERNAL_ERROR:
            n = min(r.internal.ndata, 16)
            ex.detail = {
                "suberror": r.internal.suberror,
                "data": [hex(r.internal.data[i]) for i in range(n)],
            }
        elif reason == lib.KVM_EXIT_FAIL_ENTRY:
            ex.detail = {
                "hardware_entry_failure_reason": hex(r.fail_entry.hardware_entry_failure_reason)
            }
        elif reason == lib.KVM_EXIT_UNKNOWN:
            ex.detail = {"hardware_exit_reason": hex(r.hw.hardware_exit_reason)}
        elif reason == lib.KVM_EXIT_EXCEPTION:
            ex.detail = {"exception": r.ex.exception, "error_code": r.ex.error_code}
        elif reason == lib.KVM_EXIT_SYSTEM_EVENT:
            ex.detail = {"type": r.system_event.type}
        return ex

    # ---- register state
    def _get(self, request: int, ctype: str) -> Any:
        obj = ffi.new(ctype + " *")
        self.ioctl(request, obj)
        return obj

    def get_regs(self) -> Any:
        return self._get(nr.KVM_GET_REGS, "struct kvm_regs")

    def set_regs(self, regs: Any) -> None:
        self.ioctl(nr.KVM_SET_REGS, regs)

    def get_sregs(self) -> Any:
        return self._get(nr.KVM_GET_SREGS, "struct kvm_sregs")

    def set_sregs(self, sregs: Any) -> None:
        self.ioctl(nr.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> Any:
        return self._get(nr.KVM_GET_FPU, "struct kvm_fpu")

    def set_fpu(self, fpu: Any) -> None:
        self.ioctl(nr.KVM_SET_FPU, fpu)

    def get_xsave(self) -> Any:
        return self._get(nr.KVM_GET_XSAVE, "struct kvm_xsave")

    def set_xsave(self, xsave: Any) -> None:
        self.ioctl(nr.KVM_SET_XSAVE, xsave)

    def get_xcrs(self) -> Any:
        return self._get(nr.KVM_GET_XCRS, "struct kvm_xcrs")

    def set_xcrs(self, xcrs: Any) -> None:
        self.ioctl(nr.KVM_SET_XCRS, xcrs)

    def get_debugregs(self) -> Any:
        return self._get(nr.KVM_GET_DEBUGREGS, "struct kvm_debugregs")

    def set_debugregs(self, dbg: Any) -> None:
        self.ioctl(nr.KVM_SET_DEBUGREGS, dbg)

    def get_vcpu_events(self) -> Any:
        return self._get(nr.KVM_GET_VCPU_EVENTS, "struct kvm_vcpu_events")

    def set_vcpu_events(self, events: Any) -> None:
        self.ioctl(nr.KVM_SET_VCPU_EVENTS, events)

    def get_mp_state(self) -> int:
        return self._get(nr.KVM_GET_MP_STATE, "struct kvm_mp_state").mp_state

    def set_mp_state(self, state: int) -> None:
        self.ioctl(nr.KVM_SET_MP_STATE, ffi.new("struct kvm_mp_state *", {"mp_state": state}))

    # ---- MSRs
    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        idx = list(indices)
        msrs = _flex("struct kvm_msrs", "nmsrs", "entries", len(idx))
        for i, index in enumerate(idx):
            msrs.entries[i].index = index
        done = self.ioctl(nr.KVM_GET_MSRS, msrs)
        if done != len(idx):
            raise MsrError("KVM_GET_MSRS", self.what, idx[done], done, len(idx))
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(len(idx))}

    def get_msr(self, index: int) -> int:
        return self.get_msrs([index])[index]

    def set_msrs(self, values: Mapping[int, int]) -> None:
        items = list(values.items())
        msrs = _flex("struct kvm_msrs", "nmsrs", "entries", len(items))
        for i, (index, data) in enumerate(items):
            msrs.entries[i].index = index
            msrs.entries[i].data = data
        done = self.ioctl(nr.KVM_SET_MSRS, msrs)
        if done != len(items):
            raise MsrError("KVM_SET_MSRS", self.what, items[done][0], done, len(items))

    def set_msr(self, index: int, value: int) -> None:
        self.set_msrs({index: value})

    # ---- CPUID
    def set_cpuid(self, entries: list[CpuidEntry]) -> None:
        self.ioctl(nr.KVM_SET_CPUID2, _cpuid_to_c(entries))

    def get_cpuid(self, max_entries: int = 256) -> list[CpuidEntry]:
        cpuid = _flex("struct kvm_cpuid2", "nent", "entries", max_entries)
        self.ioctl(nr.KVM_GET_CPUID2, cpuid)
        return [_cpuid_from_c(cpuid.entries[i]) for i in range(cpuid.nent)]

    # ---- TSC
    def get_tsc_khz(self) -> int:
        return self.ioctl(nr.KVM_GET_TSC_KHZ)

    def set_tsc_khz(self, khz: int) -> None:
        self.ioctl(nr.KVM_SET_TSC_KHZ, _int_arg(khz))

    def has_attr(self, group: int, attr: int) -> bool:
        a = ffi.new("struct kvm_device_attr *", {"group": group, "attr": attr})
        try:
            self.ioctl(nr.KVM_HAS_DEVICE_ATTR, a)
        except IoctlError as exc:
            if exc.errno_value in (errno.ENXIO, errno.ENOTTY, errno.EINVAL):  # not there
                return False
            raise
        return True

    def get_attr_u64(self, group: int, attr: int) -> int:
        val = ffi.new("__u64 *")
        a = ffi.new(
            "struct kvm_device_attr *",
            {"group": group, "attr": attr, "addr": int(ffi.cast("uintptr_t", val))},
        )
        self.ioctl(nr.KVM_GET_DEVICE_ATTR, a)
        return val[0]

    def set_attr_u64(self, group: int, attr: int, value: int) -> None:
        val = ffi.new("__u64 *", value)
        a = ffi.new(
            "struct kvm_device_attr *",
            {"group": group, "attr": attr, "addr": int(ffi.cast("uintptr_t", val))},
        )
        self.ioctl(nr.KVM_SET_DEVICE_ATTR, a)

    def has_tsc_offset_attr(self) -> bool:
        return self.has_attr(lib.KVM_VCPU_TSC_CTRL, lib.KVM_VCPU_TSC_OFFSET)

    def get_tsc_offset(self) -> int:
        return self.get_attr_u64(lib.KVM_VCPU_TSC_CTRL, lib.KVM_VCPU_TSC_OFFSET)

    def set_tsc_offset(self, offset: int) -> None:
        self.set_attr_u64(lib.KVM_VCPU_TSC_CTRL, lib.KVM_VCPU_TSC_OFFSET, offset & (2**64 - 1))
