"""How clock results look: the table rows (the plot, kvmclock against the host's
clock with the allowed jump, is :mod:`kvmharness.plots.clock`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvmharness.checks import format_ns
from kvmharness.scenarios.base import verdict_text
from kvmharness.table import fit_table

HEADERS = [
    "scenario",
    "variant",
    "vCPUs",
    "boundary",
    "kvmclock put",
    "TSC put",
    "stable",
    "reads",
    "reads/s/vCPU",
    "warps (largest)",
    "jump at boundary",
    "wall",
    "verdict",
]


def _warps(r: Any) -> str:
    w, mw, vw, mvw = r.warps()
    text = f"{w}" + (f" ({format_ns(mw)})" if w else "")
    if vw:
        text += f", vDSO {vw} ({format_ns(mvw)})"
    return text


def _jump(r: Any) -> str:
    jumps = r.boundary_jumps()
    if not jumps:
        return "-"
    ns = max((j[1] for j in jumps), key=abs)
    return f"{format_ns(ns)} / {format_ns(max(r.facts.downtime_ns, 0))} down"


def _stable(r: Any) -> str:
    def yn(x: bool | None) -> str:
        return "-" if x is None else ("yes" if x else "no")

    text = yn(r.stable) + ("" if r.stable_after is None else f" -> {yn(r.stable_after)}")
    lost = (getattr(r, "notes", None) or {}).get("stability", {}).get("lost_at_boundary")
    return text + (" (lost)" if lost else "")


def clock_rows(results: Sequence[Any], *, width: int = 0) -> list[list[str]]:
    rows = []
    for r in results:
        v = r.variant
        rate = r.reads_per_s()
        rows.append(
            [
                "clock",
                v.name,
                str(r.vcpus),
                str(v.boundary) + (" +CPU hops" if v.hop else ""),
                str(v.clock),
                str(v.tsc),
                _stable(r),
                str(r.reads()),
                "-" if rate is None else f"{rate:.0f}",
                _warps(r),
                _jump(r),
                f"{r.wall_s:.2f} s",
                verdict_text(r, width),
            ]
        )
    return rows


def clock_table(results: Sequence[Any], width: int = 90) -> str:
    """The table for ``width`` columns (0: every column, unwrapped): kvmharness.table."""
    return fit_table("clock", HEADERS, clock_rows(results), width)


def plot_clock(results: Sequence[Any], path: str) -> None:
    """One panel per result, drawn by :mod:`kvmharness.plots.clock` (the
    format follows ``path``'s suffix)."""
    from kvmharness.plots import plot_results

    plot_results(results, path)


# what Family.table and Family.plot call
table = clock_table
plot = plot_clock
