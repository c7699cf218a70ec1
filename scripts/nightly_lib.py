"""scripts/nightly: the nightly hardware CI of kvmharness, as an importable module.

One nightly run:

1. runs the KVM part of the test suite (``pytest -m kvm --junitxml``) and the
   scenario matrix (``kvmharness run --json``) on this host's KVM, or, with
   ``--kernel IMAGE``, inside that kernel through ``scripts/bisect-kernel``
   (this script runs itself there with ``--inner`` and hands one JSON file back);
2. appends one record to a JSON-lines history (:func:`append_record`: flock,
   O_APPEND, one write() of one complete line; :func:`read_history` skips and
   reports a torn or garbled line);
3. renders the last N runs of each host as a self-contained HTML page (a
   table, PNG trend plots as data URIs, the matched known issues, what changed
   since the previous run) and the same as text on stdout;
4. exits 0 good, 1 a promise broke that no known issue covers (or a known
   issue looks fixed, or a KVM test failed), 125 nothing could be tested,
   128 a harness fault; 2 for bad usage (nightly is not run by git bisect);
5. ``--kcidb FILE`` writes the run as KCIDB I/O JSON; ``--merge FILE...``
   merges histories from several hosts (records are keyed by host name).

It lives in scripts/ beside ``mutants_lib.py`` rather than in the package: it
drives the checkout (its tests/, ``scripts/bisect-kernel``, its git revision),
none of which an installed wheel has.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import html
import io
import json
import math
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "kvmharness-nightly/1"
ORIGIN = "kvmharness"  # KCIDB origin

EXIT_OK, EXIT_BROKEN, EXIT_USAGE, EXIT_UNTESTABLE, EXIT_HARNESS = 0, 1, 2, 125, 128

#: pytest's default selection: the tests that touch KVM (the rest of the suite
#: does not depend on the kernel and runs in per-commit CI), without this
#: script's own tests (they would run the nightly inside the nightly).
DEFAULT_PYTEST_ARGS = ["-m", "kvm", "--ignore=tests/test_nightly.py", "tests"]
PYTEST_TIMEOUT_S = 1800.0  # the whole pytest run; each test has pytest-timeout's 120 s
RUN_TIMEOUT_S = 1800.0
KERNEL_TIMEOUT_S = 3600.0

#: "figure moved": by more than MOVE_PCT percent of the smaller of the two values
#: (100: doubled or halved) *and* by more than the floor of its unit.  Steal
#: jumps follow the host's load (run_delay): tens of percent between two runs of
#: one kernel are noise, a factor of two is worth a look.
MOVE_PCT = 100.0
MOVE_FLOOR = {"ns": 10_000_000, "count": 1, "s": 2.0}

#: the test-only switch that turns a scenario's result into broken after the run
BREAK_ON_PURPOSE = "--break-on-purpose"

STATUS_ORDER = [
    "broken",
    "fixed?",
    "harness error",
    "known-broken",
    "untestable",
    "not supported",
    "characterized",
    "holds",
    "not run",
]


class Usage(Exception):
    """Bad command line or input file: exit 2."""


# --------------------------------------------------------------------------
# the history file


def record_line(record: dict[str, Any]) -> bytes:
    """One record as one line: compact JSON (ASCII, so no raw newline) plus newline."""
    return (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()


def append_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append ``record`` as one line, safe against a crash mid-write and against
    concurrent appenders.

    The line goes out in one write() on an O_APPEND descriptor under an
    exclusive flock, so two nightlies never interleave.  A writer that died
    mid-line leaves a tail without a newline; the next appender first ends
    that tail, so the torn piece is one bad line (skipped by readers) and
    never glues onto a good record.
    """
    data = record_line(record)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:  # a regular file writes all at once unless the disk is full
            n = os.write(fd, view)
            if n <= 0:
                raise OSError(errno.EIO, f"{path}: short write")
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


@dataclasses.dataclass
class Problem:
    """A history line that was skipped."""

    file: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: skipped: {self.why}"


def parse_history(
    data: bytes, name: str = "<history>"
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """The records of a history file's bytes, and the lines skipped (torn,
    garbled, not a record).  Never raises on content."""
    records: list[dict[str, Any]] = []
    problems: list[Problem] = []
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" unless the last write was torn
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        rec, why = _parse_line(raw)
        if rec is None:
            problems.append(Problem(name, i, why))
        else:
            records.append(rec)
    if tail.strip():
        problems.append(
            Problem(
                name,
                len(lines) + 1,
                f"torn: the last line has no newline ({len(tail)} bytes; "
                "a writer died mid-write or is writing now)",
            )
        )
    return records, problems


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"garbled: not JSON ({exc}): {raw[:60]!r}..."
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        return None, f"not a {SCHEMA} record: {raw[:60]!r}..."
    if not isinstance(rec.get("host"), dict) or not isinstance(rec.get("scenarios"), list):
        return None, "a record without host or scenarios"
    for s in rec["scenarios"]:  # history written before the state words were unified
        if isinstance(s, dict):
            for k in ("status", "verdict"):
                if s.get(k) in OLD_WORDS:
                    s[k] = OLD_WORDS[s[k]]
    return rec, ""


def read_history(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[Problem]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], []
    return parse_history(data, str(path))


def host_key(rec: dict[str, Any]) -> str:
    return str(rec.get("host", {}).get("name") or "unknown-host")


def merge_histories(paths: Sequence[str]) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Every record of every file once (by run_id), ordered by date then host."""
    seen: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for p in paths:
        if not os.path.isfile(p):
            raise Usage(f"--merge {p}: no such file")
        recs, probs = read_history(p)
        problems += probs
        for r in recs:
            seen.setdefault(str(r.get("run_id")), r)
    return sorted(seen.values(), key=lambda r: (str(r.get("date")), host_key(r))), problems


# --------------------------------------------------------------------------
# from a run document to a record


def scenario_id(family: str, variant: str, vcpus: Any) -> str:
    return f"{family}/{variant}@{vcpus}"


#: the words runs wrote before kvmharness used one lower-case word per state
OLD_WORDS = {"BROKEN": "broken", "ERROR": "harness error"}


def status_of(r: dict[str, Any]) -> str:
    """What the cell says: the verdict, or known-broken / fixed? / not supported."""
    known = r.get("known") or {}
    if known.get("status") in ("known-broken", "fixed?"):
        return str(known["status"])
    verdict = str(r.get("verdict", "harness error"))
    verdict = OLD_WORDS.get(verdict, verdict)
    if verdict == "untestable" and r.get("not_supported"):  # runs before Verdict.NOT_SUPPORTED
        return "not supported"
    return verdict


#: KVM_CAP_ADJUST_CLOCK is a mask of the KVM_CLOCK_* flags KVM_GET_CLOCK can report
ADJUST_CLOCK_BITS = {"KVM_CLOCK_TSC_STABLE": 2, "KVM_CLOCK_REALTIME": 4, "KVM_CLOCK_HOST_TSC": 8}


def host_facts(host: dict[str, Any] | None) -> dict[str, bool] | None:
    """What this host's KVM offers, as ``{capability: present}``, from the host
    facts of ``kvmharness info --json`` or of a run document.  A fact the host
    could not tell (not probed, the probe failed) is left out: unknown is not
    absent.  None when there are no facts at all."""
    if not isinstance(host, dict) or not host:
        return None
    out: dict[str, bool] = {}
    if isinstance(host.get("dev_kvm"), str):
        out["/dev/kvm usable"] = host["dev_kvm"] == "present"
    caps = host.get("capabilities")
    if isinstance(caps, dict):
        for name, value in caps.items():
            if name == "MAX_VCPUS" or not isinstance(value, int):
                continue  # a number, not a capability
            out[f"KVM_CAP_{name}"] = value != 0
            if name == "ADJUST_CLOCK":
                for flag, bit in ADJUST_CLOCK_BITS.items():
                    out[f"KVM_CAP_ADJUST_CLOCK {flag}"] = bool(value & bit)
    feats = host.get("kvm_features")
    if isinstance(feats, list) and (feats or host.get("steal_time") is not None):
        for f in feats:
            out[f"KVM PV feature {f}"] = True
        out["KVM PV feature steal_time"] = "steal_time" in feats
        out["KVM PV feature clocksource2"] = "clocksource2" in feats
    for key, label in (
        ("tsc_offset_attr", "KVM_VCPU_TSC_OFFSET attribute"),
        ("invariant_tsc", "invariant TSC"),
        ("sched_info_live", "run_delay kept (sched_info)"),
        ("kvmclock_stable", "master clock (KVM_CLOCK_TSC_STABLE once a vCPU ran)"),
        ("pvti_stable", "PVCLOCK_TSC_STABLE_BIT in kvmclock"),
    ):
        if isinstance(host.get(key), bool):
            out[label] = host[key]
    uffd = host.get("userfaultfd")
    if isinstance(uffd, str) and not uffd.startswith("unknown"):
        out["userfaultfd usable"] = uffd.startswith("usable")
        if out["userfaultfd usable"]:
            out["UFFD_FEATURE_THREAD_ID"] = "THREAD_ID" in uffd
    return out or None


#: the statuses that say a scenario was judged on the host
JUDGED = {"holds", "broken", "known-broken", "fixed?", "characterized"}


def capabilities_lost(prev: dict[str, Any] | None, cur: dict[str, Any]) -> list[str]:
    """What the host had in its previous run and has no longer (two records of
    one host): a capability its facts say is now absent, or a scenario that
    went from a verdict to "not supported"."""
    if prev is None:
        return []
    out = []
    before = (prev.get("host") or {}).get("facts") or {}
    now = (cur.get("host") or {}).get("facts") or {}
    for name, had in before.items():
        if had is True and now.get(name) is False:
            out.append(f"{name}: present in the previous run, absent now")
    prev_s = {s["id"]: s for s in prev.get("scenarios") or []}
    for s in cur.get("scenarios") or []:
        p = prev_s.get(s["id"])
        if p and p.get("status") in JUDGED and s.get("status") == "not supported":
            out.append(
                f"{s['id']}: {p['status']} -> not supported: " + shorten(s.get("observed", ""), 200)
            )
    return out


def figures_of(r: dict[str, Any]) -> dict[str, Any]:
    """The key figures of one result of ``kvmharness run --json``."""
    fam = r.get("family") or r.get("scenario")  # kvmharness 0.1 wrote "scenario"
    out: dict[str, Any] = {"wall_s": r.get("wall_s")}
    if fam == "steal":
        for k in ("largest_jump_ns", "steal_before_ns", "steal_after_ns"):
            out[k] = r.get(k)
    elif fam == "clock":
        out["warps"] = r.get("warps")
        out["largest_warp_ns"] = r.get("largest_warp_ns")
        jumps = [
            j.get("kvmclock_ns")
            for j in r.get("boundary_jumps") or []
            if isinstance(j.get("kvmclock_ns"), int | float)
        ]
        out["largest_jump_ns"] = max(jumps, key=abs) if jumps else None
        out["reads"] = r.get("reads")
    elif fam == "postcopy":
        bt = r.get("blocktime") or {}
        per = [x for x in bt.get("blocked_ns") or [] if isinstance(x, int | float)]
        out["blocktime_ns"] = per
        out["blocktime_max_ns"] = max(per) if per else None
        out["all_blocked_ns"] = bt.get("all_blocked_ns")
    return out


#: per family: the figure each cell shows and the trend plots, (key, label, unit)
KEY_FIGURES: dict[str, list[tuple[str, str, str]]] = {
    "steal": [("largest_jump_ns", "largest steal jump", "ns")],
    "clock": [
        ("largest_jump_ns", "largest kvmclock jump at the boundary", "ns"),
        ("warps", "warps", "count"),
    ],
    "postcopy": [("blocktime_max_ns", "largest blocktime of one vCPU", "ns")],
}


def scenarios_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in doc.get("results") or []:
        fam = str(r.get("family") or r.get("scenario", "?"))
        var = str(r.get("variant") or r.get("strategy", "?"))
        if var.startswith(fam + "/"):  # postcopy names its variants postcopy/...
            var = var[len(fam) + 1 :]
        vcpus = (r.get("config") or {}).get("vcpus", "?")
        known = r.get("known") or None
        out.append(
            {
                "id": scenario_id(fam, var, vcpus),
                "family": fam,
                "variant": var,
                "vcpus": vcpus,
                "kind": r.get("kind"),
                "verdict": OLD_WORDS.get(str(r.get("verdict")), r.get("verdict")),
                "status": status_of(r),
                "observed": str(r.get("observed") or "")[:300],
                "known": (
                    {k: known.get(k) for k in ("status", "id", "reason", "link")} if known else None
                ),
                "figures": figures_of(r),
            }
        )
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision(root: Path = ROOT) -> tuple[str | None, bool]:
    """(HEAD's commit, whether the tree has uncommitted changes)."""
    try:
        rev = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return None, False
    return rev, dirty


def _empty_junit_summary() -> dict[str, Any]:
    return {
        "tests": 0,
        "failures": 0,
        "errors": 0,
        "skipped": 0,
        "time_s": 0.0,
        "failed": [],
        "cases": [],
    }


def junit_summary(xml_text: str | None) -> dict[str, Any]:
    """Counts and failed test ids of a pytest JUnit XML file (None: no file)."""
    if not xml_text:
        return _empty_junit_summary()
    root = ET.fromstring(xml_text)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = _empty_junit_summary()
    for s in suites:
        for k in ("tests", "failures", "errors", "skipped"):
            out[k] += int(s.get(k, 0))
        out["time_s"] += float(s.get("time", 0) or 0)
        for c in s.iter("testcase"):
            name = f"{c.get('classname', '')}::{c.get('name', '')}"
            if c.find("failure") is not None or c.find("error") is not None:
                state = "FAIL"
            elif c.find("skipped") is not None:
                state = "SKIP"
            else:
                state = "PASS"
            out["cases"].append([name, state, float(c.get("time", 0) or 0)])
            if state == "FAIL":
                out["failed"].append(name)
    return out


def pytest_part(rc: int | None) -> int:
    """The nightly's view of pytest's exit status."""
    if rc == 0:
        return EXIT_OK
    if rc == 1:
        return EXIT_BROKEN  # tests failed
    return EXIT_HARNESS  # interrupted, internal error, usage, nothing collected, killed


def combine(run_rc: int | None, pytest_rc: int | None, *, forced_broken: bool = False) -> int:
    """One exit code, in the order ``kvmharness run`` uses: a harness fault, then a
    broken promise, then "cannot test" (only when the matrix could not test)."""
    parts = [run_rc if run_rc is not None else EXIT_HARNESS]
    if pytest_rc is not None:  # None: pytest not run (--pytest-args none)
        parts.append(pytest_part(pytest_rc))
    if any(p not in (EXIT_OK, EXIT_BROKEN, EXIT_UNTESTABLE) for p in parts):
        return EXIT_HARNESS
    if forced_broken or EXIT_BROKEN in parts:
        return EXIT_BROKEN
    if run_rc == EXIT_UNTESTABLE:
        return EXIT_UNTESTABLE
    return EXIT_OK


def break_pattern(spec: str, today: dt.date | None = None) -> str:
    """The SCENARIO of ``SCENARIO:YYYY-MM-DD``; Usage unless the date is today (UTC)."""
    today = today or dt.datetime.now(dt.UTC).date()
    pattern, _, day = spec.rpartition(":")
    if not pattern or day != today.isoformat():
        raise Usage(
            f"{BREAK_ON_PURPOSE} takes SCENARIO:{today.isoformat()} (today's UTC date, "
            f"so it cannot be left on by accident); got {spec!r}"
        )
    return pattern


def break_on_purpose(
    scenarios: list[dict[str, Any]], spec: str | None, today: dt.date | None = None
) -> list[str]:
    """The test-only switch: ``PATTERN:YYYY-MM-DD`` with today's UTC date turns
    every promise whose id starts with PATTERN into broken.  Any other date is a
    usage error, so the switch cannot be left on in a cron line: it fails the
    next day.  Returns the ids changed (each record keeps them)."""
    if spec is None:
        return []
    pattern = break_pattern(spec, today)
    hit = []
    for s in scenarios:
        if s["id"].startswith(pattern) and s.get("kind") == "promise":
            s["status"] = s["verdict"] = "broken"
            s["observed"] = f"broken on purpose ({BREAK_ON_PURPOSE}): {s['observed']}"
            hit.append(s["id"])
    if not hit:
        raise Usage(f"{BREAK_ON_PURPOSE} {pattern!r}: no promise of this run starts with it")
    return hit


def make_record(
    collected: dict[str, Any],
    *,
    host_name: str,
    date: str,
    run_id: str | None = None,
    kernel_image: str | None = None,
    revision: tuple[str | None, bool] = (None, False),
    version: str = "?",
    exit_code: int | None = None,
    note: str = "",
    forced: Sequence[str] = (),
) -> dict[str, Any]:
    """A history record from what :func:`collect` gathered (on this host or in
    a booted kernel)."""
    doc = collected.get("run_doc") or {}
    host = doc.get("host") or {}
    scenarios = collected.get("scenarios")
    if scenarios is None:
        scenarios = scenarios_of(doc)
    pyt = junit_summary(collected.get("junit_xml"))
    known: dict[str, dict[str, Any]] = {}
    for s in scenarios:
        if s.get("known"):
            k = known.setdefault(s["known"]["id"], {**s["known"], "scenarios": []})
            k["scenarios"].append(s["id"])
            k["status"] = s["status"]
    return {
        "schema": SCHEMA,
        "run_id": run_id or uuid.uuid4().hex,
        "date": date,
        "host": {
            "name": host_name,
            "kernel_release": host.get("kernel_release") or collected.get("kernel_release"),
            "backend": host.get("kvm_backend") or collected.get("backend"),
            "kvm_modules": host.get("kvm_modules"),
            "cpu_model": collected.get("cpu_model"),
            "cores": host.get("cpus") or collected.get("cores"),
            "facts": host_facts({**host, **(collected.get("host_info") or {})}),
        },
        "kernel_image": kernel_image,
        "booted_on": collected.get("booted_on"),  # --kernel: the machine QEMU ran on
        "harness": {
            "revision": revision[0],
            "dirty": revision[1],
            "version": doc.get("kvmharness_version") or version,
        },
        "exit_code": exit_code,
        "note": note,
        "run": {
            "exit_code": collected.get("run_rc"),
            "total_wall_s": doc.get("total_wall_s"),
            "args": collected.get("run_args"),
            "error": collected.get("run_error"),
        },
        "pytest": {
            "exit_code": collected.get("pytest_rc"),
            "args": collected.get("pytest_args"),
            **{k: pyt[k] for k in ("tests", "failures", "errors", "skipped", "time_s", "failed")},
        },
        "scenarios": scenarios,
        "known_issues": list(known.values()),
        "broken_on_purpose": list(forced),
    }


# --------------------------------------------------------------------------
# running the suite and the matrix


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _relay(stream: Any, keep: list[str], echo: bool) -> None:
    for line in iter(stream.readline, ""):
        keep.append(line)
        if echo:
            sys.stderr.write(line)
            sys.stderr.flush()
    stream.close()


def _run(cmd: list[str], timeout: float, echo: bool = True, **kw: Any) -> tuple[int, str, str]:
    """Run ``cmd`` in its own process group, its output relayed to our stderr as it
    comes (the CI log shows progress) and kept; on timeout or on our own death
    (SIGTERM unwinds as an exception) the whole group is killed."""
    import threading

    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        **kw,
    )
    out: list[str] = []
    err: list[str] = []
    relays = [
        threading.Thread(target=_relay, args=(proc.stdout, out, echo), daemon=True),
        threading.Thread(target=_relay, args=(proc.stderr, err, echo), daemon=True),
    ]
    for t in relays:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for t in relays:
            t.join(timeout=5)
    if timed_out:
        return EXIT_HARNESS, "".join(out), "".join(err) + f"nightly: killed after {timeout:.0f} s\n"
    rc = proc.returncode
    return (128 - rc if rc < 0 else rc), "".join(out), "".join(err)


def collect(
    pytest_args: list[str] | None, run_args: list[str], *, root: Path = ROOT, log: Any = None
) -> dict[str, Any]:
    """Run pytest (unless ``pytest_args`` is None) and ``kvmharness run --json``
    here; everything the record needs, as one JSON-able dict."""
    log = log or (lambda msg: print(f"nightly: {msg}", file=sys.stderr, flush=True))
    bin_dir = Path(sys.executable).parent
    out: dict[str, Any] = {
        "kernel_release": platform.release(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "pytest_args": pytest_args,
        "run_args": run_args,
        "pytest_rc": None,
        "junit_xml": None,
    }
    env = dict(os.environ, KVMHARNESS_NIGHTLY_INNER="1")
    with tempfile.TemporaryDirectory(prefix="kvmharness-nightly-") as tmp:
        if pytest_args is not None:
            junit = os.path.join(tmp, "junit.xml")
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={junit}",
                *pytest_args,
            ]
            log("pytest: " + shlex.join(cmd[1:]))
            rc, so, se = _run(cmd, PYTEST_TIMEOUT_S, cwd=root, env=env)
            out["pytest_rc"] = rc
            out["pytest_tail"] = _tail(so + se)
            with contextlib.suppress(OSError):
                out["junit_xml"] = Path(junit).read_text(encoding="utf-8")
            log(f"pytest exited {rc}: {_tail(so, 1)}")
        doc_path = os.path.join(tmp, "run.json")
        kvmharness = bin_dir / "kvmharness"
        cmd = [
            str(kvmharness) if kvmharness.exists() else "kvmharness",
            "run",
            "--quiet",
            "--json",
            doc_path,
            *run_args,
        ]
        log("kvmharness: " + shlex.join(cmd[1:]))
        rc, so, se = _run(cmd, RUN_TIMEOUT_S, cwd=root, env=env)
        out["run_rc"] = rc
        out["run_output"] = so
        try:
            with open(doc_path, encoding="utf-8") as f:
                out["run_doc"] = json.load(f)
        except (OSError, ValueError):
            out["run_doc"] = None
            out["run_error"] = _tail(se or so, 3) or f"kvmharness run exited {rc}, no JSON"
        log(f"kvmharness run exited {rc}")
        # the host's facts, probes included (master clock), even when run could not test
        cmd = [cmd[0], "info", "--json"]
        rc, so, se = _run(cmd, RUN_TIMEOUT_S, echo=False, cwd=root, env=env)
        try:
            out["host_info"] = json.loads(so) if rc == 0 else None
        except ValueError:
            out["host_info"] = None
        if out["host_info"] is None:
            log(f"kvmharness info exited {rc}: {_tail(se or so, 1)}")
    return out


def kernel_command(
    image: str,
    modules: str | None,
    pytest_args: list[str] | None,
    run_args: list[str],
    inner_json: str,
    *,
    root: Path = ROOT,
    bisect_kernel: str | None = None,
    timeout: float = KERNEL_TIMEOUT_S,
) -> list[str]:
    """scripts/bisect-kernel booting ``image`` and running this script's
    ``--inner`` there; bisect-kernel moves the ``--json`` file back out."""
    inner = [
        str(root / ".venv" / "bin" / "python"),
        str(root / "scripts" / "nightly"),
        "--inner",
        "--run-args",
        shlex.join(run_args),
    ]
    inner += (
        ["--pytest-args", shlex.join(pytest_args)] if pytest_args is not None else ["--no-pytest"]
    )
    cmd = [
        *(
            shlex.split(bisect_kernel)
            if bisect_kernel
            else [str(root / "scripts" / "bisect-kernel")]
        ),
        image,
        "--timeout",
        str(timeout),
    ]
    if modules:
        cmd += ["--modules", modules]
    return cmd + ["--inner-cmd", shlex.join(inner), "--", "--json", inner_json]


def collect_in_kernel(
    image: str,
    modules: str | None,
    pytest_args: list[str] | None,
    run_args: list[str],
    *,
    bisect_kernel: str | None = None,
    log: Any = None,
) -> dict[str, Any]:
    log = log or (lambda msg: print(f"nightly: {msg}", file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="kvmharness-nightly-") as tmp:
        inner_json = os.path.join(tmp, "inner.json")
        cmd = kernel_command(
            image, modules, pytest_args, run_args, inner_json, bisect_kernel=bisect_kernel
        )
        log("booting: " + shlex.join(cmd))
        rc, so, se = _run(cmd, KERNEL_TIMEOUT_S + 60)
        try:
            with open(inner_json, encoding="utf-8") as f:
                out = json.load(f)
        except (OSError, ValueError):
            # the kernel did not boot, KVM did not load, ...: bisect-kernel's code says which
            why = _tail(se, 1) or f"bisect-kernel exited {rc}"
            return {
                "run_rc": rc if rc == EXIT_UNTESTABLE or rc > EXIT_HARNESS else EXIT_HARNESS,
                "run_doc": None,
                "run_error": why,
                "pytest_rc": None,
                "pytest_args": pytest_args,
                "run_args": run_args,
                "kernel_release": None,
                "cpu_model": None,
                "cores": None,
            }
    return out


# --------------------------------------------------------------------------
# comparing runs


def fmt_value(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ns":
        a = abs(v)
        if a >= 1e9:
            return f"{v / 1e9:.3g} s"
        if a >= 1e6:
            return f"{v / 1e6:.3g} ms"
        if a >= 1e3:
            return f"{v / 1e3:.3g} us"
        return f"{v:.0f} ns"
    if unit == "s":
        return f"{v:.3g} s"
    return f"{v:g}" if isinstance(v, float) else str(v)


def cell_figure(s: dict[str, Any]) -> str:
    """The key figure a cell shows beside the verdict (none where nothing was measured)."""
    if s.get("status") in ("untestable", "not supported", "harness error"):
        return ""
    f = s.get("figures") or {}
    fam = s.get("family")
    if fam == "steal":
        return f"jump {fmt_value(f.get('largest_jump_ns'), 'ns')}"
    if fam == "clock":
        parts = []
        if f.get("largest_jump_ns") is not None:
            parts.append(f"jump {fmt_value(f['largest_jump_ns'], 'ns')}")
        if f.get("warps"):
            parts.append(f"{f['warps']} warps")
        elif f.get("warps") == 0 and f.get("largest_jump_ns") is None:
            parts.append("0 warps")
        return ", ".join(parts)
    if fam == "postcopy":
        return f"blocktime {fmt_value(f.get('blocktime_max_ns'), 'ns')}"
    return ""


def moved(old: Any, new: Any, unit: str, pct: float = MOVE_PCT) -> bool:
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in (old, new)):
        return False
    d = abs(new - old)
    return d > MOVE_FLOOR[unit] and d > min(abs(old), abs(new)) * pct / 100.0


def move_rule(pct: float = MOVE_PCT) -> str:
    return (
        f"by more than {pct:g}% of the smaller of the two values"
        + (" (doubled or halved)" if pct == 100 else "")
        + " and by more than "
        f"{fmt_value(MOVE_FLOOR['ns'], 'ns')} (counts: more than {MOVE_FLOOR['count']}; "
        f"the run's wall time: more than {MOVE_FLOOR['s']:g} s)"
    )


BAD = {"broken", "harness error"}


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rsplit(" ", 1)[0] + " ..."


def changes(
    prev: dict[str, Any] | None, cur: dict[str, Any], pct: float = MOVE_PCT
) -> dict[str, list[str]]:
    """What changed from ``prev`` to ``cur`` (two records of one host)."""
    out: dict[str, list[str]] = {
        "new broken": [],
        "capability lost": capabilities_lost(prev, cur),
        "fixed": [],
        "fixed?": [],
        "new known-broken": [],
        "figure moved": [],
        "new tests failing": [],
        "no longer run": [],
    }
    cur_s = {s["id"]: s for s in cur["scenarios"]}
    for s in cur["scenarios"]:
        if s["status"] == "fixed?":
            k = s.get("known") or {}
            out["fixed?"].append(
                f"{s['id']}: holds, but known issue {k.get('id')} says it "
                "breaks here: update the known-issues file"
            )
    if prev is None:
        for s in cur["scenarios"]:
            if s["status"] in BAD:
                out["new broken"].append(f"{s['id']}: {s['status']} (first run)")
        return out
    prev_s = {s["id"]: s for s in prev["scenarios"]}
    for sid, s in cur_s.items():
        p = prev_s.get(sid)
        before = p["status"] if p else "not run"
        if s["status"] in BAD and before not in BAD:
            out["new broken"].append(
                f"{sid}: {before} -> {s['status']}: " + shorten(s["observed"], 200)
            )
        elif s["status"] == "known-broken" and before not in ("known-broken", "not run"):
            out["new known-broken"].append(f"{sid}: {before} -> known-broken")
        elif s["status"] in ("holds", "fixed?") and before in BAD | {"known-broken"}:
            out["fixed"].append(f"{sid}: {before} -> {s['status']}")
        if p is None:
            continue
        for key, label, unit in KEY_FIGURES.get(s["family"], []):
            a, b = (p.get("figures") or {}).get(key), (s.get("figures") or {}).get(key)
            if moved(a, b, unit, pct):
                out["figure moved"].append(
                    f"{sid}: {label} {fmt_value(a, unit)} -> {fmt_value(b, unit)}"
                )
    a, b = (prev.get("run") or {}).get("total_wall_s"), (cur.get("run") or {}).get("total_wall_s")
    if moved(a, b, "s", pct):
        out["figure moved"].append(
            f"total wall time of the matrix {fmt_value(a, 's')} -> {fmt_value(b, 's')}"
        )
    was_failing = set((prev.get("pytest") or {}).get("failed") or [])
    out["new tests failing"] = [
        t for t in (cur.get("pytest") or {}).get("failed") or [] if t not in was_failing
    ]
    out["no longer run"] = sorted(set(prev_s) - set(cur_s)) if cur["scenarios"] else []
    return out


# --------------------------------------------------------------------------
# the report: text and HTML


EXIT_WORDS = {
    EXIT_OK: "good",
    EXIT_BROKEN: "bad: a promise broke or a test failed",
    EXIT_UNTESTABLE: "cannot test",
    EXIT_HARNESS: "harness fault",
}


def exit_word(code: Any) -> str:
    if code is None:
        return "-"
    return EXIT_WORDS.get(code, f"killed by signal {code - 128}" if code > 128 else "?")


def run_label(rec: dict[str, Any]) -> str:
    date = str(rec.get("date", ""))[:16].replace("T", " ")
    h = rec.get("harness") or {}
    return f"{date} {(h.get('revision') or '?')[:7]}{'+' if h.get('dirty') else ''}"


def by_host(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: str(r.get("date"))):  # stable: file order on ties
        out.setdefault(host_key(r), []).append(r)
    return out


def scenario_rows(runs: list[dict[str, Any]]) -> list[str]:
    """Every scenario id of these runs, in the order the latest run ran them."""
    ids: list[str] = []
    for r in reversed(runs):
        for s in r["scenarios"]:
            if s["id"] not in ids:
                ids.append(s["id"])
    return ids


def text_report(
    records: list[dict[str, Any]],
    problems: list[Problem],
    last: int,
    pct: float = MOVE_PCT,
    html_path: str | None = None,
) -> str:
    from tabulate import tabulate

    lines: list[str] = []
    for host, runs in by_host(records).items():
        runs = runs[-last:]
        cur = runs[-1]
        prev = runs[-2] if len(runs) > 1 else None
        h = cur["host"]
        lines.append(
            f"== host {host}: {h.get('cpu_model')}, {h.get('cores')} cores, "
            f"{h.get('backend')}, kernel {h.get('kernel_release')}"
        )
        lines.append(
            f"latest run {run_label(cur)}: exit {cur.get('exit_code')} "
            f"({exit_word(cur.get('exit_code'))})" + (f"; {cur['note']}" if cur.get("note") else "")
        )
        if cur.get("broken_on_purpose"):
            lines.append(
                "!! TEST SWITCH: broken on purpose: " + ", ".join(cur["broken_on_purpose"])
            )
        lines.append(pytest_line(cur))
        lines.append("")
        lines.append(
            "changes since the previous run"
            + (f" ({run_label(prev)})" if prev else " (no previous run)")
            + f"; figures compared {move_rule(pct)}:"
        )
        ch = changes(prev, cur, pct)
        any_change = False
        for what, items in ch.items():
            for it in items:
                any_change = True
                lines.append(f"  {what}: {it}")
        if not any_change:
            lines.append("  none")
        lines.append("")
        ids = scenario_rows(runs)
        table = []
        for sid in ids:
            row = [sid]
            for r in runs:
                s = next((x for x in r["scenarios"] if x["id"] == sid), None)
                row.append(f"{s['status']} {cell_figure(s)}".strip() if s else "-")
            table.append(row)
        headers = ["scenario"] + [f"#{i + 1}" for i in range(len(runs))]
        lines.append(tabulate(table, headers=headers) if table else "(no scenario ran)")
        for i, r in enumerate(runs):
            lines.append(
                f"  #{i + 1}: {run_label(r)}, kernel {r['host'].get('kernel_release')}, "
                f"exit {r.get('exit_code')}"
            )
        known = cur.get("known_issues") or []
        if known:
            lines.append("")
            lines.append("known issues that matched in the latest run:")
            for k in known:
                lines.append(
                    f"  {k['id']} ({k['status']}): {', '.join(k['scenarios'])}; {k.get('link')}"
                )
        lines.append("")
    for p in problems:
        lines.append(f"history: {p}")
    if html_path:
        lines.append(f"report: {html_path}")
    return "\n".join(lines).rstrip() + "\n"


def pytest_line(rec: dict[str, Any]) -> str:
    p = rec.get("pytest") or {}
    if p.get("exit_code") is None:
        return "pytest: not run"
    passed = p["tests"] - p["failures"] - p["errors"] - p["skipped"]
    return (
        f"pytest {' '.join(p.get('args') or [])}: exit {p['exit_code']}, {passed} passed, "
        f"{p['failures'] + p['errors']} failed, {p['skipped']} skipped "
        f"in {p.get('time_s', 0):.0f} s"
        + (f"; failing: {', '.join(p['failed'][:5])}" if p.get("failed") else "")
    )


def _series(
    runs: list[dict[str, Any]], fam: str, key: str, unit: str, kind: str
) -> tuple[dict[str, list[float | None]], list[tuple[int, float]]]:
    """Per scenario of ``fam`` and ``kind``: its figure per run (ms for ns), and the
    (run, value) points whose verdict was broken or harness error."""
    series: dict[str, list[float | None]] = {}
    bad: list[tuple[int, float]] = []
    for sid in scenario_rows(runs):
        if not sid.startswith(fam + "/"):
            continue
        vals: list[float | None] = []
        for i, r in enumerate(runs, 1):
            s = next((x for x in r["scenarios"] if x["id"] == sid), None)
            if s is None or (s.get("kind") or "promise") != kind:
                vals.append(None)
                continue
            v = (s.get("figures") or {}).get(key)
            v = v / 1e6 if unit == "ns" and isinstance(v, int | float) else v
            vals.append(v)
            if v is not None and s["status"] in BAD:
                bad.append((i, v))
        if any(v is not None for v in vals):
            series[sid[len(fam) + 1 :]] = vals
    return series, bad


def plots(runs: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """PNG trend plots of the key figures over ``runs`` (one host): (title, png).
    One plot per family, figure and kind (promises apart from characterizations,
    whose figures live on other scales), and the wall time per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    out = []
    xs = list(range(1, len(runs) + 1))
    labels = [
        f"#{i}\n{str(r.get('date', ''))[5:10]}\n{str(r.get('date', ''))[11:16]}"
        for i, r in zip(xs, runs, strict=True)
    ]
    jobs: list[tuple[str, dict[str, list[float | None]], list[tuple[int, float]], str]] = []
    for fam, figs in KEY_FIGURES.items():
        for key, label, unit in figs:
            for kind, what in (("promise", "promises"), ("characterize", "characterizations")):
                series, bad = _series(runs, fam, key, unit, kind)
                if unit == "count" and not any(v for vs in series.values() for v in vs if v):
                    continue  # a flat zero line of warps says nothing the table does not
                if series:
                    jobs.append((f"{fam}: {label}, {what}", series, bad, unit))
    walls: dict[str, list[float | None]] = {
        "all": [(r.get("run") or {}).get("total_wall_s") for r in runs]
    }
    for fam in KEY_FIGURES:
        per = [
            sum(
                (s.get("figures") or {}).get("wall_s") or 0
                for s in r["scenarios"]
                if s.get("family") == fam
            )
            or None
            for r in runs
        ]
        if any(per):
            walls[fam] = per
    if any(v is not None for v in walls["all"]):
        jobs.append(("wall time of the matrix, per family", walls, [], "s"))
    colors = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    for title, series, bad, unit in jobs:
        fig, ax = plt.subplots(figsize=(11, 3.4), dpi=100)
        for n, (name, vals) in enumerate(series.items()):
            pts = [(x, v) for x, v in zip(xs, vals, strict=True) if v is not None]
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="os^Dv"[n // 10 % 5],
                markersize=4,
                linewidth=1.3,
                color=colors[n % len(colors)],
                label=name,
                linestyle="-" if n < 10 else "--",
            )
        if bad:
            ax.scatter(
                [b[0] for b in bad],
                [b[1] for b in bad],
                marker="x",
                s=80,
                color="#c00000",
                linewidths=2,
                zorder=5,
                label="broken / harness error",
            )
        vals = [v for vs in series.values() for v in vs if v is not None]
        if vals and min(vals) > 0 and max(vals) / min(vals) > 20:
            ax.set_yscale("log")  # e.g. cross-process jumps of a second beside 10 ms ones
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_xlim(0.5, len(runs) + 0.5)
        ax.set_ylabel({"ns": "ms", "s": "s", "count": "count"}[unit])
        ax.set_title(title, fontsize=11, loc="left")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.subplots_adjust(left=0.07, right=0.70, top=0.89, bottom=0.22)  # plots align
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out.append((title, buf.getvalue()))
    return out


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em;
       color: #1d2330; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
.sub { color: #555; margin-top: 0; }
.verdict { display: inline-block; padding: 0.35em 0.8em; border-radius: 4px; font-weight: 600; }
.v0 { background: #dff3e3; color: #135c25; } .v1 { background: #fbdada; color: #8a1111; }
.v125 { background: #eeeeee; color: #444; } .v128 { background: #fde9c8; color: #7a4a00; }
.banner { background: #8a1111; color: #fff; padding: 0.6em 1em; border-radius: 4px;
          font-weight: 600; }
table.runs { border-collapse: collapse; font-size: 0.85em; margin-top: 0.5em; }
div.scroll { overflow-x: auto; }
table.runs th, table.runs td { border: 1px solid #d6d9de; padding: 0.3em 0.5em;
                               vertical-align: top; }
table.runs th { background: #f3f4f6; text-align: left; font-weight: 600; }
table.runs th.run { min-width: 8em; font-weight: normal; white-space: nowrap; }
table.runs td.sid { font-family: ui-monospace, monospace; white-space: nowrap; }
td .st { font-weight: 600; } td .fig { color: #444; display: block; white-space: nowrap; }
td.holds { background: #eef8f0; } td.broken { background: #fbdada; }
td.harness-error { background: #fde9c8; } td.known-broken { background: #fff2cc; }
td.fixed\\? { background: #d9ecff; } td.characterized { background: #f6f6f6; }
td.untestable, td.not-supported { background: #eeeeee; color: #666; }
td.none { color: #aaa; text-align: center; }
td.latest, th.latest { border-left: 3px solid #4a6fa5; }
th .rc { font-weight: 600; padding: 0 0.3em; border-radius: 3px; }
td.sid.changed { background: #fff1f1; font-weight: 700; border-left: 3px solid #c00000; }
ul.changes li { margin: 0.2em 0; } .what { font-weight: 600; }
.what.new-broken, .what.capability-lost { color: #8a1111; } .what.fixed { color: #135c25; }
img.plot { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
.muted { color: #777; } code { font-size: 0.95em; }
dl.known dt { font-weight: 600; margin-top: 0.5em; } dl.known dd { margin-left: 1.2em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def html_report(
    records: list[dict[str, Any]], problems: list[Problem], last: int, pct: float = MOVE_PCT
) -> str:
    hosts = by_host(records)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>kvmharness nightly</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>kvmharness nightly</h1>",
        f"<p class='sub'>{len(records)} runs on {len(hosts)} host(s); "
        f"the last {last} per host; rendered {now}</p>",
    ]
    if not records:
        parts.append("<p>No run in the history yet.</p>")
    for host, runs in hosts.items():
        runs = runs[-last:]
        parts += _host_section(host, runs, pct, multi=len(hosts) > 1)
    if problems:
        parts.append("<h2>History lines skipped</h2><ul>")
        parts += [f"<li><code>{_e(p)}</code></li>" for p in problems]
        parts.append("</ul>")
    parts.append(
        "<p class='muted'>Verdicts: <b>holds</b> a promise held; <b>broken</b> it "
        "broke; <b>known-broken</b> it broke as a known issue says (not counted); "
        "<b>fixed?</b> it held where a known issue says it breaks (counted); "
        "<b>characterized</b> measured, never fails. Exit codes: 0 good, 1 bad, "
        "125 cannot test, 128 harness fault.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def _host_section(host: str, runs: list[dict[str, Any]], pct: float, multi: bool) -> list[str]:
    cur = runs[-1]
    prev = runs[-2] if len(runs) > 1 else None
    h = cur["host"]
    code = cur.get("exit_code")
    cls = f"v{code}" if code in (0, 1, 125, 128) else "v128"
    p = [
        f"<h2>{'Host ' if multi else ''}{_e(host)}</h2>" if multi else "",
        f"<p class='sub'>{_e(host)} &middot; {_e(h.get('cpu_model'))} &middot; "
        f"{_e(h.get('cores'))} cores &middot; KVM backend {_e(h.get('backend'))} &middot; "
        f"kernel {_e(h.get('kernel_release'))}"
        + (f" ({_e(cur['kernel_image'])})" if cur.get("kernel_image") else "")
        + "</p>",
        f"<p><span class='verdict {cls}'>latest run: exit {_e(code)}, "
        f"{_e(exit_word(code))}</span> <span class='muted'>{_e(run_label(cur))}"
        f"{' &middot; ' + _e(cur['note']) if cur.get('note') else ''}</span></p>",
    ]
    if cur.get("broken_on_purpose"):
        p.append(
            f"<p class='banner'>Test switch {BREAK_ON_PURPOSE}: these results were "
            f"made broken on purpose: {_e(', '.join(cur['broken_on_purpose']))}</p>"
        )
    p.append(f"<p>{_e(pytest_line(cur))}</p>")
    # changes
    p.append(
        "<h3>Changes since the previous run"
        + (
            f" <span class='muted'>({_e(run_label(prev))})</span>"
            if prev
            else " <span class='muted'>(no previous run)</span>"
        )
        + "</h3>"
    )
    ch = changes(prev, cur, pct)
    items = [(what, it) for what, its in ch.items() for it in its]
    if items:
        p.append("<ul class='changes'>")
        p += [
            f"<li><span class='what {what.replace(' ', '-')}'>{_e(what)}</span>: {_e(it)}</li>"
            for what, it in items
        ]
        p.append("</ul>")
    else:
        p.append("<p>Nothing changed: no new broken, nothing fixed, no figure moved.</p>")
    p.append(
        f"<p class='muted'>A figure &ldquo;moved&rdquo; when it changed {_e(move_rule(pct))}.</p>"
    )
    # table
    p.append(f"<h3>The last {len(runs)} run(s)</h3>")
    ids = scenario_rows(runs)
    if not ids:
        p.append("<p>No scenario ran in these runs.</p>")
    else:
        p.append("<div class='scroll'><table class='runs'><thead><tr><th>scenario</th>")
        for i, r in enumerate(runs):
            rc = r.get("exit_code")
            date = str(r.get("date", ""))[5:16].replace("T", " ")  # the year is in the title
            hv = r.get("harness") or {}
            rev = (hv.get("revision") or "?")[:7] + ("+" if hv.get("dirty") else "")
            latest = " latest" if i == len(runs) - 1 else ""
            p.append(
                f"<th class='run{latest}' title='{_e(r.get('date'))}, run "
                f"{_e(r.get('run_id'))}'>#{i + 1} &middot; {_e(date)}<br>"
                f"<span class='muted'>{_e(r['host'].get('kernel_release'))}<br>"
                f"{_e(rev)}</span> <span class='rc v{_e(rc)}'>exit {_e(rc)}</span></th>"
            )
        p.append("</tr></thead><tbody>")
        prev_s = {x["id"]: x["status"] for x in (prev or {}).get("scenarios", [])}
        for sid in ids:
            now = next((x["status"] for x in cur["scenarios"] if x["id"] == sid), None)
            changed = prev is not None and now is not None and prev_s.get(sid) not in (None, now)
            mark = " changed' title='changed since the previous run" if changed else ""
            p.append(f"<tr><td class='sid{mark}'>{_e(sid)}</td>")
            for i, r in enumerate(runs):
                s = next((x for x in r["scenarios"] if x["id"] == sid), None)
                latest = " latest" if i == len(runs) - 1 else ""
                if s is None:
                    p.append(f"<td class='none{latest}'>&ndash;</td>")
                    continue
                st = s["status"]
                title = s["observed"] or st
                p.append(
                    f"<td class='{_e(st.replace(' ', '-'))}{latest}' title='{_e(title)}'>"
                    f"<span class='st'>{_e(st)}</span>"
                    f"<span class='fig'>{_e(cell_figure(s))}</span></td>"
                )
            p.append("</tr>")
        p.append("</tbody></table></div>")
        p.append(
            "<p class='muted'>Hover a cell for what was observed. A scenario id is "
            "family/variant@vCPUs.</p>"
        )
    # plots
    pngs = plots(runs)
    if pngs:
        p.append("<h3>Trends</h3>")
        for title, png in pngs:
            data = base64.b64encode(png).decode()
            p.append(f"<img class='plot' alt='{_e(title)}' src='data:image/png;base64,{data}'>")
    # known issues
    known = cur.get("known_issues") or []
    p.append("<h3>Known issues that matched in the latest run</h3>")
    if known:
        p.append("<dl class='known'>")
        for k in known:
            p.append(
                f"<dt>{_e(k['id'])} &mdash; {_e(k['status'])}</dt>"
                f"<dd>{_e(k.get('reason'))}<br><span class='muted'>scenarios: "
                f"{_e(', '.join(k['scenarios']))}; link: {_e(k.get('link'))}</span></dd>"
            )
        p.append("</dl>")
    else:
        p.append("<p>None.</p>")
    return p


# --------------------------------------------------------------------------
# KCIDB


def _kcidb_path(*levels: str) -> str:
    """A KCIDB test path: dot-separated levels of [A-Za-z0-9_-]."""
    return ".".join(re.sub(r"[^A-Za-z0-9_-]+", "_", x).strip("_") or "_" for x in levels if x)


def _case_levels(name: str) -> list[str]:
    """``tests.test_a.TestX::test_y[p/q]`` -> tests, test_a, TestX, test_y[p/q]."""
    classname, _, test = name.rpartition("::")
    return [*classname.split("."), test]


def kcidb_status(status: str) -> str:
    return {
        "holds": "PASS",
        "broken": "FAIL",
        "known-broken": "FAIL",
        "fixed?": "PASS",
        "characterized": "DONE",
        "untestable": "SKIP",
        "not supported": "SKIP",
        "harness error": "ERROR",
    }.get(status, "MISS")


def kcidb(rec: dict[str, Any], junit_xml: str | None = None) -> dict[str, Any]:
    """The run as KCIDB I/O JSON (schema v5): one checkout (the kernel), one
    build, a test per scenario (its key figure as ``number``, every figure in
    ``misc``) and per pytest test case."""
    rid = rec["run_id"]
    h = rec["host"]
    start = rec["date"]
    checkout_id = f"{ORIGIN}:{h.get('name')}:{h.get('kernel_release')}:{rid}"
    build_id = f"{ORIGIN}:build:{rid}"
    env = {
        "comment": f"{h.get('name')}: {h.get('cpu_model')}, {h.get('cores')} cores, "
        f"KVM {h.get('backend')}",
        "misc": {k: v for k, v in h.items() if v is not None},
    }
    harness = {
        "revision": rec["harness"].get("revision"),
        "dirty": rec["harness"].get("dirty"),
        "version": rec["harness"].get("version"),
    }
    tests = []
    for s in rec["scenarios"]:
        t: dict[str, Any] = {
            "id": f"{ORIGIN}:{rid}:{s['id']}",
            "build_id": build_id,
            "origin": ORIGIN,
            "path": _kcidb_path(
                "kvmharness", s["family"], *s["variant"].split("/"), f"vcpus_{s['vcpus']}"
            ),
            "status": kcidb_status(s["status"]),
            "start_time": start,
            "environment": env,
            "comment": f"{s['id']}: {s['status']}",
            "misc": {
                "verdict": s["status"],
                "kind": s.get("kind"),
                "observed": s.get("observed"),
                "known_issue": s.get("known"),
                "figures": {k: v for k, v in (s.get("figures") or {}).items() if v is not None},
            },
        }
        wall = (s.get("figures") or {}).get("wall_s")
        if isinstance(wall, int | float):
            t["duration"] = float(wall)
        key = KEY_FIGURES.get(s["family"], [(None, "", "")])[0]
        v = (s.get("figures") or {}).get(key[0]) if key[0] else None
        if isinstance(v, int | float) and key[2] == "ns":
            t["number"] = {"value": v / 1e9, "unit": "s", "prefix": "metric"}
        elif isinstance(v, int | float):
            t["number"] = {"value": v}
        tests.append(t)
    for name, state, secs in junit_summary(junit_xml)["cases"]:
        tests.append(
            {
                "id": f"{ORIGIN}:{rid}:pytest:{name}",
                "build_id": build_id,
                "origin": ORIGIN,
                "path": _kcidb_path("kvmharness", "pytest", *_case_levels(name)),
                "status": state,
                "start_time": start,
                "duration": float(secs),
                "environment": env,
                "comment": name,
            }
        )
    return {
        "version": {"major": 5, "minor": 3},
        "checkouts": [
            {
                "id": checkout_id,
                "origin": ORIGIN,
                "start_time": start,
                "valid": True,
                "comment": f"kernel {h.get('kernel_release')} on {h.get('name')}",
                "misc": {
                    "kernel_release": h.get("kernel_release"),
                    "kernel_image": rec.get("kernel_image"),
                    "harness": harness,
                },
            }
        ],
        "builds": [
            {
                "id": build_id,
                "checkout_id": checkout_id,
                "origin": ORIGIN,
                "start_time": start,
                "architecture": re.sub(r"[^a-z0-9_]", "_", platform.machine().lower()),
                "comment": f"kernel {h.get('kernel_release')}"
                + (
                    f" from {rec['kernel_image']}"
                    if rec.get("kernel_image")
                    else " (the running kernel)"
                ),
                "status": "PASS" if rec.get("exit_code") != EXIT_UNTESTABLE else "MISS",
                "misc": {"nightly_exit_code": rec.get("exit_code"), "harness": harness},
            }
        ],
        "tests": tests,
    }


# --------------------------------------------------------------------------
# the command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/nightly",
        description="Nightly hardware CI: run the KVM tests and the scenario matrix on this "
        "host's KVM (or inside --kernel IMAGE), append a record to a JSON-lines "
        "history, render the trend report. Exit 0 good, 1 a promise broke that no "
        "known issue covers, a known issue looks fixed or a KVM test failed, "
        "125 nothing could be tested, 128 harness fault, 2 bad usage.",
        epilog=f"Test-only: {BREAK_ON_PURPOSE} SCENARIO:YYYY-MM-DD (today's UTC date) turns "
        "the promises whose id starts with SCENARIO (e.g. steal/cancelled-save) into "
        "broken after the run, marked in the record and on the page; any other date is "
        "refused, so it cannot stay on in a cron line.",
    )
    p.add_argument(
        "--history",
        default="nightly-history.jsonl",
        metavar="FILE",
        help="JSON-lines history to append to and report from (default %(default)s)",
    )
    p.add_argument(
        "--out",
        default="nightly-report",
        metavar="DIR",
        help="where index.html, junit.xml and run.json go (default %(default)s)",
    )
    p.add_argument(
        "--kernel", metavar="IMAGE", help="run inside this kernel through scripts/bisect-kernel"
    )
    p.add_argument("--modules", metavar="DIR", help="with --kernel: KVM modules to insmod")
    p.add_argument("--kcidb", metavar="FILE", help="also write this run as KCIDB I/O JSON")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="FILE",
        help="no run: merge these histories (keyed by host) into --history and render the report",
    )
    p.add_argument(
        "--last",
        type=int,
        default=10,
        metavar="N",
        help="runs per host in the report (default %(default)s)",
    )
    p.add_argument(
        "--move-pct",
        type=float,
        default=MOVE_PCT,
        metavar="PCT",
        help="a figure moved when it changed since the previous run by more than "
        "PCT%% of the smaller of its two values and by more than 10 ms (counts: "
        "1; wall time: 2 s) (default %(default)s: doubled or halved)",
    )
    p.add_argument(
        "--host-name",
        default=None,
        help="the host key of the record (default: this machine's host name)",
    )
    p.add_argument(
        "--run-args",
        default="",
        metavar="ARGS",
        help="shell words appended to `kvmharness run` (e.g. '-s steal --vcpus 1')",
    )
    p.add_argument(
        "--pytest-args",
        default=None,
        metavar="ARGS",
        help=f"shell words for pytest instead of the default '{shlex.join(DEFAULT_PYTEST_ARGS)}'",
    )
    p.add_argument("--no-pytest", action="store_true", help="do not run pytest")
    p.add_argument(BREAK_ON_PURPOSE, metavar="SCENARIO:DATE", help=argparse.SUPPRESS)
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)  # --inner's output (bisect-kernel moves it)
    p.add_argument("--bisect-kernel", help=argparse.SUPPRESS)  # tests: a stand-in without QEMU
    return p


def write_text(path: str, text: str) -> None:
    from kvmharness.files import atomic_write_text

    atomic_write_text(path, text)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except Usage as exc:
        print(f"nightly: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # a bug of the nightly must not read as "a promise broke"
        import traceback

        traceback.print_exc()
        print(f"nightly: internal error (exit {EXIT_HARNESS})", file=sys.stderr)
        return EXIT_HARNESS


def _term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    signal.signal(signal.SIGTERM, _term)  # unwinds: children are killed, temp files removed
    try:
        run_args = shlex.split(args.run_args)
        pytest_args = (
            None
            if args.no_pytest
            else shlex.split(args.pytest_args)
            if args.pytest_args is not None
            else list(DEFAULT_PYTEST_ARGS)
        )
    except ValueError as exc:
        raise Usage(f"--run-args/--pytest-args: {exc}") from None
    if any(a in ("--json", "-h", "--help", "--list") or a.startswith("--json=") for a in run_args):
        raise Usage(
            "--run-args: the nightly chooses --json itself; give a selection such as "
            "'-s steal --vcpus 1'"
        )
    if args.last < 1:
        raise Usage("--last must be at least 1")
    if args.inner:
        if not args.json:
            raise Usage("--inner needs --json FILE")
        collected = collect(pytest_args, run_args)
        write_text(args.json, json.dumps(collected) + "\n")
        return combine(collected["run_rc"], collected["pytest_rc"])
    if args.modules and not args.kernel:
        raise Usage("--modules needs --kernel")
    if args.merge:
        check_places(args)
        return merge_main(args)

    check_places(args)
    if args.break_on_purpose is not None:
        break_pattern(args.break_on_purpose)  # a stale date fails now, not after the run
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if args.kernel:
        if not os.path.isfile(args.kernel):
            raise Usage(f"--kernel {args.kernel}: no such file")
        collected = collect_in_kernel(
            args.kernel, args.modules, pytest_args, run_args, bisect_kernel=args.bisect_kernel
        )
        collected["booted_on"] = {
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "kernel_release": platform.release(),
        }
    else:
        collected = collect(pytest_args, run_args)
    scenarios = scenarios_of(collected.get("run_doc") or {})
    forced = break_on_purpose(scenarios, args.break_on_purpose)
    collected["scenarios"] = scenarios
    code = combine(collected.get("run_rc"), collected.get("pytest_rc"), forced_broken=bool(forced))
    note = ""
    if collected.get("run_error"):
        note = f"kvmharness run exited {collected.get('run_rc')}: {collected['run_error']}"
    rec = make_record(
        collected,
        host_name=args.host_name or socket.gethostname(),
        date=date,
        kernel_image=args.kernel,
        revision=git_revision(),
        exit_code=code,
        version=_version(),
        note=note,
        forced=forced,
    )
    lost = capabilities_lost(previous_of(args.history, host_key(rec)), rec)
    if lost:
        rec["exit_code"] = code = fail_for_lost(code)
        rec["note"] = "; ".join(
            filter(None, [note, f"{len(lost)} capability(ies) of the previous run lost"])
        )
        for what in lost:
            print(f"nightly: capability lost since the previous run: {what}", file=sys.stderr)
    append_record(args.history, rec)
    if collected.get("junit_xml"):
        write_text(os.path.join(args.out, "junit.xml"), collected["junit_xml"])
    if collected.get("run_doc"):
        write_text(
            os.path.join(args.out, "run.json"), json.dumps(collected["run_doc"], indent=1) + "\n"
        )
    if args.kcidb:
        write_text(args.kcidb, json.dumps(kcidb(rec, collected.get("junit_xml")), indent=1) + "\n")
    render(args, rec_host=host_key(rec))
    return code


def previous_of(history: str, host: str) -> dict[str, Any] | None:
    """The latest record of ``host`` in the history (None: its first run)."""
    records, _ = read_history(history)
    mine = [r for r in records if host_key(r) == host]
    return mine[-1] if mine else None


def fail_for_lost(code: int) -> int:
    """A capability the host had in its previous run is gone: a change of the
    kernel that fails the night (1), unless the night is already a harness fault."""
    return code if code == EXIT_HARNESS or code > EXIT_HARNESS else EXIT_BROKEN


def check_places(args: argparse.Namespace) -> None:
    """Refuse, before a run of minutes, a history or report place that cannot be written."""
    d = os.path.dirname(os.path.abspath(args.history))
    if not os.path.isdir(d) or not os.access(d, os.W_OK):
        raise Usage(f"--history {args.history}: directory {d} is missing or not writable")
    if os.path.isdir(args.history):
        raise Usage(f"--history {args.history}: is a directory")
    for what, path in (("--out", args.out), ("--kcidb", args.kcidb)):
        if path and what == "--out":
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise Usage(f"--out {path}: {exc.strerror}") from None
            if not os.access(path, os.W_OK):
                raise Usage(f"--out {path}: not writable")
        elif path:
            kd = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(kd) or os.path.isdir(path):
                raise Usage(f"--kcidb {path}: not a file in an existing directory")


def _version() -> str:
    try:
        from kvmharness import __version__

        return str(__version__)
    except ImportError:
        return "?"


def render(args: argparse.Namespace, rec_host: str | None = None) -> None:
    records, problems = read_history(args.history)
    os.makedirs(args.out, exist_ok=True)
    page = os.path.join(args.out, "index.html")
    write_text(page, html_report(records, problems, args.last, args.move_pct))
    shown = records if rec_host is None else [r for r in records if host_key(r) == rec_host]
    sys.stdout.write(text_report(shown, problems, args.last, args.move_pct, html_path=page))


def merge_main(args: argparse.Namespace) -> int:
    merged, problems = merge_histories(args.merge)
    have, probs2 = read_history(args.history)
    known_ids = {str(r.get("run_id")) for r in have}
    for r in merged:
        if str(r.get("run_id")) not in known_ids:
            append_record(args.history, r)
    for p in problems + probs2:
        print(f"nightly: {p}", file=sys.stderr)
    render(args)
    return EXIT_OK
