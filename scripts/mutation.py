#!/usr/bin/env python3
"""Mutation testing of the judges: would the fast tests notice a judge getting weaker?

Runs mutmut (configured in pyproject.toml, ``[tool.mutmut]``) over the pure
judging code (``kvmharness/judges/``, ``checks``, ``pvclock``, ``blocktime``)
against the fast pure tests (no KVM, no subprocess: the files listed in
``pytest_add_cli_args_test_selection``), then prints a table of the score per
module and writes it as JSON.  A surviving mutant is either a gap in the
tests or equivalent to the original; the equivalent ones are listed, each
with its reason, in ``tests/mutation-survivors.txt`` (one ``NAME: reason``
line each), and are counted apart.

    .venv/bin/python scripts/mutation.py --module kvmharness/judges/clock.py
    .venv/bin/python scripts/mutation.py                 # every module (hours on two cores)
    .venv/bin/python scripts/mutation.py --report-only   # the table of the last runs
    .venv/bin/python scripts/mutation.py --json FILE     # also write the table as JSON

What keeps a run cheap:

* ``--module`` (repeatable) runs only that module's mutants (mutmut's
  ``run "kvmharness.judges.clock.x*"``); the table then shows that module.
  Results accumulate in ``mutants/`` (git-ignored), so modules can be run one
  at a time and ``--report-only`` shows them all.
* mutmut's first phase records which tests call each function (stats, kept
  in ``mutants/mutmut-stats.json`` and refreshed only for new tests); each
  mutant then runs only the tests that reach its function, stopping at the
  first failure (``-x``).  Only the pure test files are selected, and
  ``-m "not kvm"`` is passed, with ``KVMHARNESS_REQUIRE_KVM`` removed from the
  environment, so no test needs /dev/kvm.
* The run is niced (``--nice``, default 19) with one worker by default
  (``--max-children``): it is a background measurement on a shared machine.

Exit 0 when every module shown reaches --min-score (default 90) with the
listed equivalents left out; 1 otherwise; 128 when mutmut itself failed.
This is a measurement, not part of CI.

``--fast`` (with ``--module``) checks the module's mutants without
``mutmut run``'s per-mutant pytest start-up: mutmut only generates the
mutants (in ``mutants/``), then one pytest session (``scripts/mutation_fast.py``)
runs every selected test once to learn which functions it reaches, and checks
each mutant in a forked child that makes it active (mutmut's trampoline reads
the mutant's name at every call) and runs only the tests that reach its
function, fastest first (the test that killed the function's last mutant
first of all), up to the first failure.  The exit codes go into mutmut's
``mutants/<module>.meta``, so the table and ``mutmut results`` read them as
their own.  The session runs in a copy of the tree where only that module is
mutmut's mutated one: under ``mutants/`` every call of a checks or pvclock
function went through a trampoline too (9 times the judge's time), and
pytest's report of each kill parsed the 50,000-line mutated file (9 s; the
children print native tracebacks, to nowhere).  Measured on this two-core
host beside three other helpers: all 1,444 mutants of
kvmharness/judges/clock.py (``--recheck``) in 4 minutes (``--nice 10``; at
19 the run got almost no CPU beside un-niced work), where ``mutmut run`` had
checked 225 in 35 minutes.

By default only mutants not already killed are checked again (tests only
added kill more); ``--recheck`` checks every one, as after a change of the
module or of a test.  ``--tests`` narrows the tests (a quick pass: what they
kill is killed, so the score it gives is a lower bound; a survivor is
checked against the whole selection by a run without ``--tests``).
``MUTATION_FAST_PROFILE=DIR`` writes each child's cProfile to DIR.

    .venv/bin/python scripts/mutation.py --fast --module kvmharness/judges/clock.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SURVIVORS = ROOT / "tests" / "mutation-survivors.txt"
VENV_BIN = ROOT / ".venv" / "bin"

#: ``kvmharness.checks.x_check_rate__mutmut_12`` or ``kvmharness.checks.xǁClsǁmeth__mutmut_3``
_NAME = re.compile(r"^(?P<module>[\w.]+)\.x[_ǁ].*__mutmut_\d+$")


def parse_results(text: str) -> dict[str, str]:
    """``mutmut results --all true`` output as {mutant name: status}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and _NAME.match(name):
            out[name] = status.strip()
    return out


def load_equivalents(path: Path = SURVIVORS) -> dict[str, str]:
    """The surviving mutants judged equivalent: {name: reason}.  A line without
    a reason is refused: an equivalent mutant must say why it is one."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, reason = line.partition(": ")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}:{n}: '{line}' gives no reason why the mutant is equivalent")
        out[name.strip()] = reason.strip()
    return out


def score_table(results: dict[str, str], equivalents: dict[str, str]) -> list[dict]:
    """One row per module: killed, survived (gaps), equivalent, other, score %."""
    per: dict[str, Counter] = defaultdict(Counter)
    for name, status in results.items():
        module = _NAME.match(name)["module"]  # type: ignore[index]
        if status == "survived" and name in equivalents:
            status = "equivalent"
        per[module][status] += 1
    rows = []
    for module in sorted(per):
        c = per[module]
        # "no tests": no selected test reaches the function, a gap like a survivor
        judged = c["killed"] + c["survived"] + c["timeout"] + c["no tests"]
        rows.append(
            {
                "module": module,
                "killed": c["killed"] + c["timeout"],
                "survived": c["survived"],
                "no tests": c["no tests"],
                "equivalent": c["equivalent"],
                "not checked": sum(
                    v
                    for k, v in c.items()
                    if k not in ("killed", "survived", "timeout", "equivalent", "no tests")
                ),
                "score %": round(100.0 * (c["killed"] + c["timeout"]) / judged, 1)
                if judged
                else None,
            }
        )
    return rows


def module_glob(module: str) -> str:
    """``kvmharness/judges/clock.py`` (or ``kvmharness.judges.clock``) as the
    glob of its mutants' names, ``kvmharness.judges.clock.x*``; a package's
    ``__init__.py`` names its mutants after the package."""
    name = module.removesuffix(".py").replace("/", ".").strip(".")
    name = name.removesuffix(".__init__")
    return f"{name}.x*"


def module_of(glob: str) -> str:
    return glob.removesuffix(".x*")


def sync_unmutated(root: Path = ROOT) -> int:
    """Copy the package's files that mutmut does not mutate into ``mutants/``
    (where the tests import the package from), each only when it changed.
    mutmut's own ``also_copy`` of the whole package would overwrite its mutated
    files too and make it generate every module's mutants again at each run."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]
    mutated = [Path(p) for p in cfg["source_paths"]]
    copied = 0
    for src in sorted((root / "kvmharness").rglob("*")):
        rel = src.relative_to(root)
        if src.is_dir() or "__pycache__" in rel.parts:
            continue
        if any(rel == m or m in rel.parents for m in mutated):
            continue
        dst = root / "mutants" / rel
        st = src.stat()
        if dst.exists() and dst.stat().st_mtime == st.st_mtime and dst.stat().st_size == st.st_size:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied += 1
    return copied


def module_path(module: str) -> Path:
    """``kvmharness.judges.clock`` (or its path) as the path of its source file."""
    name = module_of(module_glob(module))
    path = Path(*name.split("."))
    return path / "__init__.py" if (ROOT / path).is_dir() else path.with_suffix(".py")


_GENERATE = """
import os
from mutmut.mutation.trampoline import set_mutant_under_test
set_mutant_under_test("mutant_generation")
import mutmut.__main__ as m
from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths
os.makedirs("mutants", exist_ok=True)
copy_src_dir()
copy_also_copy_files()
setup_source_paths()
m.store_lines_covered_by_tests()
m.create_mutants(1)
"""


def run_fast(
    module: str, *, nice: int, recheck: bool, tests: list[str] | None = None, root: Path = ROOT
) -> int:
    """Check ``module``'s mutants with scripts/mutation_fast.py (see the module
    docstring) and write their exit codes into mutmut's ``.meta`` file."""
    python = str(VENV_BIN / "python")
    pre = ["nice", "-n", str(nice)] if nice else []
    env = {k: v for k, v in os.environ.items() if k != "KVMHARNESS_REQUIRE_KVM"}
    # mutmut generates (or keeps, when unchanged) every configured module's mutants
    rc = subprocess.call([*pre, python, "-c", _GENERATE], cwd=root, env=env)
    if rc:
        print(f"mutation: generating the mutants failed ({rc})", file=sys.stderr)
        return 128
    # mutmut's mutants/ trampolines every mutated module: each call of a checks
    # or pvclock function pays it too (a clock record's judge took 9 times as
    # long).  The session runs in a copy of the tree where only ``module`` is
    # mutmut's mutated file, and the tests are today's.
    src = module_path(module)
    meta_path = root / "mutants" / (str(module_path(module)) + ".meta")
    meta = json.loads(meta_path.read_text())
    codes: dict[str, int | None] = meta["exit_code_by_key"]
    names = [n for n, c in codes.items() if recheck or c not in (1, 3, 36)]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]
    with tempfile.TemporaryDirectory(prefix="mutation-fast-") as tmp:
        tree = Path(tmp) / "tree"
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in ("kvmharness", "tests", "scripts", "cdefs", "examples", "findings"):
            if (root / name).is_dir():
                shutil.copytree(root / name, tree / name, ignore=skip)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, tree / name)
        shutil.copy2(root / "mutants" / src, tree / src)
        names_file, out_file = Path(tmp) / "names.json", Path(tmp) / "out.json"
        names_file.write_text(json.dumps(names))
        env.update(MUTATION_FAST_MUTANTS=str(names_file), MUTATION_FAST_OUT=str(out_file))
        cmd = [
            *pre,
            python,
            "-m",
            "pytest",
            "-p",
            "scripts.mutation_fast",
            *cfg["pytest_add_cli_args"],
            *(tests or cfg["pytest_add_cli_args_test_selection"]),
        ]
        cmd = [c for c in cmd if c != "-x"]
        try:
            rc = subprocess.call(cmd, cwd=tree, env=env)
        finally:  # interrupted: what was checked is kept
            out = json.loads(out_file.read_text()) if out_file.exists() else {}
            meta = json.loads(meta_path.read_text())
            meta["exit_code_by_key"].update(out)
            meta_path.write_text(json.dumps(meta, indent=4))
    if rc or len(out) != len(names):
        print(
            f"mutation: the fast run exited {rc} after {len(out)} of {len(names)} mutants",
            file=sys.stderr,
        )
    return 0 if rc == 0 and len(out) == len(names) else 128


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report-only", action="store_true", help="do not run mutmut")
    ap.add_argument("--json", metavar="FILE", help="write the table as JSON")
    ap.add_argument("--min-score", type=float, default=90.0)
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="PATH",
        help="run (and show) only this module's mutants, e.g. kvmharness/judges/clock.py",
    )
    ap.add_argument("--nice", type=int, default=19, help="niceness of the run (default 19)")
    ap.add_argument(
        "--fast",
        action="store_true",
        help="with --module: one pytest session, a forked child per mutant (see above)",
    )
    ap.add_argument(
        "--recheck", action="store_true", help="with --fast: check killed mutants again too"
    )
    ap.add_argument(
        "--tests",
        action="append",
        metavar="PATH",
        help="with --fast: only these test files or node ids (a quick first pass: a mutant "
        "they kill is killed; one they miss is checked again without --tests)",
    )
    args = ap.parse_args(argv)
    globs = [module_glob(m) for m in args.module]
    mutmut = VENV_BIN / "mutmut"
    if not mutmut.exists():
        print(
            "mutation: .venv has no mutmut; run scripts/bootstrap.sh (test extra)", file=sys.stderr
        )
        return 128
    if args.fast and not args.report_only:
        if not args.module:
            ap.error("--fast needs --module")
        for m in args.module:
            if run_fast(m, nice=args.nice, recheck=args.recheck, tests=args.tests):
                return 128
    elif not args.report_only:
        sync_unmutated()
        env = {k: v for k, v in os.environ.items() if k != "KVMHARNESS_REQUIRE_KVM"}
        cmd = [str(mutmut), "run", "--max-children", str(args.max_children), *globs]
        if args.nice:
            cmd = ["nice", "-n", str(args.nice), *cmd]
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        if rc not in (0, 1):
            print(f"mutation: mutmut run exited {rc}", file=sys.stderr)
            return 128
    text = subprocess.run(
        [str(mutmut), "results", "--all", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    rows = score_table(parse_results(text), load_equivalents())
    if globs:
        rows = [r for r in rows if r["module"] in {module_of(g) for g in globs}]
    if not rows:
        print("mutation: no mutmut results here (run without --report-only)", file=sys.stderr)
        return 128
    from tabulate import tabulate

    print(tabulate(rows, headers="keys"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    low = [r["module"] for r in rows if r["score %"] is None or r["score %"] < args.min_score]
    if low:
        print(f"below {args.min_score:g}%: {', '.join(low)}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
