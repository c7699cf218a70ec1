"""The list of subcommand registrars, one per front-end module.

Each registrar takes the argparse subparsers object, adds its subcommand and
sets ``func`` (taking the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = []
from kvmharness.snapshot import inspect_cmd as _snapshot_inspect  # noqa: E402

REGISTRARS.append(_snapshot_inspect.register)
from kvmharness import hostinfo as _hostinfo  # noqa: E402

REGISTRARS.append(_hostinfo.register)
from kvmharness import procstat as _procstat  # noqa: E402

REGISTRARS.append(_procstat.register)
from kvmharness import run_cmd as _run_cmd  # noqa: E402

REGISTRARS.append(_run_cmd.register)
