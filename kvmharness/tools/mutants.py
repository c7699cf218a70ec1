"""Kernel mutants and the kill matrix (``kvmharness mutants``; ``scripts/mutants``).

Each mutant is a small patch (``tests/mutants/*.patch``) against Debian's
linux-source-6.1 that puts a known KVM bug back; where a series' code moved
(``--source 6.12``), ``tests/mutants/SERIES/NAME.patch`` is its port, the same
bug with the same header (Mutant, Must-catch), used for that series.  This module builds kvm.ko
and kvm-amd.ko out of tree for the unchanged source (the control) and for
every mutant, boots each build under QEMU through ``kvmharness bisect-kernel
--modules`` with ``kvmharness bisect --json`` inside, and prints the kill
matrix: a row per build, a column per promised scenario, each cell caught,
missed or error.  The control row must hold everywhere.

The patch header and the matrix rendering are pure and tested without KVM
or QEMU (tests/test_mutants.py); the rest downloads a kernel source and
boots kernels, so it is not part of CI.

Patch file format: ``Key: value`` lines (a value may go on over lines that
start with whitespace; ``#`` lines are comments), then the unified diff
(``--- a/arch/x86/kvm/...``), which ``patch`` reads past the header::

    Mutant: steal-last-steal-from-writer          (must equal the file name)
    Seed-bug: what real bug this puts back, and where it is described
    Puts-back: the code change, in words
    Must-catch: steal:fresh-vm/main-thread, steal:cross-process/main-thread
    Note: optional, e.g. why a scenario cannot see it
    Tcg-threads: optional, multi: boot this mutant under multi-threaded QEMU
      TCG (the host's CPUs in parallel; frozen boots retried), for a bug only a
      reader racing KVM's write can see; the control then also boots so, with
      the families of such mutants, so every cell of theirs has its control

A Must-catch item is ``FAMILY`` (every promise of the family), ``FAMILY:VARIANT``
or ``FAMILY:PREFIX`` (``steal:fresh-vm`` is every ``fresh-vm/...``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import filecmp
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kvmharness import procs
from kvmharness.exitcodes import EXIT_BROKEN, EXIT_HARNESS, EXIT_OK, EXIT_USAGE
from kvmharness.procs import Interrupted, end_group, signals_raise
from kvmharness.tools.bisect_kernel import vng_safe_name
from kvmharness.tools.home import checkout_root, kvmharness_command


def patches_dir() -> Path:
    """The mutants' patches: tests/mutants of the checkout this runs from, else
    the copy a wheel ships beside this module (``mutant_patches``)."""
    root = checkout_root()
    if root is not None and (root / "tests" / "mutants").is_dir():
        return root / "tests" / "mutants"
    return Path(__file__).resolve().parent / "mutant_patches"


DEFAULT_WORK = Path(os.environ.get("KVMHARNESS_MUTANTS_WORK", "/var/lib/kvmharness-mutants"))
#: Not under /var/cache, /var/tmp or /tmp: the booted guest shares the host's
#: root file system but mounts tmpfs over some of those.

#: Tools the build needs besides the kernel packages (which :class:`KernelSet` names).
BUILD_TOOLS = [
    "gcc-12",
    "make",
    "patch",
    "xz-utils",
    "binutils",
    "kmod",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
]


@dataclasses.dataclass(frozen=True)
class Series:
    """A Debian kernel source series the mutants can be built from: its
    ``linux-source-NAME`` package and the pattern of its headers packages'
    names (group 1 is the kernel release, ``uname -r`` of the matching image)."""

    name: str
    headers_re: str

    @property
    def source_pkg(self) -> str:
        return f"linux-source-{self.name}"

    @property
    def tarball(self) -> Path:
        return Path(f"/usr/src/linux-source-{self.name}.tar.xz")

    @property
    def top(self) -> str:
        return f"linux-source-{self.name}"


SERIES = {
    "6.1": Series("6.1", r"linux-headers-(6\.1\.0-[0-9]+-amd64)"),
    "6.12": Series("6.12", r"linux-headers-(6\.12\.[0-9]+\+deb[0-9]+-amd64)"),
}
DEFAULT_SERIES = "6.1"


@dataclasses.dataclass(frozen=True)
class KernelSet:
    """One Debian kernel build: the source, the headers the modules are built
    against and the image they are booted in, all of one package version
    (``6.1.192-3``), whose kernel release is ``release`` (``6.1.0-57-amd64``)."""

    series: Series
    version: str
    release: str
    usr_src: Path = Path("/usr/src")  # where the headers package puts its tree

    @property
    def headers_pkg(self) -> str:
        return f"linux-headers-{self.release}"

    @property
    def image_pkg(self) -> str:
        return f"linux-image-{self.release}"

    @property
    def headers(self) -> Path:
        return self.usr_src / f"linux-headers-{self.release}"

    @property
    def upstream(self) -> str:
        """``6.1.192`` of ``6.1.192-3``: what the source's Makefile says."""
        return self.version.split("-")[0]

    def apt_packages(self) -> list[str]:
        return [
            f"{self.series.source_pkg}={self.version}",
            f"{self.headers_pkg}={self.version}",
            *BUILD_TOOLS,
        ]

    def describe(self) -> str:
        return f"Debian {self.version} ({self.release}, {self.series.source_pkg})"


COPIED_DIRS = ("arch/x86/kvm", "virt/kvm")
#: Bump when the build recipe changes: it is part of every cache key.
RECIPE = "kbuild-oot-v1"

#: The kernel's own KVM selftests shown beside kvmharness (built from the same
#: source, run inside the booted kernel after ``kvmharness bisect``).
SELFTESTS = (
    "steal_time",
    "x86_64/kvm_clock_test",
    "x86_64/tsc_msrs_test",
    "system_counter_offset_test",
    "x86_64/kvm_pv_test",
)
SELFTEST_TIMEOUT_S = 120
KSFT_SKIP = 4

CONTROL = "control"
#: exit codes (kvmharness.exitcodes): 0 every mutant caught where it must be and the
#: control held; 1 a gap (a mutant missed) or a false alarm; 2 bad usage or a bad
#: patch header; 128 a build or boot gave no verdict, or the kernel parts disagree
EXIT_GAP = EXIT_BROKEN
EXIT_ERROR = EXIT_HARNESS

REQUIRED_KEYS = ("Mutant", "Seed-bug", "Puts-back", "Must-catch")
OPTIONAL_KEYS = ("Note", "Tcg-threads")
TCG_THREADS = ("single", "multi")
#: bisect-kernel retries of a boot under multi-threaded TCG, where nested
#: kernels sometimes freeze (bisect_kernel.TCG_SINGLE_ARGS)
MULTI_TCG_RETRIES = 2
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_SELECTOR_RE = re.compile(r"^[a-z][a-z0-9_-]*(:[a-z0-9][a-z0-9_./-]*)?$")


def log(msg: str) -> None:
    print(f"mutants: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# the patch file format


class HeaderError(ValueError):
    """A patch file whose header or diff does not follow the format."""


@dataclasses.dataclass(frozen=True)
class Selector:
    """One Must-catch item: a family, or a family and a variant name or prefix."""

    family: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Selector:
        text = text.strip()
        if not _SELECTOR_RE.match(text):
            raise HeaderError(
                f"bad Must-catch item {text!r}: write FAMILY or FAMILY:VARIANT "
                "(e.g. steal:fresh-vm/main-thread)"
            )
        fam, _, var = text.partition(":")
        return cls(fam, var or None)

    def matches(self, column: str) -> bool:
        fam, _, var = column.partition(":")
        if fam != self.family:
            return False
        if self.variant is None:
            return True
        return var == self.variant or var.startswith(self.variant + "/")

    def __str__(self) -> str:
        return self.family if self.variant is None else f"{self.family}:{self.variant}"


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    seed_bug: str
    puts_back: str
    must_catch: tuple[Selector, ...]
    note: str = ""
    diff: str = ""
    path: Path | None = None
    tcg_threads: str = "single"

    @property
    def files(self) -> list[str]:
        return diff_files(self.diff)

    def must(self, column: str) -> bool:
        return any(s.matches(column) for s in self.must_catch)

    def header(self) -> dict[str, Any]:
        root = checkout_root()
        return {
            "mutant": self.name,
            "seed_bug": self.seed_bug,
            "puts_back": self.puts_back,
            "must_catch": [str(s) for s in self.must_catch],
            "note": self.note,
            "tcg_threads": self.tcg_threads,
            "files": self.files,
            "patch": str(self.path.relative_to(root))
            if self.path and root and self.path.is_relative_to(root)
            else (str(self.path) if self.path else None),
        }


def _split_header(text: str) -> tuple[list[str], str]:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(("--- ", "diff ")):
            return [raw.rstrip("\n") for raw in lines[:i]], "".join(lines[i:])
    raise HeaderError("no unified diff (a line starting with '--- a/') after the header")


def diff_files(diff: str) -> list[str]:
    """The files a unified diff changes, as paths in the kernel tree."""
    out = []
    for line in diff.splitlines():
        if line.startswith("+++ "):
            p = line[4:].split("\t")[0].strip()
            out.append(p[2:] if p.startswith("b/") else p)
    return out


def parse_patch(text: str, path: Path | None = None) -> Mutant:
    """A mutant from a patch file's text; HeaderError says what is wrong."""
    head, diff = _split_header(text)
    fields: dict[str, str] = {}
    key: str | None = None
    for n, line in enumerate(head, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            key = None if not line.strip() else key
            continue
        if line[0] in " \t":
            if key is None:
                raise HeaderError(f"header line {n}: a continuation line with no key above it")
            fields[key] += " " + line.strip()
            continue
        k, sep, v = line.partition(":")
        canon = {x.lower(): x for x in REQUIRED_KEYS + OPTIONAL_KEYS}.get(k.strip().lower())
        if not sep or canon is None:
            raise HeaderError(
                f"header line {n}: expected one of "
                f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)} then ':', "
                f"got {line!r}"
            )
        if canon in fields:
            raise HeaderError(f"header line {n}: {canon} given twice")
        key = canon
        fields[key] = v.strip()
    missing = [k for k in REQUIRED_KEYS if not fields.get(k)]
    if missing:
        raise HeaderError(f"header lacks {', '.join(missing)}")
    name = fields["Mutant"]
    if not _NAME_RE.match(name) or name == CONTROL:
        raise HeaderError(
            f"Mutant name {name!r}: lower-case letters, digits and '-', not {CONTROL!r}"
        )
    if path is not None and path.stem != name:
        raise HeaderError(f"Mutant name {name!r} differs from the file name {path.name!r}")
    items = [s for s in fields["Must-catch"].split(",") if s.strip()]
    if not items:
        raise HeaderError("Must-catch names no scenario")
    selectors = tuple(Selector.parse(s) for s in items)
    files = diff_files(diff)
    if not files or "\n@@ " not in "\n" + diff:
        raise HeaderError("the diff changes no file (no '+++ b/...' and '@@' hunk)")
    for f in files:
        if not any(f.startswith(d + "/") for d in COPIED_DIRS):
            raise HeaderError(
                f"the diff changes {f}, outside {' and '.join(COPIED_DIRS)} "
                "(the only directories the out-of-tree build copies)"
            )
    tcg = fields.get("Tcg-threads", "single")
    if tcg not in TCG_THREADS:
        raise HeaderError(f"Tcg-threads {tcg!r}: write one of {', '.join(TCG_THREADS)}")
    return Mutant(
        name,
        fields["Seed-bug"],
        fields["Puts-back"],
        selectors,
        fields.get("Note", ""),
        diff,
        path,
        tcg,
    )


def load_mutants(patch_dir: Path | None = None, series: str | None = None) -> list[Mutant]:
    """The mutants of ``patch_dir`` (default :func:`patches_dir`), for the source
    ``series``: where ``patch_dir/SERIES/NAME.patch`` exists (a port of the
    mutant to that series' code), it stands in for ``patch_dir/NAME.patch``.
    A port puts the same bug back, so it must name the same Mutant and the
    same Must-catch; a port with no mutant of that name is refused."""
    base = patch_dir or patches_dir()
    ports = base / series if series else None
    out = []
    for p in sorted(base.glob("*.patch")):
        port = ports / p.name if ports is not None else None
        try:
            m = parse_patch(p.read_text(), p)
            if port is not None and port.is_file():
                ported = parse_patch(port.read_text(), port)
                if ported.must_catch != m.must_catch:
                    raise HeaderError(
                        f"its port {port} says Must-catch "
                        f"{', '.join(map(str, ported.must_catch))}, not "
                        f"{', '.join(map(str, m.must_catch))}: a port puts the same bug back"
                    )
                m = ported
        except HeaderError as exc:
            raise HeaderError(f"{p}: {exc}") from None
        out.append(m)
    if ports is not None and ports.is_dir():
        orphans = sorted(
            {q.name for q in ports.glob("*.patch")} - {p.name for p in base.glob("*.patch")}
        )
        if orphans:
            raise HeaderError(
                f"{ports}: {', '.join(orphans)} port(s) no mutant of {base} "
                "(a port replaces NAME.patch for its series)"
            )
    return out


# ---------------------------------------------------------------------------
# cells, rows and the matrix


CAUGHT, MISSED, ERROR, HOLDS, FALSE_ALARM = "caught", "missed", "error", "holds", "false alarm"
# the promise cannot be tested on this platform (e.g. frequency without
# KVM_CAP_TSC_CONTROL): no verdict either way, and no false alarm of the control
UNTESTABLE = "untestable"
# a lasting property of the host rules the promise out (no master clock, a
# capability absent): on the control no false alarm; on a mutant no kill, so a
# Must-catch cell that says it is a gap (a lost capability must not read green)
NOT_SUPPORTED = "not supported"
GREEN = {CAUGHT, HOLDS}


@dataclasses.dataclass
class Cell:
    state: str
    verdict: str = ""
    observed: str = ""
    runs: int = 1
    hits: int = 0  # runs that caught it (mutant) or that broke it (control)


@dataclasses.dataclass
class Row:
    name: str
    cells: dict[str, Cell]
    exit_codes: list[int]
    mutant: Mutant | None = None
    build_s: float | None = None
    boot_s: list[float] = dataclasses.field(default_factory=list)
    step_s: list[float] = dataclasses.field(default_factory=list)
    error: str = ""

    @property
    def is_control(self) -> bool:
        return self.mutant is None

    def gaps(self, columns: Sequence[str], red: Sequence[str] = ()) -> list[str]:
        """Must-catch columns this mutant was not caught in (errors included); a
        catch where the control is not green proves nothing and is a gap too."""
        if self.mutant is None:
            return []
        out = [
            c + (" (control not green)" if c in red else "")
            for c in columns
            if self.mutant.must(c) and (c in red or self.cells.get(c, Cell(ERROR)).state != CAUGHT)
        ]
        return out + [
            f"{s} (not run)"
            for s in self.mutant.must_catch
            if not any(s.matches(c) for c in columns)
        ]

    def status(self, columns: Sequence[str], red: Sequence[str] = ()) -> str:
        """One word for the row: ok, or what is wrong."""
        if self.error and not self.cells:
            return f"error: {self.error}"
        if self.is_control:
            bad = [
                c
                for c in columns
                if self.cells.get(c, Cell(ERROR)).state not in (HOLDS, UNTESTABLE, NOT_SUPPORTED)
            ]
            return "ok" if not bad else f"NOT GREEN: {', '.join(bad)}"
        gaps = self.gaps(columns, red)
        return "ok" if not gaps else f"GAP: {', '.join(gaps)}"


def columns_of(results: Iterable[dict[str, Any]]) -> list[str]:
    """``family:variant`` of each promise in a ``kvmharness bisect --json`` result list."""
    out = []
    for r in results:
        if r.get("kind", "promise") != "promise":
            continue
        fam = r.get("family") or r.get("scenario") or "?"  # schema 2 names the family
        var = str(r.get("variant") or r.get("strategy") or "?")
        col = f"{fam}:{var.removeprefix(f'{fam}/')}"  # 0.1 wrote postcopy/stream
        if col not in out:
            out.append(col)
    return out


def cells_from_bisect(doc: dict[str, Any] | None, *, control: bool) -> dict[str, Cell]:
    """One boot's cells from its ``kvmharness bisect --json`` document."""
    cells: dict[str, Cell] = {}
    if not doc:
        return cells
    for r in doc.get("results", []):
        cols = columns_of([r])
        if not cols:
            continue
        verdict = str(r.get("verdict", ""))
        verdict = {"BROKEN": "broken", "ERROR": "harness error"}.get(verdict, verdict)
        if verdict == "broken":
            state = FALSE_ALARM if control else CAUGHT
        elif verdict == "holds":
            state = HOLDS if control else MISSED
        elif verdict == "untestable":
            state = UNTESTABLE
        elif verdict == "not supported":
            state = NOT_SUPPORTED
        else:
            state = ERROR
        cell = Cell(
            state,
            verdict,
            str(r.get("observed") or r.get("error") or ""),
            hits=int(verdict == "broken"),
        )
        cells[cols[0]] = merge_cells([cells[cols[0]], cell]) if cols[0] in cells else cell
    for s in doc.get("selftests", []):
        cells[f"selftest:{s['name']}"] = selftest_cell(s, control=control)
    return cells


def selftest_cell(s: dict[str, Any], *, control: bool) -> Cell:
    """A kernel selftest's cell: exit 0 passes, 4 (KSFT_SKIP) skips, a timeout,
    a signal (negative) or a missing binary (-1) is an error, any other exit a
    failure (TEST_ASSERT exits 254)."""
    rc = s.get("exit")
    tail = str(s.get("tail", ""))[-200:]
    if rc == 0:
        return Cell(HOLDS if control else MISSED, "pass", tail)
    if rc is None or rc < 0 or rc == KSFT_SKIP:
        what = "skip" if rc == KSFT_SKIP else ("timeout" if rc is None else f"exit {rc}")
        return Cell(ERROR, what, tail)
    return Cell(FALSE_ALARM if control else CAUGHT, f"fail ({rc})", tail, hits=1)


def merge_cells(cells: Sequence[Cell]) -> Cell:
    """Several boots of one build: a mutant is caught if any boot caught it; the
    control is a false alarm if any boot broke it."""
    runs = sum(c.runs for c in cells)
    hits = sum(c.hits for c in cells)
    states = [c.state for c in cells]
    for want in (CAUGHT, FALSE_ALARM, MISSED, HOLDS, UNTESTABLE, NOT_SUPPORTED):
        if want in states:
            first = next(c for c in cells if c.state == want)
            return Cell(want, first.verdict, first.observed, runs, hits)
    return Cell(ERROR, cells[0].verdict, cells[0].observed, runs, hits)


def red_columns(rows: Sequence[Row], columns: Sequence[str]) -> list[str]:
    """Columns where the control row (if any) did not hold: nothing there is a kill."""
    ctl = next((r for r in rows if r.is_control), None)
    if ctl is None:
        return []
    return [c for c in columns if ctl.cells.get(c, Cell(ERROR)).state != HOLDS]


def cell_text(cell: Cell | None, must: bool, red: bool = False) -> str:
    if cell is None:
        return "-"
    text = cell.state
    if red and cell.state == CAUGHT:
        text = "caught (ctl red)"
    if cell.state == MISSED and must:
        text = "MISSED"
    elif cell.state == ERROR and cell.verdict:
        text = f"error ({cell.verdict})"
    if cell.runs > 1 and cell.state in (CAUGHT, FALSE_ALARM):
        text += f" {cell.hits}/{cell.runs}"
    return text + ("*" if must else "")


def _column_header(col: str) -> str:
    fam, _, var = col.partition(":")
    parts = var.split("/")
    return fam + "\n" + "/\n".join(parts)


def render_matrix(
    rows: Sequence[Row], columns: Sequence[str] | None = None, tablefmt: str = "simple"
) -> str:
    """The kill matrix as text: a row per build, a column per scenario, plus
    the bisect exit codes and the row's status.  ``*`` marks Must-catch cells."""
    from tabulate import tabulate

    cols = list(columns) if columns is not None else matrix_columns(rows)
    red = red_columns(rows, cols)
    body = []
    for r in rows:
        line = [r.name]
        for c in cols:
            line.append(
                cell_text(
                    r.cells.get(c),
                    bool(r.mutant and r.mutant.must(c)),
                    red=r.mutant is not None and c in red,
                )
            )
        line.append(",".join(str(e) for e in r.exit_codes) or "-")
        line.append(r.status(cols, red))
        body.append(line)
    if tablefmt == "github":  # one header line: the variant, its family where they differ
        fams = {c.partition(":")[0] for c in cols}
        heads = [(c if len(fams) > 1 else c.partition(":")[2]).replace("/", "/ ") for c in cols]
    else:
        heads = [_column_header(c) for c in cols]
    headers = ["build", *heads, "exit", "status"]
    legend = (
        "caught: a promise broke on the mutant; missed: it held; holds: the control "
        "kept it;\n* the mutant's header says this scenario must catch it "
        "(MISSED: it did not);\ncaught (ctl red): the control broke there too, so it "
        "proves nothing"
    )
    return tabulate(body, headers=headers, tablefmt=tablefmt) + "\n" + legend


def matrix_columns(rows: Sequence[Row]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for c in r.cells:
            if c not in cols:
                cols.append(c)
    return cols


def matrix_exit(rows: Sequence[Row], columns: Sequence[str] | None = None) -> int:
    cols = list(columns) if columns is not None else matrix_columns(rows)
    if any(r.error and not r.cells for r in rows):
        return EXIT_ERROR
    red = red_columns(rows, cols)
    if any(r.status(cols, red) != "ok" for r in rows):
        return EXIT_GAP
    return EXIT_OK


def matrix_json(rows: Sequence[Row], meta: dict[str, Any]) -> dict[str, Any]:
    cols = matrix_columns(rows)
    return {
        **meta,
        "columns": cols,
        "exit": matrix_exit(rows, cols),
        "rows": [
            {
                "build": r.name,
                "mutant": r.mutant.header() if r.mutant else None,
                "status": r.status(cols, red_columns(rows, cols)),
                "exit_codes": r.exit_codes,
                "build_s": r.build_s,
                "boot_s": r.boot_s,
                "step_s": r.step_s,
                "error": r.error,
                "cells": {c: dataclasses.asdict(v) for c, v in r.cells.items()},
            }
            for r in rows
        ],
    }


def rows_from_json(doc: dict[str, Any], mutants: Sequence[Mutant] = ()) -> list[Row]:
    """Rows back from :func:`matrix_json` (for ``--render``)."""
    by_name = {m.name: m for m in mutants}
    rows = []
    for d in doc["rows"]:
        m = None
        if d.get("mutant"):
            h = d["mutant"]
            m = by_name.get(d["build"]) or Mutant(
                d["build"],
                h.get("seed_bug", ""),
                h.get("puts_back", ""),
                tuple(Selector.parse(s) for s in h.get("must_catch", [])),
                h.get("note", ""),
            )
        rows.append(
            Row(
                d["build"],
                {c: Cell(**v) for c, v in d["cells"].items()},
                list(d.get("exit_codes", [])),
                m,
                d.get("build_s"),
                list(d.get("boot_s", [])),
                list(d.get("step_s", [])),
                d.get("error", ""),
            )
        )
    return rows


def rescore(run_dir: Path, rows: Sequence[Row]) -> list[Row]:
    """Cells computed afresh from the boots' saved ``bisect-NAME-N.json`` where a
    run directory has them (a rule changed since the run); saved cells otherwise."""
    out = []
    for r in rows:
        docs = [
            json.loads(p.read_text())
            for p in sorted(run_dir.glob(f"bisect-{r.name}-*.json"))
            if re.fullmatch(rf"bisect-{re.escape(r.name)}-\d+\.json", p.name)
        ]
        if docs:
            per = [cells_from_bisect(d, control=r.is_control) for d in docs]
            cols = matrix_columns([Row("", c, []) for c in per])
            r = dataclasses.replace(
                r, cells={c: merge_cells([pb[c] for pb in per if c in pb]) for c in cols}
            )
        out.append(r)
    return out


# ---------------------------------------------------------------------------
# processes: every child is ended on every path, SIGTERM included


class BuildError(Exception):
    pass


def run_child(
    cmd: Sequence[str],
    *,
    log_path: Path,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    self_cleaning: bool = False,
) -> int:
    """Run cmd in its own session with output to log_path; end it (and its group)
    on timeout or when we are interrupted.  Returns its exit status, or -1 on timeout.

    ``self_cleaning``: the child handles SIGTERM by cleaning up (bisect-kernel
    kills its VM and removes its temp dir), so it gets SIGTERM alone first and
    time to do that."""
    with open(log_path, "ab") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n".encode())
        out.flush()
        done = procs.run(
            cmd,
            timeout=timeout,
            output=out,
            cwd=cwd,
            env=env,
            grace=60.0 if self_cleaning else 5.0,
            term_group=not self_cleaning,
        )
        if done.timed_out:
            out.write(f"\nmutants: timeout after {timeout:.0f} s: ending it\n".encode())
            return -1
        return done.status


# ---------------------------------------------------------------------------
# one Debian kernel version for the source, the headers and the image


class VersionError(Exception):
    """The source, headers and image are not of one Debian kernel version, or
    no such version can be found."""


def parse_policy(text: str) -> tuple[str | None, str | None]:
    """(installed, candidate) from ``apt-cache policy PKG``; None for (none)."""
    got: dict[str, str | None] = {"Installed": None, "Candidate": None}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key in got and got[key] is None:
            v = value.strip()
            got[key] = None if v in ("", "(none)") else v
    return got["Installed"], got["Candidate"]


def parse_versions(text: str) -> dict[str, set[str]]:
    """package -> versions, from ``apt-cache madison`` lines (``pkg | ver | src``)
    or ``dpkg-query -W`` lines (``pkg ver``)."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = [x.strip() for x in line.split("|")] if "|" in line else line.split()
        if len(parts) >= 2 and parts[0] and parts[1]:
            out.setdefault(parts[0], set()).add(parts[1])
    return out


def release_for(series: Series, version: str, versions: dict[str, set[str]]) -> str:
    """The kernel release whose headers package (of ``series``) has ``version``."""
    found = sorted(
        m.group(1)
        for pkg, vers in versions.items()
        if (m := re.fullmatch(series.headers_re, pkg)) and version in vers
    )
    if not found:
        near = sorted(
            f"{pkg} {v}"
            for pkg, vers in versions.items()
            if re.fullmatch(series.headers_re, pkg)
            for v in vers
        )
        raise VersionError(
            f"no headers package of version {version} for {series.source_pkg}: the "
            f"mirror and dpkg have {', '.join(near[-4:]) or 'none'}; "
            "apt-get update, or choose one with --kernel-version"
        )
    if len(found) > 1:
        raise VersionError(f"version {version} names several releases: {', '.join(found)}")
    return found[0]


class Apt:
    """The package queries :func:`find_kernel_set` makes (a fake in the tests)."""

    def _out(self, *cmd: str) -> str:
        try:
            r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return r.stdout if r.returncode == 0 else ""

    def policy(self, pkg: str) -> tuple[str | None, str | None]:
        return parse_policy(self._out("apt-cache", "policy", pkg))

    def versions(self, prefix: str) -> dict[str, set[str]]:
        """Every version the mirror (madison) or dpkg has of packages named PREFIX*."""
        names = [n for n in self._out("apt-cache", "pkgnames", prefix).split() if n]
        out = parse_versions(self._out("apt-cache", "madison", *names)) if names else {}
        for pkg, vers in parse_versions(
            self._out("dpkg-query", "-W", "-f=${Package} ${Version}\n", prefix + "*")
        ).items():
            out.setdefault(pkg, set()).update(vers)
        return out


def find_kernel_set(
    series: Series, version: str | None = None, apt: Apt | None = None
) -> KernelSet:
    """The Debian kernel build to use: ``version`` if given, else the version of
    ``linux-source-SERIES`` the package lists offer (the installed one without
    lists), and the release (ABI) whose headers package has that same version."""
    apt = apt or Apt()
    if version is None:
        installed, candidate = apt.policy(series.source_pkg)
        version = candidate or installed
        if not version:
            raise VersionError(
                f"{series.source_pkg} is neither installed nor in the package lists "
                "(apt-get update?)"
            )
    return KernelSet(
        series, version, release_for(series, version, apt.versions(f"linux-headers-{series.name}."))
    )


@dataclasses.dataclass(frozen=True)
class Found:
    """What one part (source, headers, image) turned out to be."""

    what: str
    version: str | None
    release: str | None = None  # None: the part names no release


def check_kernel_set(kset: KernelSet, found: Sequence[Found]) -> None:
    """Refuse (VersionError) unless every part is of ``kset``'s Debian version
    and, where it names one, of its release: modules built against other
    headers do not load, or load into a kernel they were not built for."""
    bad = [f for f in found if f.version != kset.version or f.release not in (None, kset.release)]
    if not bad:
        return
    lines = [
        f"  {f.what}: {f.release or '-'}, Debian {f.version or '(unknown)'}"
        + ("  <- differs" if f in bad else "")
        for f in found
    ]
    raise VersionError(
        f"refusing to build or boot: the kernel source, headers and image must be of one "
        f"Debian kernel version, here {kset.describe()}:\n"
        + "\n".join(lines)
        + f"\nfix: apt-get install {kset.series.source_pkg}={kset.version} "
        f"{kset.headers_pkg}={kset.version}; for the image, leave out --kernel (the "
        f"{kset.image_pkg}={kset.version} package is fetched) or give one of that "
        "version; or pick another version with --kernel-version"
    )


def image_version(path: Path) -> tuple[str | None, str | None]:
    """(release, Debian version) from a bzImage's kernel_version string (setup
    header ``HdrS``, pointer at 0x20e), e.g. ``6.1.0-57-amd64 (...) #1 SMP
    PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)``."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x10000)
    except OSError:
        return None, None
    if head[0x202:0x206] != b"HdrS" or len(head) < 0x210:
        return None, None
    off = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    text = head[off : off + 256].split(b"\0")[0].decode(errors="replace")
    m = re.search(r"\bDebian (\S+)", text)
    return (text.split()[0] if text.strip() else None), (m.group(1) if m else None)


def headers_version(headers: Path) -> tuple[str | None, str | None]:
    """(release, Debian version) of a headers tree, from its generated
    utsrelease.h and package.h (``LINUX_PACKAGE_ID " Debian 6.1.192-3"``)."""
    gen = headers / "include" / "generated"
    rel = ver = None
    with contextlib.suppress(OSError):
        m = re.search(r'UTS_RELEASE\s+"([^"]+)"', (gen / "utsrelease.h").read_text())
        rel = m.group(1) if m else None
    with contextlib.suppress(OSError):
        m = re.search(r'LINUX_PACKAGE_ID\s+"\s*Debian\s+([^"\s]+)', (gen / "package.h").read_text())
        ver = m.group(1) if m else None
    return rel, ver


def source_makefile_version(makefile: str) -> str | None:
    """``6.1.192`` from a kernel Makefile's VERSION, PATCHLEVEL and SUBLEVEL."""
    vals = {
        k: m.group(1)
        for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")
        if (m := re.search(rf"^{k}\s*=\s*(\d+)", makefile, re.M))
    }
    if len(vals) < 3:
        return None
    return f"{vals['VERSION']}.{vals['PATCHLEVEL']}.{vals['SUBLEVEL']}"


# ---------------------------------------------------------------------------
# building


def ensure_packages(kset: KernelSet) -> None:
    """apt-get the source and headers of ``kset``'s version and the build tools, as
    root, where they are missing or of another version."""
    src_ver = installed_version(kset.series.source_pkg)
    hdr_ver = installed_version(kset.headers_pkg)
    need_tools = any(
        shutil.which(t) is None for t in ("make", "patch", "gcc-12", "strip", "xz", "modinfo")
    )
    if not (
        need_tools
        or src_ver != kset.version
        or hdr_ver != kset.version
        or not kset.series.tarball.exists()
        or not (kset.headers / "Makefile").exists()
    ):
        return
    pkgs = kset.apt_packages()
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BuildError(f"need {', '.join(pkgs)} installed (apt-get, as root)")
    log(f"installing {' '.join(pkgs)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
    ):
        if subprocess.run(cmd, stdout=sys.stderr, env=env).returncode != 0:
            raise BuildError(f"{shlex.join(cmd)} failed")


def installed_version(pkg: str) -> str | None:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status} ${Version}", pkg], capture_output=True, text=True
    )
    words = r.stdout.split()
    if r.returncode != 0 or "installed" not in words[:3] or len(words) < 4:
        return None
    return words[-1]


def check_build_parts(kset: KernelSet) -> None:
    """Refuse unless the installed source and headers are of ``kset``."""
    rel, ver = headers_version(kset.headers)
    check_kernel_set(
        kset,
        [
            Found(f"source {kset.series.source_pkg}", installed_version(kset.series.source_pkg)),
            Found(f"headers package {kset.headers_pkg}", installed_version(kset.headers_pkg)),
            Found(f"headers tree {kset.headers}", ver, rel),
        ],
    )


def unpack_source(work: Path, kset: KernelSet) -> Path:
    """The pristine copy of the two KVM directories (13 s once), checked against
    the version's upstream release (the source Makefile)."""
    base = work / kset.series.name
    pristine = base / "src" / kset.series.top
    stamp = base / "src" / ".unpacked"
    if stamp.exists() and stamp.read_text() == kset.version:
        return pristine
    shutil.rmtree(base / "src", ignore_errors=True)
    (base / "src").mkdir(parents=True)
    log(f"unpacking {kset.series.tarball} ({', '.join(COPIED_DIRS)})")
    top = kset.series.top
    subprocess.run(
        [
            "tar",
            "-C",
            str(base / "src"),
            "-xf",
            str(kset.series.tarball),
            f"{top}/Makefile",
            *[f"{top}/{d}" for d in COPIED_DIRS],
        ],
        check=True,
    )
    up = source_makefile_version((pristine / "Makefile").read_text())
    if up != kset.upstream:
        raise VersionError(
            f"{kset.series.tarball} is Linux {up}, but {kset.describe()} is {kset.upstream}"
        )
    stamp.write_text(kset.version)
    return pristine


def kbuild_text(tree: Path, makefile: str) -> str:
    """arch/x86/kvm/Makefile with $(srctree) paths pointed at the copy, plus an
    include path from which trace.h's TRACE_INCLUDE_PATH ../../arch/x86/kvm
    resolves."""
    text = makefile.replace("$(srctree)/arch/x86/kvm", f"{tree}/arch/x86/kvm")
    text = text.replace("$(srctree)/virt/kvm", f"{tree}/virt/kvm")
    return (
        text + f"\n# kvmharness mutants: out-of-tree build\nccflags-y += -I {tree}/include/trace\n"
    )


def sync_tree(pristine: Path, tree: Path) -> list[str]:
    """Make the build tree's sources equal to the pristine copy again, touching
    only files that differ (so make rebuilds exactly the objects a previous
    mutant changed).  Returns the files restored."""
    restored = []
    for d in COPIED_DIRS:
        for src in sorted((pristine / d).rglob("*")):
            if not src.is_file():
                continue
            rel = src.relative_to(pristine)
            dst = tree / rel
            if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)  # a new mtime: make sees the change
            restored.append(str(rel))
    (tree / "include" / "trace").mkdir(parents=True, exist_ok=True)
    kb = tree / "arch/x86/kvm/Kbuild"
    want = kbuild_text(tree, (pristine / "arch/x86/kvm/Makefile").read_text())
    if not kb.exists() or kb.read_text() != want:
        kb.write_text(want)
    return restored


def cache_key(mutant: Mutant | None, kset: KernelSet) -> str:
    h = hashlib.sha256(f"{RECIPE}\0{kset.series.name}\0{kset.release}\0{kset.version}\0".encode())
    h.update((mutant.diff if mutant else "").encode())
    return h.hexdigest()[:12]


def build(
    mutant: Mutant | None, work: Path, kset: KernelSet, *, jobs: int, timeout: float
) -> tuple[Path, float]:
    """kvm.ko and kvm-amd.ko for the control (None) or a mutant, stripped, in a
    cache directory named by the patch's content.  Returns (dir, build seconds;
    0 for a cache hit)."""
    name = mutant.name if mutant else CONTROL
    out = work / "builds" / f"{name}-{cache_key(mutant, kset)}"
    if (out / "kvm.ko").exists() and (out / "kvm-amd.ko").exists():
        return out, 0.0
    pristine = unpack_source(work, kset)
    tree = work / kset.series.name / "tree"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"build-{name}.log"
    log_path.write_text("")
    t0 = time.monotonic()
    with open(work / "tree.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        restored = sync_tree(pristine, tree)
        if restored:
            log(f"{name}: {len(restored)} file(s) put back to the pristine source")
        if mutant is not None:
            pf = work / "logs" / f"{name}.patch"
            pf.write_text(mutant.diff)
            r = subprocess.run(
                [
                    "patch",
                    "-p1",
                    "--forward",
                    "--batch",
                    "--no-backup-if-mismatch",
                    "-d",
                    str(tree),
                    "-i",
                    str(pf),
                ],
                capture_output=True,
                text=True,
            )
            with open(log_path, "a") as f:
                f.write(r.stdout + r.stderr)
            if r.returncode != 0:
                sync_tree(pristine, tree)
                raise BuildError(
                    f"{name}: the patch does not apply to {kset.describe()}: "
                    f"{(r.stdout + r.stderr).strip()[-300:]}"
                )
        rc = run_child(
            [
                "make",
                "-C",
                str(kset.headers),
                f"M={tree}/arch/x86/kvm",
                "CONFIG_KVM_INTEL=",
                f"-j{jobs}",
                "modules",
            ],
            log_path=log_path,
            timeout=timeout,
        )
        if rc != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
            raise BuildError(
                f"{name}: make failed (exit {rc}; {log_path}):\n  " + "\n  ".join(tail)
            )
        (work / "builds").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=work / "builds"))
        try:
            for ko in ("kvm.ko", "kvm-amd.ko"):
                subprocess.run(
                    [
                        "strip",
                        "--strip-debug",
                        "-o",
                        str(tmp / ko),
                        str(tree / "arch/x86/kvm" / ko),
                    ],
                    check=True,
                )
            (tmp / "build.json").write_text(
                json.dumps(
                    {
                        "build": name,
                        "source": f"{kset.series.source_pkg} {kset.version}",
                        "release": kset.release,
                        "version": kset.version,
                        "recipe": RECIPE,
                        "patch": mutant.diff if mutant else None,
                    },
                    indent=2,
                )
                + "\n"
            )
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out, time.monotonic() - t0


# ---------------------------------------------------------------------------
# booting


def find_image(work: Path, given: Path | None, kset: KernelSet) -> Path:
    """The kernel image to boot the modules in: --kernel, else Debian's image of
    ``kset``'s version extracted under WORK (hard links from
    /var/cache/kvmharness-kernels where a bisect-kernel user left it,
    else apt-get download).  Refused (VersionError) unless its kernel_version
    string names ``kset``'s release and Debian version."""
    image = given if given is not None else _fetch_image(work, kset)
    rel, ver = image_version(image)
    check_kernel_set(kset, [Found(f"image {image}", ver, rel or "(not a bzImage)")])
    return image


def image_dir_name(pkg: str, version: str) -> str:
    """PKG_VERSION as a folder vng takes in a --rodir path: the image's
    modules are mounted from it."""
    return vng_safe_name(f"{pkg}_{version}")


def _fetch_image(work: Path, kset: KernelSet) -> Path:
    tree = work / "images" / image_dir_name(kset.image_pkg, kset.version)
    image = tree / "boot" / f"vmlinuz-{kset.release}"
    if image.exists() and image_version(image) == (kset.release, kset.version):
        return image
    cached = Path("/var/cache/kvmharness-kernels") / kset.image_pkg
    cimage = cached / "boot" / f"vmlinuz-{kset.release}"
    if image_version(cimage) == (kset.release, kset.version):
        shutil.rmtree(tree, ignore_errors=True)
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(cached), str(tree)], check=True)
        return image
    log(f"downloading {kset.image_pkg}={kset.version} (apt-get download) into {tree}")
    shutil.rmtree(tree, ignore_errors=True)
    tree.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mutants-image-", dir=tree.parent) as d:
        subprocess.run(
            ["apt-get", "download", f"{kset.image_pkg}={kset.version}"],
            cwd=d,
            check=True,
            stdout=sys.stderr,
        )
        debs = list(Path(d).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(d) / "x")], check=True)
        (Path(d) / "x").rename(tree)
    return image


@dataclasses.dataclass
class Boot:
    exit_code: int
    doc: dict[str, Any] | None
    boot_s: float | None
    step_s: float
    log: Path
    tcg_threads: str = "single"


def boot(
    modules: Path,
    image: Path,
    name: str,
    run_dir: Path,
    *,
    timeout: float,
    bisect_args: Sequence[str],
    attempt: int,
    selftests: Path | None = None,
    tcg_threads: str = "single",
) -> Boot:
    tag = f"{name}-{attempt}" + ("-mttcg" if tcg_threads == "multi" else "")
    log_path = run_dir / f"boot-{tag}.log"
    with tempfile.TemporaryDirectory(prefix="mutants-boot-") as d:
        out = Path(d) / "bisect.json"
        timing = Path(d) / "timing.json"
        cmd = [
            *kvmharness_command(),
            "bisect-kernel",
            str(image),
            "--modules",
            str(modules),
            "--timeout",
            str(int(timeout)),
            "--timing-json",
            str(timing),
        ]
        if tcg_threads == "multi":
            cmd += ["--tcg-threads", "multi", "--retries", str(MULTI_TCG_RETRIES)]
        if selftests is not None:
            cmd += [
                "--inner-cmd",
                shlex.join([*kvmharness_command(), "mutants", "guest-inner", str(selftests)]),
            ]
        cmd += ["--", "--json", str(out), "--quiet", *bisect_args]
        t0 = time.monotonic()
        rc = run_child(
            cmd, log_path=log_path, timeout=timeout + 120, cwd=Path(d), self_cleaning=True
        )
        step = time.monotonic() - t0
        doc = json.loads(out.read_text()) if out.exists() else None
        if doc is not None:
            shutil.copyfile(out, run_dir / f"bisect-{tag}.json")
        boot_s = None
        with contextlib.suppress(OSError, ValueError):
            boot_s = json.loads(timing.read_text()).get("boot_s")
    return Boot(rc, doc, boot_s, step, log_path, tcg_threads)


def families_of(doc: dict[str, Any] | None) -> list[str]:
    """The scenario families a ``kvmharness bisect --json`` record ran."""
    return sorted(
        {
            str(r.get("family") or r.get("scenario"))
            for r in (doc or {}).get("results", [])
            if r.get("family") or r.get("scenario")
        }
    )


def record_name(
    build: str, attempt: int, runs: int, families: Sequence[str], tcg_threads: str = "single"
) -> str:
    """The corpus file of one boot: BUILD.FAMILIES.json.gz (``control.clock+postcopy``),
    BUILD.FAMILIES-N.json.gz when a build boots more than once, with ``.mttcg``
    after the families for a boot under multi-threaded TCG.  The families and
    the threading are in the name because the control boots once per set of
    families a run's mutants name and per threading, and one must not
    overwrite the other."""
    base = f"{build}.{'+'.join(families) or 'none'}"
    if tcg_threads == "multi":
        base += ".mttcg"
    return f"{base}.json.gz" if runs == 1 else f"{base}-{attempt}.json.gz"


def record_boot(dest: Path, build: str, attempt: int, runs: int, b: Boot) -> Path | None:
    """Write one boot's ``kvmharness bisect --json`` record, unchanged, gzipped
    (mtime 0: the same record gives the same bytes).  None when the boot gave
    no record (its exit code goes in the index)."""
    if b.doc is None:
        return None
    path = dest / record_name(build, attempt, runs, families_of(b.doc), b.tcg_threads)
    dest.mkdir(parents=True, exist_ok=True)
    data = json.dumps(b.doc, separators=(",", ":"), sort_keys=True).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)
    tmp.replace(path)
    return path


def write_record_index(
    dest: Path,
    rows: Sequence[Row],
    kset: KernelSet,
    image: Path,
    args_of: dict[str, list[str]],
    recorded: dict[str, list[str]],
    stamps: dict[str, dict[str, Any]] | None = None,
) -> None:
    """DIR/index.json: the kernel the records were taken on and, per build and
    run, its mutant header (Must-catch), the ``kvmharness bisect`` arguments,
    exit codes, status and record files (``recorded``: build -> file names),
    and when its boots began and at which harness commit (``stamps``: build ->
    :func:`boot_stamp`, taken then; else now: the index is rewritten after
    every boot, and the checkout may have moved meanwhile).
    Entries of an earlier run on the same kernel are kept unless this run
    booted the same build with the same arguments (a corpus refreshed a few
    builds at a time); an index of another kernel is replaced."""
    kernel = {
        "series": kset.series.name,
        "version": kset.version,
        "release": kset.release,
        "image": str(image),
    }
    cols = matrix_columns(rows)
    red = red_columns(rows, cols)
    fresh = [
        {
            "build": r.name,
            "mutant": r.mutant.header() if r.mutant else None,
            "bisect_args": args_of.get(r.name, []),
            **((stamps or {}).get(r.name) or boot_stamp()),
            "exit_codes": r.exit_codes,
            "status": r.status(cols, red),
            "records": list(recorded.get(r.name, [])),
        }
        for r in rows
    ]
    keys = {(b["build"], tuple(b["bisect_args"])) for b in fresh}
    builds: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        old = json.loads((dest / "index.json").read_text())
        if old["kernel"] == kernel:
            builds = [
                b
                for b in old["builds"]
                if (b["build"], tuple(b.get("bisect_args", []))) not in keys
            ]
    doc = {"kernel": kernel, "builds": builds + fresh}
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "index.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(dest / "index.json")


def boot_stamp() -> dict[str, Any]:
    """The harness commit and the time, for the index entry of a build about to boot."""
    return {
        "harness_commit": _git_head(),
        "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _git_head() -> str | None:
    r = subprocess.run(
        ["git", "-C", str(checkout_root() or "."), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() or None


def focus_args(
    mutant: Mutant | None,
    builds: Sequence[Mutant | None],
    bisect_args: Sequence[str],
    *,
    full: bool,
) -> list[str]:
    """``kvmharness bisect`` arguments for one build: unless --full or the user chose
    scenarios, a mutant runs the families its Must-catch names, and the control
    the union over the mutants being run (so every column has its control)."""
    args = list(bisect_args)
    if full or any(
        a == "--scenario" or a.startswith(("--scenario=", "--strategy", "-s")) for a in args
    ):
        return args
    chosen = [mutant] if mutant is not None else [b for b in builds if b is not None]
    fams = sorted({s.family for m in chosen for s in m.must_catch})
    return args + ["--scenario", ",".join(fams)] if fams else args


def boot_plans(
    mutant: Mutant | None,
    builds: Sequence[Mutant | None],
    bisect_args: Sequence[str],
    *,
    full: bool,
) -> list[tuple[list[str], str]]:
    """(``kvmharness bisect`` arguments, TCG threading) of each boot series of
    one build: a mutant boots as its header says (Tcg-threads); the control
    boots single-threaded with the union of every mutant's families and, when
    some mutant boots multi-threaded, again so with those mutants' families,
    so a cell caught only there has its control under the same platform."""
    if mutant is not None:
        return [(focus_args(mutant, builds, bisect_args, full=full), mutant.tcg_threads)]
    plans = [(focus_args(None, builds, bisect_args, full=full), "single")]
    multi = [b for b in builds if b is not None and b.tcg_threads == "multi"]
    if multi:
        plans.append((focus_args(None, multi, bisect_args, full=full), "multi"))
    return plans


def row_from_boots(
    name: str, mutant: Mutant | None, boots: Sequence[Boot], build_s: float | None
) -> Row:
    per_boot = [cells_from_bisect(b.doc, control=mutant is None) for b in boots]
    cols = matrix_columns([Row("", c, []) for c in per_boot])
    cells = {c: merge_cells([pb[c] for pb in per_boot if c in pb]) for c in cols}
    err = ""
    if not cells:
        codes = ", ".join(str(b.exit_code) for b in boots)
        err = f"no verdicts (bisect-kernel exit {codes}; see {boots[-1].log})"
    return Row(
        name,
        cells,
        [b.exit_code for b in boots],
        mutant,
        build_s,
        [b.boot_s for b in boots if b.boot_s is not None],
        [b.step_s for b in boots],
        err,
    )


# ---------------------------------------------------------------------------
# the command


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kvmharness mutants",
        description="Build KVM module variants (tests/mutants/*.patch) from Debian's "
        "linux-source-SERIES, against the headers of the same Debian version, boot "
        "each in the image of that version through kvmharness bisect-kernel --modules with "
        "`kvmharness bisect` inside, and print the kill matrix.",
        epilog="exit: 0 the control held everywhere and every mutant was caught where its "
        "header says it must be; 1 a gap or a false alarm; 2 bad usage or a bad patch "
        "header; 128 a build or boot gave no verdict, or the kernel source, headers and "
        "image are not of one Debian version; 128+N killed by signal N.  "
        "ARGS after -- go to `kvmharness bisect` (e.g. --scenario steal).",
    )
    p.add_argument("--only", metavar="NAME[,NAME]", help="these mutants (the control always runs)")
    p.add_argument("--no-control", action="store_true", help="skip the control row")
    p.add_argument("--list", action="store_true", help="list the mutants and their headers")
    p.add_argument("--build-only", action="store_true", help="build, do not boot")
    p.add_argument("--render", metavar="FILE", help="print the matrix of a saved --json")
    p.add_argument(
        "--markdown", action="store_true", help="with --render: a Markdown table (for README)"
    )
    p.add_argument("--json", metavar="FILE", help="write the matrix as JSON")
    p.add_argument(
        "--work",
        metavar="DIR",
        type=Path,
        default=DEFAULT_WORK,
        help="build cache and logs (default %(default)s)",
    )
    p.add_argument(
        "--kernel",
        metavar="IMAGE",
        type=Path,
        help="kernel to boot (default: Debian's image of the source's version, "
        "fetched into WORK); it must be of that release and Debian version",
    )
    p.add_argument(
        "--source",
        choices=sorted(SERIES),
        default=DEFAULT_SERIES,
        help="Debian kernel source series to build from (default %(default)s)",
    )
    p.add_argument(
        "--kernel-version",
        metavar="VERSION",
        help="Debian package version of source, headers and image (e.g. 6.1.192-3; "
        "default: the version of linux-source-SERIES the package lists offer)",
    )
    p.add_argument(
        "--record",
        metavar="DIR",
        type=Path,
        help="write each boot's `kvmharness bisect --json` record to "
        "DIR/BUILD.FAMILIES.json.gz (BUILD.FAMILIES-N.json.gz with --runs N>1) and "
        "DIR/index.json (kernel; per build and run: header, arguments, exits, files)",
    )
    p.add_argument("--runs", type=int, default=1, help="boots per build (default 1)")
    p.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        help="seconds per boot, passed to bisect-kernel (default %(default)s)",
    )
    p.add_argument(
        "--build-timeout",
        type=float,
        default=1800.0,
        help="seconds per build (default %(default)s)",
    )
    p.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 2)
    p.add_argument(
        "--patches",
        metavar="DIR",
        type=Path,
        default=None,
        help="the mutants' patch files, with ports in DIR/SERIES/NAME.patch (default: "
        "tests/mutants of the checkout, or the copy shipped in the package)",
    )
    p.add_argument(
        "--selftests",
        action="store_true",
        help="also build the kernel's own KVM selftests ("
        + ", ".join(SELFTESTS)
        + ") and run them in each boot as extra columns",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="run every promise on every mutant (default: a mutant runs the "
        "families its Must-catch names, the control their union)",
    )
    argv = list(argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    ns = p.parse_args(argv)
    ns.bisect_args = rest
    if ns.runs < 1 or ns.timeout <= 0 or ns.build_timeout <= 0 or ns.jobs < 1:
        p.error("--runs, --timeout, --build-timeout and --jobs must be positive")
    return ns


def list_mutants(mutants: Sequence[Mutant]) -> None:
    from tabulate import tabulate

    print(
        tabulate(
            [[m.name, ", ".join(str(s) for s in m.must_catch), m.seed_bug] for m in mutants],
            headers=["mutant", "must catch", "seed bug"],
            maxcolwidths=[None, 40, 70],
        )
    )


def guest_inner(argv: Sequence[str]) -> int:
    """Inside the booted kernel (bisect-kernel's inner command):
    ``guest-inner SELFTEST_DIR [ARGS]`` runs ``kvmharness bisect ARGS`` (this
    Python's), then each selftest under a timeout, adds their exits to the
    ``--json`` file, and exits with kvmharness's code."""
    sdir, *args = argv
    r = subprocess.run([*kvmharness_command(), "bisect", *args], stdin=subprocess.DEVNULL)
    code = r.returncode
    results = []
    for name in SELFTESTS:
        exe = Path(sdir) / name
        t0 = time.monotonic()
        if not exe.exists():
            results.append({"name": name, "exit": -1, "wall_s": 0.0, "tail": "not built"})
            continue
        proc = subprocess.Popen(
            [str(exe)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=SELFTEST_TIMEOUT_S)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            end_group(proc, grace=0.0)
            out, _ = proc.communicate()
            rc = None
        text = out.decode(errors="replace")
        results.append(
            {
                "name": name,
                "exit": rc,
                "wall_s": time.monotonic() - t0,
                "tail": "\n".join(text.strip().splitlines()[-6:]),
            }
        )
        print(f"selftest {name}: exit {rc} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    if "--json" in args:
        path = Path(args[args.index("--json") + 1])
        doc = json.loads(path.read_text()) if path.exists() else {"results": []}
        doc["selftests"] = results
        path.write_text(json.dumps(doc, indent=2) + "\n")
    return code


def build_selftests(work: Path, kset: KernelSet, *, jobs: int, timeout: float) -> Path:
    """The five KVM selftests from the same kernel source (full tree: they need
    ``make headers_install``), built once per version.  Returns their directory."""
    full = work / kset.series.name / f"full-{kset.version}"
    top = full / kset.series.top
    kdir = top / "tools/testing/selftests/kvm"
    if all((kdir / n).exists() for n in SELFTESTS):
        return kdir
    log_path = work / "logs" / "build-selftests.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if not (top / "Makefile").exists():
        log(f"unpacking the whole {kset.series.tarball} for the selftests")
        full.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-C", str(full), "-xf", str(kset.series.tarball)], check=True)
    for cmd in (
        ["make", "-s", "-C", str(top), "headers_install"],
        [
            "make",
            "-C",
            str(kdir),
            "EXTRA_CFLAGS=-include linux/stddef.h",
            f"-j{jobs}",
            *[str(kdir / n) for n in SELFTESTS],
        ],
    ):
        rc = run_child(cmd, log_path=log_path, timeout=timeout)
        if rc != 0:
            raise BuildError(f"selftests: {shlex.join(cmd)} failed (exit {rc}; {log_path})")
    return kdir


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["guest-inner"]:
        return guest_inner(argv[1:])
    ns = parse_args(argv)
    try:
        mutants = load_mutants(ns.patches, ns.source)
    except HeaderError as exc:
        log(str(exc))
        return EXIT_USAGE
    if ns.list:
        list_mutants(mutants)
        return EXIT_OK
    if ns.render:
        doc = json.loads(Path(ns.render).read_text())
        rows = rescore(Path(ns.render).parent, rows_from_json(doc, mutants))
        cols = matrix_columns(rows)  # from the cells: a rescore may name them anew
        print(render_matrix(rows, cols, "github" if ns.markdown else "simple"))
        return matrix_exit(rows, cols)
    if ns.only:
        want = [n.strip() for n in ns.only.split(",") if n.strip()]
        unknown = [n for n in want if n not in {m.name for m in mutants}]
        if unknown:
            log(
                f"unknown mutant(s) {', '.join(unknown)}; known: "
                f"{', '.join(m.name for m in mutants)}"
            )
            return EXIT_USAGE
        mutants = [m for m in mutants if m.name in want]
    builds: list[Mutant | None] = ([] if ns.no_control else [None]) + list(mutants)
    try:
        with signals_raise():
            kset = find_kernel_set(SERIES[ns.source], ns.kernel_version)
            log(f"kernel: {kset.describe()}")
            return _run(ns, builds, kset)
    except VersionError as exc:
        log(str(exc))
        return EXIT_ERROR
    except Interrupted as exc:
        log(f"interrupted by signal {exc.signum}: builds and VMs ended")
        return exc.exit_code


def _run(ns: argparse.Namespace, builds: Sequence[Mutant | None], kset: KernelSet) -> int:
    work: Path = ns.work
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    ensure_packages(kset)
    check_build_parts(kset)
    built: list[tuple[Mutant | None, Path | None, float | None, str]] = []
    for m in builds:
        name = m.name if m else CONTROL
        try:
            d, secs = build(m, work, kset, jobs=ns.jobs, timeout=ns.build_timeout)
            log(f"built {name}: {d} ({'cached' if secs == 0 else f'{secs:.0f} s'})")
            built.append((m, d, secs, ""))
        except (BuildError, subprocess.CalledProcessError, OSError) as exc:
            log(f"build of {name} failed: {exc}")
            built.append((m, None, None, str(exc)))
    if ns.build_only:
        return EXIT_ERROR if any(e for *_, e in built) else EXIT_OK
    image = find_image(work, ns.kernel, kset)
    sdir = None
    if ns.selftests:
        try:
            sdir = build_selftests(work, kset, jobs=ns.jobs, timeout=ns.build_timeout)
        except (BuildError, subprocess.CalledProcessError) as exc:
            log(f"no selftest columns: {exc}")
    run_dir = work / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"booting {len(built)} build(s) x {ns.runs} in {image}; logs in {run_dir}")
    rows: list[Row] = []
    args_of: dict[str, list[str]] = {}
    recorded: dict[str, list[str]] = {}
    stamps: dict[str, dict[str, Any]] = {}
    for m, d, secs, err in built:
        name = m.name if m else CONTROL
        if d is None:
            rows.append(Row(name, {}, [], m, None, error=err.splitlines()[0]))
            continue
        boots = []
        plans = boot_plans(m, [x for x, *_ in built], ns.bisect_args, full=ns.full)
        args_of[name] = plans[0][0]
        stamps[name] = boot_stamp()
        for args, tcg in plans:
            how = " (multi-threaded TCG)" if tcg == "multi" else ""
            for i in range(ns.runs):
                log(f"boot {name} ({i + 1}/{ns.runs}){how}: kvmharness bisect {shlex.join(args)}")
                b = boot(
                    d,
                    image,
                    name,
                    run_dir,
                    timeout=ns.timeout,
                    bisect_args=args,
                    attempt=i + 1,
                    selftests=sdir,
                    tcg_threads=tcg,
                )
                log(
                    f"  {name}: exit {b.exit_code} after {b.step_s:.0f} s "
                    f"(boot {b.boot_s or 0:.0f} s)"
                )
                boots.append(b)
                if ns.record is not None:
                    rec = record_boot(ns.record, name, i + 1, ns.runs, b)
                    if rec is not None:
                        recorded.setdefault(name, []).append(rec.name)
        rows.append(row_from_boots(name, m, boots, secs))
        if ns.record is not None:
            write_record_index(ns.record, rows, kset, image, args_of, recorded, stamps)
        _save(ns, rows, run_dir, image, kset, t_all, partial=True)
    text = render_matrix(rows)
    print(text)
    (run_dir / "matrix.txt").write_text(text + "\n")
    _save(ns, rows, run_dir, image, kset, t_all, partial=False)
    log(f"{len(rows)} build(s) in {time.monotonic() - t_all:.0f} s; matrix in {run_dir}")
    return matrix_exit(rows)


def _save(
    ns: argparse.Namespace,
    rows: Sequence[Row],
    run_dir: Path,
    image: Path,
    kset: KernelSet,
    t0: float,
    *,
    partial: bool,
) -> None:
    doc = matrix_json(
        rows,
        {
            "kernel_image": str(image),
            "release": kset.release,
            "version": kset.version,
            "source": f"{kset.series.source_pkg} {kset.version}",
            "bisect_args": ns.bisect_args,
            "runs": ns.runs,
            "total_s": time.monotonic() - t0,
            "partial": partial,
        },
    )
    text = json.dumps(doc, indent=2) + "\n"
    (run_dir / "matrix.json").write_text(text)
    if ns.json and not partial:
        tmp = Path(ns.json + ".tmp")
        tmp.write_text(text)
        tmp.replace(ns.json)


if __name__ == "__main__":
    sys.exit(main())
