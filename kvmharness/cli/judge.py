"""``kvmharness judge RUN.json``: re-judge a saved run with today's rules.

Every record in ``results[]`` of a ``kvmharness run --json`` (or ``bisect
--json``) file goes through :func:`kvmharness.judges.judge_record`, the same
judge the live run called on it; then the known issues (``--known FILE``,
default the file the package ships) are applied for the host the run was
taken on, and the same tables, summary line and exit code as ``run`` follow:

* 0 good, 1 a promise broke (or a known issue looks fixed), 125 cannot
  test (a promise went unjudged, a named scenario was not supported, nothing
  could be tested), 128 a scenario of the run errored (harness fault);
* 2: the file cannot be judged: unreadable, not JSON, not a run, a run of
  another schema, or a record its family's judge refuses.  ``judge`` is not a
  bisect step, so bad input is 2, not 128.

A record of a scenario that did not run to its end (it carries ``error``)
has nothing to re-judge when its family's judge refuses it: its recorded
verdict stands and is marked so.  Rows whose verdict differs from the one
recorded in the file are listed after the summary.  A family rebuilds its
own result for its table with ``from_record(record[, judgement])`` in its
scenario module (today's verdict, observed text and violations are set on
it); one that has no such hook, or whose hook fails on a record, has its
rows shown in a generic table.
``--json OUT`` writes the re-judged run, itself a run file ``judge`` reads;
``--plot FILE`` draws it as ``run --plot`` does (:mod:`kvmharness.plots`).
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import inspect
import json
import logging
import textwrap
from typing import Any

from kvmharness import __version__
from kvmharness.exitcodes import EXIT_OK, UsageError

log = logging.getLogger(__name__)


class RunFileError(UsageError):
    """A run file that cannot be judged (exit 2, one line)."""


def read_run(path: str) -> dict[str, Any]:
    """The run document in ``path`` (plain or gzip JSON), checked to be a run
    of this schema; :class:`RunFileError` names what is wrong."""
    from kvmharness.judges import SCHEMA_VERSION

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise RunFileError(f"{path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise RunFileError(f"{path}: a damaged gzip file ({exc})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunFileError(f"{path}: not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise RunFileError(
            f"{path}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        what = "no results[]" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise RunFileError(
            f"{path}: not a kvmharness run ({what}; give the file of `kvmharness run --json`)"
        )
    schema = doc.get("schema")
    if schema != SCHEMA_VERSION:
        written = (
            "has no schema (written before kvmharness 'judge' existed)"
            if schema is None
            else f"has schema {schema!r}"
        )
        raise RunFileError(
            f"{path}: this run {written}; this kvmharness judges schema "
            f"{SCHEMA_VERSION}: run the scenarios again to get records it can judge"
        )
    if not all(isinstance(r, dict) for r in doc["results"]):
        raise RunFileError(f"{path}: results[] holds something that is not a record")
    host = doc.get("host")
    if not isinstance(host, dict) or not all(
        isinstance(host.get(k), str) for k in ("kvm_backend", "kernel_release")
    ):
        raise RunFileError(
            f"{path}: the run has no host facts (host.kvm_backend, host.kernel_release)"
        )
    return doc


def _vcpus(record: dict[str, Any]) -> int:
    n = record.get("vcpus")
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    n = (record.get("config") or {}).get("vcpus")
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def _variant(record: dict[str, Any]) -> Any:
    """Today's declaration of the record's variant (its kind decides what the
    verdict counts for); the record's own for a variant no longer declared."""
    from kvmharness.scenarios.base import Kind, Variant, family

    fam, name = str(record.get("family")), str(record.get("variant"))
    try:
        declared = family(fam).variants.get(name)
    except KeyError:
        declared = None
    if declared is not None:
        return declared
    try:
        kind = Kind(record.get("kind"))
    except ValueError:
        kind = Kind.PROMISE  # unknown: judged as a promise, never excused as a characterization
    return Variant(name, kind, str(record.get("why") or ""))


def rebuild(record: dict[str, Any], judgement: Any) -> Any:
    """The family's own result for ``record`` (its ``from_record`` hook, checked
    to render in its table), or a :class:`kvmharness.report.RecordResult`."""
    from kvmharness.report import RecordResult
    from kvmharness.scenarios.base import FAMILY_MODULES, family

    fam = str(record.get("family"))
    if fam in FAMILY_MODULES:
        try:
            hook = getattr(importlib.import_module(FAMILY_MODULES[fam]), "from_record", None)
            if hook is not None:
                takes_judgement = len(inspect.signature(hook).parameters) >= 2
                res = hook(record, judgement) if takes_judgement else hook(record)
                # today's judgement, whatever the record says it was given
                res.verdict = judgement.verdict
                res.observed = judgement.observed
                res.violations = list(judgement.violations)
                family(fam).table([res], 0)  # it must show, or the generic row does
                return res
        except Exception as exc:  # a family that cannot show it: the generic row
            log.info("%s cannot rebuild its result from a record (%s): generic row", fam, exc)
    wall = record.get("wall_s")
    return RecordResult(
        family=fam,
        variant=_variant(record),
        vcpus=_vcpus(record),
        verdict=judgement.verdict,
        observed=judgement.observed,
        wall_s=float(wall) if isinstance(wall, int | float) else 0.0,
        violations=list(judgement.violations),
        record=record,
        notes=dict(judgement.notes),
    )


def _as_recorded(record: dict[str, Any], why: str) -> Any:
    """A record of a scenario that never produced data: its recorded verdict."""
    from kvmharness.judges import Judgement
    from kvmharness.scenarios.base import Verdict

    try:
        verdict = Verdict(record.get("verdict"))
    except ValueError:
        verdict = Verdict.ERROR
    if verdict not in (
        Verdict.ERROR,
        Verdict.UNTESTABLE,
        Verdict.NOT_SUPPORTED,
        Verdict.BROKEN,
    ):
        # it did not run to its end, yet says it held: nothing backs that
        raise UsageError(f"{why}; and its recorded verdict {verdict!r} has no data behind it")
    observed = str(record.get("observed") or record.get("error"))
    return Judgement(verdict, f"as recorded (not re-judged): {observed}", [], {})


def judge_run(doc: dict[str, Any], path: str = "<run>") -> list[Any]:
    """Every record of ``doc`` re-judged, as results the report shows."""
    from kvmharness.judges import RecordError, judge_record, read_record

    out = []
    for i, record in enumerate(doc["results"]):
        record = read_record(record)
        where = f"{path}: results[{i}] ({record.get('family')}/{record.get('variant')})"
        try:
            judgement = judge_record(record)
        except RecordError as exc:
            if record.get("error"):
                try:
                    judgement = _as_recorded(record, f"{where}: {exc}")
                except UsageError as inner:
                    raise RunFileError(str(inner)) from None
            else:
                raise RunFileError(f"{where}: {exc}") from None
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RunFileError(
                f"{where}: a record its judge cannot read ({type(exc).__name__}: {exc})"
            ) from None
        out.append(rebuild(record, judgement))
    return out


def _word(r: Any, m: Any) -> str:
    """The state a row is in: its verdict, or known-broken where an entry excused it."""
    return str(m.status) if m is not None and m.excused else str(r.verdict)


def _recorded_word(record: dict[str, Any]) -> str:
    k = record.get("known")
    if isinstance(k, dict) and k.get("status") == "known-broken":
        return "known-broken"
    from kvmharness.scenarios.base import state_word

    return state_word(str(record.get("verdict")))


def _named(doc: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    sel = doc.get("selection") or []
    try:
        # kvmharness 0.1 named postcopy's variants with their family (postcopy/stream)
        return [
            (str(s["item"]), [(str(f), str(v).removeprefix(f"{f}/")) for f, v in s["scenarios"]])
            for s in sel
        ]
    except (KeyError, TypeError, ValueError):
        raise RunFileError("the run's selection[] is not what `kvmharness run` writes") from None


def judge_cli(args: Any) -> int:
    from kvmharness.cli.run import (
        check_output_path,
        mark_known,
        print_report,
        verdict_fields,
        verdict_of,
    )
    from kvmharness.judges import SCHEMA_VERSION
    from kvmharness.known import Host, KnownIssuesError, load, match_known, scenario_id
    from kvmharness.report import write_json
    from kvmharness.table import terminal_width

    try:
        issues = load(args.known)
    except KnownIssuesError as exc:
        raise UsageError(f"--known: {exc}") from None
    if args.json:
        check_output_path(args.json, "--json")
    if getattr(args, "plot", None):
        from kvmharness.plots import check_plot_path

        check_plot_path(args.plot)
    doc = read_run(args.run)
    named = _named(doc)
    results = judge_run(doc, args.run)
    h = doc["host"]
    host = Host(h["kvm_backend"], h["kernel_release"], str(h.get("cpu_model") or ""))
    known = match_known(results, issues, host)
    mark_known(results, known)
    code, why = verdict_of(results, known, named)
    if args.json:
        write_json(
            args.json,
            {
                **{k: v for k, v in doc.items() if k != "results"},
                "schema": SCHEMA_VERSION,
                "kvmharness_version": __version__,
                "command": "judge",
                "judged": {
                    "file": args.run,
                    "command": doc.get("command"),
                    "kvmharness_version": doc.get("kvmharness_version"),
                    "exit_code": doc.get("exit_code"),
                },
                **verdict_fields(code, why, args.known, results, known),
            },
        )
    head = (
        f"kvmharness judge: {why} (exit {code}; {len(results)} records of a "
        f"{doc.get('command', 'run')} by kvmharness {doc.get('kvmharness_version', '?')} on "
        f"{host.backend} {host.kernel_release})"
    )
    print(
        head
        if args.wide
        else "\n".join(textwrap.wrap(head, terminal_width(), break_on_hyphens=False))
    )
    print_report(results, known, wide=args.wide, total_s=None)
    changed = [
        f"  {scenario_id(r.family, r.variant.name)}@{r.vcpus}: recorded {was}, today {now}"
        for r, m, rec in zip(results, known, doc["results"], strict=True)
        if (was := _recorded_word(rec)) != (now := _word(r, m))
    ]
    if changed:
        print(f"{len(changed)} verdict(s) differ from the ones recorded:")
        print("\n".join(changed))
    stopped = doc.get("interrupted")
    if isinstance(stopped, dict):
        print(
            f"the run was interrupted by {stopped.get('signal')} after "
            f"{stopped.get('finished')} of {stopped.get('planned')} scenarios: "
            "judged are those that finished"
        )
    recorded = doc.get("exit_code")
    if isinstance(recorded, int) and recorded != code:
        print(f"the run exited {recorded}; judged today it exits {code}")
    if getattr(args, "plot", None):
        from kvmharness.plots import plot_results

        plot_results(results, args.plot, [_word(r, m) for r, m in zip(results, known, strict=True)])
        print(f"plot of {len(results)} scenario(s): {args.plot}")
    return code


def register(sub: Any) -> None:
    p = sub.add_parser(
        "judge",
        help="re-judge a saved run (run --json) with today's rules "
        "(exit as run: 0 good, 1 broken, 125 cannot test, 128 harness fault; 2 bad input)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN.json", help="a file of `kvmharness run --json` (or .gz)")
    p.add_argument(
        "--known",
        metavar="FILE",
        help="known-issues file (TOML; default: the one kvmharness ships), applied for "
        "the host the run was taken on",
    )
    p.add_argument("--json", metavar="OUT", help="write the re-judged run as JSON ('-': stdout)")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="draw every record with the bound its judge holds it to and today's "
        "violations (.png, .svg or .pdf, from the suffix; needs matplotlib)",
    )
    p.add_argument(
        "--wide",
        action="store_true",
        help="every column, unwrapped (default: fit COLUMNS or the terminal, the verdict wrapped)",
    )
    p.set_defaults(func=judge_cli)


__all__ = ["EXIT_OK", "judge_cli", "judge_run", "read_run", "register"]
