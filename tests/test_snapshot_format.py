"""The snapshot container: round trips, every kind of damage, atomic writes, inspect."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmharness import cli
from kvmharness.snapshot import (
    FORMAT_MAGIC,
    FORMAT_VERSION,
    Snapshot,
    SnapshotFormatError,
    dumps,
    fileformat,
    loads,
    read_manifest,
    read_snapshot,
    verify_snapshot,
    write_snapshot,
)

REPO = Path(__file__).resolve().parent.parent


class Regs(ctypes.Structure):
    _fields_ = [("rip", ctypes.c_uint64), ("rflags", ctypes.c_uint64)]


def _pattern(size: int, seed: int) -> bytes:
    """Deterministic, non-repeating-looking bytes (flipping any one of them matters)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


META: dict[str, Any] = {
    "created_unix": 1795270000.25,
    "kvmharness_version": "0.1.0",
    "kernel_release": "6.8.0-kvmharness",
    "host": {"cpu_model": "Test CPU @ 2.0GHz", "tsc_khz": 2000000, "constant_tsc": True},
    "vcpus": [
        {
            "id": 0,
            "regs": {"rip": 0xFFF0, "rflags": 2},
            "msrs": [[0x10, 123456789], [0x4B564D01, 1]],
        },
        {"id": 1, "regs": {"rip": 0x1000, "rflags": 0x202}, "msrs": []},
    ],
    "clock": {"kvmclock_ns": 123456789012, "flags": 0, "realtime": None},
    "note": "snapshot \u00e9\u00e8 \u2603",
    "ratio": -0.5,
    "empty_dict": {},
    "empty_list": [],
}

SECTIONS: dict[str, bytes] = {
    "mem/slot0": _pattern(64 * 1024, 0),
    "vcpu0/regs": _pattern(144, 1),
    "vcpu0/empty": b"",
    "vcpu0/xsave": _pattern(4096, 2),
    "vcpu1/regs": _pattern(144, 3),
}

BLOB = dumps(META, SECTIONS)
MANIFEST = fileformat.loads_manifest(BLOB)
DATA_START = MANIFEST.data_start
H_LEN = MANIFEST.header_length

SMALL_BLOB = dumps(
    {"vcpus": [{"id": 0}], "created_unix": 1}, {"a": b"abc", "e": b"", "mem/slot0": _pattern(64, 9)}
)


# --------------------------------------------------------------------------- helpers


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header document, payload bytes) of a valid file."""
    (h_len,) = struct.unpack_from("<Q", blob, 16)
    header = json.loads(blob[56 : 56 + h_len])
    return header, blob[56 + h_len :]


def build(
    header: dict[str, Any] | bytes,
    payload: bytes,
    *,
    version: int = FORMAT_VERSION,
    flags: int = 0,
) -> bytes:
    """A file with a *correct* header checksum around an arbitrary header: the reader must
    still reject bad structure, not just rely on the checksum."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    preamble = struct.pack("<8sIIQ", FORMAT_MAGIC, version, flags, len(raw))
    return preamble + hashlib.sha256(preamble + raw).digest() + raw + payload


def recraft(edit: Callable[[dict[str, Any]], object]) -> Callable[[bytes], bytes]:
    """Edit the header in place (the return value is ignored), re-checksum it."""

    def mutate(blob: bytes) -> bytes:
        header, payload = split(blob)
        edit(header)
        return build(header, payload)

    return mutate


def flip(offset: int, mask: int = 0x01) -> Callable[[bytes], bytes]:
    def mutate(blob: bytes) -> bytes:
        data = bytearray(blob)
        data[offset] ^= mask
        return bytes(data)

    return mutate


def set_u32(offset: int, value: int) -> Callable[[bytes], bytes]:
    return lambda blob: blob[:offset] + struct.pack("<I", value) + blob[offset + 4 :]


def set_u64(offset: int, value: int) -> Callable[[bytes], bytes]:
    return lambda blob: blob[:offset] + struct.pack("<Q", value) + blob[offset + 8 :]


def truncate_at(offset: int) -> Callable[[bytes], bytes]:
    return lambda blob: blob[:offset]


def _section_edit(index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(header: dict[str, Any]) -> None:
        header["sections"][index].update(changes)

    return edit


def _overlap(header: dict[str, Any]) -> None:
    header["sections"][1]["offset"] -= 10


def _gap(header: dict[str, Any]) -> None:
    for entry in header["sections"][1:]:
        entry["offset"] += 1
    header["sections"][-1]["length"] -= 1


def _duplicate(header: dict[str, Any]) -> None:
    header["sections"][1]["name"] = header["sections"][0]["name"]


def _sections(blob: bytes) -> Iterator[fileformat.SectionInfo]:
    return iter(fileformat.loads_manifest(blob).sections)


NONEMPTY = [s for s in MANIFEST.sections if s.length]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(56)

# (id, mutation, substring expected in the message)
MUTATIONS: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("empty", lambda b: b"", "empty file"),
    ("magic-only", lambda b: b[:8], "truncated"),
    ("magic-prefix", lambda b: b[:3], "truncated"),
    ("elf", lambda b: ELF, "looks like an ELF binary"),
    ("elf-header-on-snapshot", lambda b: ELF[:8] + b[8:], "not a kvmharness snapshot"),
    ("png", lambda b: PNG, "looks like a PNG image"),
    ("text", lambda b: b"hello, world\n", "foreign file"),
    ("one-zero-byte", lambda b: b"\x00", "foreign file"),
    ("version-0", set_u32(8, 0), "format version 0, this kvmharness reads 1"),
    ("version-2", set_u32(8, 2), "format version 2, this kvmharness reads 1"),
    ("version-7", set_u32(8, 7), "format version 7, this kvmharness reads 1"),
    ("version-huge", set_u32(8, 0xFFFFFFFF), "format version 4294967295"),
    ("flags", set_u32(12, 1), "unknown flags 0x1"),
    ("header-length-0", set_u64(16, 0), "header length 0"),
    ("header-length-huge", set_u64(16, 2**64 - 1), "header length 18446744073709551615"),
    ("header-length-past-eof", set_u64(16, len(BLOB)), "truncated: preamble says the header"),
    ("header-length-minus-1", set_u64(16, H_LEN - 1), "header checksum mismatch"),
    ("header-length-plus-1", set_u64(16, H_LEN + 1), "header checksum mismatch"),
    ("flip-header-checksum", flip(24), "header checksum mismatch"),
    ("flip-header-first", flip(56), "header checksum mismatch"),
    ("flip-header-middle", flip(56 + H_LEN // 2, 0x80), "header checksum mismatch"),
    ("flip-header-last", flip(DATA_START - 1), "header checksum mismatch"),
    *[
        (f"flip-section-{s.name}-{where}", flip(pos), f"section {s.name!r} checksum mismatch")
        for s in NONEMPTY
        for where, pos in (
            ("first", s.offset),
            ("middle", s.offset + s.length // 2),
            ("last", s.end - 1),
        )
    ],
    ("trailing-byte", lambda b: b + b"\x00", "1 byte of trailing garbage"),
    ("trailing-page", lambda b: b + bytes(4096), "4096 bytes of trailing garbage"),
    ("appended-snapshot", lambda b: b + b, "trailing garbage"),
    ("truncate-in-version", truncate_at(10), "truncated"),
    ("truncate-in-preamble", truncate_at(20), "truncated: file is 20 bytes"),
    ("truncate-in-checksum", truncate_at(40), "truncated"),
    ("truncate-after-preamble", truncate_at(56), "truncated: preamble says the header"),
    ("truncate-in-header", truncate_at(56 + H_LEN // 2), "truncated: preamble says the header"),
    ("truncate-at-payload", truncate_at(DATA_START), "file ends in section 'mem/slot0' at byte 0"),
    (
        "truncate-mid-payload",
        truncate_at(DATA_START + 4096),
        "truncated: header says 5 sections, file ends in section 'mem/slot0' at byte 4096 of 65536",
    ),
    (
        "truncate-one-short",
        truncate_at(len(BLOB) - 1),
        "in section 'vcpu1/regs' at byte 143 of 144",
    ),
    ("crafted-huge-length", recraft(_section_edit(-1, length=2**62)), "truncated: header says"),
    ("crafted-huge-length-first", recraft(_section_edit(0, length=2**62)), "overlaps"),
    ("crafted-huge-offset", recraft(_section_edit(0, offset=2**70)), "covered by no section"),
    ("crafted-negative-length", recraft(_section_edit(0, length=-1)), "bad length"),
    ("crafted-float-length", recraft(_section_edit(0, length=65536.0)), "bad length"),
    ("crafted-bool-offset", recraft(_section_edit(0, offset=False)), "bad offset"),
    ("crafted-string-offset", recraft(_section_edit(0, offset="0")), "bad offset"),
    ("crafted-missing-sha", recraft(lambda h: h["sections"][0].pop("sha256")), "bad sha256"),
    ("crafted-short-sha", recraft(_section_edit(0, sha256="ab")), "bad sha256"),
    (
        "crafted-upper-sha",
        recraft(lambda h: h["sections"][0].update(sha256=h["sections"][0]["sha256"].upper())),
        "bad sha256",
    ),
    ("crafted-wrong-sha", recraft(_section_edit(1, sha256="0" * 64)), "'vcpu0/regs' checksum"),
    ("crafted-overlap", recraft(_overlap), "overlaps the previous section"),
    ("crafted-gap", recraft(_gap), "covered by no section"),
    ("crafted-duplicate-name", recraft(_duplicate), "duplicate section name 'mem/slot0'"),
    ("crafted-empty-name", recraft(_section_edit(0, name="")), "bad name ''"),
    ("crafted-control-name", recraft(_section_edit(0, name="a\x1b[2J")), "bad name"),
    ("crafted-int-name", recraft(_section_edit(0, name=7)), "bad name 7"),
    ("crafted-entry-not-object", recraft(lambda h: h["sections"].append([1, 2])), "not an object"),
    ("crafted-sections-not-list", recraft(lambda h: h.update(sections={})), "no 'sections' list"),
    ("crafted-no-meta", recraft(lambda h: h.pop("meta")), "no 'meta' object"),
    ("crafted-meta-list", recraft(lambda h: h.update(meta=[1])), "no 'meta' object"),
    ("crafted-writer-int", recraft(lambda h: h.update(writer=5)), "'writer' is not a string"),
    (
        "crafted-header-array",
        lambda b: build(json.dumps([split(b)[0]]).encode(), split(b)[1]),
        "a JSON list, not an object",
    ),
    ("crafted-no-sections-for-payload", recraft(lambda h: h.update(sections=[])), "trailing"),
    ("crafted-not-json", lambda b: build(b"this is not json", split(b)[1]), "not valid JSON"),
    ("crafted-not-utf8", lambda b: build(b'{"meta": "\xff\xfe"}', split(b)[1]), "not UTF-8"),
    ("crafted-nan", lambda b: build(b'{"meta": {"x": NaN}, "sections": []}', b""), "NaN"),
    (
        "crafted-dup-key",
        lambda b: build(b'{"meta": {}, "meta": {}, "sections": []}', b""),
        "duplicate key 'meta'",
    ),
    ("crafted-deep", lambda b: build(b"[" * 100_000 + b"]" * 100_000, b""), "corrupt header"),
    (
        "crafted-huge-int",
        lambda b: build(b'{"meta": {"x": ' + b"9" * 5000 + b"}}", b""),
        "not valid JSON",
    ),
]


def _check_error(exc: SnapshotFormatError, name: str, expected: str) -> None:
    message = str(exc)
    assert message.startswith(f"{name}: "), message
    assert expected in message, message
    assert exc.path == name
    assert exc.problem in message


# --------------------------------------------------------------------------- round trips


def test_sample_is_valid() -> None:
    snap = loads(BLOB)
    assert snap == Snapshot(META, SECTIONS)
    assert verify_snapshot  # exported


def test_round_trip_in_memory_preserves_meta_and_order() -> None:
    snap = loads(dumps(META, SECTIONS))
    assert snap.meta == META
    assert json.dumps(snap.meta) == json.dumps(META)  # same key order, same types
    assert list(snap.sections) == list(SECTIONS)
    assert snap.sections == SECTIONS
    assert all(type(v) is bytes for v in snap.sections.values())


def test_round_trip_file_with_large_and_odd_buffers(tmp_path: Path) -> None:
    big = bytearray(_pattern(5 * 1024 * 1024 + 3, 42))  # multi-MiB, not chunk-aligned
    regs = Regs(0xFFFFFFF0, 0x2)
    sections: dict[str, Any] = {
        "empty-first": b"",
        "mem/slot0": big,
        "mem/slot1": memoryview(big)[1000:2000],
        "vcpu0/regs": regs,
        "empty-last": bytearray(),
    }
    path = tmp_path / "snap.bin"
    written = write_snapshot(path, META, sections)
    assert written == path.stat().st_size

    snap = read_snapshot(path)
    assert snap.meta == META
    assert list(snap.sections) == list(sections)
    assert snap.sections["mem/slot0"] == bytes(big)
    assert snap.sections["mem/slot1"] == bytes(big[1000:2000])
    assert snap.sections["vcpu0/regs"] == bytes(regs)
    assert snap.sections["empty-first"] == snap.sections["empty-last"] == b""
    assert read_snapshot(path, verify=False) == snap
    assert loads(path.read_bytes()) == snap
    assert dumps(META, sections) == path.read_bytes()

    sections["mem/slot1"].release()
    big.append(0)  # the writer released its own views of the caller's buffer

    manifest = read_manifest(str(path))
    assert [s.name for s in manifest.sections] == list(sections)
    assert manifest.section("mem/slot0").length == len(big) - 1
    assert manifest.section("mem/slot0").sha256 == hashlib.sha256(big[:-1]).hexdigest()
    assert manifest.meta == META
    assert manifest.version == FORMAT_VERSION
    assert manifest.file_size == written
    assert verify_snapshot(path) == manifest


def test_no_sections_and_empty_meta() -> None:
    assert loads(dumps({}, {})) == Snapshot({}, {})


def test_writer_is_recorded() -> None:
    assert MANIFEST.writer is not None and MANIFEST.writer.startswith("kvmharness ")


@pytest.mark.parametrize(
    "meta, error",
    [
        ({"t": (1, 2)}, TypeError),
        ({1: "int key"}, TypeError),
        ({"x": {"nested": {2: 3}}}, TypeError),
        ({"f": float("nan")}, ValueError),
        ({"f": float("inf")}, ValueError),
        ({"b": b"bytes"}, TypeError),
        ({"s": {1, 2}}, TypeError),
    ],
)
def test_meta_that_would_not_read_back_equal_is_refused(
    tmp_path: Path, meta: dict[Any, Any], error: type[Exception]
) -> None:
    path = tmp_path / "snap.bin"
    with pytest.raises(error):
        write_snapshot(path, meta, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", "x" * 256, "bad\nname", "\x00"])
def test_bad_section_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        dumps({}, {name: b"x"})


def test_non_buffer_section_is_refused() -> None:
    with pytest.raises(TypeError):
        dumps({}, {"x": "a str is not bytes"})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- damage


@pytest.mark.parametrize("case", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_damaged_file_is_rejected_cleanly(
    case: tuple[str, Callable[[bytes], bytes], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _id, mutate, expected = case
    bad = mutate(BLOB)
    assert bad != BLOB

    with pytest.raises(SnapshotFormatError) as info:
        loads(bad, "snap.bin")
    _check_error(info.value, "snap.bin", expected)

    path = tmp_path / "snap.bin"
    path.write_bytes(bad)
    with pytest.raises(SnapshotFormatError) as info:
        read_snapshot(path)
    _check_error(info.value, str(path), expected)
    with pytest.raises(SnapshotFormatError):
        verify_snapshot(path)

    capsys.readouterr()
    assert cli.main(["snapshot", "inspect", str(path)]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"kvmharness snapshot inspect: error: {path}: "), err
    assert expected in err
    assert "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("section", NONEMPTY, ids=[s.name for s in NONEMPTY])
def test_payload_damage_is_only_seen_when_verifying(
    section: fileformat.SectionInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = flip(section.offset + section.length // 3, 0xFF)(BLOB)
    snap = loads(bad, verify=False)
    assert snap.sections[section.name] != SECTIONS[section.name]
    assert fileformat.loads_manifest(bad).meta == META

    path = tmp_path / "snap.bin"
    path.write_bytes(bad)
    assert read_manifest(path).sections == MANIFEST.sections
    assert cli.main(["snapshot", "inspect", "--no-verify", str(path)]) == cli.EXIT_OK
    assert cli.main(["snapshot", "inspect", str(path)]) == cli.EXIT_USAGE
    assert f"section {section.name!r} checksum mismatch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "offset",
    sorted(
        {0, 1, 7, 8, 9, 12, 16, 23, 24, 55, 56, 57, DATA_START - 1, DATA_START}
        | {s.offset + d for s in NONEMPTY for d in (1, s.length // 2, s.length - 1)}
        | {len(BLOB) - 1}
    ),
)
def test_truncation_at_many_offsets(offset: int, tmp_path: Path) -> None:
    with pytest.raises(SnapshotFormatError, match=r"snap\.bin: (empty file|truncated)"):
        loads(BLOB[:offset], "snap.bin")
    path = tmp_path / "snap.bin"
    path.write_bytes(BLOB[:offset])
    with pytest.raises(SnapshotFormatError, match="empty file|truncated"):
        read_manifest(path)


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "snap.bin"
    for reader in (read_snapshot, read_manifest, verify_snapshot):
        with pytest.raises(SnapshotFormatError, match=r"snap\.bin: no such file$"):
            reader(path)
    assert cli.main(["snapshot", "inspect", str(path)]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == f"kvmharness snapshot inspect: error: {path}: no such file\n"


def test_directory_is_not_a_snapshot(tmp_path: Path) -> None:
    with pytest.raises(SnapshotFormatError, match="directory"):
        read_snapshot(tmp_path)


@pytest.fixture()
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO nobody writes to. After 5 s, readers stuck in open() are released (with end
    of file), so a regression fails on the assertions instead of hanging the test run."""
    path = tmp_path / "snap.fifo"
    os.mkfifo(path)
    done = threading.Event()

    def release() -> None:
        done.wait(5)
        while not done.wait(0.2):
            try:  # fails (ENXIO) unless a reader is waiting
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    threading.Thread(target=release, daemon=True).start()
    yield path
    done.set()


def _refused_quickly(path: Path, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    for reader in (read_snapshot, read_manifest, verify_snapshot):
        start = time.monotonic()
        with pytest.raises(SnapshotFormatError) as info:
            reader(path)
        assert time.monotonic() - start < 4, f"{reader.__name__} blocked"
        assert str(info.value) == f"{path}: {problem}"
    start = time.monotonic()
    assert cli.main(["snapshot", "inspect", str(path)]) == cli.EXIT_USAGE
    assert time.monotonic() - start < 4
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"kvmharness snapshot inspect: error: {path}: {problem}\n"


def test_fifo_is_refused_without_blocking(fifo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused_quickly(fifo, "not a regular file (a FIFO)", capsys)


def test_fifo_swapped_in_after_the_check_does_not_block(
    fifo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the path was a regular file when checked, a FIFO when opened."""
    regular, real_stat = os.stat(__file__), os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return regular if os.fspath(path) == str(fifo) else real_stat(path, *args, **kwargs)

    monkeypatch.setattr(fileformat.os, "stat", stat)
    _refused_quickly(fifo, "not a regular file (a FIFO)", capsys)


def test_character_device_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    _refused_quickly(Path("/dev/zero"), "not a regular file (a character device)", capsys)


def test_error_is_not_an_oserror() -> None:
    # The CLI (and callers) handle one exception type for every bad input.
    assert not issubclass(SnapshotFormatError, OSError | ValueError | KeyError)


# --------------------------------------------------------------------------- property tests


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(SMALL_BLOB) - 1))
def test_any_truncation_is_an_error(offset: int) -> None:
    with pytest.raises(SnapshotFormatError):
        loads(SMALL_BLOB[:offset])


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=len(SMALL_BLOB) - 1),
    st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_is_an_error(offset: int, mask: int) -> None:
    with pytest.raises(SnapshotFormatError):
        loads(flip(offset, mask)(SMALL_BLOB))


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=len(SMALL_BLOB)), st.binary(min_size=1, max_size=64))
def test_any_insertion_is_an_error(offset: int, extra: bytes) -> None:
    with pytest.raises(SnapshotFormatError):
        loads(SMALL_BLOB[:offset] + extra + SMALL_BLOB[offset:])


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_magic_only_raise_format_errors(tail: bytes) -> None:
    with pytest.raises(SnapshotFormatError):
        loads(FORMAT_MAGIC + struct.pack("<I", FORMAT_VERSION) + tail)


def json_values(finite: bool) -> st.SearchStrategy[Any]:
    floats = st.floats(allow_nan=False, allow_infinity=not finite)
    return st.recursive(
        st.none() | st.booleans() | st.integers() | floats | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )


JSON = json_values(finite=False)  # Infinity in a header is not JSON: must be rejected
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=4) | JSON,
        "offset": st.integers(min_value=-2, max_value=70) | JSON,
        "length": st.integers(min_value=-2, max_value=70) | JSON,
        "sha256": st.sampled_from(["0" * 64, hashlib.sha256(b"").hexdigest(), "xyz"]) | JSON,
    },
)
HEADER = (
    st.fixed_dictionaries(
        {},
        optional={
            "meta": st.dictionaries(st.text(max_size=8), JSON, max_size=4) | JSON,
            "sections": st.lists(ENTRY, max_size=4) | JSON,
            "writer": st.text(max_size=8) | JSON,
        },
    )
    | JSON
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(HEADER, st.binary(max_size=70))
def test_checksummed_but_arbitrary_headers_never_leak_other_exceptions(
    header: Any, payload: bytes
) -> None:
    blob = build(json.dumps(header).encode(), payload)
    try:
        snap = loads(blob)
    except SnapshotFormatError:
        return
    # Accepted: then it must be exactly what the header describes.
    assert isinstance(header, dict) and snap.meta == header["meta"]
    assert b"".join(snap.sections.values()) == payload
    for entry in header["sections"]:
        assert hashlib.sha256(snap.sections[entry["name"]]).hexdigest() == entry["sha256"]


json_meta = st.dictionaries(st.text(max_size=10), json_values(finite=True), max_size=6)


@settings(max_examples=100)
@given(
    json_meta,
    st.dictionaries(
        st.text(min_size=1, max_size=10).filter(str.isprintable),
        st.binary(max_size=100),
        max_size=5,
    ),
)
def test_round_trip_property(meta: dict[str, Any], sections: dict[str, bytes]) -> None:
    snap = loads(dumps(meta, sections))
    assert snap.meta == meta
    assert list(snap.sections.items()) == list(sections.items())


# --------------------------------------------------------------------------- atomic writes


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class ExplodingSections(Mapping[str, bytes]):
    """Yields one good section, then fails: the temp file exists by then."""

    def __getitem__(self, key: str) -> bytes:
        raise KeyError(key)

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> Iterator[str]:
        yield "good"
        raise RuntimeError("capture failed")

    def items(self) -> Any:
        yield "good", b"x" * 100
        raise RuntimeError("capture failed")


def test_failure_in_sections_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="capture failed"):
        write_snapshot(tmp_path / "snap.bin", META, ExplodingSections())
    assert _leftovers(tmp_path) == []


def test_failure_at_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: str, dst: str) -> None:
        assert Path(src).exists() and Path(src).parent == tmp_path
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        write_snapshot(tmp_path / "snap.bin", META, SECTIONS)
    assert _leftovers(tmp_path) == []


def test_failure_at_fsync_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="Input/output"):
        write_snapshot(tmp_path / "snap.bin", META, SECTIONS)
    assert _leftovers(tmp_path) == []


def test_failure_keeps_previous_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "snap.bin"
    write_snapshot(path, {"old": True}, {"a": b"old"})
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        write_snapshot(path, META, ExplodingSections())
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == ["snap.bin"]
    write_snapshot(path, META, SECTIONS)  # and a successful overwrite replaces it
    assert read_snapshot(path) == Snapshot(META, SECTIONS)
    assert _leftovers(tmp_path) == ["snap.bin"]


def test_failure_midway_through_a_payload_leaves_nothing(tmp_path: Path) -> None:
    """A real short write: RLIMIT_FSIZE makes write() fail with EFBIG after 1 MiB."""
    script = textwrap.dedent(
        """
        import errno, resource, signal, sys
        from kvmharness.snapshot import write_snapshot
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        try:
            write_snapshot(sys.argv[1], {"x": 1}, {"mem/slot0": bytes(8 << 20)})
        except OSError as exc:
            sys.exit(0 if exc.errno == errno.EFBIG else 3)
        sys.exit(4)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "snap.bin")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert _leftovers(tmp_path) == []


def test_write_creates_private_file_in_target_directory(tmp_path: Path) -> None:
    path = tmp_path / "snap.bin"
    write_snapshot(path, {}, {"mem/slot0": b"guest memory"})
    assert path.stat().st_mode & 0o077 == 0
    assert _leftovers(tmp_path) == ["snap.bin"]


# --------------------------------------------------------------------------- snapshot inspect


@pytest.fixture()
def snap_file(tmp_path: Path) -> Path:
    path = tmp_path / "snap.bin"
    write_snapshot(path, META, SECTIONS)
    return path


def test_inspect_prints_meta_and_sections(
    snap_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["snapshot", "inspect", str(snap_file)]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    assert f"format version {FORMAT_VERSION}" in out
    for name in SECTIONS:
        assert name in out
    assert MANIFEST.section("mem/slot0").sha256[:16] in out
    assert "kernel_release" in out and "6.8.0-kvmharness" in out
    assert "host.tsc_khz" in out
    assert "[2 items]" in out  # vcpus summarised, not dumped
    assert "checksums: all verified" in out


def test_inspect_json(snap_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["snapshot", "inspect", "--json", str(snap_file)]) == cli.EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["meta"] == META
    assert doc["checksums_verified"] is True
    assert [s["name"] for s in doc["sections"]] == list(SECTIONS)
    assert [s["length"] for s in doc["sections"]] == [len(v) for v in SECTIONS.values()]
    assert doc["file_size"] == snap_file.stat().st_size


def test_inspect_escapes_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "snap.bin"
    write_snapshot(path, {"evil\x1b[2J": "x\x1b]0;title\x07"}, {})
    assert cli.main(["snapshot", "inspect", str(path)]) == cli.EXIT_OK
    assert "\x1b" not in capsys.readouterr().out


def test_inspect_real_entry_point_prints_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "snap.bin"
    path.write_bytes(PNG)
    result = subprocess.run(
        [sys.executable, "-m", "kvmharness.cli", "snapshot", "inspect", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"kvmharness snapshot inspect: error: {path}: not a kvmharness snapshot"
        " (foreign file: starts with b'\\x89PNG\\r\\n\\x1a\\n', looks like a PNG image)\n"
    )
