"""The figures a nightly record keeps of each scenario, and how they read.

A figure compared from night to night must be a figure of the kernel, not of
the host's load.  Raw steal follows the runner's run_delay, which follows the
load (two runs a minute apart showed a steal jump of 8 ms, then 150 ms), and a
kvmclock jump across a save/restore follows how long the restore took.  So the
kept figures are:

* steal: ``steal_ratio``, the steal the guest saw over the run_delay its runner
  thread accumulated, summed over the spans the judge's "alive" check reads
  (:meth:`kvmharness.judges.steal.VcpuRecord.segments`).  KVM charges all of a
  vCPU thread's run_delay as steal, so it is 1.0 on a good kernel however long
  the thread waited; a kernel that loses or double-counts steal moves it;
* clock: ``jump_margin_ns``, the kvmclock jump at the boundary measured as its
  distance from its bound (the judge's bounds: the real time between the
  readings, less the time the clock stood still; at least the real time with
  KVM_CLOCK_REALTIME): the smallest margin over the vCPUs, negative over the
  bound; and ``warps``;
* postcopy: the largest blocktime of one vCPU, shown but not compared (it
  follows the pager's speed).

The raw values (largest steal jump, kvmclock jump) are kept beside them for
the cells of the table.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def family_of(r: dict[str, Any]) -> str:
    return str(r.get("family") or r.get("scenario") or "?")


def steal_ratio(record: dict[str, Any]) -> float | None:
    """Steal over the runner's run_delay across a steal record's "alive"
    spans (see the module docstring); None without run_delay to compare."""
    from kvmharness.judges import steal

    grew = waited = 0
    for r in steal.records_of(record):
        rds = r.run_delays()
        for span in r.segments():
            w = span.waited(rds)
            if w > 0:
                grew += span.grew(r.guest)
                waited += w
    return grew / waited if waited else None


def clock_jumps(record: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(jump, lowest, highest) of kvmclock across the boundary per vCPU, in ns,
    the bounds as the clock judge sets them."""
    from kvmharness.judges import clock

    cfg = clock.ClockConfigView.of(record["config"])
    run = clock.run_of(record)
    out = []
    for r in run.records:
        if 0 < r.boundary < len(r.batches):
            a, b = r.batches[r.boundary - 1], r.batches[r.boundary]
            if a.n and b.n:
                before, after = r.samples[a.first + a.n - 1], r.samples[b.first]
                lo, hi, _why, _why_lo = clock._jump_bounds(cfg, a, b, run.facts)
                out.append((after[0] - before[0], lo, hi))
    return out


def jump_margin_ns(jumps: list[tuple[int, int, int]]) -> int | None:
    """The smallest distance of a jump from its bound (negative: beyond it)."""
    return min((min(hi - j, j - lo) for j, lo, hi in jumps), default=None)


def _safely(what: str, fn: Any, record: dict[str, Any]) -> Any:
    """A figure the record cannot give (an error result, an older schema) is
    None: the verdict is the judge's business, not the figure's."""
    try:
        return fn(record)
    except Exception as exc:  # any record it cannot read: no figure
        log.debug("no %s for %s: %r", what, record.get("variant"), exc)
        return None


def figures_of(r: dict[str, Any]) -> dict[str, Any]:
    """The figures of one result of ``kvmharness run --json``."""
    fam = family_of(r)
    out: dict[str, Any] = {"wall_s": r.get("wall_s")}
    if fam == "steal":
        out["steal_ratio"] = _safely("steal ratio", steal_ratio, r)
        for k in ("largest_jump_ns", "steal_before_ns", "steal_after_ns"):
            out[k] = r.get(k)
    elif fam == "clock":
        jumps = _safely("kvmclock jumps", clock_jumps, r) or []
        out["jump_margin_ns"] = jump_margin_ns(jumps)
        out["largest_jump_ns"] = max((j for j, _, _ in jumps), key=abs, default=None)
        out["warps"] = r.get("warps")
        out["largest_warp_ns"] = r.get("largest_warp_ns")
        out["reads"] = r.get("reads")
    elif fam == "postcopy":
        bt = r.get("blocktime") or {}
        per = [x for x in bt.get("blocked_ns") or [] if isinstance(x, int | float)]
        out["blocktime_ns"] = per
        out["blocktime_max_ns"] = max(per) if per else None
        out["all_blocked_ns"] = bt.get("all_blocked_ns")
    return out


#: per family: the figures each cell shows and the trend plots, (key, label, unit)
KEY_FIGURES: dict[str, list[tuple[str, str, str]]] = {
    "steal": [("steal_ratio", "steal / runner's run_delay", "ratio")],
    "clock": [
        ("jump_margin_ns", "kvmclock jump's distance from its bound", "ns"),
        ("warps", "warps", "count"),
    ],
    "postcopy": [("blocktime_max_ns", "largest blocktime of one vCPU", "ns")],
}

#: How far each figure moves between runs of one kernel on one host, measured:
#: five nightly runs on one host and commit (kvm_pvm, 2 cores, a TCG boot
#: beside them; steal fresh-vm/vcpu-thread, cancelled-save and
#: cross-process/vcpu-thread, clock restore/downtime, realtime and frozen, on 1
#: and 2 vCPUs) and the stock runs of tests/corpus.  steal_ratio: 1.000-1.012 in
#: the five runs, up to 1.029 in the corpus (6.12, cancelled-save), so 0.03;
#: jump_margin_ns: restore/downtime@1 went from 23 to 160 ms over the five runs
#: (the largest spread; restore/realtime moved at most 9.5 ms), so 140 ms; warps:
#: none on a good kernel.  A figure "moved" when it changed by more than
#: MOVE_FACTOR times this; a figure with no entry (postcopy's blocktime, which
#: follows the pager) is shown but never "moved".
RUN_TO_RUN: dict[str, float] = {
    "steal_ratio": 0.03,
    "jump_margin_ns": 140_000_000,
    "warps": 0,
}
MOVE_FACTOR = 2.0


def fmt_value(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ratio":
        return f"{v:.3f}"
    if unit == "ns":
        a = abs(v)
        if a >= 1e9:
            return f"{v / 1e9:.3g} s"
        if a >= 1e6:
            return f"{v / 1e6:.3g} ms"
        if a >= 1e3:
            return f"{v / 1e3:.3g} us"
        return f"{v:.0f} ns"
    if unit == "s":
        return f"{v:.3g} s"
    return f"{v:g}" if isinstance(v, float) else str(v)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rsplit(" ", 1)[0] + " ..."
