"""``python -m kvmharness``: the ``kvmharness`` command, as ``python -m kvmharness.cli``."""

import sys

from kvmharness.cli import main

sys.exit(main())
