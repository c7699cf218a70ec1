"""Postcopy blocktime accounting: pure, O(1) per fault and per page placement.

In postcopy migration a vCPU touching a page that has not arrived sleeps in
the kernel until the page is placed (UFFDIO_COPY).  *Blocktime* is how long
each vCPU spent so, plus the time during which every vCPU was blocked at
once (README bug 5).

:class:`BlocktimeAccountant` is fed two events, with the caller's timestamps:

* :meth:`~BlocktimeAccountant.fault` ``(addr, vcpu, t)``: a fault message was
  read (``vcpu`` None for a thread that is not a vCPU);
* :meth:`~BlocktimeAccountant.placed` ``(addr, t)``: the page at ``addr`` was
  placed, waking whoever waits on it.

It keeps a map fault address -> the (vCPU, fault time) entries waiting on
it, and per vCPU the number of outstanding faults and when its current
blocked interval began.  A vCPU's blocked interval begins when its count
goes 0 -> 1 and ends only when it returns to 0, so a vCPU with two
outstanding faults (the fault thread read a second message before the first
page was placed, or the kernel retried a fault on the same address) is
blocked over the *union* of their intervals: never counted twice, never
cut short.  The all-vCPUs-blocked total is kept the same way with a count
of blocked vCPUs.  Each placement costs O(waiters on that address), which is
O(1) amortized: every entry is removed exactly once.

Also here, for comparison: :class:`QemuHashModel`, a model of QEMU's 2025
design as its patch describes it (a hash of address -> entries and a count
of outstanding faults per vCPU; when the count returns to zero it adds the
latency of the *entry that brought it there*), :class:`SlotScanModel`, the
older design (one (address, start) slot per vCPU, every placement scans all
vCPUs), :func:`brute_force`, the ground truth computed from intervals, and
:func:`smallest_disagreement`, an exhaustive search for the shortest event
sequence on which a model differs from the ground truth.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Latency histogram: bucket i counts latencies in [2**i, 2**(i+1)) microseconds;
#: bucket 0 also takes those under 1 us, the last one everything above.
LATENCY_BUCKETS = 24


def latency_bucket(latency_ns: int, buckets: int = LATENCY_BUCKETS) -> int:
    us = max(0, latency_ns) // 1000
    return min(us.bit_length() - 1, buckets - 1) if us else 0


def bucket_label(i: int, buckets: int = LATENCY_BUCKETS) -> str:
    lo = 1 << i
    if i == buckets - 1:
        return f">={_us(lo)}"
    return f"{'0' if i == 0 else _us(lo)}-{_us(lo << 1)}"


def _us(us: int) -> str:
    if us >= 1_000_000 and us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us >= 1000 and us % 1000 == 0:
        return f"{us // 1000}ms"
    if us >= 1000:
        return f"{us / 1000:g}ms"
    return f"{us}us"


@dataclass
class BlocktimeReport:
    """What an accountant reports (every model fills the same record)."""

    blocked_ns: list[int]
    faults: list[int]
    all_blocked_ns: int
    non_vcpu_faults: int = 0
    non_vcpu_wait_ns: int = 0  # sum of the latencies of non-vCPU faults
    buckets: list[list[int]] = field(default_factory=list)  # per vCPU
    non_vcpu_buckets: list[int] = field(default_factory=list)
    retried: int = 0  # faults on an address the same vCPU already waited on
    placements: int = 0
    unwaited_placements: int = 0  # placements of an address nobody waited on
    outstanding: list[int] = field(default_factory=list)

    def figures(self) -> tuple[list[int], list[int], int]:
        """The figures every model must agree on: per-vCPU blocktime and faults, all-blocked."""
        return list(self.blocked_ns), list(self.faults), self.all_blocked_ns

    def to_json(self) -> dict[str, Any]:
        return {
            "blocked_ns": self.blocked_ns,
            "faults": self.faults,
            "all_blocked_ns": self.all_blocked_ns,
            "non_vcpu_faults": self.non_vcpu_faults,
            "non_vcpu_wait_ns": self.non_vcpu_wait_ns,
            "buckets": self.buckets,
            "non_vcpu_buckets": self.non_vcpu_buckets,
            "retried": self.retried,
            "placements": self.placements,
            "unwaited_placements": self.unwaited_placements,
            "outstanding": self.outstanding,
        }


class Model(Protocol):
    def fault(self, addr: int, vcpu: int | None, t_ns: int) -> None: ...
    def placed(self, addr: int, t_ns: int) -> int: ...
    def report(self, now_ns: int | None = None) -> BlocktimeReport: ...


class BlocktimeAccountant:
    """Exact blocktime, O(1) per fault and (amortized) per placement.  Not
    thread-safe: callers on several threads hold one lock around each call."""

    def __init__(self, vcpus: int, *, buckets: int = LATENCY_BUCKETS) -> None:
        if vcpus < 1:
            raise ValueError(f"vcpus must be at least 1, got {vcpus}")
        self.vcpus = vcpus
        self.nbuckets = buckets
        self._waiting: dict[int, list[tuple[int, int]]] = {}  # addr -> [(vcpu or -1, t)]
        self._count = [0] * vcpus  # outstanding faults per vCPU
        self._since = [0] * vcpus  # start of the current blocked interval
        self._blocked = [0] * vcpus
        self._faults = [0] * vcpus
        self._buckets = [[0] * buckets for _ in range(vcpus)]
        self._nv_buckets = [0] * buckets
        self._nv_faults = 0
        self._nv_wait = 0
        self._down = 0  # vCPUs with an outstanding fault
        self._all_since = 0
        self._all_blocked = 0
        self._retried = 0
        self._placements = 0
        self._unwaited = 0

    def fault(self, addr: int, vcpu: int | None, t_ns: int) -> None:
        entries = self._waiting.get(addr)
        if entries is None:
            entries = self._waiting[addr] = []
        if vcpu is None:
            self._nv_faults += 1
            entries.append((-1, t_ns))
            return
        if not 0 <= vcpu < self.vcpus:
            raise ValueError(f"vcpu {vcpu} out of range 0..{self.vcpus - 1}")
        if self._count[vcpu] and any(v == vcpu for v, _ in entries):
            self._retried += 1  # rare: scanning this one address's waiters is fine
        self._faults[vcpu] += 1
        entries.append((vcpu, t_ns))
        if self._count[vcpu] == 0:
            self._since[vcpu] = t_ns
            self._down += 1
            if self._down == self.vcpus:
                self._all_since = t_ns
        self._count[vcpu] += 1

    def placed(self, addr: int, t_ns: int) -> int:
        """The page at ``addr`` is in place at ``t_ns``; returns how many waiters it released."""
        self._placements += 1
        entries = self._waiting.pop(addr, None)
        if not entries:
            self._unwaited += 1
            return 0
        for vcpu, t0 in entries:
            b = latency_bucket(t_ns - t0, self.nbuckets)
            if vcpu < 0:
                self._nv_wait += t_ns - t0
                self._nv_buckets[b] += 1
                continue
            self._buckets[vcpu][b] += 1
            self._count[vcpu] -= 1
            if self._count[vcpu] == 0:
                if self._down == self.vcpus:
                    self._all_blocked += t_ns - self._all_since
                self._down -= 1
                self._blocked[vcpu] += t_ns - self._since[vcpu]
        return len(entries)

    def outstanding(self, vcpu: int) -> int:
        return self._count[vcpu]

    def report(self, now_ns: int | None = None) -> BlocktimeReport:
        """The figures so far; with ``now_ns``, intervals still open count up to it."""
        blocked = list(self._blocked)
        all_blocked = self._all_blocked
        if now_ns is not None:
            for v in range(self.vcpus):
                if self._count[v]:
                    blocked[v] += now_ns - self._since[v]
            if self._down == self.vcpus:
                all_blocked += now_ns - self._all_since
        return BlocktimeReport(
            blocked,
            list(self._faults),
            all_blocked,
            self._nv_faults,
            self._nv_wait,
            [list(b) for b in self._buckets],
            list(self._nv_buckets),
            self._retried,
            self._placements,
            self._unwaited,
            list(self._count),
        )


# --------------------------------------------------------------------------
# the models compared with it


class QemuHashModel:
    """QEMU's 2025 design (migration/postcopy-ram.c after "Optimize blocktime
    fault tracking with hashtable"), modelled from its description: new
    entries are prepended to the address's list; a placement walks that list
    from its head and, for each vCPU whose outstanding count drops to zero,
    adds the latency of that entry (placement time minus *that entry's*
    fault time).  The all-blocked total uses the time of the last 0 -> 1
    transition of any vCPU, added when a placement frees a vCPU while all
    were down."""

    def __init__(self, vcpus: int, *, buckets: int = LATENCY_BUCKETS) -> None:
        self.vcpus = vcpus
        self.nbuckets = buckets
        self._hash: dict[int, list[tuple[int, int]]] = {}
        self._current = [0] * vcpus
        self._total = [0] * vcpus
        self._faults = [0] * vcpus
        self._buckets = [0] * buckets  # QEMU keeps one histogram for all
        self._down = 0
        self._last_begin = 0
        self._all = 0
        self._nv_faults = 0
        self._nv_total = 0

    def fault(self, addr: int, vcpu: int | None, t_ns: int) -> None:
        cpu = -1 if vcpu is None else vcpu
        if cpu >= 0:
            self._faults[cpu] += 1
            if self._current[cpu] == 0:
                self._down += 1
                self._last_begin = t_ns
            self._current[cpu] += 1
        else:
            self._nv_faults += 1
        self._hash[addr] = [(cpu, t_ns)] + self._hash.get(addr, [])

    def placed(self, addr: int, t_ns: int) -> int:
        entries = self._hash.pop(addr, None)
        if not entries:
            return 0
        affected = 0
        for cpu, t0 in entries:  # head first: newest entry first
            passed = t_ns - t0
            self._buckets[latency_bucket(passed, self.nbuckets)] += 1
            if cpu >= 0:
                self._current[cpu] -= 1
                if self._current[cpu] == 0:
                    self._total[cpu] += passed
                    affected += 1
            else:
                self._nv_total += passed
        if self._down == self.vcpus and affected:
            self._all += t_ns - self._last_begin
        self._down -= affected
        return len(entries)

    def report(self, now_ns: int | None = None) -> BlocktimeReport:
        return BlocktimeReport(
            list(self._total),
            list(self._faults),
            self._all,
            self._nv_faults,
            self._nv_total,
            [],
            list(self._buckets),
            outstanding=list(self._current),
        )


class SlotScanModel:
    """The older design, the naive baseline: one (address, start) slot per vCPU;
    a second fault on a vCPU overwrites its slot; every placement scans all vCPUs."""

    def __init__(self, vcpus: int) -> None:
        self.vcpus = vcpus
        self._addr = [0] * vcpus
        self._start = [0] * vcpus
        self._busy = [False] * vcpus
        self._total = [0] * vcpus
        self._faults = [0] * vcpus
        self._down = 0
        self._last_begin = 0
        self._all = 0
        self._nv_faults = 0

    def fault(self, addr: int, vcpu: int | None, t_ns: int) -> None:
        if vcpu is None:
            self._nv_faults += 1
            return
        if not self._busy[vcpu]:
            self._down += 1
        self._busy[vcpu] = True
        self._last_begin = t_ns
        self._start[vcpu] = t_ns
        self._addr[vcpu] = addr
        self._faults[vcpu] += 1

    def placed(self, addr: int, t_ns: int) -> int:
        affected = 0
        busy, slots = self._busy, self._addr
        for i in range(self.vcpus):
            if busy[i] and slots[i] == addr:
                busy[i] = False
                self._total[i] += t_ns - self._start[i]
                affected += 1
        if self._down == self.vcpus and affected:
            self._all += t_ns - self._last_begin
        self._down -= affected
        return affected

    def report(self, now_ns: int | None = None) -> BlocktimeReport:
        return BlocktimeReport(
            list(self._total),
            list(self._faults),
            self._all,
            self._nv_faults,
            outstanding=[int(b) for b in self._busy],
        )


# --------------------------------------------------------------------------
# ground truth and comparison

#: An event: ("F", vcpu or None, addr, t_ns) or ("P", addr, t_ns).
Event = tuple[Any, ...]


def replay(model: Model, events: Iterable[Event], now_ns: int | None = None) -> BlocktimeReport:
    for e in events:
        if e[0] == "F":
            model.fault(e[2], e[1], e[3])
        else:
            model.placed(e[1], e[2])
    return model.report(now_ns)


def _union_length(intervals: list[tuple[int, int]]) -> int:
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def intervals(
    events: Sequence[Event], vcpus: int, now_ns: int | None = None
) -> list[list[tuple[int, int]]]:
    """Each vCPU's blocked intervals: a fault lasts from its time to the first
    later placement of its address (or ``now_ns``; never, without it)."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(vcpus)]
    for i, e in enumerate(events):
        if e[0] != "F" or e[1] is None:
            continue
        end = next((p[2] for p in events[i + 1 :] if p[0] == "P" and p[1] == e[2]), now_ns)
        if end is not None:
            out[e[1]].append((e[3], end))
    return out


def brute_force(
    events: Sequence[Event], vcpus: int, now_ns: int | None = None
) -> tuple[list[int], list[int], int]:
    """Ground truth from the intervals themselves: per-vCPU blocktime (length of
    the union of its fault intervals), fault counts, and the length of the time
    during which every vCPU was inside one of its intervals."""
    ivs = intervals(events, vcpus, now_ns)
    blocked = [_union_length(iv) for iv in ivs]
    faults = [sum(1 for e in events if e[0] == "F" and e[1] == v) for v in range(vcpus)]
    # all-blocked: sweep over the interval endpoints; a point counts if every
    # vCPU has an interval covering it (closed on the left, open on the right)
    points = sorted({p for iv in ivs for s, e in iv for p in (s, e)})
    all_blocked = 0
    for a, b in zip(points, points[1:], strict=False):
        if all(any(s <= a and b <= e for s, e in iv) for iv in ivs):
            all_blocked += b - a
    return blocked, faults, all_blocked


@dataclass(frozen=True)
class Disagreement:
    events: tuple[Event, ...]
    truth: tuple[list[int], list[int], int]
    model: tuple[list[int], list[int], int]

    def describe(self) -> str:
        seq = " ".join(
            (
                f"F(v{e[1]},{_addr_name(e[2])},t={e[3]})"
                if e[1] is not None
                else f"F(non-vcpu,{_addr_name(e[2])},t={e[3]})"
            )
            if e[0] == "F"
            else f"P({_addr_name(e[1])},t={e[2]})"
            for e in self.events
        )
        (tb, tf, ta), (mb, mf, ma) = self.truth, self.model
        return (
            f"{seq}: truth blocktime {tb} faults {tf} all-blocked {ta}; "
            f"model blocktime {mb} faults {mf} all-blocked {ma}"
        )


def _addr_name(addr: int) -> str:
    return "ABCDEFGH"[addr] if 0 <= addr < 8 else hex(addr)


def sequences(length: int, vcpus: int, addrs: int) -> Iterable[tuple[Event, ...]]:
    """Every event sequence of ``length`` events at times 0, 1, 2, ... over
    ``vcpus`` vCPUs and ``addrs`` addresses, where each placement places an
    address that has a waiter (placements of unwaited addresses change nothing)."""
    kinds: list[tuple[Any, ...]] = [("F", v, a) for v in range(vcpus) for a in range(addrs)]
    kinds += [("P", a) for a in range(addrs)]
    for combo in itertools.product(kinds, repeat=length):
        waiting: set[int] = set()
        ok = True
        for k in combo:
            if k[0] == "F":
                waiting.add(k[2])
            elif k[1] in waiting:
                waiting.discard(k[1])
            else:
                ok = False
                break
        if ok and not waiting:  # every fault resolved: no open interval to argue about
            yield tuple((*k, t) for t, k in enumerate(combo))


def smallest_disagreement(
    factory: Callable[[int], Model], *, max_length: int = 6, max_vcpus: int = 2, addrs: int = 2
) -> Disagreement | None:
    """The shortest sequence (fewest events, then fewest vCPUs) on which the
    model built by ``factory(vcpus)`` differs from :func:`brute_force`."""
    for length in range(1, max_length + 1):
        for vcpus in range(1, max_vcpus + 1):
            for events in sequences(length, vcpus, addrs):
                truth = brute_force(events, vcpus)
                got = replay(factory(vcpus), events).figures()
                if got != truth:
                    return Disagreement(events, truth, got)
    return None
