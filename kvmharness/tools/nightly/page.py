"""The nightly report as one self-contained HTML page (index.html)."""

from __future__ import annotations

import base64
import datetime as dt
import html
from typing import Any

from kvmharness.tools.nightly.changes import changes, move_rule
from kvmharness.tools.nightly.figures import MOVE_FACTOR
from kvmharness.tools.nightly.history import Problem
from kvmharness.tools.nightly.plots import plots
from kvmharness.tools.nightly.records import BREAK_ON_PURPOSE
from kvmharness.tools.nightly.text import (
    by_host,
    cell_figure,
    exit_word,
    pytest_line,
    run_label,
    scenario_rows,
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em;
       color: #1d2330; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
.sub { color: #555; margin-top: 0; }
.verdict { display: inline-block; padding: 0.35em 0.8em; border-radius: 4px; font-weight: 600; }
.v0 { background: #dff3e3; color: #135c25; } .v1 { background: #fbdada; color: #8a1111; }
.v125 { background: #eeeeee; color: #444; } .v128 { background: #fde9c8; color: #7a4a00; }
.banner { background: #8a1111; color: #fff; padding: 0.6em 1em; border-radius: 4px;
          font-weight: 600; }
table.runs { border-collapse: collapse; font-size: 0.85em; margin-top: 0.5em; }
div.scroll { overflow-x: auto; }
table.runs th, table.runs td { border: 1px solid #d6d9de; padding: 0.3em 0.5em;
                               vertical-align: top; }
table.runs th { background: #f3f4f6; text-align: left; font-weight: 600; }
table.runs th.run { min-width: 8em; font-weight: normal; white-space: nowrap; }
table.runs td.sid { font-family: ui-monospace, monospace; white-space: nowrap; }
td .st { font-weight: 600; } td .fig { color: #444; display: block; white-space: nowrap; }
td.holds { background: #eef8f0; } td.broken { background: #fbdada; }
td.harness-error { background: #fde9c8; } td.known-broken { background: #fff2cc; }
td.fixed\\? { background: #d9ecff; } td.characterized { background: #f6f6f6; }
td.untestable, td.not-supported { background: #eeeeee; color: #666; }
td.none { color: #aaa; text-align: center; }
td.latest, th.latest { border-left: 3px solid #4a6fa5; }
th .rc { font-weight: 600; padding: 0 0.3em; border-radius: 3px; }
td.sid.changed { background: #fff1f1; font-weight: 700; border-left: 3px solid #c00000; }
ul.changes li { margin: 0.2em 0; } .what { font-weight: 600; }
.what.new-broken, .what.capability-lost { color: #8a1111; } .what.fixed { color: #135c25; }
img.plot { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
.muted { color: #777; } code { font-size: 0.95em; }
dl.known dt { font-weight: 600; margin-top: 0.5em; } dl.known dd { margin-left: 1.2em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def html_report(
    records: list[dict[str, Any]], problems: list[Problem], last: int, factor: float = MOVE_FACTOR
) -> str:
    hosts = by_host(records)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>kvmharness nightly</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>kvmharness nightly</h1>",
        f"<p class='sub'>{len(records)} runs on {len(hosts)} host(s); "
        f"the last {last} per host; rendered {now}</p>",
    ]
    if not records:
        parts.append("<p>No run in the history yet.</p>")
    for host, runs in hosts.items():
        runs = runs[-last:]
        parts += _host_section(host, runs, factor, multi=len(hosts) > 1)
    if problems:
        parts.append("<h2>History lines skipped</h2><ul>")
        parts += [f"<li><code>{_e(p)}</code></li>" for p in problems]
        parts.append("</ul>")
    parts.append(
        "<p class='muted'>Verdicts: <b>holds</b> a promise held; <b>broken</b> it "
        "broke; <b>known-broken</b> it broke as a known issue says (not counted); "
        "<b>fixed?</b> it held where a known issue says it breaks (counted); "
        "<b>characterized</b> measured, never fails. Exit codes: 0 good, 1 bad, "
        "125 cannot test, 128 harness fault.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def _host_section(host: str, runs: list[dict[str, Any]], factor: float, multi: bool) -> list[str]:
    cur = runs[-1]
    prev = runs[-2] if len(runs) > 1 else None
    h = cur["host"]
    code = cur.get("exit_code")
    cls = f"v{code}" if code in (0, 1, 125, 128) else "v128"
    p = [
        f"<h2>{'Host ' if multi else ''}{_e(host)}</h2>" if multi else "",
        f"<p class='sub'>{_e(host)} &middot; {_e(h.get('cpu_model'))} &middot; "
        f"{_e(h.get('cores'))} cores &middot; KVM backend {_e(h.get('backend'))} &middot; "
        f"kernel {_e(h.get('kernel_release'))}"
        + (f" ({_e(cur['kernel_image'])})" if cur.get("kernel_image") else "")
        + "</p>",
        f"<p><span class='verdict {cls}'>latest run: exit {_e(code)}, "
        f"{_e(exit_word(code))}</span> <span class='muted'>{_e(run_label(cur))}"
        f"{' &middot; ' + _e(cur['note']) if cur.get('note') else ''}</span></p>",
    ]
    if cur.get("broken_on_purpose"):
        p.append(
            f"<p class='banner'>Test switch {BREAK_ON_PURPOSE}: these results were "
            f"made broken on purpose: {_e(', '.join(cur['broken_on_purpose']))}</p>"
        )
    p.append(f"<p>{_e(pytest_line(cur))}</p>")
    # changes
    p.append(
        "<h3>Changes since the previous run"
        + (
            f" <span class='muted'>({_e(run_label(prev))})</span>"
            if prev
            else " <span class='muted'>(no previous run)</span>"
        )
        + "</h3>"
    )
    ch = changes(prev, cur, factor)
    items = [(what, it) for what, its in ch.items() for it in its]
    if items:
        p.append("<ul class='changes'>")
        p += [
            f"<li><span class='what {what.replace(' ', '-')}'>{_e(what)}</span>: {_e(it)}</li>"
            for what, it in items
        ]
        p.append("</ul>")
    else:
        p.append("<p>Nothing changed: no new broken, nothing fixed, no figure moved.</p>")
    rule = _e(move_rule(factor))
    p.append(f"<p class='muted'>A figure &ldquo;moved&rdquo; when it changed {rule}.</p>")
    # table
    p.append(f"<h3>The last {len(runs)} run(s)</h3>")
    ids = scenario_rows(runs)
    if not ids:
        p.append("<p>No scenario ran in these runs.</p>")
    else:
        p.append("<div class='scroll'><table class='runs'><thead><tr><th>scenario</th>")
        for i, r in enumerate(runs):
            rc = r.get("exit_code")
            date = str(r.get("date", ""))[5:16].replace("T", " ")  # the year is in the title
            hv = r.get("harness") or {}
            rev = (hv.get("revision") or "?")[:7] + ("+" if hv.get("dirty") else "")
            latest = " latest" if i == len(runs) - 1 else ""
            p.append(
                f"<th class='run{latest}' title='{_e(r.get('date'))}, run "
                f"{_e(r.get('run_id'))}'>#{i + 1} &middot; {_e(date)}<br>"
                f"<span class='muted'>{_e(r['host'].get('kernel_release'))}<br>"
                f"{_e(rev)}</span> <span class='rc v{_e(rc)}'>exit {_e(rc)}</span></th>"
            )
        p.append("</tr></thead><tbody>")
        prev_s = {x["id"]: x["status"] for x in (prev or {}).get("scenarios", [])}
        for sid in ids:
            now = next((x["status"] for x in cur["scenarios"] if x["id"] == sid), None)
            changed = prev is not None and now is not None and prev_s.get(sid) not in (None, now)
            mark = " changed' title='changed since the previous run" if changed else ""
            p.append(f"<tr><td class='sid{mark}'>{_e(sid)}</td>")
            for i, r in enumerate(runs):
                s = next((x for x in r["scenarios"] if x["id"] == sid), None)
                latest = " latest" if i == len(runs) - 1 else ""
                if s is None:
                    p.append(f"<td class='none{latest}'>&ndash;</td>")
                    continue
                st = s["status"]
                title = s["observed"] or st
                p.append(
                    f"<td class='{_e(st.replace(' ', '-'))}{latest}' title='{_e(title)}'>"
                    f"<span class='st'>{_e(st)}</span>"
                    f"<span class='fig'>{_e(cell_figure(s))}</span></td>"
                )
            p.append("</tr>")
        p.append("</tbody></table></div>")
        p.append(
            "<p class='muted'>Hover a cell for what was observed. A scenario id is "
            "family/variant@vCPUs.</p>"
        )
    # plots
    pngs = plots(runs)
    if pngs:
        p.append("<h3>Trends</h3>")
        for title, png in pngs:
            data = base64.b64encode(png).decode()
            p.append(f"<img class='plot' alt='{_e(title)}' src='data:image/png;base64,{data}'>")
    # known issues
    known = cur.get("known_issues") or []
    p.append("<h3>Known issues that matched in the latest run</h3>")
    if known:
        p.append("<dl class='known'>")
        for k in known:
            p.append(
                f"<dt>{_e(k['id'])} &mdash; {_e(k['status'])}</dt>"
                f"<dd>{_e(k.get('reason'))}<br><span class='muted'>scenarios: "
                f"{_e(', '.join(k['scenarios']))}; link: {_e(k.get('link'))}</span></dd>"
            )
        p.append("</dl>")
    else:
        p.append("<p>None.</p>")
    return p
