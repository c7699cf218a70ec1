"""``kvmharness procstat``: steal-time anomalies in a guest's /proc/stat (being split up)."""

from kvmharness.procstat.parse import *  # noqa: F403
