"""pytest plugin for scripts/mutation.py's mutmut runs: fastest tests first.

mutmut runs, for each mutant, the tests that reach its function, stopping at
the first failure (``-x``), in no particular order.  Most mutants are killed
by their fastest tests, so running those first makes a killed mutant cheap.
The durations are the ones mutmut measured in its stats phase
(``mutants/mutmut-stats.json``; the run's working directory is ``mutants/``).
Without that file (the stats phase itself) the order is left alone.  The
clean-test run mutmut makes first uses the same order, so a test that
depended on another one's running first would fail there, not kill mutants.
Enabled by ``-p scripts.mutation_order`` in ``[tool.mutmut]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def pytest_collection_modifyitems(items: list[Any]) -> None:
    durations = _load()
    if durations:
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
