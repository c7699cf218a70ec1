"""``kvmharness info``: the host facts (kernel, KVM backend, capabilities, ...)."""

from __future__ import annotations

import argparse
import json

from kvmharness.exitcodes import EXIT_OK


def run_cli(args: argparse.Namespace) -> int:
    from kvmharness.hostinfo import gather
    from kvmharness.table import fit_table, terminal_width

    info = gather(probe_sched=not args.no_probe, probe_clock=not args.no_probe)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
    else:
        rows = [[str(f), str(v)] for f, v in info.rows()]
        print(fit_table("info", ["fact", "value"], rows, terminal_width()))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print host facts (kernel, KVM backend, capabilities, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="skip the probes: sched_info (briefly pins busy children to one CPU) "
        "and kvmclock (runs one vCPU of a guest)",
    )
    p.set_defaults(func=run_cli)
