"""How steal results look: the table rows (the plot is :mod:`kvmharness.plots.steal`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from kvmharness.checks import ns_or_dash
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
    """One panel per result, drawn by :mod:`kvmharness.plots.steal` (the
    format follows ``path``'s suffix)."""
    from kvmharness.plots import plot_results

    plot_results(results, path)


# what Family.table and Family.plot call
table = steal_table
plot = plot_steal
