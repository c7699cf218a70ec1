"""Where the kernel tools find the harness: the checkout they run from, or
the Python whose installed kvmharness runs them."""

from __future__ import annotations

import sys
from pathlib import Path


def checkout_root() -> Path | None:
    """The checkout this package runs from (its tests/, scripts/, .venv, git
    history), or None for a package installed from a wheel."""
    root = Path(__file__).resolve().parent.parent.parent
    if (root / "scripts" / "bootstrap.sh").is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def kvmharness_command() -> list[str]:
    """``kvmharness`` as a child process: this Python's, so a checkout's .venv or
    the venv the wheel is installed in, whichever runs this tool."""
    return [sys.executable, "-m", "kvmharness.cli"]
