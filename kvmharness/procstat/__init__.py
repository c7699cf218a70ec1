"""Steal-time anomalies in a guest's /proc/stat: the library behind ``kvmharness procstat``.

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

The package, in the order data flows through it:

* :mod:`~kvmharness.procstat.parse`: reading inputs (regular files and
  standard input only, size-capped) and parsing them into
  :class:`ProcStatSnapshot` objects; the input format and the caps;
* :mod:`~kvmharness.procstat.analyze`: the bounds and the checks of
  :mod:`kvmharness.checks` over the parsed series, giving a :class:`Report`;
* :mod:`~kvmharness.procstat.render`: the text tables and the JSON document.

The command line is :mod:`kvmharness.cli.procstat`; nothing here imports
:mod:`kvmharness.cli`.

The public names of all three are re-exported here. Note that
``kvmharness.procstat.analyze`` is the :func:`analyze` function; the module of
that name is ``sys.modules["kvmharness.procstat.analyze"]``.
"""

from __future__ import annotations

from kvmharness.procstat.analyze import (
    BOUND_BTIME,
    BOUND_CPU_TIME,
    BOUND_NOW_BTIME,
    BOUND_TIMES,
    BOUND_UPTIME,
    CPU_TIME_SLACK,
    MIN_STALL_STEAL_TICKS,
    NOTE_IDLE_HOTPLUG,
    NOTE_IOWAIT,
    NOW_SKEW_SLACK_NS,
    SLACK_TICKS,
    Finding,
    Interval,
    Report,
    analyze,
)
from kvmharness.procstat.parse import (
    AGGREGATE,
    COLUMNS,
    DEFAULT_USER_HZ,
    GUEST,
    GUEST_NICE,
    IDLE,
    IOWAIT,
    IRQ,
    KERNEL_BY_COLUMNS,
    MAX_COLUMNS,
    MAX_CPU_LINES,
    MAX_INPUT_BYTES,
    MAX_INTERVAL_S,
    MAX_SNAPSHOTS,
    MAX_USER_HZ,
    MIN_COLUMNS,
    NICE,
    NS_PER_S,
    SOFTIRQ,
    STEAL,
    SYSTEM,
    TOTAL_COLUMNS,
    U64,
    USER,
    ProcStatError,
    ProcStatSnapshot,
    parse_text,
    read_bytes,
    read_file,
    sample_live,
)
from kvmharness.procstat.render import HEADERS, render_json, render_text

__all__ = [
    "AGGREGATE",
    "BOUND_BTIME",
    "BOUND_CPU_TIME",
    "BOUND_NOW_BTIME",
    "BOUND_TIMES",
    "BOUND_UPTIME",
    "COLUMNS",
    "CPU_TIME_SLACK",
    "DEFAULT_USER_HZ",
    "GUEST",
    "GUEST_NICE",
    "HEADERS",
    "IDLE",
    "IOWAIT",
    "IRQ",
    "KERNEL_BY_COLUMNS",
    "MAX_COLUMNS",
    "MAX_CPU_LINES",
    "MAX_INPUT_BYTES",
    "MAX_INTERVAL_S",
    "MAX_SNAPSHOTS",
    "MAX_USER_HZ",
    "MIN_COLUMNS",
    "MIN_STALL_STEAL_TICKS",
    "NICE",
    "NOTE_IDLE_HOTPLUG",
    "NOTE_IOWAIT",
    "NOW_SKEW_SLACK_NS",
    "NS_PER_S",
    "SLACK_TICKS",
    "SOFTIRQ",
    "STEAL",
    "SYSTEM",
    "TOTAL_COLUMNS",
    "U64",
    "USER",
    "Finding",
    "Interval",
    "ProcStatError",
    "ProcStatSnapshot",
    "Report",
    "analyze",
    "parse_text",
    "read_bytes",
    "read_file",
    "render_json",
    "render_text",
    "sample_live",
]
