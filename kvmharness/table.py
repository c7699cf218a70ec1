"""Result tables that fit the terminal, and the legend of their columns.

Every family's view gives its headers and rows (cells as text, the verdict
last and whole); :func:`fit_table` lays them out for a width:

* ``width`` 0 (``--wide``): every column, nothing wrapped, as wide as it needs;
* otherwise the table fits ``width``: the identity columns (variant, vCPUs)
  and the verdict always show, the other columns join in the order of their
  :data:`LEGEND` rank while they fit, headers wrap at their words, and the
  verdict wraps onto as many lines as it needs (it is never cut).  A line
  under the table names the columns left out; ``--wide`` shows them.

Rendering is tabulate's ("simple" format, multi-line cells); this module only
chooses the columns and the widths, so the output is plain text that a file,
a pager or CI log shows as it does a terminal.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

#: Two spaces between columns (tabulate's "simple" format).
GAP = 2
#: tabulate pads every header by its MIN_PADDING (2); fitted tables set it to this.
HEADER_PAD = 0
#: The verdict keeps at least this many columns when others compete for the width.
VERDICT_MIN = 26
#: Columns ranked up to this are the figures the verdict rests on; the others
#: (context) show only where the verdict keeps VERDICT_WANT columns.
KEY_RANK = 3
VERDICT_WANT = 40
#: Below this a table is shown anyway, wider than asked (no narrower layout reads).
NARROWEST = 40


@dataclass(frozen=True)
class Column:
    """A column: ``rank`` 0 always shows; higher ranks leave first when the
    width is short.  ``means`` is its line in ``run --legend``."""

    rank: int
    means: str


ALWAYS = 0

#: What every figure of every family's table is, and how much it matters
#: (rank: 0 always shown, then 1, 2, ... as the width allows).
LEGEND: dict[str, dict[str, Column]] = {
    "steal": {
        "scenario": Column(6, "the family (steal time)"),
        "variant": Column(ALWAYS, "how the VM crosses the boundary (run --list)"),
        "vCPUs": Column(ALWAYS, "vCPUs in the VM"),
        "MSR written by": Column(
            4, "the host thread that writes MSR_KVM_STEAL_TIME when the VM is restored"
        ),
        "vCPU run by": Column(4, "the host thread that runs the vCPU after the boundary"),
        "contention": Column(
            5, "how long the vCPUs' threads wait on a busy CPU before and after the boundary"
        ),
        "last steal before": Column(
            3, "steal the guest read last before the boundary, summed over the vCPUs"
        ),
        "first steal after": Column(
            2,
            "steal the guest read first after the boundary, summed over the vCPUs "
            "(one reading, not a total over time)",
        ),
        "largest jump": Column(
            1,
            "the largest change of one vCPU's steal between two readings "
            "(negative: steal went back)",
        ),
        "wall": Column(5, "the scenario's wall-clock time"),
        "verdict": Column(ALWAYS, "the state (holds, broken, known-broken, ...) and why"),
    },
    "clock": {
        "scenario": Column(6, "the family (kvmclock and the TSC)"),
        "variant": Column(ALWAYS, "what happens to the VM (run --list)"),
        "vCPUs": Column(ALWAYS, "vCPUs in the VM"),
        "boundary": Column(4, "the boundary the VM crosses; +CPU hops: vCPU threads move CPUs"),
        "kvmclock put": Column(5, "how kvmclock is put back after the boundary (KVM_SET_CLOCK)"),
        "TSC put": Column(5, "how the TSC is put back after the boundary"),
        "stable": Column(
            3,
            "PVCLOCK_TSC_STABLE_BIT before -> after the boundary; (lost): KVM's master "
            "clock was lost at the boundary",
        ),
        "reads": Column(6, "kvmclock readings the guest took, over all vCPUs"),
        "reads/s/vCPU": Column(6, "readings per second of KVM_RUN, per vCPU"),
        "warps (largest)": Column(
            1,
            "readings that went back against an earlier reading on another vCPU, "
            "and the largest step back; vDSO: the same by the vDSO's reader",
        ),
        "jump at boundary": Column(
            2,
            "the largest kvmclock step of one vCPU across the boundary / the real "
            "downtime it must stay within",
        ),
        "wall": Column(5, "the scenario's wall-clock time"),
        "verdict": Column(ALWAYS, "the state (holds, broken, known-broken, ...) and why"),
    },
    "postcopy": {
        "scenario": Column(6, "the family (postcopy blocktime)"),
        "variant": Column(ALWAYS, "how pages arrive and who faults on them (run --list)"),
        "vCPUs": Column(ALWAYS, "vCPUs in the VM"),
        "latency": Column(5, "the delay the pager adds before placing each page"),
        "faults (vCPU/other)": Column(
            3, "userfaultfd faults of the vCPU threads / of other threads"
        ),
        "blocktime (sum)": Column(
            1, "time the vCPUs were blocked on missing pages, summed over the vCPUs"
        ),
        "all blocked": Column(2, "time every vCPU was blocked at once"),
        "guest stall": Column(
            2, "stall the guest measured itself, summed over the vCPUs (blocktime's check)"
        ),
        "steal": Column(5, "steal the guest's vCPUs gained during the run, summed"),
        "placed r/s/EEXIST": Column(
            6,
            "pages placed on request / by the background stream / placements that "
            "found the page already there (EEXIST)",
        ),
        "QEMU models": Column(
            4,
            "QEMU's slot and hash blocktime designs against the exact accountant: "
            "= exact, or how far off each is",
        ),
        "wall": Column(5, "the scenario's wall-clock time"),
        "verdict": Column(ALWAYS, "the state (holds, broken, known-broken, ...) and why"),
    },
    "info": {
        "fact": Column(ALWAYS, "what kvmharness info found out about the host"),
        "value": Column(ALWAYS, "its value"),
    },
    "generic": {
        "scenario": Column(ALWAYS, "the family"),
        "variant": Column(ALWAYS, "the variant (run --list)"),
        "vCPUs": Column(ALWAYS, "vCPUs in the VM"),
        "kind": Column(3, "promise (KVM guarantees it) or characterize (measured, never fails)"),
        "violations": Column(1, "the kinds of violation the judge found, and how many"),
        "wall": Column(2, "the scenario's wall-clock time"),
        "verdict": Column(ALWAYS, "the state (holds, broken, known-broken, ...) and why"),
    },
}

STATES = {
    "holds": "a promise held",
    "broken": "a promise broke (exit 1)",
    "known-broken": "it broke as a known issue of this host says (shown, not counted)",
    "fixed?": "it held where a known issue says it breaks (exit 1: update the known issue)",
    "characterized": "measured; KVM promises nothing here, so it never fails",
    "untestable": "this run could not judge it (e.g. the host too loaded; exit 125)",
    "not supported": "this host or kernel lacks what it needs (shown, left out)",
    "harness error": "kvmharness or its environment failed: no verdict (exit 128)",
}


def terminal_width() -> int:
    """The width tables fit: ``COLUMNS`` if set, else the terminal's, else 80."""
    return shutil.get_terminal_size((80, 24)).columns


def _cell_width(cells: Sequence[str]) -> int:
    return max((len(line) for c in cells for line in c.splitlines() or [""]), default=0)


def _header_width(header: str, cell_w: int) -> int:
    """The narrowest a header wraps to beside cells ``cell_w`` wide: its
    longest word, or wider to take fewer lines where the cells are wider."""
    longest = max(len(w) for w in header.split()) if header.strip() else 0
    return max(longest, min(len(header), cell_w))


def fit_table(
    family: str, headers: Sequence[str], rows: Sequence[Sequence[str]], width: int
) -> str:
    """The table of ``rows`` under ``headers`` for ``width`` columns (0: wide).
    The last column is the verdict."""
    rows = [[str(c) for c in r] for r in rows]
    if not width:
        return _tabulate(rows, list(headers))
    legend = LEGEND.get(family) or LEGEND["generic"]
    n = len(headers)
    cols = [[r[i] for r in rows] for i in range(n)]
    cell_w = [_cell_width(c) for c in cols]
    if sum(max(c, len(h)) for c, h in zip(cell_w, headers, strict=True)) + GAP * (n - 1) <= width:
        return _tabulate(rows, list(headers))  # it all fits as it is
    head_w = [_header_width(h, w) for h, w in zip(headers, cell_w, strict=True)]
    # a column's width: its widest cell, or its header wrapped at words (+ tabulate's pad)
    need = [max(c, h + HEADER_PAD) for c, h in zip(cell_w, head_w, strict=True)]
    verdict = n - 1
    rank = [legend[h].rank if h in legend else 9 for h in headers]
    rank[verdict] = ALWAYS
    shown = {i for i in range(n) if rank[i] == ALWAYS}

    def used(cols_shown: set[int]) -> int:
        """Columns taken by all but the verdict, with the gaps between them."""
        others = [i for i in cols_shown if i != verdict]
        return sum(need[i] for i in others) + GAP * (len(others) - 1)

    room = max(width, NARROWEST)
    for i in sorted((i for i in range(n) if i not in shown), key=lambda i: (rank[i], i)):
        # a key figure may narrow the verdict to VERDICT_MIN; context only to VERDICT_WANT
        floor = VERDICT_MIN if rank[i] <= KEY_RANK else VERDICT_WANT
        if used(shown | {i}) + GAP + min(floor, need[verdict]) <= room:
            shown.add(i)
    keep = sorted(shown)
    verdict_w = max(room - used(shown) - GAP, min(VERDICT_MIN, need[verdict]), len("verdict"))
    widths = {i: head_w[i] for i in keep}
    widths[verdict] = verdict_w
    out_rows = []
    for r in rows:
        out = []
        for i in keep:
            cell = r[i]
            if i == verdict and len(cell) > verdict_w:
                cell = "\n".join(textwrap.wrap(cell, verdict_w, break_on_hyphens=False) or [""])
            out.append(cell)
        out_rows.append(out)
    out_headers = [
        "\n".join(
            textwrap.wrap(headers[i], widths[i], break_long_words=False, break_on_hyphens=False)
        )
        for i in keep
    ]
    hidden = [headers[i] for i in range(n) if i not in shown]
    if hidden and headers[0] == "scenario" and 0 not in shown and family in LEGEND:
        # the family column left out: the first column's header names the family
        out_headers[0] = "\n".join(
            textwrap.wrap(f"{family} {headers[keep[0]]}", max(need[keep[0]], len(family)))
        )
        hidden = hidden[1:]
    text = _tabulate(out_rows, out_headers)
    if hidden:
        note = f"(left out at {width} columns: {', '.join(hidden)}; --wide shows every column)"
        text += "\n" + "\n".join(textwrap.wrap(note, room, break_on_hyphens=False))
    return text


def _tabulate(rows: list[list[str]], headers: list[str]) -> str:
    import tabulate as tb

    pad, tb.MIN_PADDING = tb.MIN_PADDING, HEADER_PAD  # no header wider than GAP apart
    try:
        return tb.tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    finally:
        tb.MIN_PADDING = pad


def legend_text(width: int | None = None) -> str:
    """What ``run --legend`` prints: every state, and every column of every
    table, wrapped to ``width`` (default the terminal's)."""
    width = width or terminal_width()

    def entries(pairs: dict[str, str]) -> list[str]:
        w = max(map(len, pairs))
        out = []
        for name, means in pairs.items():
            out += textwrap.wrap(
                means,
                max(width, w + 30),
                initial_indent=f"  {name:{w}}  ",
                subsequent_indent=" " * (w + 4),
                break_on_hyphens=False,
            )
        return out

    lines = ["states:", *entries(STATES)]
    for fam, cols in LEGEND.items():
        if fam in ("generic", "info"):
            continue
        lines += ["", f"{fam} table:", *entries({h: c.means for h, c in cols.items()})]
    lines += [
        "",
        *textwrap.wrap(
            "Figures are ns, us, ms or s as marked. A narrow terminal leaves out the "
            "columns ranked last (a line under the table names them); --wide shows all.",
            width,
        ),
    ]
    return "\n".join(lines)
