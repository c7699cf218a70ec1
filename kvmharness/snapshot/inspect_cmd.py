"""``kvmharness snapshot inspect FILE``: show what a snapshot file holds.

Reads only the header and section table, then (unless ``--no-verify``) streams
every section through SHA-256, so it stays cheap in memory on multi-GiB files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from tabulate import tabulate

from kvmharness.snapshot.fileformat import (
    Manifest,
    SnapshotFormatError,
    read_manifest,
    verify_snapshot,
)

_SUBCOMMANDS_ATTR = "_kvmharness_snapshot_subcommands"
_MAX_VALUE_WIDTH = 80
_MAX_DEPTH = 3


def snapshot_subcommands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Return the ``kvmharness snapshot`` sub-subcommand group, creating it on first use.

    Other front ends (capture, restore) can add ``snapshot <verb>`` through this
    instead of registering a second, conflicting ``snapshot`` command.
    """
    parser = subparsers.choices.get("snapshot")
    if parser is None:
        parser = subparsers.add_parser(
            "snapshot",
            help="work with VM snapshot files",
            description="Work with VM snapshot files.",
        )
        group = parser.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND")
        group.required = True
        setattr(parser, _SUBCOMMANDS_ATTR, group)
    return getattr(parser, _SUBCOMMANDS_ATTR)


def register(subparsers: argparse._SubParsersAction) -> None:
    group = snapshot_subcommands(subparsers)
    parser = group.add_parser(
        "inspect",
        help="show the format version, metadata, sections and vCPU state of a snapshot file",
        description=(
            "Show the format version, metadata and sections of a snapshot file, and check"
            " its checksums; for VM state (what `kvmharness run --keep-snapshots DIR` keeps)"
            " also each vCPU's registers, system registers and MSRs."
            " Exit 0 if the file is a valid snapshot, 2 if not."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="snapshot file")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the section checksums (structure and header checksum are still checked)",
    )
    parser.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from kvmharness.exitcodes import EXIT_OK, EXIT_USAGE

    try:
        manifest = verify_snapshot(args.file) if args.verify else read_manifest(args.file)
    except SnapshotFormatError as exc:
        print(f"kvmharness snapshot inspect: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(manifest_to_json(manifest, verified=args.verify), indent=2))
    else:
        print(format_manifest(manifest, verified=args.verify))
    return EXIT_OK


def manifest_to_json(manifest: Manifest, *, verified: bool) -> dict[str, Any]:
    return {
        "file": manifest.name,
        "format_version": manifest.version,
        "writer": manifest.writer,
        "file_size": manifest.file_size,
        "header_length": manifest.header_length,
        "header_sha256": manifest.header_sha256,
        "checksums_verified": verified,
        "meta": manifest.meta,
        "sections": [
            {"name": s.name, "offset": s.offset, "length": s.length, "sha256": s.sha256}
            for s in manifest.sections
        ],
    }


def format_manifest(manifest: Manifest, *, verified: bool) -> str:
    total = sum(s.length for s in manifest.sections)
    lines = [
        f"{manifest.name}: kvmharness snapshot, format version {manifest.version}",
        f"written by: {manifest.writer or 'unknown'}",
        f"size: {manifest.file_size} bytes ({_human(manifest.file_size)}),"
        f" {len(manifest.sections)} sections holding {_human(total)}",
        "checksums: " + ("all verified" if verified else "header only (sections not verified)"),
        "",
    ]
    from kvmharness.snapshot.vmview import format_vcpus, is_vm_state

    vm_state = is_vm_state(manifest.meta)
    # a VM state's vCPUs are shown in full below, not as "[N items]"
    meta = {k: v for k, v in manifest.meta.items() if not (vm_state and k == "vcpus")}
    rows = list(_meta_rows(meta))
    if rows:
        lines.append(tabulate(rows, headers=["meta", "value"], disable_numparse=True))
    else:
        lines.append("(no metadata)")
    lines.append("")
    if manifest.sections:
        section_rows = [
            (s.name, s.offset, s.length, _human(s.length), s.sha256[:16]) for s in manifest.sections
        ]
        lines.append(
            tabulate(
                section_rows,
                headers=["section", "offset", "bytes", "size", "sha256"],
                colalign=("left", "right", "right", "right", "left"),
                disable_numparse=True,
            )
        )
    else:
        lines.append("(no sections)")
    if vm_state:
        lines += ["", format_vcpus(manifest)]
    return "\n".join(lines)


def _meta_rows(meta: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Scalars as rows; nested dicts flattened to dotted keys, lists summarised."""
    rows: list[tuple[str, str]] = []
    for key, value in meta.items():
        label = _printable(f"{prefix}{key}")
        if isinstance(value, dict):
            if depth + 1 < _MAX_DEPTH and value:
                rows.extend(_meta_rows(value, f"{label}.", depth + 1))
            else:
                rows.append((label, f"{{{len(value)} keys}}"))
        elif isinstance(value, list):
            rows.append((label, f"[{len(value)} items]"))
        else:
            rows.append((label, _scalar(key, value)))
    return rows


def _scalar(key: str, value: object) -> str:
    text = json.dumps(value) if value is None or isinstance(value, bool) else str(value)
    if (
        key.endswith("_unix")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value < 1e11
    ):
        stamp = dt.datetime.fromtimestamp(value, tz=dt.UTC).isoformat(timespec="seconds")
        text = f"{text} ({stamp})"
    text = _printable(text)
    if len(text) > _MAX_VALUE_WIDTH:
        text = text[: _MAX_VALUE_WIDTH - 3] + "..."
    return text


def _printable(text: str) -> str:
    """The file is untrusted: never send its control characters to the terminal."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _human(size: int) -> str:
    value, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
