"""What changed between two runs of one host: new broken, fixed, capabilities
lost, figures that moved."""

from __future__ import annotations

import math
from typing import Any

from kvmharness.tools.nightly.figures import (
    KEY_FIGURES,
    MOVE_FACTOR,
    RUN_TO_RUN,
    fmt_value,
    shorten,
)

#: the statuses that say a scenario was judged on the host
JUDGED = {"holds", "broken", "known-broken", "fixed?", "characterized"}


def capabilities_lost(prev: dict[str, Any] | None, cur: dict[str, Any]) -> list[str]:
    """What the host had in its previous run and has no longer (two records of
    one host): a capability its facts say is now absent, or a scenario that
    went from a verdict to "not supported"."""
    if prev is None:
        return []
    out = []
    before = (prev.get("host") or {}).get("facts") or {}
    now = (cur.get("host") or {}).get("facts") or {}
    for name, had in before.items():
        if had is True and now.get(name) is False:
            out.append(f"{name}: present in the previous run, absent now")
    prev_s = {s["id"]: s for s in prev.get("scenarios") or []}
    for s in cur.get("scenarios") or []:
        p = prev_s.get(s["id"])
        if p and p.get("status") in JUDGED and s.get("status") == "not supported":
            out.append(
                f"{s['id']}: {p['status']} -> not supported: " + shorten(s.get("observed", ""), 200)
            )
    return out


def moved(old: Any, new: Any, key: str, factor: float = MOVE_FACTOR) -> bool:
    """Whether figure ``key`` changed from ``old`` to ``new`` by more than
    ``factor`` times what it moves between runs of one kernel on one host
    (:data:`~kvmharness.tools.nightly.figures.RUN_TO_RUN`).  A figure with no
    such spread (not a figure of the kernel) never moves."""
    if key not in RUN_TO_RUN:
        return False
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in (old, new)):
        return False
    return abs(new - old) > factor * RUN_TO_RUN[key]


def move_rule(factor: float = MOVE_FACTOR) -> str:
    units = {key: unit for figs in KEY_FIGURES.values() for key, _label, unit in figs}
    spreads = ", ".join(
        f"{key} {fmt_value(v, units.get(key, 'count'))}" for key, v in RUN_TO_RUN.items()
    )
    return (
        f"by more than {factor:g} times what it moves between runs of one kernel on one "
        f"host ({spreads})"
    )


BAD = {"broken", "harness error"}


def changes(
    prev: dict[str, Any] | None, cur: dict[str, Any], factor: float = MOVE_FACTOR
) -> dict[str, list[str]]:
    """What changed from ``prev`` to ``cur`` (two records of one host)."""
    out: dict[str, list[str]] = {
        "new broken": [],
        "capability lost": capabilities_lost(prev, cur),
        "fixed": [],
        "fixed?": [],
        "new known-broken": [],
        "figure moved": [],
        "new tests failing": [],
        "no longer run": [],
    }
    cur_s = {s["id"]: s for s in cur["scenarios"]}
    for s in cur["scenarios"]:
        if s["status"] == "fixed?":
            k = s.get("known") or {}
            out["fixed?"].append(
                f"{s['id']}: holds, but known issue {k.get('id')} says it "
                "breaks here: update the known-issues file"
            )
    if prev is None:
        for s in cur["scenarios"]:
            if s["status"] in BAD:
                out["new broken"].append(f"{s['id']}: {s['status']} (first run)")
        return out
    prev_s = {s["id"]: s for s in prev["scenarios"]}
    for sid, s in cur_s.items():
        p = prev_s.get(sid)
        before = p["status"] if p else "not run"
        if s["status"] in BAD and before not in BAD:
            out["new broken"].append(
                f"{sid}: {before} -> {s['status']}: " + shorten(s["observed"], 200)
            )
        elif s["status"] == "known-broken" and before not in ("known-broken", "not run"):
            out["new known-broken"].append(f"{sid}: {before} -> known-broken")
        elif s["status"] in ("holds", "fixed?") and before in BAD | {"known-broken"}:
            out["fixed"].append(f"{sid}: {before} -> {s['status']}")
        if p is None:
            continue
        for key, label, unit in KEY_FIGURES.get(s["family"], []):
            a, b = (p.get("figures") or {}).get(key), (s.get("figures") or {}).get(key)
            if moved(a, b, key, factor):
                out["figure moved"].append(
                    f"{sid}: {label} {fmt_value(a, unit)} -> {fmt_value(b, unit)}"
                )
    was_failing = set((prev.get("pytest") or {}).get("failed") or [])
    out["new tests failing"] = [
        t for t in (cur.get("pytest") or {}).get("failed") or [] if t not in was_failing
    ]
    out["no longer run"] = sorted(set(prev_s) - set(cur_s)) if cur["scenarios"] else []
    return out
