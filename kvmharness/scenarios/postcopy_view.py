"""How postcopy results look: the family table, per-vCPU detail, the latency
histogram, the QEMU models against the exact accountant (the plot, blocktime
against the guest's stalls, is :mod:`kvmharness.plots.postcopy`).  Everything
comes from the run record and the judge's notes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from kvmharness.blocktime import bucket_label
from kvmharness.checks import format_ns, ns_or_dash
from kvmharness.judges.postcopy import U64, PostcopyRecord
from kvmharness.scenarios.base import verdict_text
from kvmharness.table import fit_table

HEADERS = [
    "scenario",
    "variant",
    "vCPUs",
    "latency",
    "faults (vCPU/other)",
    "blocktime (sum)",
    "all blocked",
    "guest stall",
    "steal",
    "placed r/s/EEXIST",
    "QEMU models",
    "wall",
    "verdict",
]


def _record(r: Any) -> PostcopyRecord | None:
    return PostcopyRecord.from_dict(r.record) if getattr(r, "record", None) else None


def _steal(rec: PostcopyRecord) -> int:
    return sum(
        max(0, o.steal_after - o.steal_before)
        for o in rec.vcpu
        if o.steal_before != U64 and o.steal_after != U64
    )


def _signed(ns: int) -> str:
    return ("+" if ns > 0 else "-") + format_ns(abs(ns))


def models_text(notes: dict[str, Any]) -> str:
    """'= exact' when both QEMU models report what the accountant does, else
    how far off each is (blocktime summed over vCPUs, all-blocked); the JSON's
    notes.models says per vCPU and from which event."""
    models = notes.get("models")
    if not models:
        return "-"
    parts = []
    for name, m in models.items():
        if not m.get("differs"):
            continue
        short = name.split("-")[-1]
        bits = [_signed(sum(m["delta_ns"]))] if any(m["delta_ns"]) else []
        if m.get("all_blocked_delta_ns"):
            bits.append(f"all {_signed(m['all_blocked_delta_ns'])}")
        parts.append(f"{short} {' '.join(bits) or 'faults differ'}")
    return "; ".join(parts) if parts else "= exact"


def postcopy_rows(results: Sequence[Any], *, width: int = 0) -> list[list[str]]:
    rows = []
    for r in results:
        rec = _record(r)
        rep = (r.notes or {}).get("blocktime")
        stall = sum(a["guest_stall_ns"] for a in (r.notes or {}).get("agreement", []))
        how = rec and "".join(p.how for p in rec.placements)
        rows.append(
            [
                "postcopy",
                r.variant.name.removeprefix("postcopy/"),
                str(r.config.vcpus),
                f"{r.config.latency_us} us",
                f"{sum(rep['faults'])}/{rep['non_vcpu_faults']}" if rep else "-",
                ns_or_dash(sum(rep["blocked_ns"])) if rep else "-",
                ns_or_dash(rep["all_blocked_ns"]) if rep else "-",
                ns_or_dash(stall) if rep else "-",
                ns_or_dash(_steal(rec)) if rec else "-",
                f"{how.count('r')}/{how.count('s')}/{rec.eexist}"
                if rec and how is not None
                else "-",
                models_text(r.notes or {}),
                f"{r.wall_s:.2f} s",
                verdict_text(r, width),
            ]
        )
    return rows


def postcopy_table(results: Sequence[Any], width: int = 90) -> str:
    """The table for ``width`` columns (0: every column, unwrapped): kvmharness.table."""
    return fit_table("postcopy", HEADERS, postcopy_rows(results), width)


def vcpu_table(result: Any) -> str:
    """Per vCPU: faults, blocktime, guest stall and the slack it is judged with, steal."""
    rec = _record(result)
    rep = (result.notes or {}).get("blocktime")
    if rec is None or rep is None:
        return "(no blocktime: the scenario did not run)"
    agree = {a["vcpu"]: a for a in result.notes.get("agreement", [])}
    models = result.notes.get("models") or {}
    rows = []
    lat = rec.latency_us * 1000
    for v, o in enumerate(rec.vcpu):
        a = agree.get(v)
        d_steal = o.steal_after - o.steal_before
        rows.append(
            [
                f"vcpu{v}",
                rep["faults"][v],
                ns_or_dash(rep["faults"][v] * lat),
                ns_or_dash(rep["blocked_ns"][v]),
                " ".join(
                    f"{format_ns(m['blocked_ns'][v])}"
                    for m in models.values()
                    if m.get("blocked_ns")
                )
                or "-",
                ns_or_dash(a["guest_stall_ns"]) if a else "-",
                ns_or_dash(a["slack_ns"]) if a else "-",
                ns_or_dash(d_steal) if 0 <= d_steal < U64 // 2 else "?",
                ns_or_dash(o.run_delay_ns),
                ns_or_dash(o.run_end_ns - o.run_start_ns) if o.run_end_ns else "-",
                "" if o.state == "done" else o.state,
            ]
        )
    rows.append(
        [
            "non-vCPU",
            rep["non_vcpu_faults"],
            "",
            ns_or_dash(rep["non_vcpu_wait_ns"]) + " (wait)",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
    )
    rows.append(
        [
            "all vCPUs",
            sum(rep["faults"]),
            "",
            f"all blocked {ns_or_dash(rep['all_blocked_ns'])}",
            " ".join(
                format_ns(m["all_blocked_ns"]) for m in models.values() if "all_blocked_ns" in m
            ),
            "",
            "",
            "",
            "",
            "",
            "",
        ]
    )
    return tabulate(
        rows,
        headers=[
            "",
            "faults",
            "faults x latency",
            "blocktime",
            "QEMU hash / slot",
            "guest stall",
            "slack",
            "steal",
            "run_delay",
            "touch wall",
            "",
        ],
        tablefmt="simple",
    )


def latency_table(result: Any) -> str:
    """The log2 latency histogram, one column per vCPU (non-empty buckets only)."""
    rep = (result.notes or {}).get("blocktime")
    if not rep or not rep["buckets"]:
        return ""
    buckets, nv = rep["buckets"], rep["non_vcpu_buckets"]
    n = len(buckets)
    used = [i for i in range(len(nv)) if any(b[i] for b in buckets) or nv[i]]
    rows = [[bucket_label(i)] + [buckets[v][i] for v in range(n)] + [nv[i]] for i in used]
    return tabulate(
        rows, headers=["latency"] + [f"vcpu{v}" for v in range(n)] + ["non-vCPU"], tablefmt="simple"
    )


def plot_postcopy(results: Sequence[Any], path: str) -> None:
    """One panel per result, drawn by :mod:`kvmharness.plots.postcopy` (the
    format follows ``path``'s suffix)."""
    from kvmharness.plots import plot_results

    plot_results(results, path)


# what Family.table and Family.plot call
table = postcopy_table
plot = plot_postcopy
