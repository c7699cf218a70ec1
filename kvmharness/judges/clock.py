"""The clock family's judge: a pure function from a run record to a verdict.

What needs KVM's master clock (a stable TSC, KVM_CLOCK_TSC_STABLE) and what
does not:

* needs it: a vCPU's own kvmclock never stepping back across KVM's updates,
  and no reading going below another vCPU's earlier one (warps).  Without a
  master clock each vCPU's area is extrapolated from its last update at KVM's
  TSC frequency, so it may drift from the host clock by the rate error times
  the time since that update, and step back by as much at the next update.
  So these are judged for every reading taken under PVCLOCK_TSC_STABLE_BIT
  (per reading, from the area's flags) and, where the clock was not stable,
  for any step larger than that drift can make (:func:`unstable_tolerance`);
  a kvmclock pushed years ahead is never excused.
* always judged: odd versions, a guest decode the host disagrees with, a TSC
  not applied, the jump across a boundary (KVM_SET_CLOCK fixes it), areas
  disagreeing with KVM_GET_CLOCK, the TSC rate after KVM_SET_TSC_KHZ, and a
  vCPU stopped in KVM_RUN (:func:`kvmharness.judges.stopped.judge_stopped`).

A clock that loses stability at a restore is reported in ``notes`` (and the
table); a promise whose point is the master clock on a host that never had
one is NOT_SUPPORTED (a lasting host property), never UNTESTABLE.

TSC bounds use the fastest of KVM's tsc_khz and the TSC rate measured in the
run (the guest's TSC read by the host around each phase against
CLOCK_MONOTONIC, with the uncertainty of those readings): tsc_khz is a
calibration, and where the host's clocks do not come from the TSC (hpet) the
TSC may run at another rate than it says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from kvmharness import checks
from kvmharness.checks import Violation
from kvmharness.judges import Judgement, RecordError
from kvmharness.judges.stopped import Stopped, judge_stopped
from kvmharness.pvclock import scale_for_khz
from kvmharness.scenarios.base import Blame, Kind, Verdict, verdict_for
from kvmharness.scenarios.clock_record import (
    STABLE_BIT,
    Batch,
    BoundaryFacts,
    ClockPut,
    ClockRecord,
    RateProbe,
    TscPut,
)

#: kvm_synchronize_tsc(): a host write within one second (of guest TSC) of the
#: value KVM expects synchronizes with the VM's earlier write.
TSC_SYNC_WINDOW_S = 1
#: The rate error assumed between a TSC and KVM's tsc_khz when the run measured
#: no rate (a record without rate probes): above the 0.76% seen under TCG.
FALLBACK_DRIFT = Fraction(1, 100)
#: Kinds that depend on the master clock (judged when stable, or beyond drift).
STABLE_KINDS = frozenset({checks.KIND_DECREASE, checks.KIND_WARP})

KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 4

#: The VM had a master clock (KVM_GET_CLOCK said KVM_CLOCK_TSC_STABLE) and lost
#: it when nothing but the harness's own KVM_SET_CLOCKs came between, on a host
#: whose clocksource stayed tsc.
KIND_MASTER_CLOCK_LOST = "master-clock-lost"
#: A watcher read vCPU 0's area under KVM's even version 2 mod 4 with the
#: guest's mark of the version 2 below still in pad0: KVM published the
#: version that says "consistent" before it wrote its record.
KIND_TORN_UPDATE = "torn-update"
#: Columns of a watch row whose marks carry their version (the eighth is
#: ``mixed``); a shorter row was taken with one fixed mark (guest_abi.h).
VERSIONED_MARK_COLUMNS = 8


@dataclass
class ClockConfigView:
    """The record's ``config``: the run's knobs and its variant's facts."""

    phase_ms: int
    downtime_ms: int
    budget_s: float
    kind: Kind
    boundary: str
    clock_put: ClockPut
    tsc_put: TscPut
    needs_stable: bool
    warp: bool
    pvti_check: bool
    khz_ratio: float | None
    storm: bool = False

    @classmethod
    def of(cls, d: dict[str, Any]) -> ClockConfigView:
        try:
            return cls(
                d["phase_ms"],
                d["downtime_ms"],
                d["budget_s"],
                Kind(d["kind"]),
                d["boundary"],
                ClockPut(d["clock_put"]),
                TscPut(d["tsc_put"]),
                d["needs_stable"],
                d["warp"],
                d["pvti_check"],
                d["khz_ratio"],
                d.get("storm", False),
            )
        except KeyError as exc:
            raise RecordError(f"clock record config lacks {exc}") from exc


@dataclass
class RunView:
    """A clock run as the judge reads it from a record."""

    records: list[ClockRecord]
    stable: bool | None = None  # KVM_GET_CLOCK's KVM_CLOCK_TSC_STABLE after the first phase
    stable_after: bool | None = None  # ... after the boundary (None: no boundary)
    facts: BoundaryFacts = field(default_factory=BoundaryFacts)
    pvti_areas: list[list[int]] = field(default_factory=list)
    khz: int = 0
    probes: list[list[RateProbe]] = field(default_factory=list)
    """per phase: the guest TSC read by the host before and after it"""
    storm: list[dict[str, int]] = field(default_factory=list)
    """per phase of an "updates" run: KVM_SET_CLOCKs issued, ns they put the clock ahead"""

    def added_ns(self, phase: int) -> int:
        """What the harness's own forced updates put the clock ahead in ``phase``."""
        return self.storm[phase]["added_ns"] if phase < len(self.storm) else 0

    def khz_of(self, phase: int) -> int:
        return (self.facts.khz_after if phase else self.facts.khz_before) or self.khz


# ---- the TSC rate measured in the run


@dataclass(frozen=True)
class Rate:
    """A TSC rate in kHz (ticks per ms) known to lie in [lo, hi]."""

    lo: Fraction
    hi: Fraction

    @property
    def mid(self) -> Fraction:
        return (self.lo + self.hi) / 2


def measured_rate(a: RateProbe, b: RateProbe, *, raw: bool = False) -> Rate | None:
    """The rate between two probes: the TSC moved ``b.tsc - a.tsc`` ticks in at
    least ``b.start - a.end`` and at most ``b.end - a.start`` ns of the host
    clock (CLOCK_MONOTONIC, or CLOCK_MONOTONIC_RAW with ``raw``)."""
    ta, tb = (a.raw_ns, b.raw_ns) if raw else (a.mono_ns, b.mono_ns)
    ticks = b.tsc - a.tsc
    short, long_ = tb[0] - ta[1], tb[1] - ta[0]
    if ticks <= 0 or short <= 0:
        return None
    return Rate(Fraction(ticks * 1_000_000, long_), Fraction(ticks * 1_000_000, short))


def phase_rates(run: RunView, *, raw: bool = False) -> list[Rate | None]:
    return [measured_rate(p[0], p[-1], raw=raw) if len(p) >= 2 else None for p in run.probes]


def tsc_rate_bounds(run: RunView, khz: int) -> tuple[Fraction, Fraction]:
    """(slowest, fastest) rate in kHz the TSC can have run at: the measured
    rates of every phase, and KVM's ``khz`` (what a TSC put by the api.rst
    recipe advances by over the downtime)."""
    rates = [r for r in phase_rates(run) if r]
    lo = min([Fraction(khz)] + [r.lo for r in rates])
    hi = max([Fraction(khz)] + [r.hi for r in rates])
    return lo, hi


def _ticks(ns: int, khz: Fraction | int) -> int:
    """ns at ``khz`` in whole ticks, rounded toward zero."""
    return int(Fraction(ns) * khz / 1_000_000)


def unstable_drift(run: RunView, phase: int) -> Fraction:
    """How fast two kvmclocks without a master clock may drift apart, per ns:
    each follows the host's clock (NTP-slewed by at most RATE_SLACK_PPM) at
    KVM's ``tsc_khz`` scale of a TSC that really runs at the measured rate."""
    khz = run.khz_of(phase)
    r = phase_rates(run)[phase] if phase < len(run.probes) else None
    if not khz or r is None:
        return 2 * FALLBACK_DRIFT
    err = max(abs(r.hi / khz - 1), abs(r.lo / khz - 1))
    return 2 * (err + Fraction(checks.RATE_SLACK_PPM, 1_000_000))


def unstable_tolerance(run: RunView, phase: int, since_ns: int) -> int:
    """The largest step back (or warp) a kvmclock without a master clock can
    show ``since_ns`` after the phase began (every area is rewritten at its
    vCPU's first entry)."""
    return int(unstable_drift(run, phase) * max(since_ns, 0)) + checks.rate_slack_ns(since_ns)


# ---- TSC writes


def tsc_msr_range(
    written: int,
    write_ns: tuple[int, int],
    run: Batch,
    khz: int,
    earlier: Sequence[tuple[int, tuple[int, int]]] = (),
    rate: tuple[Fraction, Fraction] | None = None,
) -> tuple[int, int]:
    """Where the guest's first TSC reading in ``run`` must lie after ``written``
    was put with MSR_IA32_TSC at host time ``write_ns`` (before, after the ioctl),
    counting at a rate in ``rate`` (kHz; default KVM's ``khz``).

    ``earlier`` holds the VM's earlier TSC writes (value, its write times),
    including the one a state load makes.  KVM treats a write within
    :data:`TSC_SYNC_WINDOW_S` of what it expects from the VM's last write as
    "synchronize with it" and keeps the offset of the write that began the
    run of matching writes, so the guest may read that write's value plus the
    time since it; the check accepts either outcome for each earlier write the
    new one is that close to."""
    lo_khz, hi_khz = rate or (Fraction(khz), Fraction(khz))

    def rng(value: int, w: tuple[int, int]) -> tuple[int, int]:
        early = max(run.t0_ns - w[1], 0)
        late = run.t1_ns - w[0]
        return (
            value + _ticks(early - checks.rate_slack_ns(early), lo_khz) - 1,
            value + _ticks(late + checks.rate_slack_ns(late), hi_khz) + 1,
        )

    lo, hi = rng(written, write_ns)
    for ref, ref_ns in earlier:
        expected = ref + _ticks(write_ns[0] - ref_ns[1], khz)
        if abs(written - expected) < TSC_SYNC_WINDOW_S * khz * 1000:
            slo, shi = rng(ref, ref_ns)
            lo, hi = min(lo, slo), max(hi, shi)
    return lo, hi


# ---- judging


@dataclass
class Found:
    """Violations judged, and those excused (no master clock) by kind."""

    judged: list[Violation] = field(default_factory=list)
    excused: dict[str, int] = field(default_factory=dict)
    waited_out: int = 0
    """readings under an odd version whose update then completed (next reading even)"""

    def excuse(self, v: Violation) -> None:
        self.excused[v.kind] = self.excused.get(v.kind, 0) + 1


def _jump_bounds(
    cfg: ClockConfigView, a: Batch, b: Batch, facts: BoundaryFacts
) -> tuple[int, int, str, str]:
    """(min, max) kvmclock jump from the last reading before the boundary to the
    first after, with where each bound comes from."""
    e_max = b.t1_ns - a.t0_ns  # the real time between the readings is at most this
    e_min = max(b.t0_ns - a.t1_ns, 0)  # ... and at least this
    down = max(facts.downtime_ns, 0)
    # how kvmclock was really put (tsc/offset falls back without KVM_CLOCK_REALTIME)
    put = ClockPut(facts.put) if facts.put in set(ClockPut) - {ClockPut.NONE} else cfg.clock_put
    if put is ClockPut.FROZEN:
        hi = e_max - down
        why = (
            f"the real time between the readings, {checks.format_ns(e_max)}, less the "
            f"{checks.format_ns(down)} the clock stood still, + rate slack"
        )
    else:
        hi = e_max
        why = f"the real time between the readings, {checks.format_ns(e_max)}, + rate slack"
    lo, why_lo = 0, ""
    if put is ClockPut.REALTIME:
        lo = e_min - checks.rate_slack_ns(e_min)
        why_lo = (
            f"KVM_CLOCK_REALTIME adds the real time that passed: at least "
            f"{checks.format_ns(e_min)} between the readings, - rate slack"
        )
    return max(lo, 0), hi + checks.rate_slack_ns(hi), why, why_lo


def _tsc_jump(
    cfg: ClockConfigView,
    name: str,
    index: int,
    before: int,
    after: int,
    a: Batch,
    b: Batch,
    run: RunView,
) -> list[Violation]:
    """The TSC across the boundary, for the variants that put it: never back; at
    most the real time (offset recipe) or the real time outside the time it
    stood still (the saved value written back), in ticks at the fastest rate
    the TSC can have run at (measured in this run, or KVM's tsc_khz).

    Written back, the TSC stands still from its reading (before KVM_GET_CLOCK
    began) to the destination's first write of it: KVM may keep counting from
    that write, the state load's, when the next write synchronizes with it."""
    if cfg.tsc_put is TscPut.STATE:
        return []
    facts = run.facts
    khz = facts.khz_after or run.khz
    _, fastest = tsc_rate_bounds(run, khz)
    e_max = b.t1_ns - a.t0_ns
    if cfg.tsc_put is TscPut.MSR:
        still = (
            facts.tsc_write_ns - facts.get_clock_ns[0] if facts.tsc_write_ns else facts.downtime_ns
        )
        e_max = max(e_max - max(still, 0), 0)
        why = "the real time between the readings less the time the TSC stood still"
    else:
        why = "the real time between the readings"
    why += f", at {float(fastest) / 1000:.3f} MHz (KVM's tsc_khz {khz}, or the rate measured)"
    hi = _ticks(e_max + checks.rate_slack_ns(e_max), fastest) + 1
    return checks.check_jump(
        name, index, before, after, max_ns=hi, what="TSC", unit="ticks", why_max=why
    )


def _frequency(run: RunView) -> list[Violation]:
    """At the new frequency: each area's scale is KVM's for it, and the guest's
    TSC runs at it against kvmclock (after the boundary)."""
    out: list[Violation] = []
    khz = run.facts.khz_after
    want = list(scale_for_khz(khz))
    for i, got in enumerate(run.facts.pvti_scale_after):
        if list(got) != want:
            out.append(
                checks.violation(
                    checks.KIND_DECODE_MISMATCH,
                    f"vcpu{i}/pvti",
                    0,
                    None,
                    None,
                    f"after KVM_SET_TSC_KHZ {khz} the area's (mul, shift) is {tuple(got)}, "
                    f"the scale for {khz} kHz is {tuple(want)}",
                    counter="scale",
                    delta=None,
                )
            )
    for r in run.records:
        after = r.samples[r.batches[r.boundary].first :] if r.boundary < len(r.batches) else []
        if len(after) < 2:
            continue
        d_ns, d_tsc = after[-1][0] - after[0][0], after[-1][1] - after[0][1]
        if d_ns <= 0:
            continue
        measured = d_tsc * 1_000_000 // d_ns
        tol = khz * checks.RATE_SLACK_PPM // 1_000_000 + 1_000_000 * 2 // d_ns + 1
        if abs(measured - khz) > tol:
            out.append(
                checks.violation(
                    checks.KIND_TSC_NOT_APPLIED,
                    f"vcpu{r.index}",
                    r.boundary,
                    khz,
                    measured,
                    f"the guest's TSC ran at {measured} kHz against kvmclock after "
                    f"KVM_SET_TSC_KHZ {khz}",
                    counter="tsc_khz",
                )
            )
    return out


def _phase_start(run: RunView, phase: int) -> int:
    starts = []
    for r in run.records:
        ph = r.phases()
        if phase < len(ph) and ph[phase][0] < ph[phase][1]:
            starts.append(r.batches[ph[phase][0]].t0_ns)
    return min(starts, default=0)


def _stable_phases(run: RunView) -> list[bool]:
    """Per phase: KVM_GET_CLOCK said stable at its end and every reading of every
    vCPU in it was taken under PVCLOCK_TSC_STABLE_BIT."""
    n = max((len(r.phases()) for r in run.records), default=0)
    out = []
    for p in range(n):
        flag = run.stable if p == 0 else run.stable_after
        ok = flag is not False
        for r in run.records:
            ph = r.phases()
            if p < len(ph):
                ok = ok and all(r.samples[i][4] & STABLE_BIT for i in r.sample_range(*ph[p]))
        out.append(ok)
    return out


def _per_vcpu(cfg: ClockConfigView, run: RunView, found: Found) -> None:
    for r in run.records:
        name = f"vcpu{r.index}"
        for p, (lo, hi) in enumerate(r.phases()):
            idx = list(r.sample_range(lo, hi))
            t_of = {}
            for b in r.batches[lo:hi]:
                for i in range(b.first, b.first + b.n):
                    t_of[i] = b.t1_ns
            start = _phase_start(run, p)
            own = r.series(lo, hi)
            for v in checks.check_monotonic(name, own, counter="kvmclock"):
                i0, i1 = idx[v.index - 1], idx[v.index]
                stable = r.samples[i0][4] & r.samples[i1][4] & STABLE_BIT
                _judge_stable_kind(run, p, v, bool(stable), t_of[i1] - start, found)
            for v in checks.check_even_versions(name, own):
                if _completed(own, v.index):
                    found.waited_out += 1
                else:
                    found.judged.append(v)
            found.judged += _too_fast(run, p, name, r, idx, 0, start)
            used = [i for i in idx if r.samples[i][5]]
            vdso = r.series(lo, hi, vdso=True)
            for v in checks.check_monotonic(
                f"{name}/vdso", vdso, counter="kvmclock (vCPU 0's area)"
            ):
                i0, i1 = used[v.index - 1], used[v.index]
                # every vDSO-style reading is taken under vCPU 0's stable bit;
                # readings with unstable ones between them are not comparable
                _judge_stable_kind(run, p, v, i1 == i0 + 1, t_of[i1] - start, found)
            found.judged += _too_fast(run, p, f"{name}/vdso", r, used, 2, start)
        for i, g, h in r.decode:
            found.judged += checks.check_decode(name, i, g, h)
        khz = run.khz_of(0)
        for w in r.tsc_writes:
            if w.batch < len(r.batches) and r.batches[w.batch].n:
                read = r.samples[r.batches[w.batch].first][1]
                lo_t, hi_t = w.lo, w.hi
                if w.value is not None and w.write_ns is not None:
                    phase = 1 if 0 < r.boundary <= w.batch else 0
                    k = run.khz_of(phase) or khz
                    lo_t, hi_t = tsc_msr_range(
                        w.value, w.write_ns, r.batches[w.batch], k, w.earlier, _rate_span(run, k)
                    )
                found.judged += checks.check_tsc_applied(
                    name, w.batch, lo=lo_t, hi=hi_t, read=read, written=w.what
                )
        if 0 < r.boundary < len(r.batches):
            a, b = r.batches[r.boundary - 1], r.batches[r.boundary]
            if a.n and b.n:
                sa, sb = r.samples[a.first + a.n - 1], r.samples[b.first]
                lo_ns, hi_ns, why, why_lo = _jump_bounds(cfg, a, b, run.facts)
                # judged whatever the TSC: KVM_SET_CLOCK fixes the clock at the boundary
                found.judged += checks.check_jump(
                    f"{name}/boundary",
                    r.boundary,
                    sa[0],
                    sb[0],
                    max_ns=hi_ns,
                    min_ns=lo_ns,
                    why_max=why,
                    why_min=why_lo,
                )
                found.judged += _tsc_jump(
                    cfg, f"{name}/boundary", r.boundary, sa[1], sb[1], a, b, run
                )


def _completed(own: Sequence[checks.Sample], i: int) -> bool:
    """The reading after odd reading ``i`` was taken under a later, even version:
    the update the guest gave up waiting for completed, so the version protocol
    held and the guest only ran out of tries.  KVM writes an area with
    interrupts off, but the host CPU doing it can itself be stopped mid-write
    where the host is a guest (nested, preempted; under single-threaded TCG
    for a whole time slice of the other CPU: seen on 6.1.0-57, version 1521
    for all of a reader's 1000 tries, then 1522; on 6.12.118 two readings in a
    row under 3781, then 3782).  Readings under the same odd version are the
    same stopped update, so the first reading under another version decides.
    An area left odd (a KVM that never finishes the update) keeps every later
    reading odd."""
    odd = own[i].version
    j = i + 1
    while odd is not None and j < len(own) and own[j].version == odd:
        j += 1
    if j >= len(own):
        return False
    nxt = own[j].version
    return (
        odd is not None
        and nxt is not None
        and not nxt % 2
        and 0 < (nxt - odd) % (1 << 32) < 1 << 31
    )


def _too_fast(
    run: RunView, phase: int, name: str, r: ClockRecord, idx: list[int], col: int, start: int
) -> list[Violation]:
    """kvmclock follows the host's clock: between two readings it advances at most
    the real time between them (from the first one's KVM_RUN start to the
    second one's end) plus what drift from KVM's scale may add since the phase
    began (:func:`unstable_tolerance`; it covers a clock reset at an update)."""
    batch_of: dict[int, Batch] = {}
    for b in r.batches:
        for i in range(b.first, b.first + b.n):
            batch_of[i] = b
    out: list[Violation] = []
    for k in range(1, len(idx)):
        i0, i1 = idx[k - 1], idx[k]
        a, b = batch_of[i0], batch_of[i1]
        before, after = r.samples[i0][col], r.samples[i1][col]
        e_max = b.t1_ns - a.t0_ns
        allowed = (
            e_max
            + checks.rate_slack_ns(e_max)
            + unstable_tolerance(run, phase, b.t1_ns - start)
            + run.added_ns(phase)
        )
        if after - before > allowed and not checks.is_wrap_pair(before, after):
            out.append(
                checks.violation(
                    checks.KIND_TOO_FAST,
                    name,
                    k,
                    before,
                    after,
                    f"kvmclock went {before} -> {after} ns (+{after - before}) in at most "
                    f"{checks.format_ns(e_max)} of real time: more than the {allowed} ns "
                    "the time and the drift of KVM's scale allow",
                    counter="kvmclock",
                )
            )
    return out


def _rate_span(run: RunView, khz: int) -> tuple[Fraction, Fraction]:
    return tsc_rate_bounds(run, khz)


def _judge_stable_kind(
    run: RunView, phase: int, v: Violation, stable: bool, since_ns: int, found: Found
) -> None:
    """A step back (or warp) is judged when taken under a stable clock, when it
    is a wrap, or when it is larger than drift without a master clock allows."""
    size = abs(v.delta) if v.delta is not None else (v.after or 0)
    if stable or v.kind not in STABLE_KINDS or size > unstable_tolerance(run, phase, since_ns):
        found.judged.append(v)
    else:
        found.excuse(v)


def _warps(cfg: ClockConfigView, run: RunView, stable: list[bool], found: Found) -> None:
    if not cfg.warp:
        return
    for p, ok in enumerate(stable):
        bs: list[Batch] = []
        end = 0
        for r in run.records:
            ph = r.phases()
            if p < len(ph):
                bs += r.batches[ph[p][0] : ph[p][1]]
        if not bs:
            continue
        end = max(b.t1_ns for b in bs)
        reads = sum(b.n for b in bs)
        where = "" if p == 0 else " after the boundary"
        for series, w, mw, what in (
            ("all vCPUs", sum(b.warps for b in bs), max(b.max_warp_ns for b in bs), "kvmclock"),
            (
                "all vCPUs/vdso",
                sum(b.vdso_warps for b in bs),
                max(b.max_vdso_warp_ns for b in bs),
                "kvmclock (vCPU 0's area)",
            ),
        ):
            for v in checks.check_warps(series, w, mw, reads, what=what):
                v = replace(v, index=p, detail=v.detail + where)
                _judge_stable_kind(run, p, v, ok, end - _phase_start(run, p), found)


def storm_master_clock(run: RunView) -> tuple[list[Violation], str | None]:
    """The forced updates' KVM_SET_CLOCKs against KVM's master clock: a
    KVM_GET_CLOCK had KVM_CLOCK_TSC_STABLE and a later one lacked it, with only
    the storm's own KVM_SET_CLOCKs (realtime, continuous, no TSC write) in
    between.  KVM keeps the master clock while the host clocksource is tsc and
    every vCPU's TSC matched; KVM_SET_CLOCK changes neither, so the loss is
    KVM's, unless the host left tsc meanwhile (then: why it cannot be judged)."""
    out: list[Violation] = []
    why_not = None
    for p, st in enumerate(run.storm):
        lost = st.get("lost_after_sets")
        if lost is None:
            continue
        source = (st.get("clocksource") or [""])[-1]
        if source and source != "tsc":
            why_not = (
                f"the host clocksource went from {st['clocksource'][0]!r} to {source!r} "
                "during the forced updates: KVM's master clock went with it"
            )
            continue
        out.append(
            checks.violation(
                KIND_MASTER_CLOCK_LOST,
                "vm",
                p,
                1,
                0,
                f"KVM_GET_CLOCK had KVM_CLOCK_TSC_STABLE {st.get('stable_gets', 0)} time(s), "
                f"then lacked it after {lost} KVM_SET_CLOCK(s) and nothing else (host "
                f"clocksource {source or 'unknown'}): KVM_SET_CLOCK turned the master clock off",
                counter="KVM_CLOCK_TSC_STABLE",
            )
        )
    return out, why_not


def _keeps_pad0(vcpu0: Sequence[int]) -> bool:
    """vCPU 0's watch row says KVM's record never wrote pad0: it kept the
    guest's mark at every rewrite (and there was one)."""
    return 0 < vcpu0[1] == vcpu0[2]


def storm_torn(run: RunView) -> list[Violation]:
    """CLOCK_MODE_MARK's torn reads (programs/clock.c, guest_abi.h), judged.
    vCPU 0 puts a version m (0 mod 4) and m's mark in pad0 of its area in one
    store and has KVM rewrite the area; KVM's record has pad0 = 0 and, after
    its write, version m + 2.  A watcher's one-instant read of m's mark under
    m + 2 is KVM's "consistent" version published before its record: the
    reader would take a torn (tsc_timestamp, system_time), as a vDSO reader
    on another vCPU does (kvmclock-version-even-while-writing).  Only rows
    whose marks carry their version are judged: with one fixed mark, a load
    of two instants (version after an update, pad0 from the next mark) read
    the same, and kvm_pvm showed that in 2 of about 25 runs under load.  Nor
    is a phase judged whose KVM left the mark in its record at every rewrite
    (vCPU 0's ``kept`` equal to ``rewritten``): a KVM that does not write
    pad0, which the ABI allows, leaves m's mark under m + 2 after a correct
    update.  A KVM that writes pad0 clears the mark at every update, so a
    mark kept only sometimes was put back by someone else, and is judged."""
    out = []
    for rows in (st.get("watch") or [] for st in run.storm):
        if rows and _keeps_pad0(rows[0]):
            continue
        for i, row in enumerate(rows):
            if i == 0 or len(row) < VERSIONED_MARK_COLUMNS or not row[5]:
                continue
            out.append(
                checks.violation(
                    KIND_TORN_UPDATE,
                    f"vcpu{i}",
                    0,
                    row[6] - 2,
                    row[6],
                    f"read vCPU 0's area {row[5]} time(s) under KVM's even version "
                    f"(first {row[6]}) with the guest's mark of version {row[6] - 2} still "
                    "in it: KVM said the area was consistent before writing its record",
                    counter="pvti version",
                )
            )
    return out


def storm_watch(run: RunView) -> list[str]:
    """CLOCK_MODE_MARK's findings that are shown, not judged: a mark of
    another version than the one read ("mixed": the 8-byte load or store was
    not one instant, which the platform, not KVM's writes, decides), the mark
    under KVM's version in a row taken with one fixed mark (see
    :func:`storm_torn`), and marks KVM's record left in place."""
    out = []
    for rows in (st.get("watch") or [] for st in run.storm):
        if len(rows) < 2:
            continue
        for i, row in enumerate(rows):
            if i == 0:
                continue
            if len(row) < VERSIONED_MARK_COLUMNS and row[5]:
                out.append(
                    f"vcpu{i} read vCPU 0's area {row[5]} time(s) with the guest's mark under "
                    f"version {row[6]} (2 mod 4: KVM's after its write; a fixed mark, "
                    "not judged)"
                )
            if len(row) >= VERSIONED_MARK_COLUMNS and row[7]:
                first = ""
                if len(row) > VERSIONED_MARK_COLUMNS:
                    head = row[8]
                    first = (
                        f", first version {head & 0xFFFFFFFF} with the mark of "
                        f"{((head >> 32) & 0xFFFFFF) * 4}"
                    )
                out.append(
                    f"vcpu{i} read {row[7]} time(s) a mark of another version than the one "
                    f"read{first} (an 8-byte load or store of two instants; not judged)"
                )
        if rows[0][2]:
            out.append(f"KVM's record left the guest's mark in {rows[0][2]} rewrites")
            torn = sum(r[5] for r in rows[1:] if len(r) >= VERSIONED_MARK_COLUMNS)
            if torn and _keeps_pad0(rows[0]):
                out.append(
                    f"{torn} read(s) of the mark under KVM's version not judged: a record "
                    "that keeps the mark at every rewrite cannot tell an early version "
                    "from a finished one"
                )
    return out


def judge_run(cfg: ClockConfigView, run: RunView) -> Found:
    """Every violation in the run, judged or excused (no master clock)."""
    found = Found()
    _per_vcpu(cfg, run, found)
    _warps(cfg, run, _stable_phases(run), found)
    if cfg.pvti_check and run.pvti_areas and run.stable is not None:
        found.judged += checks.check_pvti_consistency(
            [(a[0], a[1], a[2], a[5]) for a in run.pvti_areas], run.stable
        )
    if cfg.khz_ratio and run.facts.khz_after:
        found.judged += _frequency(run)
    return found


def summary(run: RunView, violations: Sequence[Violation]) -> str:
    bs = [b for r in run.records for b in r.batches]
    reads = sum(b.n for b in bs)
    w = sum(b.warps for b in bs)
    mw = max((b.max_warp_ns for b in bs), default=0)
    vw = sum(b.vdso_warps for b in bs)
    text = f"{reads} reads, {w} warps" + (f" (largest {checks.format_ns(mw)})" if w else "")
    if vw:
        text += f", {vw} vDSO-style warps"
    for st in run.storm:
        rows = st.get("watch") or []
        if len(rows) > 1:
            text += (
                f"; {st['sets']} KVM_SET_CLOCKs, vCPU 0's area rewritten {rows[0][1]} times "
                f"under {sum(r[3] for r in rows[1:])} watching reads"
            )
    jumps = []
    for r in run.records:
        if 0 < r.boundary < len(r.batches):
            a, b = r.batches[r.boundary - 1], r.batches[r.boundary]
            if a.n and b.n:
                sa, sb = r.samples[a.first + a.n - 1], r.samples[b.first]
                jumps.append(f"vcpu{r.index} {checks.format_ns(sb[0] - sa[0])}")
    if jumps:
        text += (
            f"; jump over {checks.format_ns(max(run.facts.downtime_ns, 0))} downtime: "
            + ", ".join(jumps)
        )
    firsts = [r.samples[0] for r in run.records if r.samples]
    if firsts and run.khz and not any(r.boundary for r in run.records) and not w:
        tsc = firsts[0][1]
        text += (
            f"; first reading: kvmclock {checks.format_ns(firsts[0][0])}, TSC {tsc} "
            f"ticks ({checks.format_ns(tsc * 1_000_000 // run.khz)} at KVM's frequency)"
        )
    if violations:
        counts = checks.summarize(violations)
        first = violations[0]
        text = (
            ", ".join(f"{k} x{n}" for k, n in counts.items())
            + f"; first: {first.series}[{first.index}] {first.detail}; "
            + text
        )
    return text


def stability_notes(run: RunView, stable: list[bool]) -> dict[str, Any]:
    saved = run.facts.saved_clock
    note: dict[str, Any] = {
        "stable_before": run.stable,
        "stable_at_save": bool(saved[1] & KVM_CLOCK_TSC_STABLE) if saved else None,
        "stable_after": run.stable_after,
        "phases_stable": stable,
    }
    note["lost_at_boundary"] = bool(len(stable) > 1 and (run.stable or stable[0]) and not stable[1])
    return note


def rate_notes(run: RunView) -> dict[str, Any]:
    def khz(r: Rate | None) -> list[float] | None:
        return None if r is None else [round(float(r.lo), 3), round(float(r.hi), 3)]

    return {
        "tsc_khz": run.khz,
        "tsc_khz_after": run.facts.khz_after or None,
        "measured_khz_raw": [khz(r) for r in phase_rates(run, raw=True)],
        "measured_khz": [khz(r) for r in phase_rates(run)],
    }


# ---- records


def run_of(record: dict[str, Any]) -> RunView:
    try:
        khz = record["tsc_khz"]
        st = record["stable"]
        return RunView(
            [ClockRecord.from_record(d, khz) for d in record["vcpu_records"]],
            st["before"],
            st["after"],
            BoundaryFacts.from_json(record["facts"]),
            record["pvti_areas"],
            khz,
            [
                [RateProbe(tuple(p[0:2]), tuple(p[2:4]), p[4]) for p in phase]
                for phase in record["rate_probes"]
            ],
            record.get("storm", []),
        )
    except (KeyError, TypeError) as exc:
        raise RecordError(f"clock record unreadable: {exc!r}") from exc


def judge(record: dict[str, Any]) -> Judgement:
    cfg = ClockConfigView.of(record["config"])
    fail = record.get("failure")
    if fail:
        blame = Blame(fail["blame"])
        return Judgement(verdict_for(cfg.kind, blame=blame), fail["observed"], [], {})
    run = run_of(record)
    found = judge_run(cfg, run)
    stable = _stable_phases(run)
    notes: dict[str, Any] = {"stability": stability_notes(run, stable), "tsc": rate_notes(run)}
    if run.storm:
        notes["forced_updates"] = run.storm
    if found.excused:
        notes["not_judged_without_master_clock"] = found.excused
    if found.waited_out:
        notes["odd_version_then_completed"] = found.waited_out
    why_not = None
    for r in run.records:
        if r.stuck:
            s = r.stuck
            v, why = judge_stopped(
                f"vcpu{r.index}",
                len(r.batches),
                Stopped(s.rip, s.waited_ns, s.cpu_ns, s.queued_ns),
                cfg.budget_s,
            )
            if v:
                found.judged.append(v)
            why_not = why_not or why
    lost, why = storm_master_clock(run)
    found.judged += lost
    found.judged += storm_torn(run)
    why_not = why_not or why
    watch = storm_watch(run)
    if watch:
        notes["mark_watch"] = watch
    violations = found.judged
    text = summary(run, violations)
    if watch:
        text += "; " + "; ".join(watch)
    if notes["stability"]["lost_at_boundary"]:
        text += "; master clock lost at the boundary (KVM_CLOCK_TSC_STABLE gone)"
    if found.waited_out:
        text += (
            f"; {found.waited_out} reading(s) gave up on an update that then completed "
            "(odd version, the next one even)"
        )
    if found.excused:
        text += "; not judged without a master clock: " + ", ".join(
            f"{k} x{n}" for k, n in found.excused.items()
        )
    if violations:
        return Judgement(verdict_for(cfg.kind, broken=True), text, violations, notes)
    if cfg.storm and not sum(p["sets"] for p in run.storm):
        why_not = why_not or "no kvmclock update was forced (no KVM_SET_CLOCK issued)"
    if why_not:
        return Judgement(Verdict.UNTESTABLE, why_not, violations, notes)
    if cfg.needs_stable and not any(stable):
        return Judgement(
            Verdict.NOT_SUPPORTED,
            "the host clock is never stable (KVM_GET_CLOCK without "
            "KVM_CLOCK_TSC_STABLE, areas without PVCLOCK_TSC_STABLE_BIT: no master "
            f"clock, e.g. a host clocksource other than tsc); measured: {text}",
            violations,
            notes,
        )
    return Judgement(verdict_for(cfg.kind, broken=False), text, violations, notes)
