"""``kvmharness procstat``: steal-time anomalies in a guest's /proc/stat.

Reads /proc/stat snapshots in time order (files, possibly several snapshots
per file, or sampled live) and reports, per CPU line and for the aggregate
``cpu`` line, what the paravirtual-time bugs of the past looked like from
inside the guest:

* steal going down between snapshots (Xen 2017: 335 -> 312 ticks after
  migration);
* steal wrapped, implausibly large or growing faster than time passed (KVM
  2015: a negative u64 delta, ~2**64 ns shown in ticks, larger than uptime);
* user+system no longer advancing while steal grows (the same KVM bug
  swallowing every tick);
* any other counter going backwards.

The rules themselves are :mod:`kvmharness.checks`, shared with the KVM
scenarios; this module only parses, works out the bounds, and reports.

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

Bounds (each finding names the one used)
----------------------------------------
Elapsed time between two snapshots, for the rate check, by preference:

1. ``uptime`` difference (both snapshots have /proc/uptime);
2. ``snapshot times`` difference;
3. ``CPU-time advance``: without a clock, each CPU's total (all non-guest
   columns, steal included) advances by the elapsed time, idle included, so
   the lower median of those advances over the CPUs present in both
   snapshots estimates it. It assumes at least half of the CPUs account time
   normally and stayed online; with one CPU it is unavailable (a CPU's own
   steal is part of its own total, so that would prove nothing). Slack is 5%;
4. none: the rate check is skipped for that interval, and the report says so.

Absolute bound on steal at one snapshot (per CPU; the aggregate line gets N
times it, N the largest number of CPU lines seen):

1. ``uptime`` from /proc/uptime;
2. ``uptime from btime``: snapshot time minus ``btime``;
3. ``uptime <= now - btime``: snapshot time unknown but it cannot be later
   than now; 7 days of slack cover a guest clock running ahead;
4. none.

Every clock-based bound gets 2 ticks of slack (USER_HZ quantization and a
tick of accounting lag) plus the resolution of the timestamps.

Noise that real kernels make is reported as a *note*, not an anomaly:
``iowait`` may go down (Documentation/filesystems/proc.rst says so), and
``idle`` may go down across a CPU hot-unplug (idle is read from a different
source while a CPU is offline). A reboot between snapshots (uptime or
``processes`` going back) splits the comparison instead of reporting every
counter.

In the output, snapshots are numbered from 1 in reading order, and a
finding's ``index`` is the number of its later snapshot.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import BinaryIO

from kvmharness import checks
from kvmharness.checks import Sample, Violation

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
#: slack on clock-based bounds, in ticks: USER_HZ flooring + one tick of lag
SLACK_TICKS = 2
#: slack on the clock-free CPU-time bound, as a fraction of the estimate
CPU_TIME_SLACK = 0.05
#: slack on the "now - btime" bound for a guest clock running ahead of ours
NOW_SKEW_SLACK_NS = 7 * 86400 * NS_PER_S
#: a CPU is only called stalled once it accounted this much steal and nothing
#: else busy in one interval (5 ticks = 50 ms)
MIN_STALL_STEAL_TICKS = 5

BOUND_UPTIME = "uptime (/proc/uptime)"
BOUND_TIMES = "snapshot times"
BOUND_CPU_TIME = "CPU-time advance"
BOUND_BTIME = "uptime from btime"
BOUND_NOW_BTIME = "uptime <= now - btime"

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

NOTE_IOWAIT = "iowait may go down (Documentation/filesystems/proc.rst)"
NOTE_IDLE_HOTPLUG = "idle may go down across a CPU hot-unplug"


class ProcStatError(ValueError):
    """The text is not /proc/stat, a number in it is bad, or the input cannot be read."""


@dataclass
class Snapshot:
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
            f"line {line}: '{key}' line: {_short(token)} is too big for a u64 "
            f"(max {U64 - 1})"
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


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.snapshots: list[Snapshot] = []
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
            current = Snapshot(source=where)
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

    def finish(self) -> list[Snapshot]:
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


def _parse_lines(lines: Iterable[str], source: str) -> list[Snapshot]:
    parser = _Parser(source)
    for lineno, raw in enumerate(lines, 1):
        parser.feed(lineno, raw)
    snaps = parser.finish()
    if parser.ignored_lines:
        log.info("%s: %d lines that are not /proc/stat ignored", source, parser.ignored_lines)
    return snaps


def parse_text(text: str, source: str = "<text>") -> list[Snapshot]:
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


def read_file(path: str | Path) -> list[Snapshot]:
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
) -> list[Snapshot]:
    """Read ``stat_path`` ``count`` times, ``interval_s`` apart, with times.

    Each snapshot gets the wall time of ``clock()`` just before the read and,
    when readable, the uptime from ``uptime_path`` just after it.
    """
    snaps: list[Snapshot] = []
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


# -- analysis ------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """What is known about the time between snapshot ``after - 1`` and ``after``."""

    after: int  # 0-based index of the later snapshot
    elapsed_ns: int | None
    bound: str  # which bound gave elapsed_ns (or why there is none)
    slack_ns: int = 0
    reboot: bool = False


@dataclass(frozen=True)
class Finding:
    """A checks.Violation placed in the snapshot sequence.

    ``violation.index`` is the (1-based) number of the later snapshot.
    A non-empty ``note`` means the kernel is known to do this: reported,
    but not counted as an anomaly.
    """

    violation: Violation
    snapshot_before: int | None  # 1-based
    snapshot_after: int  # 1-based
    bound: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        d = self.violation.to_dict()
        d.update(
            snapshot_before=self.snapshot_before,
            snapshot_after=self.snapshot_after,
            bound=self.bound,
            note=self.note,
        )
        return d


@dataclass
class Report:
    snapshots: list[Snapshot]
    cpus: list[str]
    findings: list[Finding]  # anomalies: exit 1
    notes: list[Finding]  # known kernel behaviour: shown, exit unaffected
    messages: list[str]  # what could not be checked, and why
    intervals: list[Interval]
    absolute_bounds: list[tuple[int | None, str]]  # per snapshot, per-CPU ns

    @property
    def verdict(self) -> str:
        return "anomaly" if self.findings else "clean"

    def to_dict(self) -> dict:
        return {
            "snapshots": len(self.snapshots),
            "sources": [s.source for s in self.snapshots],
            "cpus": self.cpus,
            "findings": [f.to_dict() for f in self.findings],
            "notes": [f.to_dict() for f in self.notes],
            "summary": checks.summarize([f.violation for f in self.findings]),
            "intervals": [
                {
                    "snapshot_before": iv.after,
                    "snapshot_after": iv.after + 1,
                    "elapsed_ns": iv.elapsed_ns,
                    "bound": iv.bound,
                    "slack_ns": iv.slack_ns,
                    "reboot": iv.reboot,
                }
                for iv in self.intervals
            ],
            "absolute_bounds": [
                {"snapshot": i + 1, "bound_ns": b, "bound": name}
                for i, (b, name) in enumerate(self.absolute_bounds)
            ],
            "messages": self.messages,
            "verdict": self.verdict,
        }


def _cpu_sort_key(name: str) -> tuple[int, int]:
    return (0, 0) if name == AGGREGATE else (1, int(name[3:]))


def _total(values: Sequence[int]) -> int:
    return sum(values[:TOTAL_COLUMNS])


def _lower_median(xs: list[int]) -> int:
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2]


def _interval(a: Snapshot, b: Snapshot, index: int, tick_ns: int) -> Interval:
    tick_slack = SLACK_TICKS * tick_ns
    if a.uptime_ns is not None and b.uptime_ns is not None and b.uptime_ns < a.uptime_ns:
        return Interval(index, None, "reboot (uptime went back)", reboot=True)
    if (
        a.processes is not None
        and b.processes is not None
        and b.processes < a.processes
        and (a.btime is None or b.btime is None or a.btime != b.btime)
    ):
        return Interval(index, None, "reboot (processes went back)", reboot=True)
    if a.uptime_ns is not None and b.uptime_ns is not None:
        slack = a.uptime_res_ns + b.uptime_res_ns + tick_slack
        return Interval(index, b.uptime_ns - a.uptime_ns, BOUND_UPTIME, slack)
    if a.time_ns is not None and b.time_ns is not None:
        if b.time_ns >= a.time_ns:
            slack = a.time_res_ns + b.time_res_ns + tick_slack
            return Interval(index, b.time_ns - a.time_ns, BOUND_TIMES, slack)
        log.warning("snapshot times go back between %s and %s", a.source, b.source)
    both = [n for n in b.per_cpu if n in a.cpus]
    if len(both) >= 2:
        advances = [_total(b.cpus[n]) - _total(a.cpus[n]) for n in both]
        est = _lower_median(advances) * tick_ns
        if est >= 0:
            slack = tick_slack + int(est * CPU_TIME_SLACK)
            name = f"{BOUND_CPU_TIME} (lower median of {len(both)} CPUs; no snapshot times)"
            return Interval(index, est, name, slack)
    return Interval(index, None, "no elapsed-time bound (no snapshot times, fewer than 2 CPUs)")


def _absolute(s: Snapshot, now_ns: int, tick_ns: int) -> tuple[int | None, str]:
    tick_slack = SLACK_TICKS * tick_ns
    if s.uptime_ns is not None:
        return s.uptime_ns + s.uptime_res_ns + tick_slack, BOUND_UPTIME
    if s.btime is not None and s.time_ns is not None:
        up = s.time_ns - s.btime * NS_PER_S
        if up >= 0:
            return up + NS_PER_S + s.time_res_ns + tick_slack, BOUND_BTIME
        return None, "none (snapshot time before btime)"
    if s.btime is not None:
        up = now_ns - s.btime * NS_PER_S
        if up >= 0:
            return up + NOW_SKEW_SLACK_NS + tick_slack, BOUND_NOW_BTIME
        return None, "none (btime in the future)"
    return None, "none (no btime, no uptime)"


def _ranges(nums: Iterable[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(set(nums)):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


class _SeriesChecker:
    """Runs the checks over one CPU line across the snapshots where it appears."""

    def __init__(self, report: _Analysis, name: str, positions: list[int]) -> None:
        self.a = report
        self.name = name
        self.positions = positions  # 0-based snapshot indices, one segment (no reboot)
        self.aggregate = name == AGGREGATE
        self.scale = report.n_cpus if self.aggregate else 1
        self.times = ""
        if self.aggregate:
            self.times = f" x {self.scale} CPU" + ("" if self.scale == 1 else "s")

    def values(self, k: int) -> tuple[int, ...]:
        return self.a.snaps[k].cpus[self.name]

    def finding(self, v: Violation, where: list[int], bound: str = "", note: str = "") -> Finding:
        after = where[v.index]
        before = where[v.index - 1] if v.before is not None and v.index > 0 else None
        wall = self.a.elapsed(before, after)[0] if before is not None else None
        v = dataclasses.replace(v, index=after + 1, wall_ns=wall)
        return Finding(v, None if before is None else before + 1, after + 1, bound, note)

    def run(self) -> None:
        for col, cname in enumerate(COLUMNS):
            where = [k for k in self.positions if len(self.values(k)) > col]
            if len(where) >= 1:
                self.monotonic(col, cname, where)
        steal_at = [k for k in self.positions if len(self.values(k)) > STEAL]
        if steal_at:
            self.bounded(steal_at)
            self.rate(steal_at)
            self.stalled(steal_at)

    def monotonic(self, col: int, cname: str, where: list[int]) -> None:
        samples = [Sample(0, self.values(k)[col]) for k in where]
        for v in checks.check_monotonic(self.name, samples, counter=cname, unit_ns=self.a.tick_ns):
            note = ""
            if v.kind == checks.KIND_DECREASE and col == IOWAIT:
                note = NOTE_IOWAIT
            elif v.kind == checks.KIND_DECREASE and col == IDLE:
                a, b = where[v.index - 1], where[v.index]
                # a CPU line: it was offline in between; the aggregate: the CPU set changed
                if self.a.hotplug_between(a, b) if self.aggregate else b - a > 1:
                    note = NOTE_IDLE_HOTPLUG
            self.a.add(self.finding(v, where, note=note))

    def bounded(self, where: list[int]) -> None:
        bounds: list[int | None] = []
        names: set[str] = set()
        for k in where:
            b, bname = self.a.absolute[k]
            if b is not None and self.scale:
                bounds.append(b * self.scale)
                names.add(bname)
            else:
                bounds.append(None)
        if not names:
            return
        label = " / ".join(sorted(names))
        if self.aggregate:
            label += self.times
        samples = [Sample(0, self.values(k)[STEAL]) for k in where]
        found = checks.check_bounded(
            self.name,
            samples,
            bound=bounds,
            bound_name=label,
            unit_ns=self.a.tick_ns,
            counter="steal",
        )
        flagged = {v.index for v in found}
        for v in found:
            if v.index - 1 in flagged:
                continue  # one report per run of implausible snapshots
            run = 1
            while v.index + run in flagged:
                run += 1
            if run > 1:
                v = dataclasses.replace(
                    v, detail=f"{v.detail}; also in the next {run - 1} snapshot(s)"
                )
            self.a.add(self.finding(v, where, bound=label))

    def rate(self, where: list[int]) -> None:
        if self.aggregate and not self.scale:
            return
        for a, b in zip(where, where[1:], strict=False):
            elapsed, slack, bound = self.a.elapsed(a, b)
            if elapsed is None:
                continue
            va, vb = self.values(a)[STEAL], self.values(b)[STEAL]
            label = bound + self.times
            for v in checks.check_rate(
                self.name,
                [Sample(0, va), Sample(elapsed, vb)],
                unit_ns=self.a.tick_ns,
                max_rate=self.scale,
                slack_ns=slack * self.scale,
                counter="steal",
            ):
                self.a.add(self.finding(v, [a, b], bound=label))

    def stalled(self, where: list[int]) -> None:
        def series(cols: Sequence[int]) -> list[Sample]:
            return [Sample(0, sum(self.values(k)[c] for c in cols)) for k in where]

        for v in checks.check_stalled(
            self.name,
            series((USER, NICE, SYSTEM)),
            series((STEAL,)),
            idle=series((IDLE, IOWAIT)),
            min_steal=MIN_STALL_STEAL_TICKS * self.scale,
            unit_ns=self.a.tick_ns,
            work_name="user+system",
        ):
            self.a.add(self.finding(v, where))


class _Analysis:
    def __init__(self, snaps: list[Snapshot], user_hz: int, now_ns: int) -> None:
        self.snaps = snaps
        self.tick_ns = NS_PER_S // user_hz
        self.n_cpus = max((len(s.per_cpu) for s in snaps), default=0)
        self.intervals = [
            _interval(snaps[k - 1], snaps[k], k, self.tick_ns) for k in range(1, len(snaps))
        ]
        self.absolute = [_absolute(s, now_ns, self.tick_ns) for s in snaps]
        self.findings: list[Finding] = []
        self.notes: list[Finding] = []
        self.messages: list[str] = []

    def add(self, f: Finding) -> None:
        (self.notes if f.note else self.findings).append(f)

    def elapsed(self, a: int, b: int) -> tuple[int | None, int, str]:
        """Elapsed ns between snapshots a < b (0-based), its slack and bound name."""
        total, slack, names = 0, 0, []
        for iv in self.intervals[a:b]:
            if iv.elapsed_ns is None:
                return None, 0, iv.bound
            total += iv.elapsed_ns
            slack += iv.slack_ns
            if iv.bound not in names:
                names.append(iv.bound)
        return total, slack, " + ".join(names)

    def hotplug_between(self, a: int, b: int) -> bool:
        """Whether the set of online CPUs changed anywhere from snapshot a to b."""
        return len({tuple(sorted(s.per_cpu)) for s in self.snaps[a : b + 1]}) > 1

    def run(self) -> Report:
        names = sorted({n for s in self.snaps for n in s.cpus}, key=_cpu_sort_key)
        for name in names:
            present = [k for k, s in enumerate(self.snaps) if name in s.cpus]
            segment: list[int] = []
            for k in present:
                if segment and any(iv.reboot for iv in self.intervals[segment[-1] : k]):
                    _SeriesChecker(self, name, segment).run()
                    segment = []
                segment.append(k)
            if segment:
                _SeriesChecker(self, name, segment).run()
            if name != AGGREGATE and len(present) != len(self.snaps):
                seen = set(present)  # a list would make this quadratic in snapshots
                absent = [k + 1 for k in range(len(self.snaps)) if k not in seen]
                self.messages.append(
                    f"{name} absent from snapshot(s) {_ranges(absent)} (CPU hotplug?); "
                    "compared across the gap"
                )
        self._describe()
        order = {n: i for i, n in enumerate(names)}
        cols = {c: i for i, c in enumerate(COLUMNS)}
        kinds = {k: i for i, k in enumerate(checks.ALL_KINDS)}

        def key(f: Finding) -> tuple:
            v = f.violation
            kind = kinds.get(v.kind, len(kinds))
            return (f.snapshot_after, order.get(v.series, 0), cols.get(v.counter, 99), kind)

        return Report(
            snapshots=self.snaps,
            cpus=names,
            findings=sorted(self.findings, key=key),
            notes=sorted(self.notes, key=key),
            messages=self.messages,
            intervals=self.intervals,
            absolute_bounds=self.absolute,
        )

    def _describe(self) -> None:
        widths: dict[int, list[int]] = {}
        for k, s in enumerate(self.snaps):
            for vals in s.cpus.values():
                widths.setdefault(len(vals), []).append(k + 1)
        for width, where in sorted(widths.items()):
            if width <= STEAL:
                self.messages.append(
                    f"snapshot(s) {_ranges(where)}: cpu lines have {width} columns "
                    f"({KERNEL_BY_COLUMNS.get(width, 'an old kernel')}), which print no "
                    "steal: steal not checked there"
                )
        by_bound: dict[str, list[int]] = {}
        for iv in self.intervals:
            by_bound.setdefault(iv.bound, []).append(iv.after + 1)
        for bound, where in by_bound.items():
            self.messages.append(
                f"elapsed time up to snapshot(s) {_ranges(where)} (from the one before): {bound}"
            )
        by_abs: dict[str, list[int]] = {}
        for k, (_, bname) in enumerate(self.absolute):
            by_abs.setdefault(bname, []).append(k + 1)
        for bname, where in by_abs.items():
            self.messages.append(f"steal bound in snapshot(s) {_ranges(where)}: {bname}")
        if self.n_cpus == 0 and any(AGGREGATE in s.cpus for s in self.snaps):
            self.messages.append("no per-CPU lines: the aggregate line's steal is not bounded")


def analyze(
    snapshots: Sequence[Snapshot], *, user_hz: int = DEFAULT_USER_HZ, now_ns: int | None = None
) -> Report:
    """Run every check over ``snapshots`` (in time order) and return the report.

    ``now_ns`` (default: the current time) bounds the time of snapshots that
    carry none, for the ``now - btime`` bound.
    """
    if user_hz <= 0:
        raise ValueError(f"user_hz must be positive, got {user_hz}")
    if now_ns is None:
        now_ns = time.time_ns()
    return _Analysis(list(snapshots), user_hz, now_ns).run()


# -- output --------------------------------------------------------------------


def _rows(findings: Sequence[Finding]) -> list[list[str]]:
    rows = []
    for f in findings:
        v = f.violation
        span = (
            f"{f.snapshot_before}->{f.snapshot_after}"
            if f.snapshot_before
            else str(f.snapshot_after)
        )
        detail = v.detail
        if f.bound and f.bound not in detail:
            detail = f"[{f.bound}] {detail}"
        if f.note:
            detail = f"{detail} ({f.note})"
        rows.append(
            [
                v.series,
                v.counter,
                "" if v.before is None else checks.format_value(v.before),
                "" if v.after is None else checks.format_value(v.after),
                "" if v.delta is None else str(v.delta),
                v.kind,
                span,
                detail,
            ]
        )
    return rows


HEADERS = ["CPU", "counter", "before", "after", "delta", "kind", "snapshots", "bound / detail"]


def render_text(report: Report) -> str:
    """The human report: findings table, notes table, what was (not) checked."""
    from tabulate import tabulate

    lines = [
        f"{len(report.snapshots)} snapshot(s), {len(report.cpus)} cpu line(s): "
        + ", ".join(report.cpus)
    ]
    if report.findings:
        lines += ["", tabulate(_rows(report.findings), headers=HEADERS)]
    if report.notes:
        lines += ["", "Notes (known kernel behaviour, not counted):"]
        lines += [tabulate(_rows(report.notes), headers=HEADERS)]
    lines += [""] + [f"- {m}" for m in report.messages]
    summary = checks.summarize([f.violation for f in report.findings])
    counts = ", ".join(f"{k} {n}" for k, n in summary.items())
    lines += ["", f"verdict: {report.verdict}" + (f" ({counts})" if counts else "")]
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "procstat",
        help="find steal-time anomalies in guest /proc/stat snapshots",
        description=(
            "Check /proc/stat snapshots (in time order) for steal going down, wrapping or "
            "outrunning time, user+system stalling while steal grows, and other counters "
            "going back. Exit 0 clean, 1 anomaly found, 2 bad input."
        ),
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="/proc/stat snapshots ('-': stdin)")
    p.add_argument("--live", action="store_true", help="sample the local /proc/stat instead")
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between live samples (default 1)",
    )
    p.add_argument(
        "--count", type=int, default=5, metavar="N", help="number of live samples (default 5)"
    )
    p.add_argument(
        "--user-hz",
        type=int,
        default=DEFAULT_USER_HZ,
        help="ticks per second of the counters (default 100)",
    )
    p.add_argument("--json", metavar="FILE", help="write a JSON report to FILE ('-': stdout)")
    p.add_argument("--stat-path", default="/proc/stat", help=argparse.SUPPRESS)
    p.add_argument("--uptime-path", default="/proc/uptime", help=argparse.SUPPRESS)
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from kvmharness.exitcodes import EXIT_BROKEN, EXIT_OK, UsageError

    if args.live and args.files:
        raise UsageError("give FILE arguments or --live, not both")
    if not args.live and not args.files:
        raise UsageError("give /proc/stat FILE arguments, or --live")
    if not 0 < args.user_hz <= MAX_USER_HZ:  # beyond, a tick would be under 1 us
        raise UsageError(f"--user-hz must be 1 to {MAX_USER_HZ}, got {args.user_hz}")
    snaps: list[Snapshot] = []
    if args.live:
        if args.count < 1:
            raise UsageError(f"--count must be at least 1, got {args.count}")
        if not 0 < args.interval <= MAX_INTERVAL_S:  # also refuses nan
            raise UsageError(
                f"--interval must be more than 0 and at most {MAX_INTERVAL_S} seconds "
                f"(one day), got {args.interval}"
            )

        def progress(i: int, n: int) -> None:
            print(f"kvmharness procstat: sample {i}/{n}", file=sys.stderr)

        try:
            snaps = sample_live(
                args.count,
                args.interval,
                stat_path=args.stat_path,
                uptime_path=args.uptime_path,
                progress=progress,
            )
        except OSError as exc:
            raise UsageError(f"{args.stat_path}: {exc.strerror or exc}") from exc
        except ProcStatError as exc:
            raise UsageError(f"{args.stat_path}: {exc}") from exc
    else:
        for path in args.files:
            name = "<stdin>" if path == "-" else path
            try:
                snaps += read_file(path)
            except OSError as exc:
                raise UsageError(f"{name}: {exc.strerror or exc}") from exc
            except ProcStatError as exc:
                raise UsageError(f"{name}: {exc}") from exc
    report = analyze(snaps, user_hz=args.user_hz)
    doc = json.dumps(report.to_dict(), indent=2)
    if args.json == "-":
        print(doc)
    else:
        print(render_text(report))
        if args.json:
            try:
                Path(args.json).write_text(doc + "\n")
            except OSError as exc:
                raise UsageError(f"{args.json}: {exc.strerror or exc}") from exc
    return EXIT_BROKEN if report.findings else EXIT_OK
