"""VM snapshots: the container file format (capture/restore live in their own modules)."""

from kvmharness.snapshot.fileformat import (
    FORMAT_MAGIC,
    FORMAT_VERSION,
    Manifest,
    SectionInfo,
    Snapshot,
    SnapshotFormatError,
    dumps,
    loads,
    read_manifest,
    read_snapshot,
    verify_snapshot,
    write_snapshot,
)

__all__ = [
    "FORMAT_MAGIC",
    "FORMAT_VERSION",
    "Manifest",
    "SectionInfo",
    "Snapshot",
    "SnapshotFormatError",
    "dumps",
    "loads",
    "read_manifest",
    "read_snapshot",
    "verify_snapshot",
    "write_snapshot",
]
