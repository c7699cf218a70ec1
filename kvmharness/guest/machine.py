"""A 64-bit long-mode VM running one guest program.

Guest-physical layout (identity-mapped with 2 MiB pages over the slot):

======================  ==============================================
0x1000                  GDT: null, code64 (0x08), data (0x10), TSS (0x18)
0x2000                  IDT: 256 gates, 0-31 point at exception stubs
0x3000                  TSS (64-bit, only so TR is valid)
0x4000 / 0x5000 / 0x6000  PML4 / PDPT / PD
0x100000                guest program (text, rodata, data, bss)
top of memory           one STACK_SIZE stack per vCPU, growing down
======================  ==============================================

Anything at or above ``mem_size`` is unmapped, so a guest access there
faults with #PF.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kvmharness.errors import GuestError
from kvmharness.ffi import ffi, lib
from kvmharness.guest.build import Program, load_program, program_label
from kvmharness.guest.elf import ElfImage
from kvmharness.kvm import CpuidEntry, Kvm, Vcpu, Vm

log = logging.getLogger(__name__)

GDT_GPA = 0x1000
IDT_GPA = 0x2000
TSS_GPA = 0x3000
PML4_GPA = 0x4000
PDPT_GPA = 0x5000
PD_GPA = 0x6000
STACK_SIZE = 0x8000
DEFAULT_MEM_SIZE = 4 << 20
LARGE_PAGE = 2 << 20

SEL_CODE = 0x08
SEL_DATA = 0x10
SEL_TSS = 0x18

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10

UCALL_NAMES = {
    lib.UCALL_SYNC: "SYNC",
    lib.UCALL_DONE: "DONE",
    lib.UCALL_ASSERT: "ASSERT",
    lib.UCALL_EXCEPTION: "EXCEPTION",
}

EXCEPTION_NAMES = {
    0: "#DE",
    1: "#DB",
    2: "NMI",
    3: "#BP",
    4: "#OF",
    5: "#BR",
    6: "#UD",
    7: "#NM",
    8: "#DF",
    10: "#TS",
    11: "#NP",
    12: "#SS",
    13: "#GP",
    14: "#PF",
    16: "#MF",
    17: "#AC",
    18: "#MC",
    19: "#XM",
}


@dataclass
class Ucall:
    """One request a vCPU made through the ucall port."""

    vcpu: int
    cmd: int
    args: list[int]
    file: str = ""
    line: int = 0
    message: str = ""

    @property
    def name(self) -> str:
        return UCALL_NAMES.get(self.cmd, f"ucall {self.cmd}")

    def describe(self) -> str:
        if self.cmd == lib.UCALL_ASSERT:
            vals = ", ".join(hex(a) for a in self.args)
            return (
                f"vcpu{self.vcpu}: guest assertion failed at {self.file}:{self.line}: "
                f"{self.message}" + (f" (values {vals})" if vals else "")
            )
        if self.cmd == lib.UCALL_EXCEPTION:
            vec, err, rip, cr2, rsp = self.args[:5]
            what = EXCEPTION_NAMES.get(vec, "exception")
            extra = f" cr2 {cr2:#x}" if vec == 14 else ""
            return (
                f"vcpu{self.vcpu}: unexpected guest exception {what} (vector {vec}) "
                f"error code {err:#x} at rip {rip:#x}{extra} rsp {rsp:#x}"
            )
        return f"vcpu{self.vcpu}: {self.name} {[hex(a) for a in self.args]}"


class GuestFailure(GuestError):
    """The guest reported an assertion or an exception."""

    def __init__(self, ucall: Ucall) -> None:
        self.ucall = ucall
        super().__init__(ucall.describe())


class GuestStopped(GuestError):
    """A vCPU was stopped from another thread (e.g. a timeout); says where it was."""

    def __init__(self, vcpu: int, rip: int) -> None:
        self.vcpu = vcpu
        self.rip = rip
        super().__init__(f"vcpu{vcpu} stopped from another thread at guest rip {rip:#x}")


def mem_size_for(image_end: int, vcpus: int) -> int:
    """Guest memory for a program ending at ``image_end`` and ``vcpus`` stacks
    (at least the default size, in whole 2 MiB pages)."""
    need = image_end + vcpus * STACK_SIZE
    return max(DEFAULT_MEM_SIZE, -(-need // LARGE_PAGE) * LARGE_PAGE)


def guest_cpuid(
    kvm: Kvm, vcpu_index: int, edit: Callable[[list[CpuidEntry]], list[CpuidEntry]] | None = None
) -> list[CpuidEntry]:
    """KVM's supported CPUID (KVM signature and feature leaves included), per vCPU APIC id."""
    out = []
    for e in kvm.supported_cpuid():
        if e.function == 1:
            e = CpuidEntry(
                e.function,
                e.index,
                e.flags,
                e.eax,
                (e.ebx & 0x00FFFFFF) | ((vcpu_index & 0xFF) << 24),
                e.ecx,
                e.edx,
            )
        elif e.function in (0xB, 0x1F):
            e = CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, vcpu_index)
        out.append(e)
    return edit(out) if edit else out


def _gdt_bytes() -> bytes:
    null = 0
    code64 = 0x00AF9B000000FFFF  # present, DPL0, exec/read, accessed, L=1, G=1
    data = 0x00CF93000000FFFF  # present, DPL0, read/write, accessed, D/B=1, G=1
    limit = 0x67
    base = TSS_GPA
    tss_lo = (
        (limit & 0xFFFF)
        | ((base & 0xFFFFFF) << 16)
        | (0x8B << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56)
    )
    tss_hi = base >> 32
    return struct.pack("<QQQQQ", null, code64, data, tss_lo, tss_hi)


def _idt_bytes(stubs: list[int]) -> bytes:
    gates = []
    for vec in range(256):
        if vec < len(stubs):
            off = stubs[vec]
            lo = (off & 0xFFFF) | (SEL_CODE << 16) | (0x8E << 40) | (((off >> 16) & 0xFFFF) << 48)
            gates.append(struct.pack("<QQ", lo, off >> 32))
        else:
            gates.append(bytes(16))
    return b"".join(gates)


def _segment(sreg: Any, selector: int, *, code: bool = False) -> None:
    sreg.base = 0
    sreg.limit = 0xFFFFFFFF
    sreg.selector = selector
    sreg.present = 1
    sreg.dpl = 0
    sreg.s = 1
    sreg.g = 1
    sreg.avl = 0
    sreg.unusable = 0
    if code:
        sreg.type = 11
        sreg.l = 1
        sreg.db = 0
    else:
        sreg.type = 3
        sreg.l = 0
        sreg.db = 1


def _image(
    program: Program | ElfImage | None, source: str | os.PathLike[str] | None
) -> tuple[ElfImage, str]:
    """The image and label of ``program`` (a built-in name, a C file or an image) or
    of ``source`` (a C file, even one named by a plain str): exactly one of them."""
    if (program is None) == (source is None):
        raise TypeError(
            "give either a program (a built-in name or an ElfImage) "
            "or source=PATH (your guest C file), not both or neither"
        )
    if source is not None:
        source = os.path.abspath(os.fspath(source))
        return load_program(source), program_label(source)
    assert program is not None
    if isinstance(program, ElfImage):
        return program, "<image>"
    return load_program(program), program_label(program)


class GuestVm:
    """A VM with a guest program loaded and long mode set up for each vCPU.

    The program is one of:

    * a built-in program's name: ``GuestVm(kvm, "steal")``;
    * your own guest C file: ``GuestVm(kvm, source="my_guest.c")`` (relative to
      the current directory) or a ``Path`` as ``program``; it is built against
      the runtime like the built-ins and cached by its content;
    * an already parsed :class:`ElfImage`.

    ``self.program`` names it (the built-in name or the file's absolute path);
    ``GuestVm.adopt`` and ``snapshot.state.capture(program=...)`` accept it back.
    """

    def __init__(
        self,
        kvm: Kvm,
        program: Program | ElfImage | None = None,
        *,
        source: str | os.PathLike[str] | None = None,
        vcpus: int = 1,
        mem_size: int = DEFAULT_MEM_SIZE,
        setup_vcpus: bool = True,
        cpuid_edit: Callable[[list[CpuidEntry]], list[CpuidEntry]] | None = None,
    ) -> None:
        if not 0 <= vcpus <= lib.GUEST_MAX_VCPUS:
            raise ValueError(f"vcpus must be 0..{lib.GUEST_MAX_VCPUS}, got {vcpus}")
        if mem_size % LARGE_PAGE or mem_size > (1 << 30):
            raise ValueError("mem_size must be a multiple of 2 MiB and at most 1 GiB")
        self.kvm = kvm
        self.image, self.program = _image(program, source)
        self.mem_size = mem_size
        self.cpuid_edit = cpuid_edit
        if self.image.end + vcpus * STACK_SIZE > mem_size:
            raise ValueError("guest program and stacks do not fit in guest memory")
        self.vm: Vm = kvm.create_vm()
        self._stop_requested: set[int] = set()
        self._stop_lock = threading.Lock()
        try:
            self.memory = self.vm.add_memory(0, 0, mem_size)
            self._load()
            for i in range(vcpus):
                self.add_vcpu(i, setup=setup_vcpus)
        except BaseException:
            self.vm.close()
            raise

    @classmethod
    def adopt(cls, kvm: Kvm, vm: Vm, program: Program | ElfImage) -> GuestVm:
        """A GuestVm around a VM whose memory already holds the program (a
        restored one): nothing is written, the image only gives the symbols.
        ``program`` as for the constructor (a restored state's ``.program`` works)."""
        self = cls.__new__(cls)
        self.kvm = kvm
        self.image, self.program = _image(program, None)
        self.vm = vm
        self.memory = vm.slots[0]
        self.mem_size = self.memory.size
        self.cpuid_edit = None
        self._stop_requested = set()
        self._stop_lock = threading.Lock()
        return self

    @property
    def vcpus(self) -> list[Vcpu]:
        return self.vm.vcpus

    def __enter__(self) -> GuestVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.vm.close()

    # ---- memory and symbols
    def _load(self) -> None:
        for seg in self.image.segments:
            self.vm.write(seg.paddr, seg.data + bytes(seg.memsz - len(seg.data)))
        stubs_sym = self.symbol("exception_stubs")
        stubs = list(struct.unpack("<32Q", self.vm.read(stubs_sym, 32 * 8)))
        self.vm.write(GDT_GPA, _gdt_bytes())
        self.vm.write(IDT_GPA, _idt_bytes(stubs))
        self.vm.write(TSS_GPA, bytes(0x68))
        self.vm.write(PML4_GPA, struct.pack("<Q", PDPT_GPA | 3))
        self.vm.write(PDPT_GPA, struct.pack("<Q", PD_GPA | 3))
        pd = b"".join(
            struct.pack("<Q", i * LARGE_PAGE | 0x83) for i in range(self.mem_size // LARGE_PAGE)
        )
        self.vm.write(PD_GPA, pd)

    def symbol(self, name: str) -> int:
        """The guest-physical address of a guest symbol."""
        try:
            return self.image.symbols[name].value
        except KeyError:
            raise KeyError(f"guest program {self.program!r} has no symbol {name!r}") from None

    def sym(self, name: str, ctype: str) -> Any:
        """A typed pointer to a guest variable: ``gvm.sym('test_mode', 'uint64_t')[0] = 3``."""
        return self.vm.pointer(self.symbol(name), ctype)

    def read_string(self, gva: int, limit: int = 256) -> str:
        try:
            raw = self.vm.read(gva, min(limit, self.mem_size - gva))
        except Exception:
            return f"<bad guest pointer {gva:#x}>"
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    def stack_top(self, index: int) -> int:
        return self.mem_size - index * STACK_SIZE

    # ---- vCPUs
    def add_vcpu(self, index: int, *, setup: bool = True) -> Vcpu:
        if self.image.end + (index + 1) * STACK_SIZE > self.mem_size:
            raise ValueError(
                f"no room for vcpu{index}'s stack in {self.mem_size:#x} bytes of "
                "guest memory; size it with mem_size_for()"
            )
        vcpu = self.vm.create_vcpu(index)
        if setup:
            self.setup_vcpu(vcpu)
        return vcpu

    def setup_vcpu(self, vcpu: Vcpu) -> None:
        """CPUID, long-mode sregs and entry regs for a fresh vCPU (its index in RDI)."""
        vcpu.set_cpuid(guest_cpuid(self.kvm, vcpu.index, self.cpuid_edit))
        sregs = vcpu.get_sregs()
        _segment(sregs.cs, SEL_CODE, code=True)
        for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            _segment(seg, SEL_DATA)
        sregs.tr.base = TSS_GPA
        sregs.tr.limit = 0x67
        sregs.tr.selector = SEL_TSS
        sregs.tr.type = 11
        sregs.tr.present = 1
        sregs.tr.s = 0
        sregs.tr.unusable = 0
        sregs.gdt.base = GDT_GPA
        sregs.gdt.limit = 5 * 8 - 1
        sregs.idt.base = IDT_GPA
        sregs.idt.limit = 256 * 16 - 1
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
        sregs.cr3 = PML4_GPA
        sregs.cr4 = CR4_PAE
        sregs.efer = EFER_LME | EFER_LMA
        vcpu.set_sregs(sregs)
        regs = ffi.new("struct kvm_regs *")
        regs.rip = self.image.entry
        regs.rsp = self.stack_top(vcpu.index)
        regs.rdi = vcpu.index
        regs.rflags = 0x2
        vcpu.set_regs(regs)

    # ---- running
    def decode_ucall(self, vcpu: Vcpu, gpa: int) -> Ucall:
        uc = self.vm.pointer(gpa, "struct ucall")
        n = min(uc.nargs, lib.UCALL_MAX_ARGS)
        out = Ucall(vcpu.index, uc.cmd, [uc.args[i] for i in range(n)])
        if uc.cmd == lib.UCALL_ASSERT:
            out.file = self.read_string(uc.file_gva)
            out.line = uc.line
            out.message = self.read_string(uc.msg_gva)
        return out

    def run_until_ucall(
        self, vcpu: Vcpu, *, check: bool = True, io_handler: Callable[[Vcpu], bool] | None = None
    ) -> Ucall:
        """KVM_RUN until the guest makes a ucall; raise on failures and odd exits.

        ``check`` turns ASSERT and EXCEPTION ucalls into :class:`GuestFailure`.
        ``io_handler`` may consume other port-I/O exits (returns True if it did).
        """
        while True:
            reason = vcpu.run()
            run = vcpu.run_struct
            if reason == lib.KVM_EXIT_IO and run.io.port == lib.UCALL_PORT:
                base = ffi.cast("char *", run)
                gpa = ffi.cast("uint32_t *", base + run.io.data_offset)[0]
                uc = self.decode_ucall(vcpu, gpa)
                if check and uc.cmd in (lib.UCALL_ASSERT, lib.UCALL_EXCEPTION):
                    raise GuestFailure(uc)
                return uc
            if reason == lib.KVM_EXIT_INTR:
                if self._take_stop(vcpu.index):
                    raise GuestStopped(vcpu.index, vcpu.get_regs().rip)
                continue
            if reason == lib.KVM_EXIT_IO and io_handler is not None and io_handler(vcpu):
                continue
            rip = vcpu.get_regs().rip
            raise GuestError(
                f"vcpu{vcpu.index}: unexpected exit {vcpu.exit_info()} at guest rip {rip:#x}"
            )

    def expect(self, vcpu: Vcpu, cmd: int) -> Ucall:
        uc = self.run_until_ucall(vcpu)
        if uc.cmd != cmd:
            raise GuestError(
                f"vcpu{vcpu.index}: expected {UCALL_NAMES[cmd]}, guest sent {uc.describe()}"
            )
        return uc

    def stop(self, index: int) -> None:
        """Stop vCPU ``index`` from any thread; its run_until_ucall raises GuestStopped."""
        with self._stop_lock:
            self._stop_requested.add(index)
        self.vcpus[index].kick()

    def _take_stop(self, index: int) -> bool:
        with self._stop_lock:
            if index in self._stop_requested:
                self._stop_requested.discard(index)
                return True
        return False

    def run_all(self, indices: Iterable[int] | None = None) -> dict[int, list[Ucall]]:
        """Run each vCPU on its own thread until DONE; collect its SYNCs."""
        from kvmharness.host.threads import VcpuThread

        idx = list(range(len(self.vcpus))) if indices is None else list(indices)
        results: dict[int, list[Ucall]] = {i: [] for i in idx}

        def body(i: int) -> None:
            while True:
                uc = self.run_until_ucall(self.vcpus[i])
                if uc.cmd == lib.UCALL_DONE:
                    return
                results[i].append(uc)

        threads = [VcpuThread(f"vcpu{i}") for i in idx]
        try:
            futures = [t.submit(body, i) for t, i in zip(threads, idx, strict=True)]
            for f in futures:
                f.result()
        finally:
            for t in threads:
                t.close()
        return results
