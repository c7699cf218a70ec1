"""Fill each finding's "Across the swept kernels" table from a sweep.

    .venv/bin/python findings/sweep_table.py SWEEP/history.jsonl [--write]

Reads every tested kernel's run document (the ``run_json`` a sweep's
history names) and prints, per finding, a Markdown table of what that
kernel's records show; ``--write`` puts each table into its README between
the ``sweep-table`` markers.  Not a reproducer: it reads the harness's
records, so it uses the harness's record reader.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MARK = re.compile(r"(<!-- sweep-table:[^\n]*-->\n).*?(<!-- /sweep-table -->)", re.S)


def ms(ns: float) -> str:
    return f"{ns / 1e6:.1f} ms"


def result(doc: dict[str, Any], variant: str) -> dict[str, Any] | None:
    """The variant's result at 2 vCPUs (the sweep's count), else its first."""
    hits = [r for r in doc.get("results") or [] if r.get("variant") == variant]
    return next((r for r in hits if r.get("vcpus") == 2), hits[0] if hits else None)


def steal_boundary(r: dict[str, Any] | None) -> str:
    """Per vCPU: steal before the boundary -> after it (the runner's run_delay then)."""
    from kvmharness.judges.steal import records_of

    if r is None or r.get("error"):
        return "not run" if r is None else f"error: {r.get('error')}"
    out = []
    for v in records_of(r):
        b = v.boundary
        if not 0 < b < len(v.guest):
            out.append(f"vcpu{v.index}: no boundary")
            continue
        c = v.ctx[b]
        rd = ms(c.pre_ns) if c.pre_ns == c.post_ns else f"{ms(c.pre_ns)}..{ms(c.post_ns)}"
        out.append(
            f"vcpu{v.index} {ms(v.host[b - 1].value)} &rarr; {ms(v.guest[b].value)} "
            f"(run_delay {rd})"
        )
    return "; ".join(out)


def tsc_skew(r: dict[str, Any] | None) -> tuple[str, str]:
    if r is None:
        return "not run", "-"
    khz = r.get("tsc_khz") or 0
    for vr in r.get("vcpu_records") or []:
        for w in vr.get("tsc_writes") or []:
            saved = [e[0] for e in w.get("earlier") or []]
            if len(saved) >= 2 and khz:
                d = saved[1] - saved[0]
                return f"{d} ticks ({d / khz:.1f} ms)", str(r.get("verdict"))
    return "-", str(r.get("verdict"))


def master_clock(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    st = (r.get("notes") or {}).get("stability") or {}
    if st.get("stable_at_save") is None:
        return "-"
    before = "stable" if st.get("stable_at_save") else "unstable"
    after = "stable" if st.get("stable_after") else "unstable"
    return f"{before} &rarr; {after}"


def state_word(word: str) -> str:
    from kvmharness.scenarios.base import state_word as today

    return today(word)


def tables(history: Path, extra: list[tuple[str, str]] = ()) -> dict[str, str]:  # type: ignore[assignment]
    rows: dict[str, list[str]] = {k: [] for k in ("thread-hop", "reused-thread", "tsc", "skew")}
    recs = [json.loads(line) for line in history.read_text().splitlines()]
    for label, path in extra:  # a run document of another host, as one more row
        recs.append({"kernel": {"label": label}, "outcome": "tested", "run_json": path})
    for rec in recs:
        label = rec["kernel"]["label"] + (f" ({rec['backend']})" if rec.get("backend") else "")
        if rec.get("outcome") != "tested" or not rec.get("run_json"):
            for k in rows:
                rows[k].append(f"| {label} | {rec.get('outcome')}: {rec.get('why')} |")
            continue
        with gzip.open(rec["run_json"], "rt") as f:
            doc = json.load(f)
        rows["thread-hop"].append(
            f"| {label} | {steal_boundary(result(doc, 'same-vm/new-thread'))} |"
        )
        rows["reused-thread"].append(
            f"| {label} | {steal_boundary(result(doc, 'fresh-vm/reused-thread'))} |"
        )
        cells = [
            state_word(str((result(doc, v) or {}).get("verdict", "not run")))
            for v in ("tsc/msr", "tsc/offset")
        ]
        cells += [
            master_clock(result(doc, v))
            for v in ("restore/frozen", "restore/main-thread", "restore/cross-process/main-thread")
        ]
        rows["tsc"].append(f"| {label} | " + " | ".join(cells) + " |")
        skew, verdict = tsc_skew(result(doc, "tsc/msr"))
        rows["skew"].append(f"| {label} | {skew} | {state_word(verdict)} |")
    steal_head = (
        "| kernel | per vCPU: steal before &rarr; after (the runner's run_delay before..after "
        "the KVM_RUN that read it) |\n|---|---|\n"
    )
    return {
        "thread-hop": steal_head + "\n".join(rows["thread-hop"]),
        "reused-thread": steal_head + "\n".join(rows["reused-thread"]),
        "pvm-tsc": "| kernel | tsc/msr | tsc/offset | master clock at restore/frozen | "
        "restore/main-thread | restore/cross-process/main-thread |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows["tsc"]),
        "tsc-skew-at-save": "| kernel | saved TSCs apart (vCPU 1 - vCPU 0) | tsc/msr verdict |\n"
        "|---|---|---|\n" + "\n".join(rows["skew"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("history", type=Path, help="a sweep's history.jsonl")
    p.add_argument("--write", action="store_true", help="write each table into its README")
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="LABEL=FILE",
        help="one more row: a `kvmharness run --json` document (.json.gz) of another host",
    )
    args = p.parse_args(argv)
    extra = [tuple(x.split("=", 1)) for x in args.run]
    for name, table in tables(args.history, extra).items():  # type: ignore[arg-type]
        print(f"## {name}\n{table}\n")
        if args.write:
            readme = HERE / name / "README.md"
            text = readme.read_text()
            new, n = MARK.subn(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
            if n != 1:
                print(f"{readme}: no sweep-table markers", file=sys.stderr)
                return 1
            readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
