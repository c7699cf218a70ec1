"""Kernel mutants and the kill matrix (``scripts/mutants``).

Each mutant is a small patch (``tests/mutants/*.patch``) against Debian's
linux-source-6.1 that puts a known KVM bug back.  This module builds kvm.ko
and kvm-amd.ko out of tree for the unchanged source (the control) and for
every mutant, boots each build under QEMU through ``scripts/bisect-kernel
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

A Must-catch item is ``FAMILY`` (every promise of the family), ``FAMILY:VARIANT``
or ``FAMILY:PREFIX`` (``steal:fresh-vm`` is every ``fresh-vm/...``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import filecmp
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PATCH_DIR = ROOT / "tests" / "mutants"
DEFAULT_WORK = Path(os.environ.get("KVMHARNESS_MUTANTS_WORK", "/var/lib/kvmharness-mutants"))
#: Not under /var/cache, /var/tmp or /tmp: the booted guest shares the host's
#: root file system but mounts tmpfs over some of those.

KREL = "6.1.0-56-amd64"
SOURCE_PKG = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SOURCE_TOP = "linux-source-6.1"
HEADERS = Path(f"/usr/src/linux-headers-{KREL}")
IMAGE_PKG = f"linux-image-{KREL}"
APT_PACKAGES = [
    SOURCE_PKG,
    f"linux-headers-{KREL}",
    "linux-headers-6.1.0-56-common",
    "linux-kbuild-6.1",
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
EXIT_OK, EXIT_GAP, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3

REQUIRED_KEYS = ("Mutant", "Seed-bug", "Puts-back", "Must-catch")
OPTIONAL_KEYS = ("Note",)
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

    @property
    def files(self) -> list[str]:
        return diff_files(self.diff)

    def must(self, column: str) -> bool:
        return any(s.matches(column) for s in self.must_catch)

    def header(self) -> dict[str, Any]:
        return {
            "mutant": self.name,
            "seed_bug": self.seed_bug,
            "puts_back": self.puts_back,
            "must_catch": [str(s) for s in self.must_catch],
            "note": self.note,
            "files": self.files,
            "patch": str(self.path.relative_to(ROOT))
            if self.path and self.path.is_relative_to(ROOT)
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
    return Mutant(
        name, fields["Seed-bug"], fields["Puts-back"], selectors, fields.get("Note", ""), diff, path
    )


def load_mutants(patch_dir: Path = PATCH_DIR) -> list[Mutant]:
    out = []
    for p in sorted(patch_dir.glob("*.patch")):
        try:
            out.append(parse_patch(p.read_text(), p))
        except HeaderError as exc:
            raise HeaderError(f"{p}: {exc}") from None
    return out


# ---------------------------------------------------------------------------
# cells, rows and the matrix


CAUGHT, MISSED, ERROR, HOLDS, FALSE_ALARM = "caught", "missed", "error", "holds", "false alarm"
# the promise cannot be tested on this platform (e.g. frequency without
# KVM_CAP_TSC_CONTROL): no verdict either way, and no false alarm of the control
UNTESTABLE = "untestable"
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
                if self.cells.get(c, Cell(ERROR)).state not in (HOLDS, UNTESTABLE)
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
        col = f"{r.get('scenario', '?')}:{r.get('strategy') or r.get('variant') or '?'}"
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
        if verdict == "BROKEN":
            state = FALSE_ALARM if control else CAUGHT
        elif verdict == "holds":
            state = HOLDS if control else MISSED
        elif verdict == "untestable":
            state = UNTESTABLE
        else:
            state = ERROR
        cell = Cell(
            state,
            verdict,
            str(r.get("observed") or r.get("error") or ""),
            hits=int(verdict == "BROKEN"),
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
    for want in (CAUGHT, FALSE_ALARM, MISSED, HOLDS, UNTESTABLE):
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
    headers = ["build", *[_column_header(c) for c in cols], "exit", "status"]
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


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class BuildError(Exception):
    pass


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _end(proc: subprocess.Popen[Any], *, grace: float, group: bool) -> None:
    """SIGTERM (the child's group, or just the child when it cleans up itself),
    then SIGKILL of its group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


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
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            out.write(f"\nmutants: timeout after {timeout:.0f} s: ending it\n".encode())
            return -1
        finally:
            _end(proc, grace=60.0 if self_cleaning else 5.0, group=not self_cleaning)


# ---------------------------------------------------------------------------
# building


def ensure_packages() -> None:
    """apt-get what the build needs, as root, once."""
    need_src = not SOURCE_TARBALL.exists()
    need_hdr = not (HEADERS / "Makefile").exists()
    need_tools = any(
        shutil.which(t) is None for t in ("make", "patch", "gcc-12", "strip", "xz", "modinfo")
    )
    if not (need_src or need_hdr or need_tools):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BuildError(f"need {', '.join(APT_PACKAGES)} installed (apt-get, as root)")
    log(f"installing {' '.join(APT_PACKAGES)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
        if subprocess.run(cmd, stdout=sys.stderr, env=env).returncode != 0:
            raise BuildError(f"{shlex.join(cmd)} failed")


def source_version() -> str:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", SOURCE_PKG], capture_output=True, text=True
    )
    return r.stdout.strip() or "unknown"


def unpack_source(work: Path) -> Path:
    """The pristine copy of the two KVM directories (13 s once)."""
    pristine = work / "src" / SOURCE_TOP
    stamp = work / "src" / ".unpacked"
    ver = source_version()
    if stamp.exists() and stamp.read_text() == ver:
        return pristine
    shutil.rmtree(work / "src", ignore_errors=True)
    (work / "src").mkdir(parents=True)
    log(f"unpacking {SOURCE_TARBALL} ({', '.join(COPIED_DIRS)})")
    subprocess.run(
        [
            "tar",
            "-C",
            str(work / "src"),
            "-xf",
            str(SOURCE_TARBALL),
            *[f"{SOURCE_TOP}/{d}" for d in COPIED_DIRS],
        ],
        check=True,
    )
    stamp.write_text(ver)
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


def cache_key(mutant: Mutant | None, srcver: str) -> str:
    h = hashlib.sha256(f"{RECIPE}\0{KREL}\0{srcver}\0".encode())
    h.update((mutant.diff if mutant else "").encode())
    return h.hexdigest()[:12]


def build(mutant: Mutant | None, work: Path, *, jobs: int, timeout: float) -> tuple[Path, float]:
    """kvm.ko and kvm-amd.ko for the control (None) or a mutant, stripped, in a
    cache directory named by the patch's content.  Returns (dir, build seconds;
    0 for a cache hit)."""
    name = mutant.name if mutant else CONTROL
    srcver = source_version()
    out = work / "builds" / f"{name}-{cache_key(mutant, srcver)}"
    if (out / "kvm.ko").exists() and (out / "kvm-amd.ko").exists():
        return out, 0.0
    pristine = unpack_source(work)
    tree = work / "tree"
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
                    f"{name}: the patch does not apply to {SOURCE_PKG} {srcver}: "
                    f"{(r.stdout + r.stderr).strip()[-300:]}"
                )
        rc = run_child(
            [
                "make",
                "-C",
                str(HEADERS),
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
                        "source": f"{SOURCE_PKG} {srcver}",
                        "release": KREL,
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


def find_image(work: Path, given: Path | None) -> Path:
    """The kernel image to boot the modules in: --kernel, else Debian's 6.1.0-56
    extracted under WORK (hard links from /var/cache/kvmharness-kernels where
    scripts/bisect-kernel's user left it, else apt-get download)."""
    if given is not None:
        return given
    tree = work / IMAGE_PKG
    image = tree / "boot" / f"vmlinuz-{KREL}"
    if image.exists():
        return image
    cached = Path("/var/cache/kvmharness-kernels") / IMAGE_PKG
    if (cached / "boot" / f"vmlinuz-{KREL}").exists():
        subprocess.run(["cp", "-al", str(cached), str(tree)], check=True)
        return image
    log(f"downloading {IMAGE_PKG} (apt-get download) and extracting it to {tree}")
    with tempfile.TemporaryDirectory(prefix="mutants-image-") as d:
        subprocess.run(["apt-get", "download", IMAGE_PKG], cwd=d, check=True, stdout=sys.stderr)
        debs = list(Path(d).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tree)], check=True)
    return image


@dataclasses.dataclass
class Boot:
    exit_code: int
    doc: dict[str, Any] | None
    boot_s: float | None
    step_s: float
    log: Path


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
) -> Boot:
    tag = f"{name}-{attempt}"
    log_path = run_dir / f"boot-{tag}.log"
    with tempfile.TemporaryDirectory(prefix="mutants-boot-") as d:
        out = Path(d) / "bisect.json"
        timing = Path(d) / "timing.json"
        cmd = [
            str(ROOT / "scripts" / "bisect-kernel"),
            str(image),
            "--modules",
            str(modules),
            "--timeout",
            str(int(timeout)),
            "--timing-json",
            str(timing),
        ]
        if selftests is not None:
            cmd += [
                "--inner-cmd",
                shlex.join(
                    [
                        str(ROOT / ".venv/bin/python"),
                        str(Path(__file__).resolve()),
                        "guest-inner",
                        str(selftests),
                        str(ROOT / ".venv/bin/kvmharness"),
                    ]
                ),
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
    return Boot(rc, doc, boot_s, step, log_path)


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
        prog="scripts/mutants",
        description="Build KVM module variants (tests/mutants/*.patch) from Debian's "
        f"{SOURCE_PKG}, boot each through scripts/bisect-kernel --modules with "
        "`kvmharness bisect` inside, and print the kill matrix.",
        epilog="exit: 0 the control held everywhere and every mutant was caught where its "
        "header says it must be; 1 a gap or a false alarm; 2 bad usage or a bad patch "
        "header; 3 a build or boot gave no verdict; 128+N killed by signal N.  "
        "ARGS after -- go to `kvmharness bisect` (e.g. --scenario steal).",
    )
    p.add_argument("--only", metavar="NAME[,NAME]", help="these mutants (the control always runs)")
    p.add_argument("--no-control", action="store_true", help="skip the control row")
    p.add_argument("--list", action="store_true", help="list the mutants and their headers")
    p.add_argument("--build-only", action="store_true", help="build, do not boot")
    p.add_argument("--render", metavar="FILE", help="print the matrix of a saved --json")
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
        help=f"kernel to boot (default Debian's {KREL}, fetched into WORK)",
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
    p.add_argument("--patches", metavar="DIR", type=Path, default=PATCH_DIR)
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
    ``guest-inner SELFTEST_DIR KVMHARNESS [ARGS]`` runs ``KVMHARNESS bisect ARGS``,
    then each selftest under a timeout, adds their exits to the ``--json`` file,
    and exits with kvmharness's code."""
    sdir, kvmharness, *args = argv
    r = subprocess.run([kvmharness, "bisect", *args], stdin=subprocess.DEVNULL)
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
            os.killpg(proc.pid, signal.SIGKILL)
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


def build_selftests(work: Path, *, jobs: int, timeout: float) -> Path:
    """The five KVM selftests from the same linux-source-6.1 (full tree: they need
    ``make headers_install``), built once.  Returns their directory."""
    top = work / "full" / SOURCE_TOP
    kdir = top / "tools/testing/selftests/kvm"
    if all((kdir / n).exists() for n in SELFTESTS):
        return kdir
    log_path = work / "logs" / "build-selftests.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if not (top / "Makefile").exists():
        log("unpacking the whole linux-source-6.1 for the selftests")
        (work / "full").mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-C", str(work / "full"), "-xf", str(SOURCE_TARBALL)], check=True)
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
        mutants = load_mutants(ns.patches)
    except HeaderError as exc:
        log(str(exc))
        return EXIT_USAGE
    if ns.list:
        list_mutants(mutants)
        return EXIT_OK
    if ns.render:
        doc = json.loads(Path(ns.render).read_text())
        rows = rescore(Path(ns.render).parent, rows_from_json(doc, mutants))
        print(render_matrix(rows, doc.get("columns")))
        return matrix_exit(rows, doc.get("columns"))
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
            return _run(ns, builds)
    except Interrupted as exc:
        log(f"interrupted by signal {exc.signum}: builds and VMs ended")
        return 128 + exc.signum


def _run(ns: argparse.Namespace, builds: Sequence[Mutant | None]) -> int:
    work: Path = ns.work
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    ensure_packages()
    built: list[tuple[Mutant | None, Path | None, float | None, str]] = []
    for m in builds:
        name = m.name if m else CONTROL
        try:
            d, secs = build(m, work, jobs=ns.jobs, timeout=ns.build_timeout)
            log(f"built {name}: {d} ({'cached' if secs == 0 else f'{secs:.0f} s'})")
            built.append((m, d, secs, ""))
        except (BuildError, subprocess.CalledProcessError, OSError) as exc:
            log(f"build of {name} failed: {exc}")
            built.append((m, None, None, str(exc)))
    if ns.build_only:
        return EXIT_ERROR if any(e for *_, e in built) else EXIT_OK
    image = find_image(work, ns.kernel)
    sdir = None
    if ns.selftests:
        try:
            sdir = build_selftests(work, jobs=ns.jobs, timeout=ns.build_timeout)
        except (BuildError, subprocess.CalledProcessError) as exc:
            log(f"no selftest columns: {exc}")
    run_dir = work / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"booting {len(built)} build(s) x {ns.runs} in {image}; logs in {run_dir}")
    rows: list[Row] = []
    for m, d, secs, err in built:
        name = m.name if m else CONTROL
        if d is None:
            rows.append(Row(name, {}, [], m, None, error=err.splitlines()[0]))
            continue
        boots = []
        args = focus_args(m, [x for x, *_ in built], ns.bisect_args, full=ns.full)
        for i in range(ns.runs):
            log(f"boot {name} ({i + 1}/{ns.runs}): kvmharness bisect {shlex.join(args)}")
            b = boot(
                d,
                image,
                name,
                run_dir,
                timeout=ns.timeout,
                bisect_args=args,
                attempt=i + 1,
                selftests=sdir,
            )
            log(f"  {name}: exit {b.exit_code} after {b.step_s:.0f} s (boot {b.boot_s or 0:.0f} s)")
            boots.append(b)
        rows.append(row_from_boots(name, m, boots, secs))
        _save(ns, rows, run_dir, image, t_all, partial=True)
    text = render_matrix(rows)
    print(text)
    (run_dir / "matrix.txt").write_text(text + "\n")
    _save(ns, rows, run_dir, image, t_all, partial=False)
    log(f"{len(rows)} build(s) in {time.monotonic() - t_all:.0f} s; matrix in {run_dir}")
    return matrix_exit(rows)


def _save(
    ns: argparse.Namespace,
    rows: Sequence[Row],
    run_dir: Path,
    image: Path,
    t0: float,
    *,
    partial: bool,
) -> None:
    doc = matrix_json(
        rows,
        {
            "kernel_image": str(image),
            "release": KREL,
            "source": f"{SOURCE_PKG} {source_version()}",
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
