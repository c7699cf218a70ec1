"""The nightly's history: a JSON-lines file of one record per run.

Appends are crash- and concurrency-safe (:func:`append_record`: flock,
O_APPEND, one write() of one complete line); readers skip and report a torn
or garbled line (:func:`read_history`).  Histories of several hosts merge by
run id (:func:`merge_histories`); records are keyed by host name.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
from collections.abc import Sequence
from typing import Any

from kvmharness.exitcodes import UsageError

SCHEMA = "kvmharness-nightly/1"


#: the words runs wrote before kvmharness used one lower-case word per state
OLD_WORDS = {"BROKEN": "broken", "ERROR": "harness error"}


def record_line(record: dict[str, Any]) -> bytes:
    """One record as one line: compact JSON (ASCII, so no raw newline) plus newline."""
    return (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()


def append_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append ``record`` as one line, safe against a crash mid-write and against
    concurrent appenders.

    The line goes out in one write() on an O_APPEND descriptor under an
    exclusive flock, so two nightlies never interleave.  A writer that died
    mid-line leaves a tail without a newline; the next appender first ends
    that tail, so the torn piece is one bad line (skipped by readers) and
    never glues onto a good record.
    """
    data = record_line(record)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:  # a regular file writes all at once unless the disk is full
            n = os.write(fd, view)
            if n <= 0:
                raise OSError(errno.EIO, f"{path}: short write")
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


@dataclasses.dataclass
class Problem:
    """A history line that was skipped."""

    file: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: skipped: {self.why}"


def parse_history(
    data: bytes, name: str = "<history>"
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """The records of a history file's bytes, and the lines skipped (torn,
    garbled, not a record).  Never raises on content."""
    records: list[dict[str, Any]] = []
    problems: list[Problem] = []
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" unless the last write was torn
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        rec, why = _parse_line(raw)
        if rec is None:
            problems.append(Problem(name, i, why))
        else:
            records.append(rec)
    if tail.strip():
        problems.append(
            Problem(
                name,
                len(lines) + 1,
                f"torn: the last line has no newline ({len(tail)} bytes; "
                "a writer died mid-write or is writing now)",
            )
        )
    return records, problems


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"garbled: not JSON ({exc}): {raw[:60]!r}..."
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        return None, f"not a {SCHEMA} record: {raw[:60]!r}..."
    if not isinstance(rec.get("host"), dict) or not isinstance(rec.get("scenarios"), list):
        return None, "a record without host or scenarios"
    for s in rec["scenarios"]:  # history written before the state words were unified
        if isinstance(s, dict):
            for k in ("status", "verdict"):
                if s.get(k) in OLD_WORDS:
                    s[k] = OLD_WORDS[s[k]]
    return rec, ""


def read_history(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[Problem]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], []
    return parse_history(data, str(path))


def host_key(rec: dict[str, Any]) -> str:
    return str(rec.get("host", {}).get("name") or "unknown-host")


def merge_histories(paths: Sequence[str]) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Every record of every file once (by run_id), ordered by date then host."""
    seen: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for p in paths:
        if not os.path.isfile(p):
            raise UsageError(f"--merge {p}: no such file")
        recs, probs = read_history(p)
        problems += probs
        for r in recs:
            seen.setdefault(str(r.get("run_id")), r)
    return sorted(seen.values(), key=lambda r: (str(r.get("date")), host_key(r))), problems


def previous_of(history: str, host: str) -> dict[str, Any] | None:
    """The latest record of ``host`` in the history (None: its first run)."""
    records, _ = read_history(history)
    mine = [r for r in records if host_key(r) == host]
    return mine[-1] if mine else None
