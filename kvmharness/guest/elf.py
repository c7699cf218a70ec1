"""A small reader for the static x86-64 ELF executables the guest build makes.

Only what loading needs: PT_LOAD segments and the symbol table.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


class ElfError(Exception):
    pass


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int


@dataclass(frozen=True)
class ElfImage:
    entry: int
    segments: list[Segment]
    symbols: dict[str, Symbol]

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


def parse_elf(blob: bytes, name: str = "<elf>") -> ElfImage:
    """Parse ``blob``; anything malformed or truncated raises :class:`ElfError`."""
    try:
        return _parse(blob, name)
    except (struct.error, IndexError, ValueError, ArithmeticError) as exc:
        raise ElfError(f"{name}: truncated or corrupt ELF ({exc})") from None


def _parse(blob: bytes, name: str) -> ElfImage:
    if blob[:4] != b"\x7fELF" or len(blob) < 64:
        raise ElfError(f"{name}: not an ELF file")
    if blob[4] != 2 or blob[5] != 1:
        raise ElfError(f"{name}: not a little-endian 64-bit ELF")
    (
        e_type,
        e_machine,
        _ver,
        e_entry,
        e_phoff,
        e_shoff,
        _flags,
        _ehsize,
        e_phentsize,
        e_phnum,
        e_shentsize,
        e_shnum,
        _shstrndx,
    ) = struct.unpack_from("<HHIQQQIHHHHHH", blob, 16)
    if e_machine != 62:
        raise ElfError(f"{name}: not x86-64 (e_machine {e_machine})")
    segments = []
    for i in range(e_phnum):
        p_type, _pf, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", blob, e_phoff + i * e_phentsize
        )
        if p_type == 1 and p_memsz:  # PT_LOAD
            if p_offset + p_filesz > len(blob) or p_filesz > p_memsz:
                raise ElfError(
                    f"{name}: truncated or corrupt ELF (segment {i} at bytes "
                    f"{p_offset}..{p_offset + p_filesz}, file is {len(blob)})"
                )
            segments.append(Segment(p_paddr, blob[p_offset : p_offset + p_filesz], p_memsz))
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", blob, e_shoff + i * e_shentsize) for i in range(e_shnum)
    ]
    symbols: dict[str, Symbol] = {}
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        _n, _t, _f, _a, off, size, link, _info, _al, entsize = sh
        strtab_off = sections[link][4]
        for j in range(size // entsize):
            st_name, st_info, _other, _shndx, st_value, st_size = struct.unpack_from(
                "<IBBHQQ", blob, off + j * entsize
            )
            if not st_name:
                continue
            end = blob.index(b"\0", strtab_off + st_name)
            sym_name = blob[strtab_off + st_name : end].decode()
            symbols[sym_name] = Symbol(sym_name, st_value, st_size)
    if not segments:
        raise ElfError(f"{name}: no loadable segment")
    return ElfImage(e_entry, segments, symbols)
