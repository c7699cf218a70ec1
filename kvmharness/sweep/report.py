"""The sweep's report: kernels as columns (sorted by version), scenarios as
rows, as text and as one self-contained HTML page.  Pure: it reads only the
per-kernel records (:mod:`kvmharness.sweep.summary`)."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from typing import Any

from kvmharness.sweep.summary import TESTED, Change, first_changes

LEGEND = (
    "holds: the promise held; broken: it broke; known-broken: it broke as a known "
    "issue says; fixed?: it held where a known issue says it breaks; characterized: "
    "measured, never fails; untestable / not supported: not judged on that kernel. "
    "Steal figures, per vCPU at the boundary: +rd the runner thread's whole "
    "run_delay was charged; =rd steal became the runner's run_delay; 'fell': "
    "steal went back. Clock: warps, and whether the master clock survived."
)


def short_cell(s: dict[str, Any] | None) -> str:
    """A text cell: the status and the figure's gist."""
    if s is None:
        return "-"
    out = str(s["status"])
    fig = s.get("figure") or {}
    shape = str(fig.get("shape") or "")
    if fig.get("family") == "steal" or shape.startswith(("+rd", "=rd", "other")):
        out += " " + shape + (" fell" if fig.get("fell") else "")
    if "lost" in shape:
        out += " lost"
    if shape.startswith("warps"):
        out += " warps"
    return out


def column_head(rec: dict[str, Any]) -> str:
    """What a column says under its kernel when it has no verdicts: why."""
    if rec.get("outcome") == TESTED:
        return f"exit {rec.get('exit_code')}"
    return f"{rec.get('outcome')} (exit {rec.get('exit_code')})"


def _find(rec: dict[str, Any], sid: str) -> dict[str, Any] | None:
    return next((s for s in rec.get("scenarios") or [] if s["id"] == sid), None)


def _minutes(rec: dict[str, Any]) -> str:
    t = (rec.get("timing") or {}).get("total_s")
    return f"{t / 60:.1f} min" if isinstance(t, int | float) else "-"


def text_report(records: Sequence[dict[str, Any]], html_path: str | None = None) -> str:
    from tabulate import tabulate

    ids, changes = first_changes(records)
    lines = [f"kvmharness sweep: {len(records)} kernels, sorted by version", ""]
    headers = ["scenario"] + [r["kernel"]["label"] for r in records]
    rows = [["(kernel)"] + [column_head(r) for r in records]]
    rows += [[sid] + [short_cell(_find(r, sid)) for r in records] for sid in ids]
    rows.append(["(time)"] + [_minutes(r) for r in records])
    lines.append(tabulate(rows, headers=headers, disable_numparse=True))
    lines.append("")
    for r in records:
        if r.get("outcome") != TESTED:
            lines.append(f"{r['kernel']['label']}: {r['outcome']}: {r.get('why')}")
    lines.append("first change per scenario (from the previous tested kernel):")
    lines += [
        f"  {c.scenario}: {c.previous} -> {c.kernel}: {c.before} -> {c.after}" for c in changes
    ]
    if not changes:
        lines.append("  none: every scenario said the same on every tested kernel")
    if html_path:
        lines.append(f"report: {html_path}")
    return "\n".join(lines) + "\n"


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The table as Markdown (for a README): kernels as columns, a cell per
    scenario, the minutes per kernel in the last row."""
    ids, _ = first_changes(records)
    head = ["scenario"] + [r["kernel"]["label"] for r in records]
    rows = [["(kernel)"] + [column_head(r) for r in records]]
    rows += [[f"`{sid}`"] + [short_cell(_find(r, sid)) for r in records] for sid in ids]
    rows.append(["minutes"] + [_minutes(r).removesuffix(" min") for r in records])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #1d2330; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #d6d9de; padding: 0.3em 0.5em; vertical-align: top; }
th { background: #f3f4f6; text-align: left; white-space: nowrap; }
td.sid { font-family: ui-monospace, monospace; white-space: nowrap; }
td .st { font-weight: 600; } td .fig { color: #444; display: block; font-size: 0.9em; }
td { max-width: 13em; } td.sid { max-width: none; }
td.holds { background: #eef8f0; } td.broken { background: #fbdada; }
td.harness-error { background: #fde9c8; } td.known-broken { background: #fff2cc; }
td.fixed { background: #d9ecff; } td.characterized { background: #f6f6f6; }
td.untestable, td.not-supported, td.down { background: #eeeeee; color: #666; }
td.changed { border: 2px solid #c00000; }
.muted { color: #777; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _css_class(status: str) -> str:
    return status.replace(" ", "-").replace("?", "")


def html_report(records: Sequence[dict[str, Any]]) -> str:
    ids, changes = first_changes(records)
    changed_at = {(c.scenario, c.kernel) for c in changes}
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    p = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<title>kvmharness sweep</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>kvmharness sweep</h1>",
        f"<p class='muted'>{len(records)} kernels, sorted by version; rendered {now}</p>",
        "<table><tr><th>scenario</th>",
    ]
    for r in records:
        k = r["kernel"]
        p.append(
            f"<th title='{_e(k.get('image'))}'>{_e(k['label'])}<br>"
            f"<span class='muted'>{_e(r.get('backend') or '')} {_e(column_head(r))}, "
            f"{_e(_minutes(r))}</span></th>"
        )
    p.append("</tr>")
    down = [r for r in records if r.get("outcome") != TESTED]
    if down:
        p.append("<tr><td class='sid'>(kernel)</td>")
        for r in records:
            p.append(
                "<td></td>"
                if r.get("outcome") == TESTED
                else f"<td class='down'>{_e(r['outcome'])}: {_e(r.get('why'))}</td>"
            )
        p.append("</tr>")
    for sid in ids:
        p.append(f"<tr><td class='sid'>{_e(sid)}</td>")
        for r in records:
            s = _find(r, sid)
            if s is None:
                p.append("<td class='muted'>-</td>")
                continue
            cls = _css_class(str(s["status"]))
            if (sid, r["kernel"]["label"]) in changed_at:
                cls += " changed"
            fig = (s.get("figure") or {}).get("text")
            p.append(
                f"<td class='{cls}' title='{_e(s.get('observed'))}'>"
                f"<span class='st'>{_e(s['status'])}</span>"
                + (f"<span class='fig'>{_e(fig)}</span>" if fig else "")
                + "</td>"
            )
        p.append("</tr>")
    p.append("</table>")
    p.append("<h2>First change per scenario</h2>")
    p.append(_changes_html(changes))
    p.append(f"<p class='muted'>{_e(LEGEND)} A red frame marks a scenario's first change.</p>")
    p.append("</body></html>")
    return "\n".join(p) + "\n"


def _changes_html(changes: list[Change]) -> str:
    if not changes:
        return "<p>None: every scenario said the same on every tested kernel.</p>"
    items = "".join(
        f"<li><code>{_e(c.scenario)}</code>: {_e(c.previous)} &rarr; <b>{_e(c.kernel)}</b>: "
        f"{_e(c.before)} &rarr; {_e(c.after)}</li>"
        for c in changes
    )
    return f"<ul>{items}</ul>"
