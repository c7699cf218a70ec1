"""``kvmharness nightly``: the nightly hardware CI of kvmharness.

One nightly run:

1. runs the KVM part of the test suite (``pytest -m kvm --junitxml``, from a
   checkout) and the scenario matrix (``kvmharness run --json``) on this
   host's KVM, or, with ``--kernel IMAGE``, inside that kernel through
   ``kvmharness bisect-kernel`` (the nightly runs itself there with
   ``--inner`` and hands one JSON file back): :mod:`.processes`;
2. makes one record of it (:mod:`.records`; the figures of the kernel it
   keeps per scenario: :mod:`.figures`) and appends it to a JSON-lines
   history (:mod:`.history`);
3. renders the last N runs of each host as a self-contained HTML page
   (:mod:`.page`, with the trend plots of :mod:`.plots`) and as text on
   stdout (:mod:`.text`), each with what changed since the previous run
   (:mod:`.changes`);
4. exits 0 good, 1 a promise broke that no known issue covers (or a known
   issue looks fixed, or a KVM test failed, or a capability was lost), 125
   nothing could be tested, 128 a harness fault; 2 for bad usage (the
   nightly is not run by git bisect): :mod:`.cli`;
5. ``--kcidb FILE`` writes the run as KCIDB I/O JSON (:mod:`.kcidb`);
   ``--merge FILE...`` merges histories from several hosts.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from kvmharness.tools.nightly.cli import main as cli_main

    return cli_main(argv)
