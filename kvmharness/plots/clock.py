"""The clock panel: each vCPU's kvmclock readings against the host's clock
(``kvmclock - host``, both from the first reading: a clock in step with the
host is a flat line), one dot per KVM_RUN (its last reading, against the
host's clock when the KVM_RUN returned), with the bounds of
:mod:`kvmharness.judges.clock`:

* the allowed jump (thick bar) at each vCPU's first reading after the
  boundary: the window :func:`_jump_bounds` gives (the real time between the
  readings, less the downtime for a frozen clock; at least the real time for
  KVM_CLOCK_REALTIME), with the window and the jump the guest saw in the
  legend (``over-long-jump``, ``short-jump``);
* where the clock had no master clock (a reading without
  PVCLOCK_TSC_STABLE_BIT), a shaded band of the drift excused:
  :func:`unstable_tolerance`, growing from the phase's start (a step back
  within it is not judged, ``decrease``, ``warp``).

The boundary is a grey dashed line; violations are red crosses where they
happened (a step back or too-fast step at the pair of readings it names, an
odd version at its reading, a warp at the batches that saw it, a TSC not
applied at the first KVM_RUN after the write); a kind with no reading of its
own, such as a pvti disagreement, is named in the corner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvmharness import checks
from kvmharness.judges.clock import (
    STABLE_BIT,
    ClockConfigView,
    RunView,
    _jump_bounds,  # the judge's own window, not a copy
    _phase_start,
    run_of,
    unstable_tolerance,
)
from kvmharness.plots import LEGEND_VCPUS, cut_gaps, mark_violations, no_data, unplaced
from kvmharness.scenarios.clock_record import ClockRecord

MS = 1e6
#: kinds located by the pair of values they name
PAIR_KINDS = {checks.KIND_DECREASE, checks.KIND_TOO_FAST, checks.KIND_WRAP}


class Frame:
    """Plot coordinates: x host seconds, y (kvmclock - host) ms, from the first reading."""

    def __init__(self, run: RunView) -> None:
        self.t0 = min((r.batches[0].t1_ns for r in run.records if r.batches), default=0)
        self.g0 = min((r.samples[0][0] for r in run.records if r.samples), default=0)

    def x(self, host_ns: int) -> float:
        return (host_ns - self.t0) / 1e9

    def y(self, clock_ns: int, host_ns: int) -> float:
        return ((clock_ns - self.g0) - (host_ns - self.t0)) / MS


def draw(ax: Any, record: dict[str, Any], violations: Sequence[Any]) -> None:
    if record.get("failure") and not record.get("vcpu_records"):
        no_data(ax, f"did not run: {record['failure'].get('observed')}"[:200])
        return
    cfg = ClockConfigView.of(record["config"])
    run = run_of(record)
    if not any(r.samples for r in run.records):
        no_data(ax, "no readings: " + str(record.get("observed") or "")[:160])
        return
    f = Frame(run)
    xs_all: list[float] = []
    for r in run.records:
        xs_all += _draw_vcpu(ax, cfg, run, r, f)
    points, lost = _violation_points(run, violations, f)
    mark_violations(ax, points)
    unplaced(ax, lost)
    cut_gaps(ax, xs_all)
    ax.set_ylabel("kvmclock - host (ms)", fontsize=8)
    ax.set_xlabel("host time (s)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="best", framealpha=0.7)


def _batch_of(r: ClockRecord) -> list[Any]:
    out: list[Any] = [None] * len(r.samples)
    for b in r.batches:
        for i in range(b.first, b.first + b.n):
            out[i] = b
    return out


def _label(r: ClockRecord, what: str) -> str:
    """A legend entry for the first :data:`LEGEND_VCPUS` vCPUs only (64 would
    hide the panel)."""
    return f"vcpu{r.index} {what}" if r.index < LEGEND_VCPUS else "_nolegend_"


def _draw_vcpu(
    ax: Any, cfg: ClockConfigView, run: RunView, r: ClockRecord, f: Frame
) -> list[float]:
    """vCPU ``r``: the last reading of each batch against the batch's end (a
    reading was taken at most that KVM_RUN's length before it), the drift band
    where its clock had no master clock, and the allowed jump; the x drawn."""
    xs, ys = [], []
    for b in r.batches:
        if b.n:
            xs.append(f.x(b.t1_ns))
            ys.append(f.y(r.samples[b.first + b.n - 1][0], b.t1_ns))
    (line,) = ax.plot(
        xs, ys, ".", markersize=2.5, label=_label(r, "kvmclock"), gid=f"series:vcpu{r.index}"
    )
    color = line.get_color()
    # without a master clock a step back up to the drift KVM's scale allows is
    # excused: that tolerance, growing from the phase's start, around the phase
    for p, (lo, hi) in enumerate(r.phases()):
        seq = list(r.sample_range(lo, hi))
        if not seq or all(r.samples[i][4] & STABLE_BIT for i in seq):
            continue
        start = _phase_start(run, p)
        ends = [b.t1_ns for b in r.batches[lo:hi] if b.n]
        mid = sorted(f.y(r.samples[b.first + b.n - 1][0], b.t1_ns) for b in r.batches[lo:hi] if b.n)
        y0 = mid[len(mid) // 2]
        tol = [unstable_tolerance(run, p, t - start) / MS for t in ends]
        ax.fill_between(
            [f.x(t) for t in ends],
            [y0 - d for d in tol],
            [y0 + d for d in tol],
            color=color,
            alpha=0.15,
            linewidth=0,
            label=_label(r, "drift excused without a master clock"),
            gid="bound:drift",
        )
    # the jump at the boundary
    if 0 < r.boundary < len(r.batches):
        a, b = r.batches[r.boundary - 1], r.batches[r.boundary]
        if a.n and b.n:
            sa, sb = r.samples[a.first + a.n - 1][0], r.samples[b.first][0]
            lo_ns, hi_ns, _why, _why_lo = _jump_bounds(cfg, a, b, run.facts)
            x = f.x(b.t1_ns)
            ax.plot(
                [x, x],
                [f.y(sa + lo_ns, b.t1_ns), f.y(sa + hi_ns, b.t1_ns)],
                linewidth=6,
                alpha=0.35,
                color=color,
                solid_capstyle="butt",
                label=_label(
                    r,
                    f"allowed jump {checks.format_ns(lo_ns)}..{checks.format_ns(hi_ns)} "
                    f"(saw {checks.format_ns(sb - sa)})",
                ),
                gid="bound:jump",
            )
            ax.axvline(f.x(b.t0_ns), color="grey", linestyle="--", linewidth=0.8, gid="boundary")
    return xs


def _find_pair(r: ClockRecord, col: int, before: Any, after: Any) -> int | None:
    for i in range(1, len(r.samples)):
        if r.samples[i][col] == after and r.samples[i - 1][col] == before:
            return i
    return None


def _violation_points(
    run: RunView, violations: Sequence[Any], f: Frame
) -> tuple[list[tuple[float, float, str]], list[str]]:
    recs = {f"vcpu{r.index}": r for r in run.records}
    points: list[tuple[float, float, str]] = []
    lost: list[str] = []

    def at_sample(r: ClockRecord, i: int, kind: str) -> None:
        b = _batch_of(r)[i] if 0 <= i < len(r.samples) else None
        if b is None:
            lost.append(kind)
        else:
            points.append((f.x(b.t1_ns), f.y(r.samples[i][0], b.t1_ns), kind))

    def at_batch(r: ClockRecord, k: int, kind: str) -> None:
        k = min(max(k, 0), len(r.batches) - 1)
        while k > 0 and not r.batches[k].n:
            k -= 1
        if not r.batches or not r.batches[k].n:
            lost.append(kind)
        else:
            at_sample(r, r.batches[k].first, kind)

    for v in violations:
        kind = str(getattr(v, "kind", "?"))
        series = str(getattr(v, "series", ""))
        head, _, tail = series.partition("/")
        idx = int(getattr(v, "index", 0) or 0)
        if head == "all vCPUs":  # warps: the batches of that phase that saw them
            hit = False
            for r in run.records:
                ph = r.phases()
                if idx < len(ph):
                    for b in r.batches[ph[idx][0] : ph[idx][1]]:
                        if (b.vdso_warps if tail == "vdso" else b.warps) and b.n:
                            at_sample(r, b.first + b.n - 1, kind)
                            hit = True
            if not hit:
                lost.append(kind)
            continue
        r = recs.get(head)
        if r is None or not r.samples:
            lost.append(kind)
        elif tail == "boundary":
            at_batch(r, idx, kind)
        elif kind == checks.KIND_ODD_VERSION:
            i = next((j for j, s in enumerate(r.samples) if s[3] == v.after and s[3] % 2), None)
            at_sample(r, i, kind) if i is not None else lost.append(kind)
        elif kind in PAIR_KINDS:
            i = _find_pair(r, 2 if tail == "vdso" else 0, v.before, v.after)
            at_sample(r, i, kind) if i is not None else lost.append(kind)
        elif kind == checks.KIND_DECODE_MISMATCH and not tail:
            at_sample(r, idx, kind)
        elif kind in (checks.KIND_TSC_NOT_APPLIED, checks.KIND_STUCK, "hung") and not tail:
            at_batch(r, idx, kind)
        else:
            lost.append(kind)
    return points, lost
