"""The nightly report as text (stdout)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kvmharness.exitcodes import EXIT_BROKEN, EXIT_HARNESS, EXIT_OK, EXIT_UNTESTABLE
from kvmharness.tools.nightly.changes import changes, move_rule
from kvmharness.tools.nightly.figures import MOVE_FACTOR, fmt_value
from kvmharness.tools.nightly.history import Problem, host_key


def cell_figure(s: dict[str, Any]) -> str:
    """The key figure a cell shows beside the verdict (none where nothing was measured)."""
    if s.get("status") in ("untestable", "not supported", "harness error"):
        return ""
    f = s.get("figures") or {}
    fam = s.get("family")
    if fam == "steal":
        text = f"jump {fmt_value(f.get('largest_jump_ns'), 'ns')}"
        if f.get("steal_ratio") is not None:
            text += f", {fmt_value(f['steal_ratio'], 'ratio')} of run_delay"
        return text
    if fam == "clock":
        parts = []
        if f.get("largest_jump_ns") is not None:
            parts.append(f"jump {fmt_value(f['largest_jump_ns'], 'ns')}")
        if f.get("jump_margin_ns") is not None:
            parts.append(f"{fmt_value(f['jump_margin_ns'], 'ns')} from its bound")
        if f.get("warps"):
            parts.append(f"{f['warps']} warps")
        elif f.get("warps") == 0 and f.get("largest_jump_ns") is None:
            parts.append("0 warps")
        return ", ".join(parts)
    if fam == "postcopy":
        return f"max vCPU blocktime {fmt_value(f.get('blocktime_max_ns'), 'ns')}"
    return ""


EXIT_WORDS = {
    EXIT_OK: "good",
    EXIT_BROKEN: "bad: a promise broke or a test failed",
    EXIT_UNTESTABLE: "cannot test",
    EXIT_HARNESS: "harness fault",
}


def exit_word(code: Any) -> str:
    if code is None:
        return "-"
    return EXIT_WORDS.get(code, f"killed by signal {code - 128}" if code > 128 else "?")


def run_label(rec: dict[str, Any]) -> str:
    date = str(rec.get("date", ""))[:16].replace("T", " ")
    h = rec.get("harness") or {}
    return f"{date} {(h.get('revision') or '?')[:7]}{'+' if h.get('dirty') else ''}"


def by_host(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: str(r.get("date"))):  # stable: file order on ties
        out.setdefault(host_key(r), []).append(r)
    return out


def scenario_rows(runs: list[dict[str, Any]]) -> list[str]:
    """Every scenario id of these runs, in the order the latest run ran them."""
    ids: list[str] = []
    for r in reversed(runs):
        for s in r["scenarios"]:
            if s["id"] not in ids:
                ids.append(s["id"])
    return ids


def text_report(
    records: list[dict[str, Any]],
    problems: list[Problem],
    last: int,
    factor: float = MOVE_FACTOR,
    html_path: str | None = None,
) -> str:
    from tabulate import tabulate

    lines: list[str] = []
    for host, runs in by_host(records).items():
        runs = runs[-last:]
        cur = runs[-1]
        prev = runs[-2] if len(runs) > 1 else None
        h = cur["host"]
        lines.append(
            f"== host {host}: {h.get('cpu_model')}, {h.get('cores')} cores, "
            f"{h.get('backend')}, kernel {h.get('kernel_release')}"
        )
        lines.append(
            f"latest run {run_label(cur)}: exit {cur.get('exit_code')} "
            f"({exit_word(cur.get('exit_code'))})" + (f"; {cur['note']}" if cur.get("note") else "")
        )
        if cur.get("broken_on_purpose"):
            lines.append(
                "!! TEST SWITCH: broken on purpose: " + ", ".join(cur["broken_on_purpose"])
            )
        lines.append(pytest_line(cur))
        lines.append("")
        lines.append(
            "changes since the previous run"
            + (f" ({run_label(prev)})" if prev else " (no previous run)")
            + f"; figures compared {move_rule(factor)}:"
        )
        ch = changes(prev, cur, factor)
        any_change = False
        for what, items in ch.items():
            for it in items:
                any_change = True
                lines.append(f"  {what}: {it}")
        if not any_change:
            lines.append("  none")
        lines.append("")
        ids = scenario_rows(runs)
        table = []
        for sid in ids:
            row = [sid]
            for r in runs:
                s = next((x for x in r["scenarios"] if x["id"] == sid), None)
                row.append(f"{s['status']} {cell_figure(s)}".strip() if s else "-")
            table.append(row)
        headers = ["scenario"] + [f"#{i + 1}" for i in range(len(runs))]
        lines.append(tabulate(table, headers=headers) if table else "(no scenario ran)")
        for i, r in enumerate(runs):
            lines.append(
                f"  #{i + 1}: {run_label(r)}, kernel {r['host'].get('kernel_release')}, "
                f"exit {r.get('exit_code')}"
            )
        known = cur.get("known_issues") or []
        if known:
            lines.append("")
            lines.append("known issues that matched in the latest run:")
            for k in known:
                lines.append(
                    f"  {k['id']} ({k['status']}): {', '.join(k['scenarios'])}; {k.get('link')}"
                )
        lines.append("")
    for p in problems:
        lines.append(f"history: {p}")
    if html_path:
        lines.append(f"report: {html_path}")
    return "\n".join(lines).rstrip() + "\n"


def pytest_line(rec: dict[str, Any]) -> str:
    p = rec.get("pytest") or {}
    if p.get("exit_code") is None:
        return "pytest: not run"
    passed = p["tests"] - p["failures"] - p["errors"] - p["skipped"]
    return (
        f"pytest {' '.join(p.get('args') or [])}: exit {p['exit_code']}, {passed} passed, "
        f"{p['failures'] + p['errors']} failed, {p['skipped']} skipped "
        f"in {p.get('time_s', 0):.0f} s"
        + (f"; failing: {', '.join(p['failed'][:5])}" if p.get("failed") else "")
    )
