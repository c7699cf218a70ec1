"""Save and restore in separate processes, as savevm/loadvm do.

A scenario module runs itself as ``python -P -m MODULE ROLE CONFIG SNAP_FD
OUT_FD PARENT_PID`` (from ``/``, so a ``kvmharness/`` folder in the caller's
directory is never imported).  The snapshot and the results travel in memfds
the parent owns, so nothing is left on disk however the parent dies, and the
child dies with its parent (PR_SET_PDEATHSIG).  The child writes one JSON
object to OUT_FD: ``{"status": "ok", ...}`` or ``{"status": BLAME, "error":
...}``, the blame decided by :func:`~kvmharness.scenarios.base.blame_of`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from kvmharness.scenarios.base import Blame, ScenarioFailed, blame_of

log = logging.getLogger(__name__)


def child_entry(argv: list[str], body: Callable[[str, dict[str, Any], int], dict[str, Any]]) -> int:
    """The child's ``main``: run ``body(role, config, snap_fd)`` and report to OUT_FD."""
    from kvmharness.host.contention import die_with_parent

    role, cfg_json, snap_fd_s, out_fd_s, parent_s = argv
    die_with_parent(int(parent_s))
    try:
        payload: dict[str, Any] = {
            "status": "ok",
            **body(role, json.loads(cfg_json), int(snap_fd_s)),
        }
    except Exception as exc:
        log.debug("%s process failed", role, exc_info=True)
        payload = {"status": str(blame_of(exc)), "error": f"{type(exc).__name__}: {exc}"}
    with os.fdopen(int(out_fd_s), "w") as f:
        json.dump(payload, f)
    return 0


def run_child(
    module: str, role: str, config: dict[str, Any], snap_fd: int, timeout_s: float
) -> dict[str, Any]:
    """Run ``module`` as a child in ``role``; its payload, or ScenarioFailed with its blame.

    The child writes its KVM calls' progress to a page this process reads
    (:class:`kvmharness.host.progress.ChildPage`), so the hang guard sees a
    slow child progress; while a guard watches, it alone decides when
    waiting has become a hang, and ``timeout_s`` applies only without one."""
    from kvmharness.host import progress

    out_fd = os.memfd_create(f"kvmharness-{role}-out", os.MFD_CLOEXEC)
    page = progress.ChildPage()
    try:
        cmd = [
            sys.executable,
            "-P",
            "-m",
            module,
            role,
            json.dumps(config),
            str(snap_fd),
            str(out_fd),
            str(os.getpid()),
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=None if progress.guarded.is_set() else timeout_s,
            cwd="/",
            env=page.env,
            pass_fds=(snap_fd, out_fd, page.fd),
            # its own process group: ^C reaches only the parent, whose
            # subprocess.run kills it while unwinding (no traceback from it)
            process_group=0,
        )
        raw = os.pread(out_fd, os.fstat(out_fd).st_size, 0)
    finally:
        os.close(out_fd)
        page.close()
    if not raw:
        raise ScenarioFailed(
            Blame.HARNESS,
            f"{role} process exited {proc.returncode} without "
            f"a result:\n{proc.stderr.strip()[-2000:]}",
        )
    payload = json.loads(raw)
    if payload["status"] != "ok":
        raise ScenarioFailed(payload["status"], f"{role} process: {payload['error']}")
    return payload


def write_snapshot_fd(snap_fd: int, meta: dict[str, Any], sections: dict[str, Any]) -> None:
    """Write a snapshot into the parent's memfd."""
    from kvmharness.snapshot import dumps

    with os.fdopen(os.dup(snap_fd), "wb") as f:
        f.write(dumps(meta, sections))


#: ``run --keep-snapshots DIR``: where :func:`keep_snapshot` copies each
#: snapshot a save child wrote (None: nowhere), and the files kept so far.
keep_dir: str | None = None
kept: list[str] = []


def keep_snapshot(snap_fd: int, family: str, variant: str, vcpus: int) -> str | None:
    """Copy the snapshot in ``snap_fd`` to :data:`keep_dir` as
    ``FAMILY-VARIANT-NvCPU.kvmsnap`` (``/`` in the variant becomes ``-``), the
    file a user attaches to a bug report with the run's JSON; its path, or
    None when snapshots are not kept."""
    if keep_dir is None:
        return None
    from kvmharness.files import atomic_target

    name = f"{family}-{variant.replace('/', '-')}-{vcpus}vcpu.kvmsnap"
    path = os.path.join(keep_dir, name)
    data = os.pread(snap_fd, os.fstat(snap_fd).st_size, 0)
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    kept.append(path)
    log.info("snapshot kept: %s", path)
    return path


def snapshot_path(snap_fd: int) -> str:
    """A path the restoring child reads the snapshot memfd by."""
    return f"/proc/self/fd/{snap_fd}"
