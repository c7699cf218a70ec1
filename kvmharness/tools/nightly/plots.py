"""PNG trend plots of the key figures over a host's runs (matplotlib)."""

from __future__ import annotations

import io
from typing import Any

from kvmharness.tools.nightly.changes import BAD
from kvmharness.tools.nightly.figures import KEY_FIGURES
from kvmharness.tools.nightly.text import scenario_rows


def _series(
    runs: list[dict[str, Any]], fam: str, key: str, unit: str, kind: str
) -> tuple[dict[str, list[float | None]], list[tuple[int, float]]]:
    """Per scenario of ``fam`` and ``kind``: its figure per run (ms for ns), and the
    (run, value) points whose verdict was broken or harness error."""
    series: dict[str, list[float | None]] = {}
    bad: list[tuple[int, float]] = []
    for sid in scenario_rows(runs):
        if not sid.startswith(fam + "/"):
            continue
        vals: list[float | None] = []
        for i, r in enumerate(runs, 1):
            s = next((x for x in r["scenarios"] if x["id"] == sid), None)
            if s is None or (s.get("kind") or "promise") != kind:
                vals.append(None)
                continue
            v = (s.get("figures") or {}).get(key)
            v = v / 1e6 if unit == "ns" and isinstance(v, int | float) else v
            vals.append(v)
            if v is not None and s["status"] in BAD:
                bad.append((i, v))
        if any(v is not None for v in vals):
            series[sid[len(fam) + 1 :]] = vals
    return series, bad


def plots(runs: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """PNG trend plots of the key figures over ``runs`` (one host): (title, png).
    One plot per family, figure and kind (promises apart from characterizations,
    whose figures live on other scales), and the wall time per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    out = []
    xs = list(range(1, len(runs) + 1))
    labels = [
        f"#{i}\n{str(r.get('date', ''))[5:10]}\n{str(r.get('date', ''))[11:16]}"
        for i, r in zip(xs, runs, strict=True)
    ]
    jobs: list[tuple[str, dict[str, list[float | None]], list[tuple[int, float]], str]] = []
    for fam, figs in KEY_FIGURES.items():
        for key, label, unit in figs:
            for kind, what in (("promise", "promises"), ("characterize", "characterizations")):
                series, bad = _series(runs, fam, key, unit, kind)
                if unit == "count" and not any(v for vs in series.values() for v in vs if v):
                    continue  # a flat zero line of warps says nothing the table does not
                if series:
                    jobs.append((f"{fam}: {label}, {what}", series, bad, unit))
    walls: dict[str, list[float | None]] = {
        "all": [(r.get("run") or {}).get("total_wall_s") for r in runs]
    }
    for fam in KEY_FIGURES:
        per = [
            sum(
                (s.get("figures") or {}).get("wall_s") or 0
                for s in r["scenarios"]
                if s.get("family") == fam
            )
            or None
            for r in runs
        ]
        if any(per):
            walls[fam] = per
    if any(v is not None for v in walls["all"]):
        jobs.append(("wall time of the matrix, per family", walls, [], "s"))
    colors = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    for title, series, bad, unit in jobs:
        fig, ax = plt.subplots(figsize=(11, 3.4), dpi=100)
        for n, (name, vals) in enumerate(series.items()):
            pts = [(x, v) for x, v in zip(xs, vals, strict=True) if v is not None]
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="os^Dv"[n // 10 % 5],
                markersize=4,
                linewidth=1.3,
                color=colors[n % len(colors)],
                label=name,
                linestyle="-" if n < 10 else "--",
            )
        if bad:
            ax.scatter(
                [b[0] for b in bad],
                [b[1] for b in bad],
                marker="x",
                s=80,
                color="#c00000",
                linewidths=2,
                zorder=5,
                label="broken / harness error",
            )
        vals = [v for vs in series.values() for v in vs if v is not None]
        if vals and min(vals) > 0 and max(vals) / min(vals) > 20:
            ax.set_yscale("log")  # e.g. cross-process jumps of a second beside 10 ms ones
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_xlim(0.5, len(runs) + 0.5)
        ax.set_ylabel({"ns": "ms", "s": "s", "count": "count", "ratio": "ratio"}[unit])
        ax.set_title(title, fontsize=11, loc="left")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.subplots_adjust(left=0.07, right=0.70, top=0.89, bottom=0.22)  # plots align
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out.append((title, buf.getvalue()))
    return out
