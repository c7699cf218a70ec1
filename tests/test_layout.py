"""The cffi declarations in cdefs/ against the system's kernel uapi headers.

cffi runs in ABI mode, so nothing checks at import time that ``cdefs/kvm.h``
and ``cdefs/userfaultfd.h`` describe the kernel's structs.  This module
generates a C program from the *parsed* cffi types (so a struct added to the
cdefs is checked without touching this file), compiles it once against
``<linux/kvm.h>`` and ``<linux/userfaultfd.h>``, and compares, for every struct:

* its ``sizeof``;
* the ``offsetof`` and ``sizeof`` of every named field, recursively into
  nested struct/union members (``kvm_run.io.port``, ``kvm_sregs.cs.base``,
  ``uffd_msg.arg.pagefault.address``) and into element 0 of fixed arrays of
  structs (``kvm_xcrs.xcrs[0].value``).  cffi flattens anonymous members
  into their parent, which is also how C names them (``kvm_run`` exit union:
  ``run.io``).  A flexible array member has its offset checked but no size;

and also every integer ``#define`` of those two cdefs files that the kernel
header defines too, and every ioctl number in ``kvmharness.ioctls``.

``test_layout_check_catches_moved_field`` proves the comparison is not
vacuous: it builds a second FFI from cdefs text with two fields swapped and
asserts the same function reports that struct and field.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi
import pytest

from kvmharness import ioctls
from kvmharness.ffi import cdefs_dir, ffi, lib

# The cdefs files that mirror a kernel header (guest_abi.h is the harness's
# own guest contract and libc.h is libc: neither has a kernel uapi header).
CHECKED_CDEFS = ("kvm.h", "userfaultfd.h")
KERNEL_HEADERS = ("linux/kvm.h", "linux/userfaultfd.h")
# Must be found in the kernel headers, so a broken include cannot turn every
# constant check into a silent skip.
REQUIRED_CONSTANTS = ("KVMIO", "KVM_API_VERSION", "KVM_EXIT_IO", "UFFDIO", "UFFD_API")

_STRUCT_RE = re.compile(r"^\s*(struct|union)\s+(\w+)\s*\{", re.MULTILINE)
_DEFINE_RE = re.compile(r"^\s*#\s*define\s+(\w+)\s+\S", re.MULTILINE)
_C_IDENT = re.compile(r"^[A-Za-z_]\w*$")

Path_ = tuple[str | int, ...]


# --------------------------------------------------------------------------
# the layout items: what to measure, from the cffi side


@dataclass(frozen=True)
class Item:
    """One number to compare: ``kind`` is 'size', 'offset' or 'fieldsize'."""

    kind: str
    tag: str  # "struct kvm_run"
    path: Path_ = ()

    @property
    def key(self) -> str:
        return f"{self.kind} {self.tag.replace(' ', ':')} {render_path(self.path) or '-'}"

    def c_expr(self) -> str:
        if self.kind == "size":
            return f"sizeof({self.tag})"
        if self.kind == "offset":
            return f"offsetof({self.tag}, {render_path(self.path)})"
        return f"sizeof((({self.tag} *)0)->{render_path(self.path)})"

    def cffi_value(self, ffi_obj: cffi.FFI) -> int:
        if self.kind == "size":
            return ffi_obj.sizeof(self.tag)
        if self.kind == "offset":
            return ffi_obj.offsetof(self.tag, *self.path)
        ctype = ffi_obj.typeof(self.tag)
        for step in self.path:
            ctype = ctype.item if isinstance(step, int) else dict(ctype.fields)[step].type
        return ffi_obj.sizeof(ctype)

    def describe(self) -> str:
        if self.kind == "size":
            return f"{self.tag}: sizeof"
        what = "offset" if self.kind == "offset" else "size"
        return f"{self.tag}: field {render_path(self.path)} {what}"


def render_path(path: Path_) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def cdefs_struct_tags(
    files: tuple[str, ...] = CHECKED_CDEFS, texts: dict[str, str] | None = None
) -> list[str]:
    """``struct NAME`` / ``union NAME`` for each top-level named type in the cdefs files."""
    tags: list[str] = []
    for name in files:
        text = texts[name] if texts else (cdefs_dir() / name).read_text()
        for kind, tag in _STRUCT_RE.findall(text):
            if f"{kind} {tag}" not in tags:
                tags.append(f"{kind} {tag}")
    return tags


def _walk_fields(ctype: Any, prefix: Path_) -> Iterator[tuple[Path_, Any]]:
    for name, fld in ctype.fields or ():
        if not name or not _C_IDENT.match(name):
            continue  # an unnamed member C's offsetof cannot name
        path = (*prefix, name)
        yield path, fld.type
        yield from _walk_nested(fld.type, path)


def _walk_nested(ctype: Any, path: Path_) -> Iterator[tuple[Path_, Any]]:
    if ctype.kind in ("struct", "union"):
        yield from _walk_fields(ctype, path)
    elif ctype.kind == "array" and ctype.length and ctype.item.kind in ("struct", "union"):
        yield (*path, 0), ctype.item
        yield from _walk_fields(ctype.item, (*path, 0))


def layout_items(ffi_obj: cffi.FFI, tags: list[str]) -> list[Item]:
    items: list[Item] = []
    for tag in tags:
        items.append(Item("size", tag))
        for path, ctype in _walk_fields(ffi_obj.typeof(tag), ()):
            items.append(Item("offset", tag, path))
            if not (ctype.kind == "array" and ctype.length is None):  # flexible array
                items.append(Item("fieldsize", tag, path))
    return items


def compare_layout(ffi_obj: cffi.FFI, tags: list[str], kernel: dict[str, int]) -> list[str]:
    """One line per struct size, field offset or field size that differs from the kernel's."""
    problems = []
    for item in layout_items(ffi_obj, tags):
        ours = item.cffi_value(ffi_obj)
        theirs = kernel.get(item.key)
        if theirs is None:
            problems.append(f"{item.describe()}: not measured in C ({item.c_expr()})")
        elif ours != theirs:
            problems.append(f"{item.describe()}: cdefs {ours}, kernel {theirs}")
    return problems


# --------------------------------------------------------------------------
# constants and ioctl numbers


def cdefs_constants() -> dict[str, int]:
    out: dict[str, int] = {}
    for name in CHECKED_CDEFS:
        for const in _DEFINE_RE.findall((cdefs_dir() / name).read_text()):
            value = getattr(lib, const)
            assert isinstance(value, int), f"{name}: #define {const} is not an integer"
            out[const] = value
    return out


def ioctl_numbers() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(ioctls).items()
        if name.startswith(("KVM_", "UFFDIO_")) and isinstance(value, int)
    }


# --------------------------------------------------------------------------
# the C side: one program, compiled and run once per module


def c_program(items: list[Item], constants: list[str], ioctl_names: list[str]) -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>"]
    lines += [f"#include <{h}>" for h in KERNEL_HEADERS]
    lines += ["", "int main(void)", "{"]
    for item in items:
        lines.append(
            f'    printf("%s %llu\\n", "{item.key}", (unsigned long long){item.c_expr()});'
        )
    for kind, names in (("const", constants), ("ioctl", ioctl_names)):
        for name in names:
            lines += [
                f"#ifdef {name}",
                f'    printf("{kind} {name} %lld\\n", (long long)({name}));',
                "#endif",
            ]
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


@dataclass
class KernelLayout:
    values: dict[str, int]
    source: Path

    def named(self, kind: str) -> dict[str, int]:
        prefix = kind + " "
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> KernelLayout:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: the layout check compiles against the kernel headers")
    if not Path("/usr/include/linux/kvm.h").is_file():
        pytest.skip(
            "no kernel uapi headers (/usr/include/linux/kvm.h): apt-get install linux-libc-dev"
        )
    tmp = tmp_path_factory.mktemp("layout")
    src, exe = tmp / "layout.c", tmp / "layout"
    items = layout_items(ffi, cdefs_struct_tags())
    src.write_text(c_program(items, sorted(cdefs_constants()), sorted(ioctl_numbers())))
    cc = subprocess.run(
        ["gcc", "-std=gnu11", "-Wall", "-o", str(exe), str(src)], capture_output=True, text=True
    )
    if cc.returncode:
        pytest.fail(
            f"the layout program ({src}) does not compile against the kernel headers; "
            f"a cdefs field the kernel does not have?\n{cc.stderr}"
        )
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    values: dict[str, int] = {}
    for line in out.splitlines():
        key, _, value = line.rpartition(" ")
        values[key] = int(value)
    return KernelLayout(values, src)


# --------------------------------------------------------------------------
# tests


def test_struct_layout_matches_kernel(kernel: KernelLayout) -> None:
    problems = compare_layout(ffi, cdefs_struct_tags(), kernel.values)
    assert not problems, "cdefs layout differs from the kernel headers:\n" + "\n".join(problems)


def test_every_cdefs_struct_and_nested_field_is_checked(kernel: KernelLayout) -> None:
    tags = cdefs_struct_tags()
    assert {"struct kvm_run", "struct kvm_regs", "struct uffd_msg"} <= set(tags)
    assert set(tags) == {t.replace(":", " ") for t in (k.split()[0] for k in kernel.named("size"))}
    offsets = {" ".join(k.split()[:2]) for k in kernel.named("offset")}
    for struct, path in [
        ("kvm_run", "io.port"),
        ("kvm_run", "mmio.phys_addr"),
        ("kvm_run", "s.padding"),
        ("kvm_sregs", "cs.base"),
        ("kvm_vcpu_events", "exception.error_code"),
        ("kvm_xcrs", "xcrs[0].value"),
        ("kvm_msrs", "entries"),
        ("uffd_msg", "arg.pagefault.address"),
        ("uffd_msg", "arg.pagefault.feat.ptid"),
    ]:
        assert f"struct:{struct} {path}" in offsets


def test_constants_match_kernel(kernel: KernelLayout) -> None:
    ours = cdefs_constants()
    theirs = kernel.named("const")
    missing = [n for n in REQUIRED_CONSTANTS if n not in theirs]
    assert not missing, f"kernel headers lack {missing}: wrong headers included?"
    wrong = [f"{n}: cdefs {ours[n]}, kernel {v}" for n, v in sorted(theirs.items()) if ours[n] != v]
    assert not wrong, "cdefs #define values differ from the kernel headers:\n" + "\n".join(wrong)


def test_ioctl_numbers_match_kernel(kernel: KernelLayout) -> None:
    ours = ioctl_numbers()
    theirs = kernel.named("ioctl")
    assert "KVM_RUN" in ours and "UFFDIO_COPY" in ours
    problems = [f"{n}: not defined by the kernel headers" for n in sorted(ours) if n not in theirs]
    problems += [
        f"{n}: kvmharness {ours[n]:#x}, kernel {theirs[n] & 0xFFFFFFFF:#x}"
        for n in sorted(theirs)
        if ours[n] != theirs[n] & 0xFFFFFFFF
    ]
    assert not problems, "ioctl numbers differ from the kernel headers:\n" + "\n".join(problems)


# The proof that the comparison catches a moved field: the same cdefs text
# with two fields swapped, loaded into a second FFI.
MUTATIONS = {
    "kvm_regs rax<->rbx": (
        "kvm.h",
        "__u64 rax, rbx,",
        "__u64 rbx, rax,",
        "struct kvm_regs: field rax offset: cdefs 8, kernel 0",
    ),
    "kvm_run io direction<->size": (
        "kvm.h",
        "__u8 direction;\n            __u8 size;",
        "__u8 size;\n            __u8 direction;",
        "struct kvm_run: field io.direction offset: cdefs 33, kernel 32",
    ),
    "uffd_msg flags<->address": (
        "userfaultfd.h",
        "uint64_t flags;\n            uint64_t address;",
        "uint64_t address;\n            uint64_t flags;",
        "struct uffd_msg: field arg.pagefault.address offset: cdefs 8, kernel 16",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_layout_check_catches_moved_field(kernel: KernelLayout, mutation: str) -> None:
    target, old, new, expected = MUTATIONS[mutation]
    texts = {name: (cdefs_dir() / name).read_text() for name in CHECKED_CDEFS}
    assert texts[target].count(old) == 1, f"mutation {mutation!r} no longer applies to cdefs"
    texts[target] = texts[target].replace(old, new)
    moved = cffi.FFI()
    for name in CHECKED_CDEFS:
        moved.cdef(texts[name])  # loaded exactly as kvmharness/ffi.py loads the real ones
    tags = cdefs_struct_tags(texts=texts)
    # Only what the swap adds counts, so the proof holds whatever the real
    # cdefs' own state is (test_struct_layout_matches_kernel judges that).
    baseline = set(compare_layout(ffi, tags, kernel.values))
    problems = [p for p in compare_layout(moved, tags, kernel.values) if p not in baseline]
    assert expected in problems, "\n".join(problems)
    struct = expected.split(":")[0]
    assert all(p.startswith(struct + ":") for p in problems), problems
