"""The steal family's judge: a pure function from a run record to a verdict.

A steal record (what :meth:`kvmharness.scenarios.steal.StealResult.to_json`
writes, schema :data:`~kvmharness.judges.SCHEMA_VERSION`) carries, per vCPU,
every reading of its steal-time area: the guest's value and version, the
host's value and version read right after that ``KVM_RUN`` returned, the
runner thread and vCPU life, and the thread's run_delay just before and just
after the ``KVM_RUN``.  The judge rebuilds those series
(:class:`VcpuRecord`) and runs :mod:`kvmharness.checks` over them; the live
run calls this same function on the record it is about to write.

Compact form of one vCPU's readings: most readings are *quiet*: nothing but
the version moved (value unchanged, version +2, host equal to guest, no
run_delay growth before or during the ``KVM_RUN``, same thread).  Only the
other readings (*events*) are written, as columnar delta-encoded int lists,
each with the number of quiet readings before it.  A quiet reading adds
nothing a check could flag and is rebuilt exactly, but for its timestamp,
which is interpolated between its neighbours (nothing judges it; the plot of
a constant value looks the same).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kvmharness import checks
from kvmharness.checks import Sample, Violation
from kvmharness.judges import Judgement, RecordError, deltas, undeltas
from kvmharness.judges.stopped import Stopped, judge_stopped
from kvmharness.scenarios.base import Blame, Kind, Verdict, verdict_for

log = logging.getLogger(__name__)

FAMILY = "steal"

#: Today's kind of each variant (the runner's table is checked against it by
#: tests/test_judge_steal.py): a record is judged by today's rules, not by the
#: kind it was written with.
KINDS: dict[str, Kind] = {
    "fresh-vm/vcpu-thread": Kind.PROMISE,
    "fresh-vm/main-thread": Kind.PROMISE,
    "cross-process/vcpu-thread": Kind.PROMISE,
    "cross-process/main-thread": Kind.PROMISE,
    "cancelled-save": Kind.PROMISE,
    "same-vm/new-thread": Kind.CHARACTERIZE,
    "fresh-vm/reused-thread": Kind.CHARACTERIZE,
    "same-vm/msr-rewrite": Kind.CHARACTERIZE,
}


@dataclass(frozen=True)
class RunCtx:
    """Which thread ran the vCPU for a reading, and its run_delay around that KVM_RUN."""

    tid: int
    life: int  # which vCPU instance: a restore into a new vCPU starts a new life
    pre_ns: int
    post_ns: int


@dataclass
class VcpuRecord:
    """What one vCPU saw: guest readings and host readings of its area."""

    index: int
    guest: list[Sample] = field(default_factory=list)
    host: list[Sample] = field(default_factory=list)
    ctx: list[RunCtx] = field(default_factory=list)  # one per reading
    boundary: int = 0  # index of the first sample after the boundary
    max_run_ns: int = 0  # longest single KVM_RUN (staleness of a reading)
    phases: list[tuple[int, int, int]] = field(default_factory=list)
    """(first sample index, last sample index, contended ns) per contended phase"""
    stuck: Stopped | None = None
    writer_run_delay_ns: int | None = None
    """run_delay of the thread that wrote MSR_KVM_STEAL_TIME at the boundary"""

    # -- the record ---------------------------------------------------------

    def _kept(self) -> set[int]:
        """Readings written whatever they hold: ends, the boundary, phase ends."""
        n = len(self.guest)
        keep = {0, n - 1, self.boundary - 1, self.boundary}
        for a, b, _ in self.phases:
            keep |= {a, b}
        return keep

    def _quiet(self, i: int, keep: set[int]) -> bool:
        if i == 0 or i in keep:
            return False
        g, h, c = self.guest[i], self.host[i], self.ctx[i]
        pg, pc = self.guest[i - 1], self.ctx[i - 1]
        return (
            g.value == pg.value
            and h.value == g.value
            and g.version is not None
            and pg.version is not None
            and g.version == pg.version + 2
            and h.version == g.version
            and (c.tid, c.life) == (pc.tid, pc.life)
            and c.pre_ns == pc.post_ns
            and c.post_ns == c.pre_ns
        )

    def to_json(self) -> dict[str, Any]:
        n = len(self.guest)
        if len(self.host) != n or len(self.ctx) != n:
            raise ValueError(
                f"vcpu{self.index}: {n} guest, {len(self.host)} host, {len(self.ctx)} ctx readings"
            )
        keep = self._kept()
        events = [i for i in range(n) if not self._quiet(i, keep)]
        prev_i = -1
        gap, t, t_prev, gv, gver, hv, hver, wait_before, wait_in = ([] for _ in range(9))
        runs: list[list[int]] = []
        for i in events:
            g, h, c = self.guest[i], self.host[i], self.ctx[i]
            gap.append(i - prev_i - 1)
            prev_i = i
            t.append(g.t_ns)
            t_prev.append(g.t_ns - self.guest[i - 1].t_ns if i else 0)
            gv.append(g.value)
            gver.append(g.version if g.version is not None else -1)
            hv.append(h.value - g.value)
            hver.append((h.version if h.version is not None else -1) - gver[-1])
            wait_before.append(c.pre_ns - (self.ctx[i - 1].post_ns if i else 0))
            wait_in.append(c.post_ns - c.pre_ns)
            if not i or (c.tid, c.life) != (self.ctx[i - 1].tid, self.ctx[i - 1].life):
                runs.append([i, c.tid, c.life])
        return {
            "index": self.index,
            "readings": n,
            "boundary": self.boundary,
            "max_run_ns": self.max_run_ns,
            "phases": [list(p) for p in self.phases],
            "stuck": asdict(self.stuck) if self.stuck else None,
            "writer_run_delay_ns": self.writer_run_delay_ns,
            "runs": runs,
            "events": {
                "quiet_before": gap,
                "t_ns": deltas(t),
                "since_previous_ns": t_prev,
                "guest_value": deltas(gv),
                "guest_version": deltas(gver),
                "host_minus_guest_value": hv,
                "host_minus_guest_version": hver,
                "run_delay_before_ns": wait_before,
                "run_delay_during_ns": wait_in,
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VcpuRecord:
        try:
            ev = d["events"]
            gap = ev["quiet_before"]
            t = undeltas(ev["t_ns"])
            gv = undeltas(ev["guest_value"])
            gver = undeltas(ev["guest_version"])
            cols = [
                ev["since_previous_ns"],
                ev["host_minus_guest_value"],
                ev["host_minus_guest_version"],
                ev["run_delay_before_ns"],
                ev["run_delay_during_ns"],
            ]
            runs = {r[0]: (r[1], r[2]) for r in d["runs"]}
            n = d["readings"]
        except (KeyError, TypeError, IndexError) as exc:
            raise RecordError(f"steal vcpu record is not readable: {exc!r}") from exc
        if any(len(c) != len(gap) for c in (t, gv, gver, *cols)):
            raise RecordError("steal vcpu record: event columns of unequal length")
        rec = cls(
            index=d["index"],
            boundary=d["boundary"],
            max_run_ns=d["max_run_ns"],
            phases=[(p[0], p[1], p[2]) for p in d["phases"]],
            stuck=Stopped(**d["stuck"]) if d.get("stuck") else None,
            writer_run_delay_ns=d.get("writer_run_delay_ns"),
        )
        since, hv, hver, wait_before, wait_in = cols
        tid = life = 0
        post = 0
        last_t = 0
        for k, q in enumerate(gap):
            i = len(rec.guest) + q
            if q:  # quiet readings: only the version moved; timestamps interpolated
                g0, t_end = rec.guest[-1], t[k] - since[k]
                for j in range(1, q + 1):
                    tj = last_t + (t_end - last_t) * j // q
                    s = Sample(tj, g0.value, (g0.version or 0) + 2 * j)
                    rec.guest.append(s)
                    rec.host.append(s)
                    rec.ctx.append(RunCtx(tid, life, post, post))
            if i in runs:
                tid, life = runs[i]
            pre = post + wait_before[k] if i else wait_before[k]
            post = pre + wait_in[k]
            version = gver[k] if gver[k] >= 0 else None
            host_version = gver[k] + hver[k]
            rec.guest.append(Sample(t[k], gv[k], version))
            rec.host.append(
                Sample(t[k], gv[k] + hv[k], host_version if host_version >= 0 else None)
            )
            rec.ctx.append(RunCtx(tid, life, pre, post))
            last_t = t[k]
        if len(rec.guest) != n:
            raise RecordError(f"steal vcpu record rebuilt {len(rec.guest)} readings, not {n}")
        return rec

    def extend(self, other: VcpuRecord) -> None:
        """Append a later process's record; its vCPU is a new life."""
        offset = len(self.guest)
        lives = max((c.life for c in self.ctx), default=-1) + 1
        self.guest += other.guest
        self.host += other.host
        self.ctx += [replace(c, life=c.life + lives) for c in other.ctx]
        self.max_run_ns = max(self.max_run_ns, other.max_run_ns)
        self.phases += [(a + offset, b + offset, c) for a, b, c in other.phases]
        self.stuck = self.stuck or other.stuck
        if other.writer_run_delay_ns is not None:
            self.writer_run_delay_ns = other.writer_run_delay_ns

    # -- what the checks get ------------------------------------------------

    def run_delays(self) -> list[checks.RunDelay]:
        """The readings' run_delay context for :func:`checks.check_follows_run_delay`.

        A stretch starts with each new vCPU life or runner thread.  Until KVM's
        first update in it, last_steal may be 0 (new vCPU) or another thread's,
        so that update may charge the thread's whole run_delay, once.  It is
        found from the host readings (taken after each KVM_RUN, so they see
        every update): the first whose version differs from the area's version
        before the stretch.  The guest may read that update one reading later
        (an update on a re-entry after its read), so one more reading is fresh.
        The area's value when a stretch begins is the host's reading after the
        last KVM_RUN before it (nothing runs the vCPU in between), the base the
        whole-run_delay charge is counted from.  Each contended phase is its
        own stretch for "alive", so a steal clock that stops at the boundary
        is judged on the phase after it alone.
        """
        out = []
        fresh_until = -1
        phase_starts = {a for a, _b, _c in self.phases}
        for i, c in enumerate(self.ctx):
            p = self.ctx[i - 1] if i else None
            start = p is None or p.life != c.life or p.tid != c.tid
            base = None
            if start:
                v0 = self.host[i - 1].version if i else 0
                base = self.host[i - 1].value if i else 0
                end = next(
                    (
                        j
                        for j in range(i, len(self.ctx))
                        if self.ctx[j].life != c.life or self.ctx[j].tid != c.tid
                    ),
                    len(self.ctx),
                )
                first = next((j for j in range(i, end) if self.host[j].version != v0), end)
                fresh_until = min(first + 1, end - 1)
            out.append(
                checks.RunDelay(
                    c.pre_ns,
                    c.post_ns,
                    i <= fresh_until,
                    start,
                    base=base,
                    phase_start=i in phase_starts,
                    zero_start=p is None or p.life != c.life,
                )
            )
        return out

    def segments(self) -> list[checks.AliveSpan]:
        """What "alive" is judged over, stretch by stretch."""
        return checks.alive_segments(self.run_delays(), checks.ALIVE_MIN_RUN_DELAY_NS)

    def alive_judgeable(self, first: int) -> bool:
        """Whether "alive" could be judged over the readings from ``first`` on,
        taken as one phase (the one being recorded): every stretch in it saw
        :data:`~kvmharness.checks.ALIVE_MIN_RUN_DELAY_NS` of waiting where the
        judge looks.  The runner goes on sampling until it is, so that a phase
        cut short by a slow or loaded host is not "untestable"."""
        if first >= len(self.guest):
            return False
        view = replace(self, phases=[*self.phases, (first, len(self.guest) - 1, 0)])
        rds = view.run_delays()
        return all(
            span.waited(rds) >= checks.ALIVE_MIN_RUN_DELAY_NS
            for span in view.segments()
            if span.last >= first
        )


# ---------------------------------------------------------------------------
# judging


def steal_at_boundary(records: list[VcpuRecord]) -> tuple[int | None, int | None]:
    """Sum over vCPUs of steal just before and just after the boundary (guest view)."""
    before = after = 0
    for r in records:
        if not r.guest or r.boundary <= 0 or r.boundary >= len(r.guest):
            return None, None
        before += r.guest[r.boundary - 1].value
        after += r.guest[r.boundary].value
    return before, after


def largest_jump_ns(records: list[VcpuRecord]) -> int | None:
    jumps = [b.value - a.value for r in records for a, b in zip(r.guest, r.guest[1:], strict=False)]
    return max(jumps, key=abs) if jumps else None


def judge_records(records: list[VcpuRecord], budget_s: float) -> tuple[list[Violation], str | None]:
    """Run the checks over each vCPU's guest and host series: (violations,
    why the run cannot be judged, or None)."""
    out: list[Violation] = []
    why_not: str | None = None
    for r in records:
        rds = r.run_delays()
        for name, series in ((f"vcpu{r.index}", r.guest), (f"vcpu{r.index}/host", r.host)):
            out += checks.check_monotonic(name, series)
            out += checks.check_versions(name, series)
            out += checks.check_follows_run_delay(name, series, rds)
        stopped = r.stuck
        if stopped is not None:
            v, why = judge_stopped(f"vcpu{r.index}", len(r.guest), stopped, budget_s)
            if v is not None:
                out.append(v)
            elif why_not is None:
                why_not = why
    if why_not is None:
        why_not = _too_short(records)
    return out, why_not


def _too_short(records: list[VcpuRecord]) -> str | None:
    """A stretch whose thread never waited long enough on a run queue to tell a
    live steal clock from a dead one."""
    for r in records:
        if r.stuck:
            continue
        rds = r.run_delays()
        for span in r.segments():
            a, b = span.first, span.last
            waited = span.waited(rds) if b > a or span.base is not None else 0
            if waited < checks.ALIVE_MIN_RUN_DELAY_NS:
                return (
                    f"vcpu{r.index}'s thread waited only {checks.format_ns(waited)} on a "
                    f"run queue over readings {a}-{b} (at least "
                    f"{checks.format_ns(checks.ALIVE_MIN_RUN_DELAY_NS)} is needed to tell a "
                    "live steal clock from a dead one)"
                )
    return None


def describe(records: list[VcpuRecord], violations: list[Violation]) -> str:
    if not violations:
        parts = []
        for r in records:
            if r.guest and 0 < r.boundary < len(r.guest):
                a, b = r.guest[r.boundary - 1].value, r.guest[r.boundary].value
                rd = r.ctx[r.boundary].post_ns if len(r.ctx) > r.boundary else None
                parts.append(
                    f"vcpu{r.index} {checks.format_ns(a)}->{checks.format_ns(b)}"
                    + (f" (runner's run_delay {checks.format_ns(rd)})" if rd is not None else "")
                )
        return "steal monotonic and within run_delay; " + ", ".join(parts)
    counts = checks.summarize(violations)
    worst = violations[0]
    return (
        ", ".join(f"{k} x{v}" for k, v in counts.items())
        + f"; first: {worst.series}[{worst.index}] {worst.detail}"
    )


def kind_of(record: dict[str, Any]) -> Kind:
    variant = record.get("variant")
    if variant in KINDS:
        return KINDS[variant]
    raise RecordError(f"steal record of unknown variant {variant!r} (known: {', '.join(KINDS)})")


def records_of(record: dict[str, Any]) -> list[VcpuRecord]:
    try:
        return [VcpuRecord.from_json(d) for d in record["records"]]
    except (KeyError, TypeError) as exc:
        raise RecordError(f"steal record has no readable 'records': {exc!r}") from exc


def judge(record: dict[str, Any]) -> Judgement:
    """Judge one steal record (see the module docstring)."""
    kind = kind_of(record)
    if record.get("error"):
        blame = Blame(record.get("blame") or Blame.HARNESS)
        return Judgement(
            verdict_for(kind, blame=blame), f"could not run ({blame}): {record['error']}", []
        )
    try:
        budget_s = float(record["config"]["budget_s"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"steal record has no config.budget_s: {exc!r}") from exc
    records = records_of(record)
    violations, why_not = judge_records(records, budget_s)
    if why_not and not violations and kind is Kind.PROMISE:
        return Judgement(Verdict.UNTESTABLE, why_not, [])
    return Judgement(
        verdict_for(kind, broken=bool(violations)), describe(records, violations), violations
    )
