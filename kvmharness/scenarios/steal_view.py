"""How steal results look: the table rows and the plot (steal against time)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from kvmharness.checks import ns_or_dash
from kvmharness.files import save_figure
from kvmharness.scenarios.base import verdict_text

HEADERS = [
    "scenario",
    "variant",
    "vCPUs",
    "MSR written by",
    "vCPU run by",
    "contention",
    "steal before (sum)",
    "steal after (sum)",
    "largest jump",
    "wall",
    "verdict",
]


def steal_rows(results: Sequence[Any], *, width: int = 90) -> list[list[str]]:
    rows = []
    for r in results:
        before, after = r.steal_at_boundary()
        rows.append(
            [
                "steal",
                r.variant.name,
                str(r.config.vcpus),
                str(r.variant.writer),
                str(r.variant.runner),
                f"{r.config.contend_ms} ms x2",
                ns_or_dash(before),
                ns_or_dash(after),
                ns_or_dash(r.largest_jump_ns()),
                f"{r.wall_s:.2f} s",
                verdict_text(r, width),
            ]
        )
    return rows


def steal_table(results: Sequence[Any], width: int = 90) -> str:
    return tabulate(steal_rows(results, width=width), headers=HEADERS, tablefmt="simple")


def plot_steal(results: Sequence[Any], path: str) -> None:
    """Steal against time per vCPU, one panel per scenario, the boundary marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), squeeze=False)
    for ax, res in zip(axes[:, 0], results, strict=True):
        t0 = min((r.guest[0].t_ns for r in res.records if r.guest), default=0)
        for rec in res.records:
            # before and after the boundary drawn apart: nothing was sampled between
            cut = rec.boundary if 0 < rec.boundary < len(rec.guest) else len(rec.guest)
            color = None
            for part in (rec.guest[:cut], rec.guest[cut:]):
                if not part:
                    continue
                xs = [(s.t_ns - t0) / 1e9 for s in part]
                ys = [s.value / 1e6 for s in part]
                (line,) = ax.plot(
                    xs,
                    ys,
                    drawstyle="steps-post",
                    linewidth=1,
                    color=color,
                    label=None if color else f"vcpu{rec.index}",
                )
                color = line.get_color()
            if 0 < rec.boundary < len(rec.guest):
                ax.axvline(
                    (rec.guest[rec.boundary].t_ns - t0) / 1e9,
                    color="red",
                    linestyle="--",
                    linewidth=0.8,
                )
        ax.set_title(f"{res.variant.name}, {res.config.vcpus} vCPU(s): {res.verdict}", fontsize=9)
        ax.set_ylabel("steal (ms)")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("time (s); red dashes: restore boundary")
    save_figure(fig, path)


# what Family.table and Family.plot call
table = steal_table
plot = plot_steal
