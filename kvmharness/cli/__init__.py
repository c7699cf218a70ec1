"""The ``kvmharness`` command line: ``main`` and the one way from an exception
to an exit code.  Each command is a module of this package with a
``register(subparsers)``; a command whose module fails to import is left
out with a warning, and the others still work.

Exit codes are chosen for ``git bisect run`` (see :mod:`kvmharness.exitcodes`):
0 good, 1 a promise broke (or procstat found an anomaly), 125 cannot test,
128 a harness fault, 128+N killed by signal N; 2 bad usage or input for the
commands no bisect runs.  Each subcommand lives in its own module and
registers itself here (:data:`COMMANDS`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from kvmharness import __version__
from kvmharness.exitcodes import (
    EXIT_BROKEN,
    EXIT_HARNESS,
    EXIT_OK,
    EXIT_UNTESTABLE,
    EXIT_USAGE,
    HarnessFault,
    Terminated,
    Untestable,
    UsageError,
    signal_exit,
)
from kvmharness.tools import TOOLS, run_tool

__all__ = [
    "EXIT_BROKEN",
    "EXIT_HARNESS",
    "EXIT_OK",
    "EXIT_UNTESTABLE",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
]


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _stack_dumps() -> None:
    """``KVMHARNESS_STACKS_AFTER=S``: print every thread's stack to stderr each S
    seconds, to see where a run inside a booted kernel is waiting."""
    import faulthandler
    import os

    after = os.environ.get("KVMHARNESS_STACKS_AFTER")
    if after:
        try:
            seconds = float(after)
        except ValueError:
            seconds = 0.0
        if seconds > 0:
            faulthandler.dump_traceback_later(seconds, repeat=True)


def plain_text(doc: str) -> str:
    """A docstring as --help shows it: reStructuredText roles and literals as
    plain words (``kvmharness run`` -> kvmharness run, :mod:`a.b` -> a.b,
    :func:`~a.f` -> f())."""
    import re

    def role(m: re.Match[str]) -> str:
        kind, target = m.group(1), m.group(2)
        if target.startswith("~"):
            target = target[1:].rsplit(".", 1)[-1]
        return target + ("()" if kind in ("func", "meth") else "")

    doc = re.sub(r":(\w+):`([^`]+)`", role, doc)
    return re.sub(r"``([^`]+)``", r"\1", doc)


class _Parser(argparse.ArgumentParser):
    usage_exit = EXIT_USAGE
    """Exit code for a bad command line: 2, or 128 for commands a bisect runs
    (``git bisect run`` reads 2 as "bad commit"; 128 aborts it instead)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        for key in ("description", "epilog", "help"):
            if isinstance(kwargs.get(key), str):
                kwargs[key] = plain_text(str(kwargs[key]))
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # keep argparse's format, choose the code
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit, f"{self.prog}: error: {message}\n")


COMMANDS = ("run", "judge", "info", "procstat", "snapshot", "postcopy", "sweep")
"""Command modules of this package, in --help order (``run`` also registers ``bisect``)."""


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    out = []
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"kvmharness.cli.{name}")
        except Exception as exc:  # one broken command must not take the others down
            logging.getLogger(__name__).warning("command %s unavailable: %s", name, exc)
            continue
        out.append(module.register)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kvmharness",
        description="Drive /dev/kvm to catch regressions in paravirtual time (steal time, "
        "kvmclock, TSC). Exit codes: 0 ok / every promise held, 1 a promise broke or an "
        "anomaly was found, 125 cannot test here, 128 harness fault (also bad usage of "
        "run and bisect), 2 bad usage or input of the other commands (judge included).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"kvmharness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for register in _registrars():
        register(sub)
    for name, (_module, help_text) in TOOLS.items():
        # the kernel tools parse their own arguments (`kvmharness NAME --help`)
        tool = sub.add_parser(name, help=help_text, add_help=False)
        tool.add_argument("tool_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:  # a kernel tool: its own options, exit codes, signals
        return run_tool(argv[0], argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in TOOLS:
        return run_tool(args.command, [*args.tool_args, *extra])
    if extra:  # reported with the subcommand's usage exit (128 for run and bisect)
        print(
            f"kvmharness {args.command}: error: unrecognized arguments: {' '.join(extra)}",
            file=sys.stderr,
        )
        return int(getattr(args, "usage_exit", EXIT_USAGE))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _stack_dumps()
    usage_exit = getattr(args, "usage_exit", EXIT_USAGE)
    on_main = threading.current_thread() is threading.main_thread()
    old_term = signal.getsignal(signal.SIGTERM)
    if on_main:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"kvmharness {args.command}: error: {exc}", file=sys.stderr)
        return usage_exit
    except Untestable as exc:
        print(f"kvmharness {args.command}: cannot test: {exc}", file=sys.stderr)
        return EXIT_UNTESTABLE
    except HarnessFault as exc:
        print(f"kvmharness {args.command}: harness fault: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    except KeyboardInterrupt:
        print("kvmharness: interrupted", file=sys.stderr)
        return signal_exit(signal.SIGINT)
    except Terminated:
        print("kvmharness: terminated (SIGTERM); cleaned up", file=sys.stderr)
        return signal_exit(signal.SIGTERM)
    except BrokenPipeError:
        # the reader (e.g. `| head`) went away: not an error of ours
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception:
        # Not the kernel's fault as far as we know: never exit 1 for it.
        traceback.print_exc()
        print(
            f"kvmharness {args.command}: harness fault (the traceback above is a bug of "
            "kvmharness or of its environment, not a verdict on the kernel)",
            file=sys.stderr,
        )
        return EXIT_HARNESS
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, old_term)
