"""Tables, JSON and plots of scenario results, generic over scenario families:
each family renders its own table and plot; this module picks and joins them.

A result that no family can show (a record re-judged by ``kvmharness judge``
that its family cannot rebuild into its own result type) is a
:class:`RecordResult`, shown in :func:`generic_table`: its verdict row
without the family's figures.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kvmharness.files import atomic_target, write_json  # noqa: F401 (re-exported)
from kvmharness.scenarios.base import (  # noqa: F401 (family re-exported)
    ScenarioResult,
    Variant,
    Verdict,
    family,
    verdict_text,
)

log = logging.getLogger(__name__)

DEFAULT_WIDTH = 90


@dataclass
class RecordResult:
    """A re-judged record shown as a verdict row (what every family shares)."""

    family: str
    variant: Variant
    vcpus: int
    verdict: Verdict
    observed: str
    wall_s: float
    violations: list[Any]
    record: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    generic: ClassVar[bool] = True

    def to_json(self) -> dict[str, Any]:
        return {
            **self.record,
            "verdict": str(self.verdict),
            "observed": self.observed,
            "violations": [_violation_json(v) for v in self.violations],
        }


def _violation_json(v: Any) -> Any:
    return v.to_dict() if hasattr(v, "to_dict") else v


def _kinds(violations: Sequence[Any]) -> str:
    c = Counter(str(getattr(v, "kind", "?")) for v in violations)
    return ", ".join(f"{k} x{n}" for k, n in sorted(c.items())) or "-"


def generic_table(results: Sequence[ScenarioResult], width: int) -> str:
    """Every result as one verdict row: family, variant, vCPUs, kind, the
    violation kinds found, wall time and the verdict."""
    from kvmharness.table import fit_table

    rows = [
        [
            r.family,
            r.variant.name,
            str(r.vcpus),
            str(r.variant.kind),
            _kinds(r.violations),
            f"{r.wall_s:.2f} s",
            verdict_text(r),
        ]
        for r in results
    ]
    return fit_table(
        "generic",
        ["scenario", "variant", "vCPUs", "kind", "violations", "wall", "verdict"],
        rows,
        width,
    )


def by_family(results: Sequence[ScenarioResult]) -> dict[str, list[ScenarioResult]]:
    out: dict[str, list[ScenarioResult]] = {}
    for r in results:
        out.setdefault(r.family, []).append(r)
    return out


def tables(results: Sequence[ScenarioResult], *, width: int = DEFAULT_WIDTH) -> str:
    """One table per family, in the order the families first appear; results
    the family cannot show (:class:`RecordResult`) in a generic table after it."""
    parts = []
    for name, rs in by_family(results).items():
        own = [r for r in rs if not getattr(r, "generic", False)]
        rest = [r for r in rs if getattr(r, "generic", False)]
        if own:
            parts.append(family(name).table(own, width))
        if rest:
            parts.append(generic_table(rest, width))
    return "\n\n".join(parts)


def plot(results: Sequence[ScenarioResult], path: str, words: Sequence[str] | None = None) -> None:
    """Every result of the run, one panel each (:mod:`kvmharness.plots`)."""
    from kvmharness.plots import plot_results

    plot_results(results, path, words)


def plot_available() -> str | None:
    """None when plotting works, else why not."""
    from kvmharness.plots import plot_available as available

    return available()
