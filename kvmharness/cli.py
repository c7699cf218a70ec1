"""The ``kvmharness`` command line.

Exit codes are chosen for ``git bisect run``: 0 every promise held (or the
command succeeded), 1 a promise broke / an anomaly was found, 2 bad usage or
bad input. Each subcommand lives in its own module and registers itself here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 as well; keep its format
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    # Imported lazily so a broken optional subcommand cannot break the others.
    from kvmharness import cli_commands

    return cli_commands.REGISTRARS


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kvmharness",
        description="Drive /dev/kvm to catch regressions in paravirtual time (steal time, "
        "kvmclock, TSC). Exit codes: 0 ok / every promise held, 1 a promise broke or an "
        "anomaly was found, 2 bad usage or input.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"kvmharness {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kvmharness: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader (e.g. `| head`) went away: not an error of ours
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
