"""The postcopy panel: per vCPU, the host's blocktime against the stalls the
guest measured, with the bounds of :mod:`kvmharness.judges.postcopy` (its
``agreement`` notes, the judge's own figures):

* blocktime bar, with its ceilings as ticks: the guest's stall on the same
  pages plus conversion tolerance (``blocktime-over-guest-stall``) and the
  touching KVM_RUN's wall time plus the copies' late stamps
  (``blocktime-over-wall``);
* the guest's stall on the pages it faulted on;
* the guest's stall over every touch, with its ceiling as a tick: blocktime
  plus everything else that can stall it, the thread's run_delay and CPU
  time, the other threads', wake-ups and TSC conversion
  (``guest-stall-over-blocktime``).

Violations are red crosses at the end of the bar they are about; those of
no one vCPU's figures (lost pages, misattributed faults) at the row they
name, "other" for the fault thread, the helper and the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvmharness.judges import postcopy as pj
from kvmharness.plots import mark_violations, no_data

MS = 1e6
BAR_H = 0.22
LEGEND_ROOM = 1.9
ON_BLOCKTIME = {pj.KIND_OVER_GUEST, pj.KIND_OVER_WALL}
ON_STALL = {pj.KIND_UNDER_GUEST, pj.KIND_SILENT_STALL}


def draw(ax: Any, record: dict[str, Any], violations: Sequence[Any]) -> None:
    if "faults" not in record:
        no_data(ax, f"did not run: {record.get('observed') or record.get('error')}"[:200])
        return
    rec = pj.PostcopyRecord.from_dict(record)
    rp = pj.replay(rec)
    agreement = {a["vcpu"]: a for a in pj.judge(record).notes.get("agreement", [])}
    n = rec.vcpus
    other = n  # the row of the fault thread, helper and host
    right = 0.0
    walls: list[tuple[float, float]] = []
    ends: dict[tuple[int, str], float] = {}
    for v in range(n):
        a = agreement.get(v)
        y = n - 1 - v
        if a is None:
            ax.text(0, y, f"  vcpu{v}: {rec.vcpu[v].state}, not compared", va="center", fontsize=7)
            continue
        bt, stalled, stall_all = a["blocktime_ns"], a["guest_stall_ns"], a["stall_all_ns"]
        o = rec.vcpu[v]
        mine = [i for i, fv in enumerate(rp.vcpu_of) if fv == v and rp.placed_at[i] is not None]
        wall = o.run_end_ns - o.run_start_ns + sum(rp.copy_late[i] for i in mine)
        bars = (
            (y + BAR_H, bt, "tab:blue", "host blocktime"),
            (y, stalled, "tab:green", "guest stall on faulted pages"),
            (y - BAR_H, stall_all, "tab:olive", "guest stall, every touch"),
        )
        for yy, w, color, label in bars:
            ax.barh(
                yy,
                w / MS,
                height=BAR_H * 0.9,
                color=color,
                label=label if v == 0 else None,
                gid="series:" + label,
            )
        ends[(v, "blocktime")] = bt / MS
        ends[(v, "stall")] = stall_all / MS
        for yy, x, label, gid, color in (
            (
                y + BAR_H,
                (stalled + a["tolerance_ns"]) / MS,
                "blocktime ceiling: guest stall + conversion",
                "bound:over-guest",
                "black",
            ),
            (
                y - BAR_H,
                (bt + a["slack_ns"]) / MS,
                "stall ceiling: blocktime + run_delay, CPU, other threads, wake-ups",
                "bound:under-guest",
                "tab:purple",
            ),
        ):
            ax.plot(
                [x, x],
                [yy - BAR_H / 2, yy + BAR_H / 2],
                color=color,
                linewidth=1.5,
                label=label if v == 0 else None,
                gid=gid,
            )
            right = max(right, x)
        walls.append((y + BAR_H, wall / MS))
        right = max(right, bt / MS, stalled / MS, stall_all / MS)
    right = right * 1.25 + 0.01
    wall_label = "blocktime ceiling: touching KVM_RUN's wall time"
    for yy, w in walls:  # the wall ceiling: drawn where it fits, else named at the edge
        if w <= right:
            ax.plot(
                [w, w],
                [yy - BAR_H / 2, yy + BAR_H / 2],
                color="grey",
                linewidth=1.5,
                linestyle="--",
                gid="bound:over-wall",
                label=wall_label,
            )
            wall_label = "_nolegend_"
        else:
            ax.annotate(
                f"wall ceiling {w:.1f} ms >",
                (right, yy),
                ha="right",
                va="center",
                fontsize=6,
                color="grey",
                gid="bound:over-wall",
            )
    ax.set_xlim(0, right * LEGEND_ROOM)  # the legend sits right of the bars
    points = []
    for viol in violations:
        kind = str(getattr(viol, "kind", "?"))
        series = str(getattr(viol, "series", ""))
        v = int(series[4:]) if series.startswith("vcpu") and series[4:].isdigit() else None
        if v is None or v >= n:
            points.append((0.0, float(other), kind))
        elif kind in ON_BLOCKTIME:
            points.append((ends.get((v, "blocktime"), 0.0), n - 1 - v + BAR_H, kind))
        elif kind in ON_STALL:
            points.append((ends.get((v, "stall"), 0.0), n - 1 - v - BAR_H, kind))
        else:
            points.append((0.0, float(n - 1 - v), kind))
    rows = [f"vcpu{v} ({sum(1 for fv in rp.vcpu_of if fv == v)} faults)" for v in range(n)]
    ticks = list(range(n - 1, -1, -1))
    if any(p[1] == other for p in points):
        ticks.append(other)
        rows.append("other")
    ax.set_yticks(ticks, rows, fontsize=7)
    mark_violations(ax, points)
    ax.set_xlabel(f"ms (latency {rec.latency_us} us per resolved fault)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="center right", framealpha=0.8)
