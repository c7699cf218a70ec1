"""Pure checks over series of paravirtual-time counter samples.

Everything here is arithmetic on :class:`Sample` lists: no KVM, no I/O, no
clock. The same functions serve the KVM steal-time scenarios (counters in
nanoseconds, ``unit_ns=1``) and ``kvmharness procstat`` (guest ``/proc/stat``
counters in USER_HZ ticks, ``unit_ns=10_000_000`` at 100 Hz), so a rule is
written once.

The physics the checks encode
-----------------------------
* Steal time is the time a vCPU was runnable but not running (KVM: the
  ``run_delay`` of the host thread that issues ``KVM_RUN``; Xen: runstate
  runnable + offline). It is a cumulative counter, so it never decreases
  (:func:`check_monotonic`).
* A vCPU cannot wait for longer than the time that passed, so per vCPU steal
  grows at most as fast as wall time: ``max_rate=1.0`` in :func:`check_rate`.
  An aggregate over N CPUs (the ``cpu`` line of /proc/stat) grows at most N
  times as fast: ``max_rate=N``. For the same reason the absolute value is at
  most the time since boot (:func:`check_bounded`).
* The counter is a ``u64``. A host computing ``now - last`` where ``last``
  came from another thread (the 2015 KVM restore bug) gets a negative delta,
  stored as ``2**64 - small``. Genuine counters stay far below ``2**63`` ns
  (292 years), so any value or increase at or above ``2**63`` ns is named a
  u64 wrap rather than a mere jump (:data:`KIND_WRAP`).
* Exactly, per vCPU thread (:func:`check_follows_run_delay`): KVM adds
  ``run_delay - last_steal`` of the thread that issues ``KVM_RUN`` at guest
  entry, and the first entry of every ``KVM_RUN`` updates (``vcpu_load``
  requests it).  With the thread's run_delay read just before (``pre``) and
  just after (``post``) each ``KVM_RUN``, for two readings ``a`` before
  ``b`` by the same thread on the same vCPU::

      pre[b] - post[a]  <=  steal[b] - steal[a]  <=  post[b] - pre[a]

  Both ends come from the kernel's own account of the thread's waiting
  (``/proc/self/task/TID/schedstat``), not from how much CPU the thread got,
  so load cannot move them.  A vCPU that starts from ``last_steal = 0`` (a
  new vCPU) or whose KVM_RUN moved to another thread may charge that
  thread's whole run_delay at its first update, and only once per vCPU life
  and runner thread: from the area's value when the stretch began (the
  host's reading after the last KVM_RUN before it) to any reading ``b`` up
  to and just after that update, ``steal[b] - base <= post[b]``.  Both
  bounds are exact; "alive" is judged at :data:`ALIVE_FRACTION` of the lower
  one, per contended phase, so it means steal follows run_delay, never that
  the scheduler handed out a share of a wall-clock window.
* The steal-time area is a seqlock: ``version`` is odd while the host writes
  it and advances by two per update, so a reader that sees an odd version or
  a changed value under an unchanged version saw a torn or unpublished update
  (:func:`check_versions`).

Conventions: every ``check_*`` returns ``list[Violation]`` and never raises on
odd data (empty series, ``t_ns`` missing, negative values); it raises
``ValueError`` only for nonsensical parameters. ``index`` in a violation is
the index in the series passed in of the later sample of the pair (or of the
sample itself). Bounds and slack are always given in nanoseconds; counter
values are in the series' unit, ``unit_ns`` nanoseconds each.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

U64 = 1 << 64
WRAP_THRESHOLD = 1 << 63
U32 = 1 << 32

KIND_DECREASE = "decrease"
KIND_WRAP = "u64-wrap"  # delta >= 2**63, or value >= 2**63: a negative delta stored as u64
KIND_TOO_FAST = "too-fast"  # increase larger than elapsed wall time allows (times rate, + slack)
KIND_ODD_VERSION = "odd-version"
KIND_VERSION_STALE = "version-not-advanced"  # value changed but version did not advance
KIND_NOT_ALIVE = "not-alive"  # under contention the counter grew less than a stated fraction
KIND_IMPLAUSIBLE = "implausible"  # absolute value impossible (e.g. steal larger than uptime)
KIND_STALLED = "stalled"  # (procstat) user+system stopped advancing while steal grows
KIND_OVER_RUN_DELAY = "over-run-delay"  # steal grew more than the thread's run_delay did
KIND_STUCK = "stuck"  # a vCPU never came back from KVM_RUN within the scenario's budget

ALL_KINDS: tuple[str, ...] = (
    KIND_DECREASE,
    KIND_WRAP,
    KIND_TOO_FAST,
    KIND_ODD_VERSION,
    KIND_VERSION_STALE,
    KIND_NOT_ALIVE,
    KIND_IMPLAUSIBLE,
    KIND_STALLED,
    KIND_OVER_RUN_DELAY,
    KIND_STUCK,
)

#: Default slack of :func:`check_series` on top of one counter unit: how stale
#: a published value may be when read. KVM refreshes the steal-time area only
#: when a vCPU enters the guest, and a guest kernel folds steal into
#: /proc/stat only at its timer tick; 10 ms covers one tick at HZ=100.
DEFAULT_SLACK_NS = 10_000_000

TICK_NS_100HZ = 10_000_000


@dataclass(frozen=True)
class Sample:
    """One reading of a counter."""

    t_ns: int  # wall-clock time of the reading, ns (any common origin)
    value: int  # counter value, in the series' unit
    version: int | None = None  # seqlock version read with it (steal-time area), if any


@dataclass(frozen=True)
class Violation:
    """One broken rule, located in a series."""

    kind: str  # one of the KIND_* constants
    series: str  # e.g. "vcpu0", "cpu3", "cpu"
    index: int  # index of the later sample of the pair (or the sample itself)
    before: int | None
    after: int | None
    delta: int | None  # after - before (Python int, may be negative)
    wall_ns: int | None  # wall time between the two samples
    detail: str = ""  # human sentence
    counter: str = ""  # e.g. "steal", "user", "version"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunDelay:
    """The runner thread's run_delay around the ``KVM_RUN`` that produced a reading."""

    pre_ns: int  # run_delay just before KVM_RUN was issued
    post_ns: int  # run_delay just after it returned
    fresh: bool = False
    """KVM's last_steal may not come from this thread's run_delay: a new vCPU
    (last_steal 0) or KVM_RUN moved here, until KVM's first update under it."""
    start: bool = False  # a new stretch (new vCPU or thread) starts at this reading
    base: int | None = None
    """At a stretch's first reading: the area's value before the stretch began
    (the host's reading after the last KVM_RUN before it), if known.  The
    stretch's fresh readings may add the thread's whole run_delay to it, once."""
    phase_start: bool = False  # a new contended phase: "alive" is judged per phase
    zero_start: bool = False
    """A new vCPU starts at this reading: KVM's last_steal is 0, so by any
    later reading ``b`` of the stretch it has charged the thread's whole
    run_delay, at least ``pre[b]``, on top of ``base``."""


_AUTO = object()


def violation(
    kind: str,
    series: str,
    index: int,
    before: int | None,
    after: int | None,
    detail: str,
    *,
    wall_ns: int | None = None,
    counter: str = "steal",
    delta: Any = _AUTO,
) -> Violation:
    """The one way to build a :class:`Violation`; ``delta`` defaults to
    ``after - before`` (None when either is unknown)."""
    if delta is _AUTO:
        delta = after - before if before is not None and after is not None else None
    return Violation(
        kind=kind,
        series=series,
        index=index,
        before=before,
        after=after,
        delta=delta,
        wall_ns=wall_ns,
        detail=detail,
        counter=counter,
    )


# -- formatting helpers (used in detail sentences) ---------------------------


def format_value(value: int | None) -> str:
    """``value`` as text, naming values near 2**64 as ``2^64-N``."""
    if value is None:
        return "?"
    if WRAP_THRESHOLD <= value < U64:
        return f"2^64-{U64 - value}"
    return str(value)


def format_ns(ns: int | float | Fraction) -> str:
    """A duration in ns as a short human string (``12 ms``, ``3.2 years``)."""
    x = float(ns)
    sign = "-" if x < 0 else ""
    x = abs(x)
    for limit, div, unit in (
        (1e3, 1.0, "ns"),
        (1e6, 1e3, "us"),
        (1e9, 1e6, "ms"),
        (86400e9 * 2, 1e9, "s"),
        (86400e9 * 365 * 2, 86400e9, "days"),
    ):
        if x < limit:
            return f"{sign}{x / div:.4g} {unit}"
    return f"{sign}{x / (86400e9 * 365.25):.4g} years"


def ns_or_dash(ns: int | None) -> str:
    """:func:`format_ns`, or ``-`` for a figure that was not measured (table cells)."""
    return "-" if ns is None else format_ns(ns)


def _span(before: int | None, after: int | None) -> str:
    return f"from {format_value(before)} to {format_value(after)}"


def unit_name(unit_ns: int) -> str:
    if unit_ns == 1:
        return "ns"
    if unit_ns == TICK_NS_100HZ:
        return "ticks"
    return f"units of {unit_ns} ns"


def _exact(x: float) -> Fraction:
    """A rate or fraction as the decimal the caller wrote (0.1 is 1/10, not 0.1000...0555)."""
    return Fraction(str(x)) if isinstance(x, float) else Fraction(x)


def _check_unit(unit_ns: int) -> None:
    if unit_ns <= 0:
        raise ValueError(f"unit_ns must be positive, got {unit_ns}")


def _wall(a: Sample, b: Sample) -> int | None:
    ta, tb = getattr(a, "t_ns", None), getattr(b, "t_ns", None)
    if ta is None or tb is None:
        return None
    return tb - ta


def is_wrapped_value(value: int, unit_ns: int = 1) -> bool:
    """True when ``value`` (in units) is at or above 2**63 ns: a negative u64."""
    return value * unit_ns >= WRAP_THRESHOLD


def is_wrap_pair(before: int, after: int, unit_ns: int = 1) -> bool:
    """True when the step ``before -> after`` is a u64 wrap.

    Either the increase itself is at least 2**63 ns (a negative delta added
    as u64), or the counter crossed from a sane value to one at or above
    2**63 ns (the counter itself became negative).
    """
    return (after - before) * unit_ns >= WRAP_THRESHOLD or (
        is_wrapped_value(after, unit_ns) and not is_wrapped_value(before, unit_ns)
    )


# -- checks -------------------------------------------------------------------


def check_monotonic(
    series: str, samples: Sequence[Sample], *, counter: str = "steal", unit_ns: int = 1
) -> list[Violation]:
    """A cumulative counter must never go down, nor wrap.

    Each consecutive pair is classified:

    * :data:`KIND_WRAP` when the increase is at least 2**63 ns, or the value
      jumps from below to at or above 2**63 ns. The detail names the negative
      delta that, stored as u64, explains it (``delta - 2**64``).
    * :data:`KIND_DECREASE` for any other negative delta (the Xen 2017
      symptom; also the return from a wrapped value to a sane one).

    A series whose first sample is already at or above 2**63 ns is reported
    as a wrap at index 0 (``before`` None). ``unit_ns`` scales the 2**63
    threshold for counters kept in coarser units (USER_HZ ticks).
    """
    _check_unit(unit_ns)
    out: list[Violation] = []
    unit = unit_name(unit_ns)
    if samples and is_wrapped_value(samples[0].value, unit_ns):
        v = samples[0].value
        out.append(
            violation(
                KIND_WRAP,
                series,
                0,
                None,
                v,
                f"{counter} starts at {format_value(v)} {unit}, at or above 2^63 ns: "
                f"a negative value ({format_ns(v * unit_ns - U64)}) stored as u64",
                wall_ns=None,
                counter=counter,
                delta=None,
            )
        )
    for i in range(1, len(samples)):
        a, b = samples[i - 1], samples[i]
        delta = b.value - a.value
        wall = _wall(a, b)
        if is_wrap_pair(a.value, b.value, unit_ns):
            delta_ns = delta * unit_ns
            if delta_ns >= WRAP_THRESHOLD:
                why = f"u64 wrap of a {format_ns(delta_ns - U64)} delta"
                if unit_ns == 1:
                    why = f"u64 wrap of a {delta - U64} ns delta"
            else:
                why = (
                    f"the value is at or above 2^63 ns: a negative value "
                    f"({format_ns(b.value * unit_ns - U64)}) stored as u64"
                )
            out.append(
                violation(
                    KIND_WRAP,
                    series,
                    i,
                    a.value,
                    b.value,
                    f"{counter} went {_span(a.value, b.value)} {unit} ({why})",
                    wall_ns=wall,
                    counter=counter,
                    delta=delta,
                )
            )
        elif delta < 0:
            extra = ""
            if is_wrapped_value(a.value, unit_ns):
                extra = " (back from a wrapped value)"
            out.append(
                violation(
                    KIND_DECREASE,
                    series,
                    i,
                    a.value,
                    b.value,
                    f"{counter} went {_span(a.value, b.value)} {unit}: down by {-delta}{extra}",
                    wall_ns=wall,
                    counter=counter,
                    delta=delta,
                )
            )
    return out


def check_rate(
    series: str,
    samples: Sequence[Sample],
    *,
    unit_ns: int = 1,
    max_rate: float = 1.0,
    slack_ns: int = 0,
    counter: str = "steal",
) -> list[Violation]:
    """An increase may not exceed the wall time that passed.

    For each consecutive pair the increase (in units) must satisfy
    ``increase * unit_ns <= wall_ns * max_rate + slack_ns``; otherwise
    :data:`KIND_TOO_FAST`. Per vCPU, steal cannot exceed elapsed time, hence
    ``max_rate=1.0``; an aggregate over N CPUs uses ``max_rate=N``. Use
    ``slack_ns`` for timestamp resolution, counter quantization (one unit)
    and publication lag. Pairs that are u64 wraps (see :func:`is_wrap_pair`)
    are left to :func:`check_monotonic` and not reported twice; decreases are
    ignored here. A negative wall time counts as zero; pairs with a missing
    ``t_ns`` are skipped. Comparisons are exact (``Fraction``, ``max_rate``
    taken as the decimal written), so huge ns values lose no precision.
    """
    _check_unit(unit_ns)
    if max_rate < 0 or slack_ns < 0:
        raise ValueError("max_rate and slack_ns must not be negative")
    rate = _exact(max_rate)
    unit = unit_name(unit_ns)
    out: list[Violation] = []
    for i in range(1, len(samples)):
        a, b = samples[i - 1], samples[i]
        delta = b.value - a.value
        if delta <= 0 or is_wrap_pair(a.value, b.value, unit_ns):
            continue
        wall = _wall(a, b)
        if wall is None:
            continue
        allowed_ns = max(wall, 0) * rate + slack_ns
        if delta * unit_ns > allowed_ns:
            allowed_units = allowed_ns / unit_ns
            rate_txt = "" if rate == 1 else f" x {max_rate:g}"
            out.append(
                violation(
                    KIND_TOO_FAST,
                    series,
                    i,
                    a.value,
                    b.value,
                    f"{counter} grew by {delta} {unit} ({format_ns(delta * unit_ns)}) in "
                    f"{format_ns(wall)} of wall time; at most {float(allowed_units):.6g} "
                    f"allowed (elapsed{rate_txt} + {format_ns(slack_ns)} slack)",
                    wall_ns=wall,
                    counter=counter,
                    delta=delta,
                )
            )
    return out


def _version_advanced(v0: int, v1: int) -> bool:
    """Whether a u32 seqlock version moved forward (modulo 2**32)."""
    step = (v1 - v0) % U32
    return 0 < step < U32 // 2


def check_versions(series: str, samples: Sequence[Sample]) -> list[Violation]:
    """Seqlock discipline of a steal-time area read together with its version.

    * An odd version is :data:`KIND_ODD_VERSION`: the sample was taken while
      the host was writing the area, so its value cannot be trusted.
    * Between consecutive versioned samples whose value differs, the version
      must have moved forward (u32, modulo 2**32): otherwise
      :data:`KIND_VERSION_STALE` (the value changed without a published
      update, or the version went back).

    Samples whose version is None are skipped. In these violations
    ``counter`` is ``"version"`` and ``before``/``after``/``delta`` are the
    versions (``before`` None for an odd version); the detail sentence gives
    the counter values.
    """
    out: list[Violation] = []
    prev: tuple[int, Sample] | None = None
    for i, s in enumerate(samples):
        if s.version is None:
            continue
        if s.version % 2:
            out.append(
                violation(
                    KIND_ODD_VERSION,
                    series,
                    i,
                    None,
                    s.version,
                    f"version {s.version} is odd (value {format_value(s.value)}): "
                    "read while the host was updating the area",
                    wall_ns=None,
                    counter="version",
                    delta=None,
                )
            )
        if prev is not None:
            j, p = prev
            assert p.version is not None
            if s.value != p.value and not _version_advanced(p.version, s.version):
                out.append(
                    violation(
                        KIND_VERSION_STALE,
                        series,
                        i,
                        p.version,
                        s.version,
                        f"value went {_span(p.value, s.value)} but version went "
                        f"{_span(p.version, s.version)} (sample {j} to {i})",
                        wall_ns=_wall(p, s),
                        counter="version",
                        delta=s.version - p.version,
                    )
                )
        prev = (i, s)
    return out


def check_alive(
    series: str,
    before: Sample,
    after: Sample,
    *,
    contended_ns: int,
    min_fraction: float,
    unit_ns: int = 1,
    counter: str = "steal",
    index: int = 1,
) -> list[Violation]:
    """Under known contention the counter must grow by a stated fraction.

    When the vCPU's host thread shared a CPU with a busy process for
    ``contended_ns``, it waited on the run queue for a good part of that
    time, so steal must grow by at least ``min_fraction * contended_ns``
    (``(after.value - before.value) * unit_ns``); otherwise
    :data:`KIND_NOT_ALIVE` (steal time not being published at all, e.g.
    the MSR not enabled, or enabled from the wrong thread). ``index`` is put
    in the violation (default 1: ``after`` is the second sample of the pair).
    Nothing is checked when ``contended_ns <= 0``.
    """
    _check_unit(unit_ns)
    if contended_ns <= 0:
        return []
    growth = after.value - before.value
    need_ns = _exact(min_fraction) * contended_ns
    if growth * unit_ns >= need_ns:
        return []
    return [
        violation(
            KIND_NOT_ALIVE,
            series,
            index,
            before.value,
            after.value,
            f"{counter} grew by {format_ns(growth * unit_ns)} during "
            f"{format_ns(contended_ns)} of contention; expected at least "
            f"{min_fraction:g} of it ({format_ns(need_ns)})",
            wall_ns=_wall(before, after),
            counter=counter,
            delta=growth,
        )
    ]


def check_bounded(
    series: str,
    samples: Sequence[Sample],
    *,
    bound: int | Sequence[int | None],
    bound_name: str,
    unit_ns: int = 1,
    counter: str = "steal",
) -> list[Violation]:
    """A counter's absolute value may not exceed a physical bound.

    ``bound`` is in **nanoseconds**, either one number for all samples or a
    sequence with one entry per sample (None: unknown, skip that sample),
    e.g. the uptime at each snapshot. A sample with
    ``value * unit_ns > bound`` is :data:`KIND_IMPLAUSIBLE`; the detail names
    ``bound_name`` (say which bound, e.g. ``"uptime from btime"``). Steal of
    one vCPU cannot exceed the time since boot; an aggregate over N CPUs
    takes N times that. ``before``/``delta`` are None, ``after`` is the value.
    """
    _check_unit(unit_ns)
    unit = unit_name(unit_ns)
    out: list[Violation] = []
    for i, s in enumerate(samples):
        if isinstance(bound, int):
            b: int | None = bound
        else:
            b = bound[i] if i < len(bound) else None
        if b is None:
            continue
        if s.value * unit_ns > b:
            out.append(
                violation(
                    KIND_IMPLAUSIBLE,
                    series,
                    i,
                    None,
                    s.value,
                    f"{counter} is {format_value(s.value)} {unit} "
                    f"({format_ns(s.value * unit_ns)}), more than the {bound_name} "
                    f"({format_ns(b)})",
                    wall_ns=None,
                    counter=counter,
                    delta=None,
                )
            )
    return out


def check_stalled(
    series: str,
    work: Sequence[Sample],
    steal: Sequence[Sample],
    *,
    idle: Sequence[Sample] | None = None,
    min_steal: int = 1,
    unit_ns: int = 1,
    work_name: str = "user+system",
) -> list[Violation]:
    """Busy time must keep being accounted while steal grows.

    ``work``, ``steal`` (and optionally ``idle``) are aligned series (same
    readings, same unit). For each consecutive pair, when steal grew by at
    least ``min_steal`` units while ``work`` (e.g. user+nice+system) did not
    move at all, the CPU accounted nothing but steal: :data:`KIND_STALLED`,
    the 2015 KVM symptom where a wrapped steal delta swallowed every tick.
    With ``idle`` given, a pair is only reported when steal grew at least as
    much as idle, so a mostly idle vCPU that saw a little steal is not
    flagged. Series of unequal length are compared over the shorter one.
    ``before``/``after``/``delta`` are the ``work`` values.
    """
    _check_unit(unit_ns)
    unit = unit_name(unit_ns)
    n = min(len(work), len(steal), len(idle) if idle is not None else len(work))
    out: list[Violation] = []
    for i in range(1, n):
        d_work = work[i].value - work[i - 1].value
        d_steal = steal[i].value - steal[i - 1].value
        if d_work != 0 or d_steal < max(min_steal, 1):
            continue
        idle_txt = ""
        if idle is not None:
            d_idle = idle[i].value - idle[i - 1].value
            if d_steal < d_idle:
                continue
            idle_txt = f", idle grew by {d_idle}"
        out.append(
            violation(
                KIND_STALLED,
                series,
                i,
                work[i - 1].value,
                work[i].value,
                f"{work_name} stayed at {work[i].value} {unit} while steal grew by "
                f"{format_value(d_steal)}{idle_txt}",
                wall_ns=_wall(work[i - 1], work[i]),
                counter=work_name,
                delta=d_work,
            )
        )
    return out


def check_series(
    series: str,
    samples: Sequence[Sample],
    *,
    unit_ns: int = 1,
    max_rate: float = 1.0,
    slack_ns: int | None = None,
    counter: str = "steal",
) -> list[Violation]:
    """Monotonic + rate + seqlock versions over one series, in that order.

    ``slack_ns`` None means one counter unit (quantization) plus
    :data:`DEFAULT_SLACK_NS`. Callers that read a published area long after
    it was last refreshed (e.g. a long ``KVM_RUN`` before the read) should
    pass that staleness explicitly.
    """
    if slack_ns is None:
        slack_ns = unit_ns + DEFAULT_SLACK_NS
    out = check_monotonic(series, samples, counter=counter, unit_ns=unit_ns)
    out += check_rate(
        series, samples, unit_ns=unit_ns, max_rate=max_rate, slack_ns=slack_ns, counter=counter
    )
    out += check_versions(series, samples)
    return out


#: Run_delay growth below which "alive" is not judged: too little waiting to
#: tell a live steal clock from a dead one.
ALIVE_MIN_RUN_DELAY_NS = 4_000_000

#: "Alive": over a stretch of readings ``a`` to ``b`` by one thread, steal must
#: grow by at least this share of ``pre[b] - post[a]``.  Physics gives 1 at
#: least (KVM charges every ns of the thread's run_delay at its next guest
#: entry; see :func:`alive_segments` for the pair judged).  Measured on
#: kvm_pvm (Linux 6.18.44), 19 default runs, 8 idle and 11 under two busy
#: processes, 912 stretches (guest and host series): the ratio was 1.0000 at
#: least and 1.081 at most; taken between the stretches' first and last
#: readings instead it ran up to 14.6.  0.9 leaves room for what this machine
#: did not show and still catches a kernel that accounts 70% of run_delay
#: (0.7 x 1.2 at most, see :data:`ALIVE_MAX_SLACK`).
ALIVE_FRACTION = 0.9


#: A pair of readings "alive" is judged over may hide at most this share of
#: its run_delay growth inside the two KVM_RUNs themselves: between such
#: readings a good kernel's steal grows by 1 to 1.2 times ``pre[b] -
#: post[a]``, so a kernel that counts 70% shows under 0.84, below
#: :data:`ALIVE_FRACTION`.
ALIVE_MAX_SLACK = Fraction(1, 5)


class AliveSpan(NamedTuple):
    """Readings ``first`` to ``last`` that "alive" is judged over.  With
    ``base`` set (a new vCPU, last_steal 0) growth counts from ``base`` and
    waiting from run_delay 0, not from reading ``first``'s value and post."""

    first: int
    last: int
    base: int | None = None

    def waited(self, run_delays: Sequence[RunDelay]) -> int:
        start = 0 if self.base is not None else run_delays[self.first].post_ns
        return run_delays[self.last].pre_ns - start

    def grew(self, samples: Sequence[Sample]) -> int:
        start = self.base if self.base is not None else samples[self.first].value
        return samples[self.last].value - start

    def before(self, samples: Sequence[Sample]) -> int:
        return self.base if self.base is not None else samples[self.first].value


def _alive_pair(
    run_delays: Sequence[RunDelay], a: int, b: int, from_zero: bool
) -> tuple[int | None, int] | None:
    """The readings ``x < y`` in ``a..b`` with the most run_delay growth between
    them (``pre[y] - post[x]``) whose own KVM_RUNs waited at most
    :data:`ALIVE_MAX_SLACK` of it; None if no pair qualifies.  With
    ``from_zero``, ``x`` may also be None: the start of a new vCPU, run_delay
    0 as far as KVM's last_steal goes.

    With ``w = post - pre`` and ``k = 1/ALIVE_MAX_SLACK`` the condition is
    ``post[x] + k*w[x] <= pre[y] - k*w[y]``; for each ``y`` the best ``x`` is
    the earliest one meeting it (``post`` never decreases along a stretch),
    found by bisection on the running minimum of the left side."""
    k = 1 / ALIVE_MAX_SLACK
    xs: list[int | None] = [None] if from_zero else []
    prefix_min: list[Fraction] = [Fraction(0)] if from_zero else []
    best: tuple[int | None, int] | None = None
    best_wait = -1
    for y in range(a, b + 1):
        ry = run_delays[y]
        if prefix_min:
            need = ry.pre_ns - k * (ry.post_ns - ry.pre_ns)
            lo, hi = 0, len(prefix_min)
            while lo < hi:  # first index whose running minimum is <= need
                mid = (lo + hi) // 2
                if prefix_min[mid] <= need:
                    hi = mid
                else:
                    lo = mid + 1
            if lo < len(prefix_min):
                x = xs[lo]
                wait = ry.pre_ns - (run_delays[x].post_ns if x is not None else 0)
                if wait > best_wait:
                    best, best_wait = (x, y), wait
        left = ry.post_ns + k * (ry.post_ns - ry.pre_ns)
        xs.append(y)
        prefix_min.append(min(prefix_min[-1], left) if prefix_min else left)
    return best


def alive_segments(run_delays: Sequence[RunDelay], alive_min_ns: int = 0) -> list[AliveSpan]:
    """What "alive" is judged over in each stretch: an :class:`AliveSpan`.

    A stretch is cut at each ``start`` (new vCPU life or runner thread) and
    each ``phase_start``; it begins at its first reading that is not
    ``fresh``, since a fresh reading may precede KVM's first update from this
    thread (its value then lacks the whole-run_delay charge that follows,
    which would hide a steal clock that counts only part of the waiting).
    A stretch of fresh readings only (KVM never updated the area under this
    thread: a dead steal clock looks like that) is judged whole.  Where a new
    vCPU starts (``zero_start``, with ``base``), the stretch may instead be
    counted from that start: KVM owes the thread's whole run_delay.

    Within it, the pair is chosen by :func:`_alive_pair`: a reading's value
    is the thread's run_delay at some moment inside its KVM_RUN, so between
    readings whose KVM_RUNs hardly waited a good kernel's steal grows by
    almost exactly ``pre[b] - post[a]``, and a kernel that counts a fraction
    shows that fraction.  (A KVM_RUN that waited before entering the guest
    hands its reading more than ``pre``; under load nearly all waiting
    happens inside KVM_RUNs.)  Where no such pair saw ``alive_min_ns`` of
    waiting, the stretch's own ends are used: a dead clock is still caught
    there."""
    if not run_delays:  # no readings: nothing to judge (zip below would refuse it)
        return []
    cuts = [i for i, rd in enumerate(run_delays) if i == 0 or rd.start or rd.phase_start]
    out = []
    for a, end in zip(cuts, cuts[1:] + [len(run_delays)], strict=True):
        b = end - 1
        first = a
        zero = run_delays[first].zero_start and run_delays[first].base is not None
        while a < b and run_delays[a].fresh:
            a += 1
        if run_delays[a].fresh:  # no update from this thread at all: judge it whole
            a = first
        span = AliveSpan(a, b)
        pair = _alive_pair(run_delays, a, b, zero)
        if pair is not None:
            x, y = pair
            cand = AliveSpan(first, y, run_delays[first].base) if x is None else AliveSpan(x, y)
            if cand.waited(run_delays) >= alive_min_ns:
                span = cand
        out.append(span)
    return out


class Ceiling(NamedTuple):
    """The most a steal reading may hold (:func:`run_delay_ceilings`): ``before
    + allowed``, ``why`` in words."""

    before: int
    allowed: int
    why: str


def run_delay_ceilings(samples: Sequence[Sample], run_delays: Sequence[RunDelay]) -> list[Ceiling]:
    """Per reading, what :func:`check_follows_run_delay` holds it to: the value
    it is counted from and the most the runner thread's run_delay lets it add
    (the plots draw ``before + allowed``)."""
    out: list[Ceiling] = []
    fresh_base = 0  # the value a run of fresh readings counts from
    fresh_extra = 0  # what the reading before the run may have missed
    for i, rd in enumerate(run_delays):
        prev = samples[i - 1].value if i else 0
        if i == 0 or rd.fresh:
            if i == 0 or rd.start or not run_delays[i - 1].fresh:
                # A new run of fresh readings: from last_steal 0 KVM may add
                # the thread's whole run_delay, once, to the area's value when
                # the stretch began.
                if rd.base is not None:
                    fresh_base, fresh_extra = rd.base, 0
                elif i == 0:
                    fresh_base, fresh_extra = 0, 0
                else:
                    p = run_delays[i - 1]
                    fresh_base = prev
                    fresh_extra = p.post_ns - (0 if p.fresh else p.pre_ns)
            out.append(
                Ceiling(
                    fresh_base,
                    rd.post_ns + fresh_extra,
                    "the runner thread's whole run_delay, charged once since the stretch "
                    "(new vCPU or runner thread) began"
                    + (", plus what the reading before it may have missed" if fresh_extra else ""),
                )
            )
        else:
            out.append(
                Ceiling(
                    prev,
                    rd.post_ns - run_delays[i - 1].pre_ns,
                    "its thread's run_delay growth around the two readings",
                )
            )
    return out


def check_follows_run_delay(
    series: str,
    samples: Sequence[Sample],
    run_delays: Sequence[RunDelay],
    *,
    alive_fraction: float = ALIVE_FRACTION,
    alive_min_ns: int = ALIVE_MIN_RUN_DELAY_NS,
    slack_ns: int = 0,
) -> list[Violation]:
    """Steal against the run_delay KVM charges it from (see the module docstring).

    ``run_delays[i]`` belongs to ``samples[i]``.  The value before the first
    sample is 0 (a new area).

    * :data:`KIND_OVER_RUN_DELAY` when steal grew by more than the thread's
      run_delay can account for, plus ``slack_ns``.  Between two readings of
      one thread after its first update: ``post[b] - pre[a]``.  Over a run of
      ``fresh`` readings (KVM's ``last_steal`` may be 0 or another thread's),
      counted from the stretch's ``base`` (or the previous reading, plus what
      it may have missed within its own KVM_RUN): the thread's whole
      run_delay ``post[b]``, once, however many updates the run holds.  Wraps
      and decreases are left to :func:`check_monotonic`.
    * :data:`KIND_NOT_ALIVE` when, over a stretch (:func:`alive_segments`),
      run_delay grew by at least ``alive_min_ns`` between
      the first reading and the last (``pre[last] - post[first]``) but steal
      grew by less than ``alive_fraction`` of that.
    """
    if len(run_delays) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(run_delays)} run_delay readings")
    if not 0 <= alive_fraction <= 1 or slack_ns < 0 or alive_min_ns < 0:
        raise ValueError("alive_fraction must be in [0, 1], slack and minimum >= 0")
    out: list[Violation] = []
    for i, (s, (before, allowed, why)) in enumerate(
        zip(samples, run_delay_ceilings(samples, run_delays), strict=True)
    ):
        delta = s.value - before
        if delta > allowed + slack_ns and not is_wrap_pair(before, s.value):
            out.append(
                violation(
                    KIND_OVER_RUN_DELAY,
                    series,
                    i,
                    before,
                    s.value,
                    f"steal grew by {format_ns(delta)} but at most {format_ns(allowed)} is "
                    f"possible ({why})",
                    wall_ns=_wall(samples[i - 1], s) if i else None,
                )
            )
    for span in alive_segments(run_delays, alive_min_ns):
        a, b = span.first, span.last
        waited = span.waited(run_delays)
        if (b <= a and span.base is None) or waited < alive_min_ns:
            continue
        grew = span.grew(samples)
        need = _exact(alive_fraction) * waited
        if grew < need:
            since = "its vCPU started" if span.base is not None else f"reading {a}"
            out.append(
                violation(
                    KIND_NOT_ALIVE,
                    series,
                    b,
                    span.before(samples),
                    samples[b].value,
                    f"steal grew by {format_ns(grew)} since {since} while its thread waited "
                    f"{format_ns(waited)} on a run queue (samples {a}-{b}); KVM charges all "
                    f"of it, at least {alive_fraction:g} of it is required",
                    wall_ns=_wall(samples[a], samples[b]),
                )
            )
    return out


def summarize(violations: Sequence[Violation]) -> dict[str, int]:
    """Counts of violations by kind (kinds in :data:`ALL_KINDS` order first)."""
    counts = Counter(v.kind for v in violations)
    order = {k: i for i, k in enumerate(ALL_KINDS)}
    return {k: counts[k] for k in sorted(counts, key=lambda k: (order.get(k, len(order)), k))}


# -- kvmclock and TSC ---------------------------------------------------------
#
# kvmclock readings are Samples whose value is the guest's ns and whose
# version is the area's version they were read under.  Cumulative-counter
# rules that still apply (never back, no u64 wrap) reuse check_monotonic
# with counter="kvmclock"; the rest are below.  Bounds are always given by
# the caller from what it measured (host time around KVM_RUN, the downtime,
# the TSC frequency KVM reports), never guessed here.

KIND_WARP = "warp"  # a reading below one another vCPU published before it began
KIND_OVERLONG_JUMP = "over-long-jump"  # a clock moved further than the time that passed
KIND_SHORT_JUMP = "short-jump"  # a clock moved less than the time that surely passed
KIND_TSC_NOT_APPLIED = "tsc-not-applied"  # the guest's TSC is not the value KVM was given
KIND_DECODE_MISMATCH = "decode-mismatch"  # guest and host pvclock arithmetic disagree
KIND_PVTI_FLAGS = "pvti-flags"  # PVCLOCK_TSC_STABLE_BIT disagrees with KVM_GET_CLOCK
KIND_MASTER_CLOCK = "master-clock"  # stable, but vCPUs' (tsc_timestamp, system_time) differ

#: How far CLOCK_MONOTONIC (NTP-slewed, which the host measures with) may run
#: from the raw clock kvmclock follows: the kernel caps NTP's frequency
#: adjustment at MAXFREQ, 500 ppm.  It also covers a TSC frequency KVM
#: calibrated a little off (a few ppm).
RATE_SLACK_PPM = 500


def rate_slack_ns(interval_ns: int) -> int:
    """What rate differences may add over ``interval_ns``: RATE_SLACK_PPM of it,
    rounded up, plus 1 ns for the truncation of each pvclock scale."""
    return -(-max(interval_ns, 0) * RATE_SLACK_PPM // 1_000_000) + 1


def check_even_versions(
    series: str, samples: Sequence[Sample], *, counter: str = "kvmclock"
) -> list[Violation]:
    """Each reading was taken under an even version: an odd one means the guest
    gave up waiting for an update to finish (the area was left mid-update).
    Unlike :func:`check_versions`, a value that changes under one version is
    fine: kvmclock advances with the TSC between updates."""
    return [
        violation(
            KIND_ODD_VERSION,
            series,
            i,
            None,
            s.version,
            f"{counter} read under odd version {s.version} (value "
            f"{format_value(s.value)}): the area stayed mid-update for all the "
            "guest's tries",
            counter="version",
            delta=None,
        )
        for i, s in enumerate(samples)
        if s.version is not None and s.version % 2
    ]


def check_warps(
    series: str, warps: int, largest_ns: int, reads: int, *, what: str = "kvmclock"
) -> list[Violation]:
    """Readings across vCPUs that went back: the guest counted ``warps`` of
    ``reads`` below a value another vCPU had published before the reading
    began, the largest by ``largest_ns``."""
    if warps <= 0:
        return []
    return [
        violation(
            KIND_WARP,
            series,
            0,
            None,
            largest_ns,
            f"{warps} of {reads} {what} readings went back against another vCPU's "
            f"earlier reading, by up to {format_ns(largest_ns)}",
            counter=what,
            delta=None,
        )
    ]


def check_jump(
    series: str,
    index: int,
    before: int,
    after: int,
    *,
    max_ns: int,
    min_ns: int = 0,
    what: str = "kvmclock",
    unit: str = "ns",
    why_max: str = "",
    why_min: str = "",
) -> list[Violation]:
    """A step ``before -> after`` must lie in ``[min_ns, max_ns]`` (in the
    series' unit; ``unit`` names it): below 0 is :data:`KIND_DECREASE` (or a
    wrap), below ``min_ns`` :data:`KIND_SHORT_JUMP`, above ``max_ns``
    :data:`KIND_OVERLONG_JUMP`.  ``why_*`` say where each bound came from."""
    if min_ns > max_ns:
        raise ValueError(f"min {min_ns} above max {max_ns}")
    delta = after - before
    span = f"{what} went {_span(before, after)} {unit} ({delta:+d})"
    if delta < 0 or is_wrap_pair(before, after):
        kind = KIND_WRAP if is_wrap_pair(before, after) else KIND_DECREASE
        return [violation(kind, series, index, before, after, f"{span}: went back", counter=what)]
    if delta > max_ns:
        return [
            violation(
                KIND_OVERLONG_JUMP,
                series,
                index,
                before,
                after,
                f"{span}: more than the {max_ns} {unit} allowed"
                + (f" ({why_max})" if why_max else ""),
                counter=what,
            )
        ]
    if delta < min_ns:
        return [
            violation(
                KIND_SHORT_JUMP,
                series,
                index,
                before,
                after,
                f"{span}: less than the {min_ns} {unit} that surely passed"
                + (f" ({why_min})" if why_min else ""),
                counter=what,
            )
        ]
    return []


def check_tsc_applied(
    series: str, index: int, *, lo: int, hi: int, read: int, written: str
) -> list[Violation]:
    """The guest's TSC reading must lie in ``[lo, hi]``: where the value KVM
    was given (``written``, described for the message) puts it by the time
    of the read."""
    if lo <= read <= hi:
        return []
    off = read - (lo if read < lo else hi)
    return [
        violation(
            KIND_TSC_NOT_APPLIED,
            series,
            index,
            lo if read < lo else hi,
            read,
            f"{written}; the guest read TSC {read}, expected {lo}..{hi} ({off:+d} ticks outside)",
            counter="tsc",
        )
    ]


def check_decode(series: str, index: int, guest_ns: int, host_ns: int) -> list[Violation]:
    """The guest's kvmclock reading equals the host's decode of the same area
    at the same TSC."""
    if guest_ns == host_ns:
        return []
    return [
        violation(
            KIND_DECODE_MISMATCH,
            series,
            index,
            host_ns,
            guest_ns,
            f"guest computed {guest_ns} ns, the host's pvclock arithmetic gives "
            f"{host_ns} ns from the same area and TSC",
            counter="kvmclock",
        )
    ]


def check_pvti_consistency(
    areas: Sequence[tuple[int, int, int, int]], clock_stable: bool
) -> list[Violation]:
    """``areas[i]`` = (version, tsc_timestamp, system_time, flags) of vCPU i,
    read with every vCPU stopped.  The stable bit of every area must agree with
    KVM_GET_CLOCK's KVM_CLOCK_TSC_STABLE; when stable (KVM's master clock),
    every vCPU's (tsc_timestamp, system_time) is the same pair."""
    out: list[Violation] = []
    for i, (_v, _ts, _st, flags) in enumerate(areas):
        stable = bool(flags & 1)
        if stable != clock_stable:
            out.append(
                violation(
                    KIND_PVTI_FLAGS,
                    f"vcpu{i}/pvti",
                    0,
                    int(clock_stable),
                    int(stable),
                    f"pvti PVCLOCK_TSC_STABLE_BIT is {int(stable)} but KVM_GET_CLOCK says "
                    f"{'' if clock_stable else 'not '}stable",
                    counter="flags",
                )
            )
    if clock_stable and areas:
        ref = areas[0][1:3]
        for i, a in enumerate(areas[1:], 1):
            if a[1:3] != ref:
                out.append(
                    violation(
                        KIND_MASTER_CLOCK,
                        f"vcpu{i}/pvti",
                        0,
                        ref[1],
                        a[2],
                        f"(tsc_timestamp, system_time) = {a[1:3]} but vcpu0 has {ref} under a "
                        "stable master clock",
                        counter="pvti",
                    )
                )
    return out
