"""The checks over a series of parsed /proc/stat snapshots.

The rules themselves are :mod:`kvmharness.checks`, shared with the KVM
scenarios; this module works out the bounds they need, runs them over each
CPU line (and the aggregate ``cpu`` line), and gathers the findings into a
:class:`Report`.

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

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kvmharness import checks
from kvmharness.checks import Sample, Violation
from kvmharness.procstat.parse import (
    AGGREGATE,
    COLUMNS,
    DEFAULT_USER_HZ,
    IDLE,
    IOWAIT,
    KERNEL_BY_COLUMNS,
    NICE,
    NS_PER_S,
    STEAL,
    SYSTEM,
    TOTAL_COLUMNS,
    USER,
    ProcStatSnapshot,
)

log = logging.getLogger(__name__)

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

NOTE_IOWAIT = "iowait may go down (Documentation/filesystems/proc.rst)"
NOTE_IDLE_HOTPLUG = "idle may go down across a CPU hot-unplug"


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
    snapshots: list[ProcStatSnapshot]
    cpus: list[str]
    findings: list[Finding]  # anomalies: exit 1
    notes: list[Finding]  # known kernel behaviour: shown, exit unaffected
    messages: list[str]  # what could not be checked, and why
    intervals: list[Interval]
    absolute_bounds: list[tuple[int | None, str]]  # per snapshot, per-CPU ns
    user_hz: int = DEFAULT_USER_HZ

    def steal(self) -> dict[str, dict[str, int | float | None]]:
        """Per cpu line (the aggregate ``cpu`` first): steal at the first and
        the last snapshot (ns), how much it grew (the sum over intervals of
        its growth, a reboot's and a decrease's left out), and that growth as
        a share of the CPU time that passed (all columns' growth)."""
        out: dict[str, dict[str, int | float | None]] = {}
        reboots = {iv.after for iv in self.intervals if iv.reboot}
        for name in self.cpus:
            rows = [(k, s.cpus.get(name)) for k, s in enumerate(self.snapshots)]
            rows = [(k, v) for k, v in rows if v is not None and len(v) > STEAL]
            if not rows:
                continue
            grown = total = 0
            for (ka, a), (kb, b) in zip(rows, rows[1:], strict=False):
                # interval numbers are 1-based, of their earlier snapshot
                if any(k + 1 in reboots for k in range(ka, kb)) or b[STEAL] < a[STEAL]:
                    continue
                grown += b[STEAL] - a[STEAL]
                total += max(0, _total(b) - _total(a))
            out[name] = {
                "first_ns": self._ns(rows[0][1][STEAL]),
                "last_ns": self._ns(rows[-1][1][STEAL]),
                "grown_ns": self._ns(grown),
                "share": round(grown / total, 4) if total else None,
            }
        return out

    def _ns(self, ticks: int) -> int:
        return ticks * NS_PER_S // self.user_hz

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
            "summary": {
                "anomalies": checks.summarize([f.violation for f in self.findings]),
                "steal": self.steal(),
            },
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


def _interval(a: ProcStatSnapshot, b: ProcStatSnapshot, index: int, tick_ns: int) -> Interval:
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


def _absolute(s: ProcStatSnapshot, now_ns: int, tick_ns: int) -> tuple[int | None, str]:
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
    def __init__(self, snaps: list[ProcStatSnapshot], user_hz: int, now_ns: int) -> None:
        self.snaps = snaps
        self.user_hz = user_hz
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
            user_hz=self.user_hz,
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
    snapshots: Sequence[ProcStatSnapshot],
    *,
    user_hz: int = DEFAULT_USER_HZ,
    now_ns: int | None = None,
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
