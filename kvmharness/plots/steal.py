"""The steal panel: each vCPU's steal (as the guest read it) against the bound
its runner thread's run_delay sets, the two rules of
:func:`kvmharness.checks.check_follows_run_delay`:

* ceiling (dashed): at each reading, the most steal may hold, the previous
  reading plus the runner's run_delay growth around the two KVM_RUNs (or,
  where a new vCPU or runner thread begins, the thread's whole run_delay,
  once): :func:`kvmharness.checks.run_delay_ceilings`;
* alive floor (dotted, ending in a bar): over each stretch the judge picks
  (:meth:`VcpuRecord.segments`), steal must grow by at least
  :data:`~kvmharness.checks.ALIVE_FRACTION` of what the thread waited;
  the line runs from the stretch's starting value to that minimum.

A good kernel's steal runs just under its ceiling and ends each stretch
above its floor.  The restore boundary is a grey dashed line; violations are
red crosses at the reading the judge named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvmharness import checks
from kvmharness.judges.steal import VcpuRecord, records_of
from kvmharness.plots import LEGEND_VCPUS, cut_gaps, mark_violations, no_data, unplaced

#: Values at or beyond this are u64-wrapped (a negative delta): drawn at the top edge.
WRAP = 1 << 62
MS = 1e6


def _t(ns: int, t0: int) -> float:
    return (ns - t0) / 1e9


def draw(ax: Any, record: dict[str, Any], violations: Sequence[Any]) -> None:
    if record.get("error") and not record.get("records"):
        no_data(ax, f"did not run: {record['error']}"[:200])
        return
    recs = records_of(record)
    if not any(r.guest for r in recs):
        no_data(ax, "no readings")
        return
    t0 = min(r.guest[0].t_ns for r in recs if r.guest)
    top = 0.0
    for r in recs:
        top = max(top, _draw_vcpu(ax, r, t0))
    top = top * 1.12 + 1
    ax.set_ylim(bottom=-0.03 * top, top=top)
    points, lost = _violation_points(recs, violations, t0, top)
    mark_violations(ax, points)
    unplaced(ax, lost)
    cut_gaps(ax, [_t(s.t_ns, t0) for r in recs for s in r.guest])
    ax.set_ylabel("steal (ms)", fontsize=8)
    ax.set_xlabel("time (s)", fontsize=8)
    ax.tick_params(labelsize=7)
    _legend(ax, recs)


def _legend(ax: Any, recs: list[VcpuRecord]) -> None:
    """vCPU colours, then what each line style means (one entry each)."""
    from matplotlib.lines import Line2D

    handles = [h for h in ax.get_lines() if str(h.get_gid()).startswith("series:")]
    handles = handles[:LEGEND_VCPUS]  # 64 entries would hide the panel
    styles = [
        Line2D([], [], color="grey", linestyle="--", linewidth=0.8),
        Line2D([], [], color="grey", linestyle=":", linewidth=1),
    ]
    labels = [h.get_label() for h in handles] + [
        "ceiling: previous + runner's run_delay growth",
        f"alive floor: {checks.ALIVE_FRACTION:g} x run_delay waited",
    ]
    ax.legend(handles + styles, labels, fontsize=6, loc="upper left", framealpha=0.7)


def _draw_vcpu(ax: Any, r: VcpuRecord, t0: int) -> float:
    """vCPU ``r``'s steal, ceiling and alive floors; the largest sane value drawn (ms)."""
    if not r.guest:
        return 0.0
    xs = [_t(s.t_ns, t0) for s in r.guest]
    ys = [s.value / MS if s.value < WRAP else float("nan") for s in r.guest]
    (line,) = ax.plot(
        xs,
        ys,
        drawstyle="steps-post",
        linewidth=1.2,
        label=f"vcpu{r.index} steal",
        gid=f"series:vcpu{r.index}",
    )
    color = line.get_color()
    rds = r.run_delays()
    ceil = [
        (c.before + c.allowed) / MS if c.before < WRAP else float("nan")
        for c in checks.run_delay_ceilings(r.guest, rds)
    ]
    ax.plot(
        xs,
        ceil,
        drawstyle="steps-post",
        linewidth=0.8,
        linestyle="--",
        color=color,
        alpha=0.6,
        label="_nolegend_",
        gid="bound:ceiling",
    )
    top = max((y for y in ys if y == y), default=0.0)
    for span in r.segments():
        waited = span.waited(rds)
        if waited < checks.ALIVE_MIN_RUN_DELAY_NS or (
            span.last <= span.first and span.base is None
        ):
            continue  # not judged: too little waiting
        start = span.before(r.guest)
        if start >= WRAP:
            continue
        need = start + checks.ALIVE_FRACTION * waited
        xa, xb = xs[span.first], xs[span.last]
        ax.plot(
            [xa, xb],
            [start / MS, need / MS],
            linestyle=":",
            linewidth=1,
            color=color,
            gid="bound:alive-floor",
        )
        ax.plot(
            [xb],
            [need / MS],
            marker="_",
            markersize=12,
            color=color,
            linestyle="none",
            gid="bound:alive-floor-end",
        )
        top = max(top, need / MS)
    if 0 < r.boundary < len(r.guest):
        ax.axvline(xs[r.boundary], color="grey", linestyle="--", linewidth=0.8, gid="boundary")
    return top


def _violation_points(
    recs: list[VcpuRecord], violations: Sequence[Any], t0: int, top: float
) -> tuple[list[tuple[float, float, str]], list[str]]:
    """Where each violation goes: the reading it names in its vCPU's series
    (guest or host: they share readings); a stopped vCPU at its last reading."""
    by_name = {f"vcpu{r.index}": r for r in recs}
    points, lost = [], []
    for v in violations:
        kind = str(getattr(v, "kind", "?"))
        series = str(getattr(v, "series", ""))
        r = by_name.get(series.split("/")[0])
        if r is None or not r.guest:
            lost.append(kind)
            continue
        i = min(max(int(getattr(v, "index", 0) or 0), 0), len(r.guest) - 1)
        s = (r.host if series.endswith("/host") else r.guest)[i]
        y = s.value / MS if s.value < WRAP else top
        points.append((_t(r.guest[i].t_ns, t0), min(y, top), kind))
    return points, lost
