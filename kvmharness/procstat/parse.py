"""Reading and parsing /proc/stat snapshots: the input side of ``kvmharness procstat``.

Turns text (files, standard input, or the live /proc/stat) into
:class:`ProcStatSnapshot` objects, refusing anything that is not a bounded
regular file or standard input, and anything too big to analyse (the caps
below).

Input format
------------
``cpu`` lines carry 4 to 10 columns depending on kernel age, in the order
:data:`COLUMNS` (``user nice system idle`` since 2.4, ``iowait irq softirq``
since 2.6, ``steal`` since 2.6.11, ``guest`` 2.6.24, ``guest_nice`` 2.6.33),
in USER_HZ ticks (100 per second on nearly every architecture). With fewer
than 8 columns the kernel prints no steal: the report says so and no steal
check runs. ``guest``/``guest_nice`` are already included in ``user``/
``nice`` and are left out of a CPU's total.

The parser takes text as people paste it: leading indentation and mail quote
markers (``>``, ``> >``) are stripped; a line of bare numbers continues the
previous line (mail clients wrap long ``cpu`` and huge ``intr`` lines); prose
around the snapshot is ignored. A file may hold several snapshots: each
aggregate ``cpu`` line (or a repeated ``cpuN`` line) starts a new one. Text
without any ``cpu`` line is not /proc/stat: :class:`ProcStatError`.

Snapshot times
--------------
/proc/stat carries no timestamp, so a collector may add one next to each
snapshot, and both conventions are understood:

* ``# time: <unix seconds>`` (also ``time=``, ``timestamp:``, an ISO-8601
  date), or the bare output of ``date +%s`` / ``date +%s.%N``;
* ``# uptime: <seconds>``, or the bare ``/proc/uptime`` line
  (``350735.47 234388.90``), which is the best clock: the guest's own
  CLOCK_BOOTTIME, immune to wall-clock steps.

A marker belongs to the snapshot that follows it (``date +%s; cat
/proc/stat``), unless no marker precedes the first snapshot, in which case
markers are trailers belonging to the snapshot before them (``cat
/proc/stat; date +%s``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import BinaryIO

from kvmharness import checks

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
)
USER, NICE, SYSTEM, IDLE, IOWAIT, IRQ, SOFTIRQ, STEAL, GUEST, GUEST_NICE = range(10)
MIN_COLUMNS = 4
MAX_COLUMNS = len(COLUMNS)
#: columns that make up the time a CPU accounted (guest time is inside user/nice)
TOTAL_COLUMNS = STEAL + 1
AGGREGATE = "cpu"

KERNEL_BY_COLUMNS = {
    4: "Linux 2.4",
    5: "an early 2.5/2.6",
    6: "an early 2.5/2.6",
    7: "Linux 2.6 before 2.6.11",
    8: "Linux 2.6.11-2.6.23",
    9: "Linux 2.6.24-2.6.32",
    10: "Linux 2.6.33 or later",
}

NS_PER_S = 1_000_000_000
DEFAULT_USER_HZ = 100
MAX_USER_HZ = 1_000_000

#: Refuse bigger inputs (per file, and standard input). Real /proc/stat snapshots
#: are a few KiB, so this still holds thousands of them; parsing is linear in size.
MAX_INPUT_BYTES = 16 * 1024 * 1024
#: The analysis costs 1-4 KiB of memory per cpu line, so an input of bare cpu lines
#: (12 bytes each) would still take GiBs: the cpu lines and snapshots of one input
#: are capped too. These hold half a day of 1 s samples, or 3000 snapshots of a
#: 64-vCPU guest.
MAX_SNAPSHOTS = 50_000
MAX_CPU_LINES = 200_000
#: longest --interval between live samples (longer sleeps overflow time_t or never end)
MAX_INTERVAL_S = 86400
#: the kernel's counters, /proc/uptime and unix times (in ns) are u64
U64 = checks.U64
_MAX_SECONDS = Decimal(U64) / NS_PER_S  # 2**64 ns, about 584 years


class ProcStatError(ValueError):
    """The text is not /proc/stat, a number in it is bad, or the input cannot be read."""


@dataclass
class ProcStatSnapshot:
    """One reading of /proc/stat."""

    source: str  # "file:line" of its first cpu line
    cpus: dict[str, tuple[int, ...]] = field(default_factory=dict)  # "cpu", "cpu0", ...
    btime: int | None = None  # boot time, unix seconds
    ctxt: int | None = None
    processes: int | None = None
    time_ns: int | None = None  # unix time of the reading, if a collector gave it
    time_res_ns: int = 0
    uptime_ns: int | None = None  # /proc/uptime at the reading, if given
    uptime_res_ns: int = 0

    @property
    def per_cpu(self) -> list[str]:
        return [name for name in self.cpus if name != AGGREGATE]


# -- parsing -------------------------------------------------------------------

_LEAD = re.compile(r"^[\s>]*")
_CPU_KEY = re.compile(r"^cpu[0-9]*$")
_INT = re.compile(r"[0-9]+")
_STAT_KEYS = frozenset(
    {"intr", "ctxt", "btime", "processes", "procs_running", "procs_blocked", "softirq"}
)
_KEY = re.compile(r"^[a-z_]+$")
# numbers separated by white space, written so that a huge line matches in linear time
# and constant memory (a repeated group would push a backtracking mark per number)
_NUMBERS = re.compile(r"^[0-9](?:[0-9\s]*[0-9])?$")
_TOKEN = re.compile(r"\S+")
_TIME_HDR = re.compile(r"^#?\s*(?:time|timestamp|date|wall)\s*[:=]?\s*(\S+)$", re.IGNORECASE)
_UPTIME_HDR = re.compile(r"^#?\s*uptime\s*[:=]?\s*([0-9]+(?:\.[0-9]+)?)(?:\s+[0-9.]+)?$", re.I)
_PROC_UPTIME = re.compile(r"^([0-9]+\.[0-9]+)\s+[0-9]+\.[0-9]+$")
_BARE_INT_TIME = re.compile(r"^[0-9]{10}$")  # date +%s, 2001..2286
_BARE_DEC_TIME = re.compile(r"^[0-9]{9,10}\.[0-9]+$")  # date +%s.%N


def _short(text: str) -> str:
    """``text`` for an error message: huge tokens cut, with their length."""
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"


_U64_DIGITS = len(str(U64 - 1))


def _u64(token: str, line: int, key: str) -> int:
    """A counter token (ASCII digits) as an int; ProcStatError unless it fits a u64.

    Counts the digits before converting, so a 5000-digit token costs nothing
    (and does not hit Python's limit on int conversion).
    """
    digits = token.lstrip("0") or "0"
    if len(digits) > _U64_DIGITS or (value := int(digits)) >= U64:
        raise ProcStatError(
            f"line {line}: '{key}' line: {_short(token)} is too big for a u64 (max {U64 - 1})"
        )
    return value


def _seconds_to_ns(text: str) -> tuple[int, int] | None:
    """``'12.34'`` -> (12_340_000_000, resolution 10_000_000).

    None when ``text`` is not a non-negative number; ProcStatError when it is
    2**64 ns or more (no u64 clock holds it).
    """
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite() or value < 0:
        return None
    if value >= _MAX_SECONDS:
        raise ProcStatError(f"{_short(text)} s is out of range (2^64 ns or more)")
    decimals = len(text.partition(".")[2])
    return int(value * NS_PER_S), max(1, 10 ** max(0, 9 - decimals))


def _parse_time(text: str) -> tuple[int, int] | None:
    """A unix time (seconds, maybe fractional) or ISO-8601 date -> (ns, resolution)."""
    parsed = _seconds_to_ns(text)
    if parsed is not None:
        return parsed
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        log.warning("time %s has no time zone; taken as UTC", text)
        when = when.replace(tzinfo=dt.UTC)
    since = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    ns = (since.days * 86400 + since.seconds) * NS_PER_S + since.microseconds * 1000
    if ns >= U64:
        raise ProcStatError(f"{_short(text)} is out of range (2^64 ns or more after 1970)")
    return ns, 1000 if when.microsecond else NS_PER_S


@dataclass
class _Marker:
    kind: str  # "time" or "uptime"
    position: int  # snapshots completed when it was seen
    ns: int
    res_ns: int
    line: int


#: keys other than cpu lines whose (first) value is kept
_KEPT_KEYS = ("btime", "ctxt", "processes")


@dataclass
class _Pending:
    """A key line, and the number lines that continue it, until it is complete.

    Only what is used is kept (a cpu line's first MAX_COLUMNS values, the first
    value of a _KEPT_KEYS line), so a huge ``intr`` line costs no memory.
    """

    key: str
    line: int
    values: list[int] = field(default_factory=list)
    count: int = 0  # values seen (for other keys: whether any, at least)

    def take(self, text: str, lineno: int, start: int = 0) -> None:
        """Add the values in ``text[start:]`` (white-space separated), of line ``lineno``."""
        if _CPU_KEY.match(self.key):
            for m in _TOKEN.finditer(text, start):
                tok = m.group()
                if not _INT.fullmatch(tok):
                    raise ProcStatError(
                        f"line {lineno}: '{self.key}' line: {_short(tok)!r} is not a counter"
                    )
                value = _u64(tok, lineno, self.key)
                if len(self.values) < MAX_COLUMNS:
                    self.values.append(value)
                self.count += 1
        elif first := _TOKEN.search(text, start):
            if self.key in _KEPT_KEYS and not self.values:
                self.values.append(_u64(first.group(), lineno, self.key))
            self.count += 1


class _StatParser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.snapshots: list[ProcStatSnapshot] = []
        self.markers: list[_Marker] = []
        self.pending: _Pending | None = None
        self.ignored_lines = 0
        self.cpu_lines = 0

    # a pending line is kept until the next line shows it is complete
    def _flush(self) -> None:
        p, self.pending = self.pending, None
        if p is None:
            return
        if _CPU_KEY.match(p.key):
            self._add_cpu(p)
        elif p.values and self.snapshots and p.key in _KEPT_KEYS:
            snap = self.snapshots[-1]
            if getattr(snap, p.key) is not None:
                log.warning(
                    "%s:%d: second %s line in one snapshot ignored", self.source, p.line, p.key
                )
            else:
                setattr(snap, p.key, p.values[0])

    def _add_cpu(self, p: _Pending) -> None:
        where = f"{self.source}:{p.line}"
        if not p.count:
            log.debug("%s: '%s' without values ignored", where, p.key)
            return
        if p.count < MIN_COLUMNS:
            raise ProcStatError(
                f"line {p.line}: '{p.key}' line has {p.count} values; /proc/stat cpu "
                f"lines have {MIN_COLUMNS} to {MAX_COLUMNS}"
            )
        if p.count > MAX_COLUMNS:
            log.warning(
                "%s: '%s' has %d values; only the first %d (%s) are known",
                where,
                p.key,
                p.count,
                MAX_COLUMNS,
                " ".join(COLUMNS),
            )
        values = tuple(p.values)
        self.cpu_lines += 1
        if self.cpu_lines > MAX_CPU_LINES:
            raise ProcStatError(f"line {p.line}: more than {MAX_CPU_LINES} cpu lines in one input")
        current = self.snapshots[-1] if self.snapshots else None
        if current is None or p.key == AGGREGATE or p.key in current.cpus:
            if len(self.snapshots) >= MAX_SNAPSHOTS:
                raise ProcStatError(
                    f"line {p.line}: more than {MAX_SNAPSHOTS} snapshots in one input"
                )
            current = ProcStatSnapshot(source=where)
            self.snapshots.append(current)
        current.cpus[p.key] = values

    def _marker(
        self, kind: str, parse: Callable[[str], tuple[int, int] | None], text: str, line: int
    ) -> bool:
        try:
            parsed = parse(text)
        except ProcStatError as exc:
            raise ProcStatError(f"line {line}: {kind} {exc}") from None
        if parsed is None:
            return False
        self._flush()
        self.markers.append(_Marker(kind, len(self.snapshots), parsed[0], parsed[1], line))
        return True

    def _pending_incomplete(self) -> bool:
        """Whether the pending line surely goes on (a key without values, a short cpu line)."""
        p = self.pending
        if p is None:
            return False
        return not p.count or (bool(_CPU_KEY.match(p.key)) and p.count < MAX_COLUMNS)

    def feed(self, lineno: int, raw: str) -> None:
        line = raw[_LEAD.match(raw).end() :].rstrip()  # no copy of a line with nothing to strip
        if not line:
            self._flush()
            return
        if m := _UPTIME_HDR.match(line):
            if self._marker("uptime", _seconds_to_ns, m.group(1), lineno):
                return
        if m := _PROC_UPTIME.match(line):
            if self._marker("uptime", _seconds_to_ns, m.group(1), lineno):
                return
        if m := _TIME_HDR.match(line):
            if self._marker("time", _parse_time, m.group(1), lineno):
                return
        if _BARE_DEC_TIME.match(line) or (
            _BARE_INT_TIME.match(line) and not self._pending_incomplete()
        ):
            if self._marker("time", _parse_time, line, lineno):
                return
        if _NUMBERS.match(line):
            if self.pending is not None:  # a wrapped line goes on
                self.pending.take(line, lineno)
            else:
                self.ignored_lines += 1
            return
        # not line.split(): that would cost a string object per word of a huge line
        key_match = _TOKEN.match(line)
        assert key_match is not None  # line is stripped and not empty
        key = key_match.group()
        second = _TOKEN.search(line, key_match.end())
        if (_CPU_KEY.match(key) or _KEY.match(key)) and (
            second is None or _INT.fullmatch(second.group())
        ):
            if second is None and not _CPU_KEY.match(key) and key not in _STAT_KEYS:
                key = ""  # a lone word is prose, a lone /proc/stat key a wrapped line
            if key:
                self._flush()
                self.pending = _Pending(key, lineno)
                self.pending.take(line, lineno, key_match.end())
                return
        self._flush()  # prose, a shell prompt, a mail header...
        self.ignored_lines += 1

    def finish(self) -> list[ProcStatSnapshot]:
        self._flush()
        if not self.snapshots:
            raise ProcStatError("not /proc/stat: no 'cpu' line found")
        self._assign_markers()
        return self.snapshots

    def _assign_markers(self) -> None:
        n = len(self.snapshots)
        for kind in ("time", "uptime"):
            marks = [m for m in self.markers if m.kind == kind]
            if not marks:
                continue
            header = any(m.position == 0 for m in marks)
            for m in marks:
                target = m.position if header else m.position - 1
                if not 0 <= target < n:
                    log.warning(
                        "%s:%d: %s line belongs to no snapshot; ignored", self.source, m.line, kind
                    )
                    continue
                snap = self.snapshots[target]
                if kind == "time":
                    if snap.time_ns is not None:
                        log.warning(
                            "%s:%d: second time for one snapshot ignored", self.source, m.line
                        )
                        continue
                    snap.time_ns, snap.time_res_ns = m.ns, m.res_ns
                else:
                    if snap.uptime_ns is not None:
                        log.warning(
                            "%s:%d: second uptime for one snapshot ignored", self.source, m.line
                        )
                        continue
                    snap.uptime_ns, snap.uptime_res_ns = m.ns, m.res_ns


_BLOCK = 64 * 1024


def _lines(data: str | bytes) -> Iterable[str]:
    """``data.splitlines()`` (decoded as UTF-8), a block of about 64 KiB at a time.

    Blocks end just after a newline, which never splits a ``\\r\\n`` nor a UTF-8
    sequence, so the result is that of splitting the whole text at once, without
    holding a list of every line (a string object each) of a big input.
    """
    newline = b"\n" if isinstance(data, bytes) else "\n"
    start = 0
    while start < len(data):
        end = data.find(newline, start + _BLOCK)
        end = len(data) if end < 0 else end + 1
        block = data[start:end]
        if isinstance(block, bytes):
            block = block.decode("utf-8", errors="replace")
        yield from block.splitlines()
        start = end


def _parse_lines(lines: Iterable[str], source: str) -> list[ProcStatSnapshot]:
    parser = _StatParser(source)
    for lineno, raw in enumerate(lines, 1):
        parser.feed(lineno, raw)
    snaps = parser.finish()
    if parser.ignored_lines:
        log.info("%s: %d lines that are not /proc/stat ignored", source, parser.ignored_lines)
    return snaps


def parse_text(text: str, source: str = "<text>") -> list[ProcStatSnapshot]:
    """All /proc/stat snapshots in ``text``, in order.

    Raises :class:`ProcStatError` when there is no ``cpu`` line at all, a cpu
    line has a non-numeric value or fewer than 4 columns, or a number is out of
    range (a counter over u64, a time of 2**64 ns or more).
    """
    return _parse_lines(_lines(text), source)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _too_big(size: int | None) -> ProcStatError:
    cap = MAX_INPUT_BYTES
    cap_text = f"{cap // (1024 * 1024)} MiB" if cap % (1024 * 1024) == 0 else f"{cap} bytes"
    limit = f"the {cap_text} limit for one input"
    what = f"{size} bytes ({_mib(size)}), over {limit}" if size is not None else f"over {limit}"
    return ProcStatError(f"{what} (/proc/stat snapshots are a few KiB each: split the input)")


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> ProcStatError:
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "something else")
    hint = " (to read a pipe, give '-' and pipe it to stdin)" if stat.S_ISFIFO(mode) else ""
    return ProcStatError(f"is {kind}, not a regular file{hint}")


def _read_capped(f: BinaryIO, size: int | None = None) -> bytes:
    """At most MAX_INPUT_BYTES from binary file ``f``; ProcStatError if there is more."""
    data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise _too_big(size)
    return data


def read_bytes(path: str | Path) -> bytes:
    """The bytes of one input (``-``: standard input), refused unless it is a
    regular file of at most MAX_INPUT_BYTES.

    Never blocks on, nor reads endlessly from, a FIFO or a device: the path is
    checked before it is opened (opening some devices has effects), then opened
    with O_NONBLOCK and checked again (it may have been replaced in between).
    Raises OSError (cannot open or read) or ProcStatError (refused).
    """
    if str(path) == "-":
        stdin = getattr(sys.stdin, "buffer", sys.stdin)
        try:
            size = os.fstat(stdin.fileno()).st_size
        except (OSError, ValueError, AttributeError):  # no descriptor (a test's stream)
            size = None
        if size is not None and size > MAX_INPUT_BYTES:
            raise _too_big(size)  # stdin redirected from a big regular file
        data = _read_capped(stdin)
        return data.encode() if isinstance(data, str) else data
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode)
    if st.st_size > MAX_INPUT_BYTES:
        raise _too_big(st.st_size)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags)
    with open(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
        if st.st_size > MAX_INPUT_BYTES:
            raise _too_big(st.st_size)
        # procfs files say 0 bytes, and a file may grow: the read is capped too
        return _read_capped(f, None)


def read_file(path: str | Path) -> list[ProcStatSnapshot]:
    """Snapshots of one file (``-`` reads standard input).

    Refuses (ProcStatError) anything but a regular file or standard input, and
    inputs over MAX_INPUT_BYTES; OSError if the file cannot be read.
    """
    source = "<stdin>" if str(path) == "-" else str(path)
    return _parse_lines(_lines(read_bytes(path)), source)


def sample_live(
    count: int,
    interval_s: float,
    *,
    stat_path: str = "/proc/stat",
    uptime_path: str | None = "/proc/uptime",
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> list[ProcStatSnapshot]:
    """Read ``stat_path`` ``count`` times, ``interval_s`` apart, with times.

    Each snapshot gets the wall time of ``clock()`` just before the read and,
    when readable, the uptime from ``uptime_path`` just after it.
    """
    snaps: list[ProcStatSnapshot] = []
    for i in range(count):
        if i:
            sleep(interval_s)
        t = clock()
        data = read_bytes(stat_path)
        up = None
        if uptime_path:
            try:
                up = _seconds_to_ns(read_bytes(uptime_path).decode(errors="replace").split()[0])
            except (OSError, IndexError, ProcStatError) as exc:
                log.debug("%s: no uptime: %s", uptime_path, exc)
        got = _parse_lines(_lines(data), f"{stat_path}#{i + 1}")
        snap = got[0]
        snap.time_ns, snap.time_res_ns = int(t * NS_PER_S), 1000
        if up is not None:
            snap.uptime_ns, snap.uptime_res_ns = up
        snaps.append(snap)
        if progress is not None:
            progress(i + 1, count)
    return snaps
