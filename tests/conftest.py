"""Shared helpers for the kvmharness test suite (fixtures come from the plugin)."""

import pytest


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables and messages fit COLUMNS (kvmharness.table): a test reads them at
    1000 columns, whatever terminal runs it, unless it sets COLUMNS itself."""
    monkeypatch.setenv("COLUMNS", "1000")
