"""How steal results look: the table rows (the plot is :mod:`kvmharness.plots.steal`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvmharness.checks import ns_or_dash
from kvmharness.scenarios.base import verdict_text
from kvmharness.table import fit_table

HEADERS = [
    "scenario",
    "variant",
    "vCPUs",
    "MSR written by",
    "vCPU run by",
    "contention",
    "last steal before",
    "first steal after",
    "largest jump",
    "wall",
    "verdict",
]


def steal_rows(results: Sequence[Any], *, width: int = 0) -> list[list[str]]:
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
    """The table for ``width`` columns (0: every column, unwrapped): kvmharness.table."""
    return fit_table("steal", HEADERS, steal_rows(results), width)


def plot_steal(results: Sequence[Any], path: str) -> None:
    """One panel per result, drawn by :mod:`kvmharness.plots.steal` (the
    format follows ``path``'s suffix)."""
    from kvmharness.plots import plot_results

    plot_results(results, path)


# what Family.table and Family.plot call
table = steal_table
plot = plot_steal
