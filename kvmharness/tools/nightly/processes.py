"""The nightly's children: pytest and ``kvmharness run`` on this host's KVM,
or the nightly itself inside a kernel booted by ``kvmharness bisect-kernel``."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from kvmharness import procs
from kvmharness.exitcodes import EXIT_HARNESS, EXIT_UNTESTABLE
from kvmharness.tools.home import checkout_root, kvmharness_command
from kvmharness.tools.nightly.records import cpu_model

#: pytest's default selection: the tests that touch KVM (the rest of the suite
#: does not depend on the kernel and runs in per-commit CI), without this
#: script's own tests (they would run the nightly inside the nightly).
DEFAULT_PYTEST_ARGS = ["-m", "kvm", "--ignore=tests/test_nightly.py", "tests"]
PYTEST_TIMEOUT_S = 1800.0  # the whole pytest run; each test has pytest-timeout's 120 s
RUN_TIMEOUT_S = 1800.0
KERNEL_TIMEOUT_S = 3600.0


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(cmd: list[str], timeout: float, echo: bool = True, **kw: Any) -> tuple[int, str, str]:
    """Run ``cmd`` in its own process group, its output relayed to our stderr as it
    comes (the CI log shows progress) and kept; on timeout or on our own death
    (SIGTERM unwinds as an exception) the whole group is ended."""
    done = procs.run(cmd, timeout=timeout, echo=sys.stderr.buffer if echo else None, **kw)
    if done.timed_out:
        return EXIT_HARNESS, done.out, done.err + f"nightly: killed after {timeout:.0f} s\n"
    return done.status, done.out, done.err


def collect(
    pytest_args: list[str] | None,
    run_args: list[str],
    *,
    root: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Run pytest (unless ``pytest_args`` is None) and ``kvmharness run --json``
    here, both in ``root`` (default: the checkout, else the working
    directory); everything the record needs, as one JSON-able dict."""
    log = log or (lambda msg: print(f"nightly: {msg}", file=sys.stderr, flush=True))
    root = root or checkout_root() or Path.cwd()
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
            try:
                out["junit_xml"] = Path(junit).read_text(encoding="utf-8")
            except OSError:
                pass  # pytest died before writing it: pytest_rc says so
            log(f"pytest exited {rc}: {_tail(so, 1)}")
        doc_path = os.path.join(tmp, "run.json")
        cmd = [
            *kvmharness_command(),
            "run",
            "--quiet",
            "--json",
            doc_path,
            *run_args,
        ]
        log("kvmharness: " + shlex.join(cmd[3:]))
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
        cmd = [*kvmharness_command(), "info", "--json"]
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
    bisect_kernel: str | None = None,
    timeout: float = KERNEL_TIMEOUT_S,
) -> list[str]:
    """``kvmharness bisect-kernel`` booting ``image`` and running this nightly's
    ``--inner`` there (the guest shares this host's files, so this Python and
    its kvmharness); bisect-kernel moves the ``--json`` file back out."""
    inner = [
        *kvmharness_command(),
        "nightly",
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
            else [*kvmharness_command(), "bisect-kernel"]
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
