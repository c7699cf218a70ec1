"""The on-disk container for VM snapshots: versioned, checksummed, written atomically.

A snapshot is a JSON-able ``meta`` dict plus ordered, named binary sections
("mem/slot0", "vcpu0/xsave", ...). It is written by one process and restored by
another, possibly a different kvmharness version, so the reader trusts nothing:
every malformed input raises :class:`SnapshotFormatError` naming the file and the
problem, never another exception type.

File layout (all integers little-endian)::

    offset  size  field
         0     8  magic b"KVMHSNAP"
         8     4  format version (u32), currently 1
        12     4  flags (u32), must be 0 in version 1
        16     8  header length H (u64), 1 <= H <= MAX_HEADER_LENGTH
        24    32  SHA-256 over bytes [0, 24) followed by the H header bytes
        56     H  header: UTF-8 JSON object (see below)
      56+H     .  section payloads, back to back in table order, no padding;
                  the file ends exactly where the last section ends

The header is ``{"writer": "kvmharness 0.1.0", "meta": {...}, "sections": [...]}``
where each section table entry is ``{"name": str, "offset": int, "length": int,
"sha256": "<64 lowercase hex digits>"}`` and ``offset`` counts from the start of
the payload area (byte 56+H), so the header never depends on its own length.
Readers ignore unknown keys (a compatible extension); anything incompatible
bumps ``FORMAT_VERSION``, and the version field is checked before anything else
after the magic so a newer file is reported as such rather than as corrupt.

Integrity: the preamble and header are covered by the header checksum, each
payload by its own SHA-256, and since sections must tile the payload area
exactly (no gaps, no overlaps, no trailing bytes) every byte of the file is
covered by some checksum.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import stat
import struct
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import kvmharness

log = logging.getLogger(__name__)

FORMAT_MAGIC = b"KVMHSNAP"
FORMAT_VERSION = 1

_PREAMBLE = struct.Struct("<8sIIQ")  # magic, version, flags, header length
_DIGEST_SIZE = hashlib.sha256().digest_size
HEADER_OFFSET = _PREAMBLE.size + _DIGEST_SIZE  # 56: where the JSON header starts
MAX_HEADER_LENGTH = 256 * 1024 * 1024
"""Refuse bigger headers outright: meta is register dicts and clock data, not memory."""
MAX_SECTION_NAME = 255
MAX_META_DEPTH = 64
"""Nesting limit for meta, well below where ``json`` itself would recurse too deep."""

BufferLike = bytes | bytearray | memoryview
"""Section payload types; any C-contiguous buffer (ctypes struct, mmap, ...) also works."""

_CHUNK = 1024 * 1024
_HEX = frozenset("0123456789abcdef")

_FOREIGN_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x7fELF", "an ELF binary"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\x1f\x8b", "gzip data"),
    (b"\x28\xb5\x2f\xfd", "zstd data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"BZh", "bzip2 data"),
    (b"PK\x03\x04", "a zip archive"),
    (b"QFI\xfb", "a qcow2 image"),
    (b"#!", "a script"),
    (b"{", "JSON text"),
)


class SnapshotFormatError(Exception):
    """A snapshot file is missing, unreadable, malformed, corrupt or from a newer format.

    ``str(exc)`` is ``"<file>: <problem>"``; the two parts are also available as
    ``path`` and ``problem``.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))


def _error(name: str, problem: str) -> SnapshotFormatError:
    return SnapshotFormatError(name, problem)


@dataclass(frozen=True)
class SectionInfo:
    """One section table entry; ``offset`` is absolute (from the start of the file)."""

    name: str
    offset: int
    length: int
    sha256: str

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class Manifest:
    """Everything in a snapshot file except the section payloads."""

    name: str
    version: int
    file_size: int
    header_length: int
    header_sha256: str
    writer: str | None
    meta: dict[str, Any]
    sections: list[SectionInfo]

    @property
    def data_start(self) -> int:
        return HEADER_OFFSET + self.header_length

    def section(self, name: str) -> SectionInfo:
        for info in self.sections:
            if info.name == name:
                return info
        raise KeyError(name)


@dataclass
class Snapshot:
    meta: dict[str, Any]
    sections: dict[str, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


class _Source(Protocol):
    name: str
    size: int

    def read_at(self, offset: int, length: int) -> bytes: ...


class _BytesSource:
    def __init__(self, data: BufferLike, name: str) -> None:
        self._view = memoryview(data).cast("B")
        self.name = name
        self.size = len(self._view)

    def read_at(self, offset: int, length: int) -> bytes:
        return bytes(self._view[offset : offset + length])


class _FileSource:
    def __init__(self, f: IO[bytes], name: str, size: int) -> None:
        self._f = f
        self.name = name
        self.size = size

    def read_at(self, offset: int, length: int) -> bytes:
        try:
            self._f.seek(offset)
            # A buffered read loops until `length` bytes or EOF, into a single allocation.
            return self._f.read(length)
        except OSError as exc:
            raise _error(self.name, f"read error at byte {offset}: {exc.strerror or exc}") from exc


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(name: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise _error(name, "is a directory, not a snapshot file")
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _FILE_KINDS if test(mode)), "something else")
        raise _error(name, f"not a regular file ({kind})")


@contextmanager
def _open_source(path: str | os.PathLike[str]) -> Iterator[_FileSource]:
    """Open a snapshot file for reading; refuse anything but a regular file.

    Never blocks, and opens no device: the path is checked before it is opened
    (opening a FIFO waits for a writer, opening some devices has effects), then
    opened with O_NONBLOCK (in case it was replaced by a FIFO in between) and
    checked again on the open descriptor.
    """
    name = os.fsdecode(path)
    try:
        _check_regular(name, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _error(name, "no such file") from None
    except IsADirectoryError:
        raise _error(name, "is a directory, not a snapshot file") from None
    except OSError as exc:
        raise _error(name, f"cannot open: {exc.strerror or exc}") from exc
    with open(fd, "rb", closefd=True) as f:
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise _error(name, f"cannot stat: {exc.strerror or exc}") from exc
        _check_regular(name, st.st_mode)
        yield _FileSource(f, name, st.st_size)


def _read_exact(src: _Source, offset: int, length: int, what: str) -> bytes:
    data = src.read_at(offset, length)
    if len(data) != length:
        # Sizes were checked against the file size already: the file shrank under us.
        raise _error(
            src.name,
            f"truncated: file ends at byte {len(data)} of {length} in {what}"
            " (did it change while being read?)",
        )
    return data


def _describe_foreign(head: bytes) -> str:
    for magic, what in _FOREIGN_MAGICS:
        if head.startswith(magic):
            return f"starts with {head!r}, looks like {what}"
    return f"starts with {head!r}"


def _parse_preamble(src: _Source) -> tuple[int, int, bytes]:
    """Check magic, version, flags and header length; return (version, H, digest)."""
    name, size = src.name, src.size
    if size == 0:
        raise _error(name, "empty file")
    head = src.read_at(0, min(size, HEADER_OFFSET))
    magic = head[: len(FORMAT_MAGIC)]
    if magic != FORMAT_MAGIC[: len(magic)]:
        raise _error(name, f"not a kvmharness snapshot (foreign file: {_describe_foreign(magic)})")
    if len(head) < len(FORMAT_MAGIC) + 4:  # magic + version: enough to judge the version
        raise _error(
            name, f"truncated: file is {size} bytes, shorter than the {HEADER_OFFSET}-byte preamble"
        )
    (version,) = struct.unpack_from("<I", head, len(FORMAT_MAGIC))
    if version != FORMAT_VERSION:
        raise _error(name, f"format version {version}, this kvmharness reads {FORMAT_VERSION}")
    if len(head) < HEADER_OFFSET:
        raise _error(
            name, f"truncated: file is {size} bytes, shorter than the {HEADER_OFFSET}-byte preamble"
        )
    _magic, _version, flags, header_length = _PREAMBLE.unpack_from(head)
    if flags != 0:
        raise _error(name, f"corrupt preamble: unknown flags {flags:#x} (version 1 has none)")
    if not 1 <= header_length <= MAX_HEADER_LENGTH:
        raise _error(
            name,
            f"corrupt preamble: header length {header_length} is outside 1..{MAX_HEADER_LENGTH}",
        )
    if HEADER_OFFSET + header_length > size:
        raise _error(
            name,
            f"truncated: preamble says the header is {header_length} bytes,"
            f" file ends at byte {size - HEADER_OFFSET} of it",
        )
    return version, header_length, head[_PREAMBLE.size : HEADER_OFFSET]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _is_int(value: object) -> bool:
    return type(value) is int


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_header(src: _Source, raw: bytes, data_start: int) -> tuple[Any, Any, list[SectionInfo]]:
    name = src.name
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(
            name, f"corrupt header: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except RecursionError:
        raise _error(name, "corrupt header: JSON nested too deeply") from None
    except ValueError as exc:
        raise _error(name, f"corrupt header: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _error(name, f"corrupt header: a JSON {type(doc).__name__}, not an object")
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        raise _error(name, "corrupt header: no 'meta' object")
    table = doc.get("sections")
    if not isinstance(table, list):
        raise _error(name, "corrupt header: no 'sections' list")
    writer = doc.get("writer")
    if writer is not None and not isinstance(writer, str):
        raise _error(name, "corrupt header: 'writer' is not a string")

    sections: list[SectionInfo] = []
    seen: set[str] = set()
    expected = data_start
    for index, entry in enumerate(table):
        where = f"section table entry {index}"
        if not isinstance(entry, dict):
            raise _error(name, f"corrupt header: {where} is not an object")
        sec_name = entry.get("name")
        if not isinstance(sec_name, str) or _name_problem(sec_name):
            raise _error(name, f"corrupt header: {where} has a bad name {sec_name!r}")
        where = f"section {sec_name!r}"
        offset, length, digest = entry.get("offset"), entry.get("length"), entry.get("sha256")
        if not _is_int(offset) or offset < 0:
            raise _error(name, f"corrupt header: {where} has a bad offset {offset!r}")
        if not _is_int(length) or length < 0:
            raise _error(name, f"corrupt header: {where} has a bad length {length!r}")
        if not isinstance(digest, str) or len(digest) != 64 or not _HEX.issuperset(digest):
            raise _error(name, f"corrupt header: {where} has a bad sha256 {digest!r}")
        if sec_name in seen:
            raise _error(name, f"corrupt header: duplicate section name {sec_name!r}")
        seen.add(sec_name)
        start = data_start + offset
        if start < expected:
            raise _error(
                name,
                f"corrupt header: {where} at byte {start} overlaps the previous section,"
                f" which ends at byte {expected}",
            )
        if start > expected:
            raise _error(
                name,
                f"corrupt header: {where} starts at byte {start}, leaving bytes"
                f" {expected}..{start - 1} covered by no section",
            )
        sections.append(SectionInfo(sec_name, start, length, digest))
        expected = start + length

    size = src.size
    if expected > size:
        cut = next(s for s in sections if s.end > size)
        raise _error(
            name,
            f"truncated: header says {len(sections)} sections, file ends in section"
            f" {cut.name!r} at byte {size - cut.offset} of {cut.length}",
        )
    if expected < size:
        raise _error(
            name,
            f"{_plural(size - expected, 'byte')} of trailing garbage after the last section"
            f" (sections end at byte {expected}, file is {size} bytes)",
        )
    return writer, meta, sections


def _parse_manifest(src: _Source) -> Manifest:
    version, header_length, digest = _parse_preamble(src)
    raw = _read_exact(src, HEADER_OFFSET, header_length, "the header")
    hasher = hashlib.sha256(src.read_at(0, _PREAMBLE.size))
    hasher.update(raw)
    if hasher.digest() != digest:
        raise _error(src.name, "header checksum mismatch (corrupt header)")
    writer, meta, sections = _parse_header(src, raw, HEADER_OFFSET + header_length)
    return Manifest(
        name=src.name,
        version=version,
        file_size=src.size,
        header_length=header_length,
        header_sha256=digest.hex(),
        writer=writer,
        meta=meta,
        sections=sections,
    )


def _checksum_error(src: _Source, info: SectionInfo, actual: str) -> SnapshotFormatError:
    return _error(
        src.name,
        f"section {info.name!r} checksum mismatch"
        f" (header says {info.sha256[:16]}..., data has {actual[:16]}...)",
    )


def _load(src: _Source, verify: bool) -> Snapshot:
    manifest = _parse_manifest(src)
    sections: dict[str, bytes] = {}
    for info in manifest.sections:
        data = _read_exact(src, info.offset, info.length, f"section {info.name!r}")
        if verify:
            actual = hashlib.sha256(data).hexdigest()
            if actual != info.sha256:
                raise _checksum_error(src, info, actual)
        sections[info.name] = data
    return Snapshot(meta=manifest.meta, sections=sections)


def read_snapshot(path: str | os.PathLike[str], *, verify: bool = True) -> Snapshot:
    """Load a whole snapshot; with ``verify`` (the default) check every section's SHA-256.

    The header checksum and the file's structure are always checked.
    """
    with _open_source(path) as src:
        snap = _load(src, verify)
    log.debug("read snapshot %s: %d sections", src.name, len(snap.sections))
    return snap


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the preamble, header and section table, not the payloads.

    Cheap even for multi-GiB files; section checksums are *not* verified (see
    :func:`verify_snapshot`), but sizes are checked against the real file size.
    """
    with _open_source(path) as src:
        return _parse_manifest(src)


def verify_snapshot(path: str | os.PathLike[str]) -> Manifest:
    """Like :func:`read_manifest`, and also check every section's SHA-256.

    Streams the payloads in chunks, so memory use stays small for huge files.
    """
    with _open_source(path) as src:
        manifest = _parse_manifest(src)
        for info in manifest.sections:
            hasher = hashlib.sha256()
            pos = info.offset
            while pos < info.end:
                chunk = _read_exact(src, pos, min(_CHUNK, info.end - pos), f"section {info.name!r}")
                hasher.update(chunk)
                pos += len(chunk)
            actual = hasher.hexdigest()
            if actual != info.sha256:
                raise _checksum_error(src, info, actual)
    return manifest


def loads(data: BufferLike, name: str = "<bytes>", *, verify: bool = True) -> Snapshot:
    """In-memory :func:`read_snapshot`; ``name`` is used in error messages."""
    return _load(_BytesSource(data, name), verify)


def loads_manifest(data: BufferLike, name: str = "<bytes>") -> Manifest:
    """In-memory :func:`read_manifest`."""
    return _parse_manifest(_BytesSource(data, name))


# --------------------------------------------------------------------------- writing


def _name_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    if len(name) > MAX_SECTION_NAME:
        return f"is longer than {MAX_SECTION_NAME} characters"
    if not name.isprintable():
        return "contains unprintable characters"
    return None


def _check_meta(value: object, where: str, depth: int = 0) -> None:
    """Only accept what survives a JSON round trip unchanged, so meta reads back equal."""
    if depth > MAX_META_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_META_DEPTH} levels")
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not representable in JSON")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a str (JSON would change it)")
            _check_meta(item, f"{where}[{key!r}]", depth + 1)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_meta(item, f"{where}[{index}]", depth + 1)
        return
    hint = " (use a list: JSON would read it back as one)" if isinstance(value, tuple) else ""
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-able{hint}")


def _byte_views(sections: Mapping[str, BufferLike]) -> list[tuple[str, memoryview]]:
    views: list[tuple[str, memoryview]] = []
    try:
        for name, obj in sections.items():
            if not isinstance(name, str):
                raise TypeError(f"section name {name!r} is not a str")
            problem = _name_problem(name)
            if problem:
                raise ValueError(f"section name {name!r} {problem}")
            view = memoryview(obj)
            if not view.c_contiguous:
                view.release()
                raise ValueError(f"section {name!r}: buffer is not contiguous")
            views.append((name, view.cast("B")))
            view.release()
    except BaseException:
        for _, view in views:
            view.release()
        raise
    return views


def _writer_version() -> str:
    version = getattr(kvmharness, "__version__", None)
    if version is None:  # e.g. a stale editable install that sees a namespace package
        try:
            version = importlib.metadata.version("kvmharness")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return f"kvmharness {version}"


def _encode_header(meta: dict[str, Any], table: list[dict[str, Any]]) -> bytes:
    doc = {"writer": _writer_version(), "meta": meta, "sections": table}
    # ensure_ascii: the length then depends only on the digests' length, not their value.
    return json.dumps(doc, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def _write_stream(f: IO[bytes], meta: dict[str, Any], sections: Mapping[str, BufferLike]) -> int:
    """Write a whole snapshot to a seekable binary file positioned at 0; return its size.

    Payloads are hashed while they are written (one pass over guest memory, and the
    checksum is of exactly the bytes written), then the header is filled in.
    """
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    _check_meta(meta, "meta")
    views = _byte_views(sections)
    try:
        table: list[dict[str, Any]] = []
        offset = 0
        for name, view in views:
            table.append(
                {"name": name, "offset": offset, "length": view.nbytes, "sha256": "0" * 64}
            )
            offset += view.nbytes
        header_length = len(_encode_header(meta, table))
        if header_length > MAX_HEADER_LENGTH:
            raise ValueError(f"header would be {header_length} bytes, over {MAX_HEADER_LENGTH}")
        data_start = HEADER_OFFSET + header_length
        f.seek(data_start)
        for entry, (_name, view) in zip(table, views, strict=True):
            hasher = hashlib.sha256()
            for pos in range(0, view.nbytes, _CHUNK):
                chunk = view[pos : pos + _CHUNK]
                hasher.update(chunk)
                f.write(chunk)
            entry["sha256"] = hasher.hexdigest()
    finally:
        for _, view in views:
            view.release()
    header = _encode_header(meta, table)
    if len(header) != header_length:  # cannot happen: only fixed-width digests changed
        raise AssertionError("snapshot header length changed while writing")
    preamble = _PREAMBLE.pack(FORMAT_MAGIC, FORMAT_VERSION, 0, header_length)
    f.seek(0)
    f.write(preamble)
    f.write(hashlib.sha256(preamble + header).digest())
    f.write(header)
    return data_start + offset


def dumps(meta: dict[str, Any], sections: Mapping[str, BufferLike]) -> bytes:
    """In-memory :func:`write_snapshot`."""
    import io

    buf = io.BytesIO()
    _write_stream(buf, meta, sections)
    return buf.getvalue()


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.warning("cannot open %s to fsync it: %s", directory, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.warning("fsync of directory %s failed: %s", directory, exc)
    finally:
        os.close(fd)


def write_snapshot(
    path: str | os.PathLike[str],
    meta: dict[str, Any],
    sections: Mapping[str, BufferLike],
) -> int:
    """Write a snapshot file atomically; return the number of bytes written.

    ``meta`` must be JSON-able *and* read back equal (str keys, lists not tuples,
    finite floats), otherwise TypeError/ValueError before anything is written.
    Sections are any C-contiguous buffers (bytes, bytearray, memoryview, ctypes
    structs, mmaps), written without copying them whole.

    The data goes to a temporary file in the target's directory, is fsynced and
    renamed over ``path``; on any error the temporary file is removed and ``path``
    is left as it was (absent, or the previous snapshot). The file is created
    with mode 0600: it holds guest memory.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            size = _write_stream(f, meta, sections)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove temporary file %s: %s", tmp, exc)
        raise
    _fsync_dir(directory)
    log.debug("wrote snapshot %s: %d sections, %d bytes", target, len(sections), size)
    return size
