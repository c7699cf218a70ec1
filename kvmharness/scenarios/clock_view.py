"""How clock results look: the table rows and the plot (guest time against host
time across the boundary, warps marked)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from kvmharness.checks import format_ns
from kvmharness.files import save_figure
from kvmharness.scenarios.base import verdict_text

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


def clock_rows(results: Sequence[Any], *, width: int = 90) -> list[list[str]]:
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
    return tabulate(clock_rows(results, width=width), headers=HEADERS, tablefmt="simple")


def plot_clock(results: Sequence[Any], path: str) -> None:
    """Guest kvmclock minus host time, per vCPU, one panel per scenario: a flat
    line is a clock in step with the host; the boundary is dashed and the
    batches that saw warps are marked with crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), squeeze=False)
    for ax, res in zip(axes[:, 0], results, strict=True):
        t0 = min((r.batches[0].t1_ns for r in res.records if r.batches), default=0)
        g0 = min((r.samples[0][0] for r in res.records if r.samples), default=0)
        for rec in res.records:
            xs, ys, wx, wy = [], [], [], []
            for b in rec.batches:
                if not b.n:
                    continue
                s = rec.samples[b.first + b.n - 1]
                x = (b.t1_ns - t0) / 1e9
                y = ((s[0] - g0) - (b.t1_ns - t0)) / 1e6
                xs.append(x)
                ys.append(y)
                if b.warps or b.vdso_warps:
                    wx.append(x)
                    wy.append(y)
            (line,) = ax.plot(xs, ys, ".", markersize=2, label=f"vcpu{rec.index}")
            if wx:
                ax.plot(wx, wy, "x", color="red", markersize=6)
            if 0 < rec.boundary < len(rec.batches):
                ax.axvline(
                    (rec.batches[rec.boundary].t1_ns - t0) / 1e9,
                    color="red",
                    linestyle="--",
                    linewidth=0.8,
                )
        ax.set_title(f"{res.variant.name}, {res.vcpus} vCPU(s): {res.verdict}", fontsize=9)
        ax.set_ylabel("guest - host (ms)")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("host time (s); red dashes: boundary; red x: batch with warps")
    save_figure(fig, path)


# what Family.table and Family.plot call
table = clock_table
plot = plot_clock
