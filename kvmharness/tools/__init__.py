"""The kernel tools, each a ``kvmharness`` subcommand and a thin launcher in scripts/:

* :mod:`~kvmharness.tools.bisect_kernel`: ``kvmharness bisect-kernel IMAGE``, one
  ``git bisect run`` step inside a booted kernel (its guest side is the package
  data ``bisect_kernel_guest.sh``);
* :mod:`~kvmharness.tools.nightly`: ``kvmharness nightly``, the nightly hardware
  CI and its trend report;
* :mod:`~kvmharness.tools.mutants`: ``kvmharness mutants``, kernel mutants and
  the kill matrix.

Each has ``main(argv) -> int`` and chooses its own exit codes (from
:mod:`kvmharness.exitcodes`); :data:`TOOLS` maps the subcommand to its module.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

#: subcommand -> (module, one line for ``kvmharness --help``)
TOOLS: dict[str, tuple[str, str]] = {
    "bisect-kernel": (
        "kvmharness.tools.bisect_kernel",
        "boot a kernel image under QEMU and run `kvmharness bisect` in it (a git bisect step)",
    ),
    "nightly": (
        "kvmharness.tools.nightly",
        "nightly CI: KVM tests and the matrix, a JSON-lines history, the trend report",
    ),
    "mutants": (
        "kvmharness.tools.mutants",
        "build KVM mutants from Debian's kernel source, boot each, print the kill matrix",
    ),
}


def run_tool(name: str, argv: Sequence[str]) -> int:
    """Run the tool ``name`` with ``argv`` (its own arguments): its exit code."""
    module = importlib.import_module(TOOLS[name][0])
    return int(module.main(list(argv)))
