"""pytest plugin for scripts/mutation.py's mutmut runs: fastest tests first,
and Hypothesis without timing checks.

mutmut runs, for each mutant, the tests that reach its function, stopping at
the first failure (``-x``), in no particular order.  Most mutants are killed
by their fastest tests, so running those first makes a killed mutant cheap.
The durations are the ones mutmut measured in its stats phase
(``mutants/mutmut-stats.json``; the run's working directory is ``mutants/``).
Without that file (the stats phase itself) the order is left alone.  The
clean-test run mutmut makes first uses the same order, so a test that
depended on another one's running first would fail there, not kill mutants.
Hypothesis runs under the ``mutation`` profile: no deadline, no "input
generation is slow" health check (a loaded host and mutmut's trampolines slow
every call; a timing failure would count as a kill, or fail the stats phase),
derandomized so that a mutant is killed or not the same way at every run, and
without its example database (nothing written in ``mutants/``).
Enabled by ``-p scripts.mutation_plugin`` in ``[tool.mutmut]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

_durations: dict[str, float] | None = None


def _load() -> dict[str, float]:
    global _durations
    if _durations is None:
        try:
            stats = json.loads(Path("mutmut-stats.json").read_text())
            _durations = {k: float(v) for k, v in stats["duration_by_test"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return {}
    return _durations


def pytest_configure(config: Any) -> None:
    settings.register_profile(
        "mutation",
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
        database=None,
    )
    settings.load_profile("mutation")


def pytest_collection_modifyitems(items: list[Any]) -> None:
    durations = _load()
    if durations:
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
