"""From what a nightly run collected to its history record: scenarios, their
status and figures, the host's facts, the harness revision, the exit code."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvmharness.exitcodes import EXIT_BROKEN, EXIT_HARNESS, EXIT_OK, EXIT_UNTESTABLE, UsageError
from kvmharness.tools.home import checkout_root
from kvmharness.tools.nightly.figures import figures_of
from kvmharness.tools.nightly.history import OLD_WORDS, SCHEMA

#: the test-only switch that turns a scenario's result into broken after the run
BREAK_ON_PURPOSE = "--break-on-purpose"


def scenario_id(family: str, variant: str, vcpus: Any) -> str:
    return f"{family}/{variant}@{vcpus}"


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


def scenarios_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in doc.get("results") or []:
        # schema 2 names family, variant and vcpus in every record; older runs
        # (and steal still) also wrote scenario and strategy
        cfg = r.get("config") or {}
        fam = str(r.get("family") or r.get("scenario") or "?")
        var = str(r.get("variant") or r.get("strategy") or "?")
        if var.startswith(fam + "/"):  # postcopy names its variants postcopy/...
            var = var[len(fam) + 1 :]
        vcpus = r.get("vcpus") or cfg.get("vcpus", "?")
        known = r.get("known") or None
        out.append(
            {
                "id": scenario_id(fam, var, vcpus),
                "family": fam,
                "variant": var,
                "vcpus": vcpus,
                "kind": r.get("kind") or cfg.get("kind"),
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


def git_revision(root: Path | None = None) -> tuple[str | None, bool]:
    """(HEAD's commit, whether the tree has uncommitted changes) of the checkout
    this package runs from; (None, False) for an installed package."""
    root = root or checkout_root()
    if root is None:
        return None, False
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
        raise UsageError(
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
        raise UsageError(f"{BREAK_ON_PURPOSE} {pattern!r}: no promise of this run starts with it")
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


def fail_for_lost(code: int) -> int:
    """A capability the host had in its previous run is gone: a change of the
    kernel that fails the night (1), unless the night is already a harness fault."""
    return code if code == EXIT_HARNESS or code > EXIT_HARNESS else EXIT_BROKEN
