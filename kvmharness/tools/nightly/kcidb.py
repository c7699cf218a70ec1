"""A nightly run as KCIDB I/O JSON (schema v5)."""

from __future__ import annotations

import platform
import re
from typing import Any

from kvmharness.exitcodes import EXIT_UNTESTABLE
from kvmharness.tools.nightly.figures import KEY_FIGURES
from kvmharness.tools.nightly.records import junit_summary

ORIGIN = "kvmharness"  # KCIDB origin


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
