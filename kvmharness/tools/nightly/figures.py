"""The figures a nightly record keeps of each scenario, and how they read."""

from __future__ import annotations

from typing import Any


def figures_of(r: dict[str, Any]) -> dict[str, Any]:
    """The key figures of one result of ``kvmharness run --json``."""
    fam = r.get("family") or r.get("scenario")  # kvmharness 0.1 wrote "scenario"
    out: dict[str, Any] = {"wall_s": r.get("wall_s")}
    if fam == "steal":
        for k in ("largest_jump_ns", "steal_before_ns", "steal_after_ns"):
            out[k] = r.get(k)
    elif fam == "clock":
        out["warps"] = r.get("warps")
        out["largest_warp_ns"] = r.get("largest_warp_ns")
        jumps = [
            j.get("kvmclock_ns")
            for j in r.get("boundary_jumps") or []
            if isinstance(j.get("kvmclock_ns"), int | float)
        ]
        out["largest_jump_ns"] = max(jumps, key=abs) if jumps else None
        out["reads"] = r.get("reads")
    elif fam == "postcopy":
        bt = r.get("blocktime") or {}
        per = [x for x in bt.get("blocked_ns") or [] if isinstance(x, int | float)]
        out["blocktime_ns"] = per
        out["blocktime_max_ns"] = max(per) if per else None
        out["all_blocked_ns"] = bt.get("all_blocked_ns")
    return out


#: per family: the figure each cell shows and the trend plots, (key, label, unit)
KEY_FIGURES: dict[str, list[tuple[str, str, str]]] = {
    "steal": [("largest_jump_ns", "largest steal jump", "ns")],
    "clock": [
        ("largest_jump_ns", "largest kvmclock jump at the boundary", "ns"),
        ("warps", "warps", "count"),
    ],
    "postcopy": [("blocktime_max_ns", "largest blocktime of one vCPU", "ns")],
}


def fmt_value(v: Any, unit: str) -> str:
    if v is None:
        return "-"
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
