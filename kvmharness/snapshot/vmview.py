"""The human view of the VM state in a snapshot file: per vCPU its registers,
control registers, segments and MSRs (by name where known), decoded from
the file's ``vcpuN/regs`` and ``vcpuN/sregs`` sections and its ``meta``.

Pure reading: no KVM, no cffi.  The struct layouts are the x86 KVM ABI
(``struct kvm_regs``, ``struct kvm_sregs`` in ``cdefs/kvm.h``); a section of
another size is shown as such, never guessed at.
"""

from __future__ import annotations

import struct
from typing import Any

from tabulate import tabulate

from kvmharness.snapshot.fileformat import Manifest

#: struct kvm_regs: 18 u64
REGS = struct.Struct("<18Q")
REG_NAMES = "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()
#: struct kvm_segment: base u64, limit u32, selector u16, type present dpl db s l g avl
#: unusable padding (u8 each)
SEGMENT = struct.Struct("<QIH10B")
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
#: struct kvm_dtable: base u64, limit u16, padding u16[3]
DTABLE = struct.Struct("<QH3H")
#: after the segments and tables: cr0 cr2 cr3 cr4 cr8 efer apic_base, interrupt_bitmap[4]
SREGS_TAIL = struct.Struct("<7Q4Q")
SREGS_SIZE = len(SEGMENT_NAMES) * SEGMENT.size + 2 * DTABLE.size + SREGS_TAIL.size

#: MP states (KVM_MP_STATE_*)
MP_STATES = {
    0: "runnable",
    1: "uninitialized",
    2: "init received",
    3: "halted",
    4: "sipi received",
    5: "stopped",
    6: "check stop",
    7: "operating",
    8: "load",
    9: "ap reset hold",
    10: "suspended",
}

#: Names of the MSRs KVM's index list commonly holds (others show as their index).
MSR_NAMES = {
    0x10: "IA32_TSC",
    0x11: "KVM_WALL_CLOCK (old)",
    0x12: "KVM_SYSTEM_TIME (old)",
    0x1B: "IA32_APIC_BASE",
    0x3A: "IA32_FEATURE_CONTROL",
    0x3B: "IA32_TSC_ADJUST",
    0x48: "IA32_SPEC_CTRL",
    0x10A: "IA32_ARCH_CAPABILITIES",
    0x174: "IA32_SYSENTER_CS",
    0x175: "IA32_SYSENTER_ESP",
    0x176: "IA32_SYSENTER_EIP",
    0x1A0: "IA32_MISC_ENABLE",
    0x1D9: "IA32_DEBUGCTL",
    0x1DB: "LASTBRANCHFROMIP",
    0x1DC: "LASTBRANCHTOIP",
    0x1DD: "LASTINTFROMIP",
    0x1DE: "LASTINTTOIP",
    0x277: "IA32_PAT",
    0x6E0: "IA32_TSC_DEADLINE",
    0xC0000080: "EFER",
    0xC0000081: "STAR",
    0xC0000082: "LSTAR",
    0xC0000083: "CSTAR",
    0xC0000084: "SYSCALL_MASK",
    0xC0000100: "FS_BASE",
    0xC0000101: "GS_BASE",
    0xC0000102: "KERNEL_GS_BASE",
    0xC0000103: "TSC_AUX",
    0xC0010117: "VM_HSAVE_PA (AMD)",
    0x4B564D00: "KVM_WALL_CLOCK_NEW",
    0x4B564D01: "KVM_SYSTEM_TIME_NEW (kvmclock)",
    0x4B564D02: "KVM_ASYNC_PF_EN",
    0x4B564D03: "KVM_STEAL_TIME",
    0x4B564D04: "KVM_PV_EOI_EN",
    0x4B564D05: "KVM_POLL_CONTROL",
    0x4B564D06: "KVM_ASYNC_PF_INT",
    0x4B564D07: "KVM_ASYNC_PF_ACK",
}
#: MSRs holding a guest-physical address with bit 0 "enabled"
GPA_ENABLE_MSRS = {0x12, 0x4B564D01, 0x4B564D02, 0x4B564D03, 0x4B564D04}


def is_vm_state(meta: dict[str, Any]) -> bool:
    from kvmharness.snapshot.state import STATE_KIND

    return meta.get("kind") == STATE_KIND and isinstance(meta.get("vcpus"), list)


def _section(manifest: Manifest, name: str) -> bytes | None:
    try:
        info = manifest.section(name)
    except KeyError:
        return None
    with open(manifest.name, "rb") as f:
        f.seek(info.offset)  # absolute in the file
        return f.read(info.length)


def _hex(x: int) -> str:
    return f"{x:#018x}"


def regs_rows(data: bytes) -> list[list[str]]:
    """The 18 general registers, four to a row."""
    values = REGS.unpack(data)
    cells = [f"{n} {_hex(v)}" for n, v in zip(REG_NAMES, values, strict=True)]
    return [cells[i : i + 4] for i in range(0, len(cells), 4)]


def sregs_lines(data: bytes) -> list[str]:
    """Control registers, EFER, APIC base, descriptor tables and segments."""
    off = 0
    segs = []
    for name in SEGMENT_NAMES:
        base, limit, sel, typ, present, dpl, db, s, l_, g, avl, unusable, _ = SEGMENT.unpack_from(
            data, off
        )
        off += SEGMENT.size
        flags = "".join(
            c for c, on in (("P", present), ("S", s), ("L", l_), ("D", db), ("G", g)) if on
        )
        segs.append(
            f"{name} sel {sel:#06x} base {base:#x} limit {limit:#x} type {typ} dpl {dpl}"
            + (f" {flags}" if flags else "")
            + (" unusable" if unusable else "")
        )
    tables = []
    for name in ("gdt", "idt"):
        base, limit, *_ = DTABLE.unpack_from(data, off)
        off += DTABLE.size
        tables.append(f"{name} base {base:#x} limit {limit:#x}")
    cr0, cr2, cr3, cr4, cr8, efer, apic, *_ = SREGS_TAIL.unpack_from(data, off)
    return [
        f"cr0 {cr0:#x}  cr2 {cr2:#x}  cr3 {cr3:#x}  cr4 {cr4:#x}  cr8 {cr8:#x}",
        f"efer {efer:#x}  apic_base {apic:#x}  " + "  ".join(tables),
        *segs,
    ]


def msr_rows(msrs: dict[str, Any]) -> list[list[str]]:
    """Every MSR the file holds, by index: index, name, value, and what the
    value means for the paravirtual ones (area address, enabled)."""
    rows = []
    items = []
    for key, value in msrs.items():
        try:
            items.append((int(key, 0), int(value)))
        except (TypeError, ValueError):
            rows.append([str(key), "?", str(value)[:40], "not an integer"])
    for index, value in sorted(items):
        what = ""
        if index in GPA_ENABLE_MSRS and value:
            what = f"area at gpa {value & ~0x3F:#x}, " + ("enabled" if value & 1 else "disabled")
        elif index in GPA_ENABLE_MSRS:
            what = "off"
        rows.append([f"{index:#x}", MSR_NAMES.get(index, ""), f"{value:#x}", what])
    return rows


def format_vcpus(manifest: Manifest) -> str:
    """Every vCPU of a VM-state snapshot as text (empty if it holds none)."""
    meta = manifest.meta
    if not is_vm_state(meta):
        return ""
    out = []
    for v in meta["vcpus"]:
        if not isinstance(v, dict):
            continue
        i = v.get("index")
        mp = v.get("mp_state")
        cpuid = v.get("cpuid")
        out.append(
            f"vCPU {i}: mp_state {mp} ({MP_STATES.get(mp, '?')}), tsc_khz {v.get('tsc_khz')}, "
            f"{len(cpuid) if isinstance(cpuid, list) else 0} CPUID entries"
        )
        regs = _section(manifest, f"vcpu{i}/regs")
        if regs is None:
            out.append("  registers: (no regs section)")
        elif len(regs) != REGS.size:
            out.append(f"  registers: regs section of {len(regs)} bytes, not {REGS.size}")
        else:
            table = tabulate(regs_rows(regs), tablefmt="plain", disable_numparse=True)
            out += ["  " + line for line in table.splitlines()]
        sregs = _section(manifest, f"vcpu{i}/sregs")
        if sregs is None:
            out.append("  system registers: (no sregs section)")
        elif len(sregs) != SREGS_SIZE:
            out.append(f"  system registers: sregs section of {len(sregs)} bytes, not {SREGS_SIZE}")
        else:
            out += ["  " + line for line in sregs_lines(sregs)]
        msrs = v.get("msrs")
        if isinstance(msrs, dict) and msrs:
            out.append(f"  MSRs ({len(msrs)}):")
            table = tabulate(
                msr_rows(msrs),
                headers=["index", "name", "value", ""],
                tablefmt="simple",
                disable_numparse=True,
            )
            out += ["    " + line for line in table.splitlines()]
        else:
            out.append("  MSRs: none recorded")
        out.append("")
    return "\n".join(out).rstrip()
