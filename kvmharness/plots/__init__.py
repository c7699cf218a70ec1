"""Pictures that show the verdict: one panel per result, every family, drawn
from the run record (the dict the judge reads) and the judge's violations.

Each family module (:mod:`.steal`, :mod:`.clock`, :mod:`.postcopy`) has
``draw(ax, record, violations)``: the series, the bound its judge holds it
to (computed by the judge's own functions, not re-derived here) and a red
cross, annotated with its kind, where each violation happened.  Artists carry
a ``gid`` (``bound:...``, ``violation:KIND``, ``series:...``), which the SVG
output keeps as element ids and the tests look for.

``kvmharness run --plot FILE`` and ``kvmharness judge RUN.json --plot FILE``
write one figure for the whole run; the format follows FILE's suffix
(:data:`FORMATS`), and any other suffix is refused before anything runs.
matplotlib is optional (``pip install 'kvmharness[plot]'``): nothing imports
it until a plot is drawn, and :func:`check_plot_path` says so when it is
missing.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmharness.exitcodes import UsageError

log = logging.getLogger(__name__)

#: Suffix -> matplotlib's format name.
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
#: Families in the order their panels appear.
FAMILY_ORDER = ("steal", "clock", "postcopy")
PANEL_W, PANEL_H = 8.0, 3.0
#: Legend entries are given to this many vCPUs at most.
LEGEND_VCPUS = 4
#: A stretch without readings shorter than this is drawn as it is, not cut.
MIN_GAP_S = 0.25
VIOLATION_COLOR = "red"


@dataclass
class Item:
    """One panel: a result's record, its violations and the words of its title."""

    record: dict[str, Any]
    violations: list[Any] = field(default_factory=list)
    word: str = ""  # the verdict word the table shows (known-broken included)


def plot_format(path: str) -> str:
    """matplotlib's format for ``path``'s suffix; UsageError for any other."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise UsageError(
            f"--plot {path}: unknown suffix {suffix or '(none)'!r}; give "
            + ", ".join(FORMATS)
            + " (the format follows the suffix)"
        )
    return FORMATS[suffix]


def plot_available() -> str | None:
    """None when plotting works, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'kvmharness[plot]')"
    return None


def check_plot_path(path: str) -> str:
    """Refuse, before anything runs, a plot that cannot be written: an unknown
    suffix, no matplotlib, a directory that does not exist.  The format."""
    fmt = plot_format(path)
    why = plot_available()
    if why:
        raise UsageError(f"--plot: {why}")
    if os.path.isdir(path):
        raise UsageError(f"--plot {path}: is a directory; give a file name")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise UsageError(f"--plot {path}: directory {d} does not exist")
    if not os.access(d, os.W_OK):
        raise UsageError(f"--plot {path}: directory {d} is not writable")
    return fmt


def items_of(results: Sequence[Any], words: Sequence[str] | None = None) -> list[Item]:
    """Panels of live or re-judged results (their ``to_json()`` is the record)."""
    out = []
    for i, r in enumerate(results):
        word = words[i] if words is not None else str(getattr(r, "verdict", ""))
        violations = list(getattr(r, "violations", []) or [])
        try:
            record = r.to_json()
        except Exception as exc:  # its panel says so; the others are still drawn
            log.info("no record of %s: %s", getattr(r, "variant", "?"), exc, exc_info=True)
            variant = getattr(r, "variant", None)
            record = {
                "family": getattr(r, "family", "?"),
                "variant": getattr(variant, "name", variant),
                "vcpus": getattr(r, "vcpus", None),
                "unreadable": f"its record cannot be built ({type(exc).__name__}: {exc})",
            }
        out.append(Item(record, violations, word))
    return out


def _order(items: Sequence[Item]) -> list[Item]:
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(items, key=lambda it: rank.get(str(it.record.get("family")), len(rank)))


def title_of(item: Item) -> str:
    r = item.record
    n = r.get("vcpus") or (r.get("config") or {}).get("vcpus")
    word = item.word or str(r.get("verdict", ""))
    kinds = Counter(str(getattr(v, "kind", "?")) for v in item.violations)
    text = f"{r.get('family')}/{r.get('variant')}, {n} vCPU(s): {word}"
    if kinds:
        text += " (" + ", ".join(f"{k} x{c}" for k, c in sorted(kinds.items())) + ")"
    return text


def figure(items: Sequence[Item]) -> Any:
    """The figure of ``items``: one panel each, families in :data:`FAMILY_ORDER`,
    two columns from five panels on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = _order(items)
    if not items:
        raise ValueError("nothing to plot: the run has no results")
    cols = 2 if len(items) > 4 else 1
    rows = -(-len(items) // cols)
    heights = [
        max(panel_height(it) for it in items[row * cols : (row + 1) * cols]) for row in range(rows)
    ]
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(PANEL_W * cols, sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    flat = list(axes.flat)
    for ax, item in zip(flat, items, strict=False):
        draw(ax, item)
    for ax in flat[len(items) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def panel_height(item: Item) -> float:
    """Inches: postcopy draws three bars per vCPU, so its panel grows with them."""
    if item.record.get("family") != "postcopy":
        return PANEL_H
    n = item.record.get("vcpus")
    return max(PANEL_H, 0.8 * n + 1.0) if isinstance(n, int) else PANEL_H


def draw(ax: Any, item: Item) -> None:
    """One panel: the family's drawing, or what the record says instead of data."""
    fam = str(item.record.get("family"))
    ax.set_title(title_of(item), fontsize=8)
    if item.record.get("unreadable"):
        no_data(ax, str(item.record["unreadable"]))
        return
    try:
        module = importlib.import_module(f"kvmharness.plots.{fam}")
    except ModuleNotFoundError:
        no_data(ax, f"no plot for the {fam!r} family")
        return
    try:
        module.draw(ax, item.record, item.violations)
        if item.violations and any(t.get_gid() == "no-data" for t in ax.texts):
            unplaced(ax, [str(getattr(v, "kind", "?")) for v in item.violations])
    except Exception as exc:  # a record this drawing cannot read: say so, draw the rest
        log.info("cannot draw %s/%s: %s", fam, item.record.get("variant"), exc, exc_info=True)
        ax.clear()
        ax.set_title(title_of(item), fontsize=8)
        no_data(ax, f"no data to draw ({type(exc).__name__}: {exc})"[:200])


def no_data(ax: Any, text: str) -> None:
    import textwrap

    ax.text(0.5, 0.5, textwrap.fill(text, 90), ha="center", va="center", fontsize=8, gid="no-data")
    ax.set_xticks([])
    ax.set_yticks([])


def save(fig: Any, path: str, fmt: str | None = None) -> None:
    """Write ``fig`` to ``path`` in ``fmt`` (default: from the suffix) atomically, then close it."""
    import matplotlib.pyplot as plt

    from kvmharness.files import atomic_target

    fmt = fmt or plot_format(path)
    try:
        with atomic_target(path, "." + fmt) as tmp:
            fig.savefig(tmp, format=fmt, dpi=100)
    finally:
        plt.close(fig)


def plot_items(items: Sequence[Item], path: str) -> None:
    save(figure(items), path)


def plot_results(results: Sequence[Any], path: str, words: Sequence[str] | None = None) -> None:
    """One figure of every result of a run (what ``run --plot`` and ``judge --plot`` write)."""
    plot_items(items_of(results, words), path)


# ---- helpers the family drawings share


def mark_violations(
    ax: Any, points: Sequence[tuple[float, float, str]], *, annotate_first: bool = True
) -> None:
    """A red cross at each (x, y, kind); the first of each kind annotated with
    the kind and how many there are."""
    if not points:
        return
    counts = Counter(k for _, _, k in points)
    seen: set[str] = set()
    for x, y, kind in points:
        ax.plot(
            [x],
            [y],
            marker="X",
            color=VIOLATION_COLOR,
            markersize=7,
            linestyle="none",
            zorder=5,
            gid=f"violation:{kind}",
            clip_on=False,
        )
        if annotate_first and kind not in seen:
            seen.add(kind)
            ax.annotate(
                kind + (f" x{counts[kind]}" if counts[kind] > 1 else ""),
                (x, y),
                xytext=(6, 6),
                textcoords="offset points",
                fontsize=7,
                color=VIOLATION_COLOR,
                gid=f"violation-label:{kind}",
                annotation_clip=False,
            )


def unplaced(ax: Any, kinds: Sequence[str]) -> None:
    """Violations with no place in the picture, named in a corner."""
    if not kinds:
        return
    c = Counter(kinds)
    ax.text(
        0.99,
        0.02,
        "not placed: " + ", ".join(f"{k} x{n}" for k, n in sorted(c.items())),
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color=VIOLATION_COLOR,
        gid="violation:unplaced",
    )


def cut_gaps(ax: Any, xs: Sequence[float], *, unit: str = "s") -> None:
    """Squeeze the long stretches without readings (a restore in another
    process under TCG: 10-30 s between phases of a fraction of one) so the
    phases stay readable: the axis keeps true times (a function scale), each
    gap is drawn narrow on a grey band that says how long it was."""
    import numpy as np

    pts = sorted(set(xs))
    if len(pts) < 2:
        return
    span = pts[-1] - pts[0]
    least = max(0.2 * span, MIN_GAP_S)
    gaps = [(a, b) for a, b in zip(pts, pts[1:], strict=False) if b - a > least]
    if not gaps:
        return
    kept = span - sum(b - a for a, b in gaps)
    width = max(kept, span * 0.01) * 0.06
    kx, ky = [pts[0] - 1e6], [pts[0] - 1e6]
    shift = 0.0
    for a, b in gaps:
        kx += [a, b]
        ky += [a - shift, a - shift + width]
        shift += (b - a) - width
    kx.append(pts[-1] + 1e6)
    ky.append(pts[-1] + 1e6 - shift)
    fx, fy = np.array(kx), np.array(ky)

    def forward(x: Any) -> Any:
        return np.interp(x, fx, fy)

    def inverse(y: Any) -> Any:
        return np.interp(y, fy, fx)

    ax.set_xscale("function", functions=(forward, inverse))
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    ticks: list[float] = []
    edges = [pts[0], *[x for g in gaps for x in g], pts[-1]]
    shown = float(forward(pts[-1]) - forward(pts[0]))
    for lo, hi in zip(edges[::2], edges[1::2], strict=True):
        if float(forward(hi) - forward(lo)) < 0.15 * shown:  # too narrow for more than one
            ticks.append(lo)
            continue
        ticks += [t for t in MaxNLocator(3).tick_values(lo, hi) if lo <= t <= hi]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    for a, b in gaps:
        ax.axvspan(a, b, color="0.9", zorder=0, gid="gap")
        ax.text(
            (a + b) / 2,
            0.5,
            f"{b - a:.1f} {unit} cut",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            ha="center",
            va="center",
            fontsize=6,
            color="0.4",
        )
