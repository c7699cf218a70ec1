"""How postcopy results look: the family table, per-vCPU detail, the latency
histogram, and the plot (each vCPU's faults as bars over time)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from kvmharness.blocktime import bucket_label
from kvmharness.checks import ns_or_dash
from kvmharness.files import save_figure
from kvmharness.scenarios.base import verdict_text

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
    "wall",
    "verdict",
]


def postcopy_rows(results: Sequence[Any], *, width: int = 90) -> list[list[str]]:
    rows = []
    for r in results:
        rep = r.report
        st = r.stats or {}
        steal = (
            sum(
                max(0, o.steal_after - o.steal_before)
                for o in r.outcomes
                if o.steal_after >= o.steal_before
            )
            if r.outcomes
            else None
        )
        rows.append(
            [
                "postcopy",
                r.variant.name.removeprefix("postcopy/"),
                str(r.config.vcpus),
                f"{r.config.latency_us} us",
                f"{sum(rep.faults)}/{rep.non_vcpu_faults}" if rep else "-",
                ns_or_dash(sum(rep.blocked_ns)) if rep else "-",
                ns_or_dash(rep.all_blocked_ns) if rep else "-",
                ns_or_dash(sum(a.guest_stall_ns for a in r.agreement)) if r.agreement else "-",
                ns_or_dash(steal),
                f"{st.get('resolver', 0)}/{st.get('stream', 0)}/{st.get('eexist', 0)}"
                if st
                else "-",
                f"{r.wall_s:.2f} s",
                verdict_text(r, width),
            ]
        )
    return rows


def postcopy_table(results: Sequence[Any], width: int = 90) -> str:
    return tabulate(postcopy_rows(results, width=width), headers=HEADERS, tablefmt="simple")


def vcpu_table(result: Any) -> str:
    """Per vCPU: faults, blocktime, guest stall and the slack it is judged with, steal."""
    rep = result.report
    if rep is None:
        return "(no blocktime: the scenario did not run)"
    agree = {a.vcpu: a for a in result.agreement}
    rows = []
    lat = result.config.latency_us * 1000
    for o in result.outcomes:
        v = o.index
        a = agree.get(v)
        d_steal = o.steal_after - o.steal_before
        rows.append(
            [
                f"vcpu{v}",
                rep.faults[v],
                ns_or_dash(rep.faults[v] * lat),
                ns_or_dash(rep.blocked_ns[v]),
                ns_or_dash(a.guest_stall_ns) if a else "-",
                ns_or_dash(a.slack_ns) if a else "-",
                ns_or_dash(d_steal) if d_steal >= 0 else "?",
                ns_or_dash(o.run_delay_ns),
                ns_or_dash(o.run_end_ns - o.run_start_ns) if o.run_end_ns else "-",
                o.stuck or "",
            ]
        )
    rows.append(
        [
            "non-vCPU",
            rep.non_vcpu_faults,
            "",
            ns_or_dash(rep.non_vcpu_wait_ns) + " (wait)",
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
            sum(rep.faults),
            "",
            f"all blocked {ns_or_dash(rep.all_blocked_ns)}",
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
    rep = result.report
    if rep is None or not rep.buckets:
        return ""
    n = len(rep.buckets)
    used = [
        i
        for i in range(len(rep.non_vcpu_buckets))
        if any(b[i] for b in rep.buckets) or rep.non_vcpu_buckets[i]
    ]
    rows = [
        [bucket_label(i)] + [rep.buckets[v][i] for v in range(n)] + [rep.non_vcpu_buckets[i]]
        for i in used
    ]
    return tabulate(
        rows, headers=["latency"] + [f"vcpu{v}" for v in range(n)] + ["non-vCPU"], tablefmt="simple"
    )


def plot_postcopy(results: Sequence[Any], path: str) -> None:
    """One panel per result: each fault as a bar from message to placement, per vCPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(
        n, 1, figsize=(9, 2.2 + 0.3 * max(r.config.vcpus for r in results) * n), squeeze=False
    )
    for ax, res in zip(axes[:, 0], results, strict=True):
        t0 = min((f.t_read_ns for f in res.faults), default=0)
        for f in res.faults:
            if f.t_placed_ns is None:
                continue
            y = f.vcpu if f.vcpu is not None else -1
            ax.barh(
                y,
                (f.t_placed_ns - f.t_read_ns) / 1e6,
                left=(f.t_read_ns - t0) / 1e6,
                height=0.6,
                color="tab:red" if f.placed_by == "resolver" else "tab:blue",
            )
        ax.set_yticks(
            range(-1, res.config.vcpus), ["other"] + [f"vcpu{i}" for i in range(res.config.vcpus)]
        )
        ax.set_title(
            f"{res.variant.name}, {res.config.vcpus} vCPU(s), latency "
            f"{res.config.latency_us} us: {res.verdict}",
            fontsize=9,
        )
    axes[-1, 0].set_xlabel("ms since the first fault (red: resolver, blue: stream)")
    save_figure(fig, path)


# what Family.table and Family.plot call
table = postcopy_table
plot = plot_postcopy
