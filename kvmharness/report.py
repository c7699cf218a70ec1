"""Tables, JSON and plots of scenario results, generic over scenario families:
each family renders its own table and plot; this module picks and joins them."""

from __future__ import annotations

from collections.abc import Sequence

from kvmharness.files import atomic_target, write_json  # noqa: F401 (re-exported)
from kvmharness.scenarios.base import ScenarioResult, family, verdict_text  # noqa: F401

DEFAULT_WIDTH = 90


def by_family(results: Sequence[ScenarioResult]) -> dict[str, list[ScenarioResult]]:
    out: dict[str, list[ScenarioResult]] = {}
    for r in results:
        out.setdefault(r.family, []).append(r)
    return out


def tables(results: Sequence[ScenarioResult], *, width: int = DEFAULT_WIDTH) -> str:
    """One table per family, in the order the families first appear."""
    return "\n\n".join(family(name).table(rs, width) for name, rs in by_family(results).items())


def plot(results: Sequence[ScenarioResult], path: str) -> None:
    """The first family's plot (one PNG per run)."""
    for name, rs in by_family(results).items():
        family(name).plot(rs, path)
        return
    raise ValueError("no scenario family in this run has a plot")


def plot_available() -> str | None:
    """None when plotting works, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'kvmharness[plot]')"
    return None
