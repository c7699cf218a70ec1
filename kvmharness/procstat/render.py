"""Output of ``kvmharness procstat``: the text tables and the JSON document.

In both, snapshots are numbered from 1 in reading order, and a finding's
``index`` is the number of its later snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from kvmharness import checks
from kvmharness.procstat.analyze import Finding, Report


def _rows(findings: Sequence[Finding]) -> list[list[str]]:
    rows = []
    for f in findings:
        v = f.violation
        span = (
            f"{f.snapshot_before}->{f.snapshot_after}"
            if f.snapshot_before
            else str(f.snapshot_after)
        )
        detail = v.detail
        if f.bound and f.bound not in detail:
            detail = f"[{f.bound}] {detail}"
        if f.note:
            detail = f"{detail} ({f.note})"
        rows.append(
            [
                v.series,
                v.counter,
                "" if v.before is None else checks.format_value(v.before),
                "" if v.after is None else checks.format_value(v.after),
                "" if v.delta is None else str(v.delta),
                v.kind,
                span,
                detail,
            ]
        )
    return rows


HEADERS = ["CPU", "counter", "before", "after", "delta", "kind", "snapshots", "bound / detail"]


def render_text(report: Report) -> str:
    """The human report: findings table, notes table, what was (not) checked."""
    from tabulate import tabulate

    lines = [
        f"{len(report.snapshots)} snapshot(s), {len(report.cpus)} cpu line(s): "
        + ", ".join(report.cpus)
    ]
    if report.findings:
        lines += ["", tabulate(_rows(report.findings), headers=HEADERS)]
    if report.notes:
        lines += ["", "Notes (known kernel behaviour, not counted):"]
        lines += [tabulate(_rows(report.notes), headers=HEADERS)]
    lines += [""] + [f"- {m}" for m in report.messages]
    summary = checks.summarize([f.violation for f in report.findings])
    counts = ", ".join(f"{k} {n}" for k, n in summary.items())
    lines += ["", *steal_lines(report)]
    lines += ["", f"verdict: {report.verdict}" + (f" ({counts})" if counts else "")]
    return "\n".join(lines)


def steal_lines(report: Report) -> list[str]:
    """What steal did: over all CPUs, and on the CPU where it grew most."""
    steal = report.steal()
    if not steal:
        return ["steal: no cpu line has a steal column"]

    def one(name: str, s: dict) -> str:
        share = "" if s["share"] is None else f" ({100 * s['share']:.1f}% of the CPU time)"
        return (
            f"{name}: grew {checks.format_ns(s['grown_ns'])}{share}, "
            f"{checks.format_ns(s['first_ns'])} -> {checks.format_ns(s['last_ns'])}"
        )

    lines = ["steal (USER_HZ ticks as ns; a reboot's interval left out):"]
    if "cpu" in steal:
        lines.append("  " + one("all CPUs", steal["cpu"]))
    per = {k: v for k, v in steal.items() if k != "cpu"}
    if per:
        top = max(per, key=lambda k: per[k]["grown_ns"] or 0)
        lines.append(f"  most on {one(top, per[top])}")
    return lines


def render_json(report: Report) -> str:
    """The JSON report (:meth:`Report.to_dict`), indented, without a final newline."""
    return json.dumps(report.to_dict(), indent=2)
