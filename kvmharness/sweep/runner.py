"""Running one kernel of a sweep: ``bisect-kernel IMAGE -- ARGS`` as a
subprocess, its progress read from its log lines, its result cached.

The kernel-boot path is used only through its command line (whichever entry
point this installation has: ``kvmharness bisect-kernel`` or the checkout's
``scripts/bisect-kernel``), never through its internals.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kvmharness.exitcodes import HarnessFault
from kvmharness.files import atomic_target, atomic_write_text
from kvmharness.sweep.kernels import Kernel, image_digest

log = logging.getLogger(__name__)

#: what runs in each kernel (``kvmharness bisect --scenario``): bisect's quick
#: profile plus the characterizations findings/ reads (the thread hop
#: same-vm/new-thread; fresh-vm/reused-thread, which the steal/fresh-vm prefix
#: adds).  Each name must test at least one scenario on every kernel, or the
#: run exits 125 (README, exit codes): so tsc/msr and tsc/offset (absent
#: without KVM_VCPU_TSC_OFFSET) are named by their prefix, and clock/frequency
#: is left out (KVM_CAP_TSC_CONTROL: never under QEMU TCG's SVM).
PROFILE = (
    "steal/fresh-vm",
    "steal/cross-process/main-thread",
    "steal/cancelled-save",
    "steal/same-vm/new-thread",
    "clock/monotonic",
    "clock/warp",
    "clock/updates",
    "clock/pvti",
    "clock/restore/frozen",
    "clock/restore/main-thread",
    "clock/restore/cross-process/main-thread",
    "clock/tsc",
    "postcopy",
)

#: each vCPU's budget inside a booted kernel: the hang guard's deadline is 2 x
#: budget + 61 s, and under QEMU TCG on a loaded host a healthy cross-process
#: scenario took 115 s and more (6.1.0-47 and -50: judged stuck and hung at
#: the default 121 s); 120 s makes the deadline 301 s
BUDGET_S = 120


#: how long a child gets to kill its VM and clean up after SIGTERM
TERM_GRACE_S = 30.0

#: bisect-kernel's log lines (``bisect-kernel: ...``) that start a step
STEPS = (
    ("installing", "installing dependencies"),
    ("booting again", "booting again (the kernel died or froze)"),
    ("booting ", "booting"),
    ("booted after", "loading KVM"),
    ("KVM loaded after", "running the scenarios"),
    ("inner command done", "collecting"),
)


#: ``kvmharness bisect``'s own progress line inside the kernel: ``[3/18] NAME, ...``
SCENARIO_DONE = re.compile(r"^\[(\d+)/(\d+)\] (\S+?),")


def step_of(line: str) -> str | None:
    """The step a log line starts, or None."""
    m = SCENARIO_DONE.match(line)
    if m:
        return f"scenario {m.group(1)} of {m.group(2)} done ({m.group(3)})"
    text = line.partition(": ")[2] if line.startswith("bisect-kernel") else ""
    for prefix, step in STEPS:
        if text.startswith(prefix):
            return step
    return None


def checkout_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def bisect_kernel_command(explicit: str | None = None) -> list[str]:
    """The kernel-boot command: ``explicit`` (shell words, ``--bisect-kernel``),
    else ``kvmharness bisect-kernel`` where this installation has that command,
    else the checkout's ``scripts/bisect-kernel``."""
    if explicit:
        return shlex.split(explicit)
    cli = [sys.executable, "-m", "kvmharness.cli", "bisect-kernel"]
    try:  # asked as a user would: does this kvmharness have the command?
        probe = subprocess.run([*cli, "--help"], capture_output=True, timeout=120, check=False)
        if probe.returncode == 0:
            return cli
    except (OSError, subprocess.SubprocessError):
        pass
    script = checkout_root() / "scripts" / "bisect-kernel"
    if script.is_file():
        return [str(script)]
    raise HarnessFault(
        "no kernel-boot command: neither `kvmharness bisect-kernel` nor "
        f"{script}; name one with --bisect-kernel"
    )


def profile_key(profile: Sequence[str], boot_args: Sequence[str]) -> str:
    text = json.dumps([list(profile), list(boot_args)])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass
class Cache:
    """``DIR/results/KEY.json`` (the kernel's record) and ``KEY.run.json.gz``
    (its whole run document), KEY naming the release, the image's digest and
    the profile: a changed image or profile is a new entry."""

    root: Path

    def key(self, kernel: Kernel, profile: Sequence[str], boot_args: Sequence[str]) -> str:
        return f"{kernel.release}-{image_digest(kernel.image)}-{profile_key(profile, boot_args)}"

    def record_path(self, key: str) -> Path:
        return self.root / "results" / f"{key}.json"

    def run_path(self, key: str) -> Path:
        return self.root / "results" / f"{key}.run.json.gz"

    def log_path(self, key: str) -> Path:
        return self.root / "results" / f"{key}.log"

    def load(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self.record_path(key), encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or not rec.get("kernel"):
            return None
        from kvmharness.sweep.summary import refresh

        return refresh(rec)

    def store(self, key: str, record: dict[str, Any], doc: dict[str, Any] | None) -> None:
        (self.root / "results").mkdir(parents=True, exist_ok=True)
        if doc is not None:
            with atomic_target(str(self.run_path(key))) as tmp:
                with gzip.open(tmp, "wt", encoding="utf-8") as f:
                    json.dump(doc, f)
        atomic_write_text(str(self.record_path(key)), json.dumps(record, indent=1) + "\n")


@dataclass
class Outcome:
    exit_code: int
    why: str
    doc: dict[str, Any] | None
    timing: dict[str, Any] | None
    log_lines: list[str] = field(default_factory=list)


def _relay(stream: IO[str], sink: IO[str], on_line: Callable[[str], None]) -> None:
    for line in stream:
        sink.write(line)
        sink.flush()
        on_line(line.rstrip("\n"))


def stop_child(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the child's process group (bisect-kernel kills its VM and removes
    its temporary files on it), wait, then SIGKILL whatever is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def run_kernel(
    kernel: Kernel,
    command: Sequence[str],
    profile: Sequence[str],
    boot_args: Sequence[str],
    log_file: Path,
    on_step: Callable[[str], None],
    echo: bool = False,
) -> Outcome:
    """Boot ``kernel`` with ``command`` and run the profile in it."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sweep-", dir=log_file.parent))
    last: list[str] = []

    def on_line(line: str) -> None:
        if echo:
            print(line, file=sys.stderr, flush=True)
        if line.startswith("bisect-kernel"):
            last.append(line)
            del last[:-20]
        step = step_of(line)
        if step:
            on_step(step)

    try:
        run_json, timing_json = tmp / "run.json", tmp / "timing.json"
        cmd = [
            *command,
            str(kernel.image),
            "--timing-json",
            str(timing_json),
            *boot_args,
            "--",
            *profile,
            "--json",
            str(run_json),
        ]
        with open(log_file, "w", encoding="utf-8") as sink:
            sink.write("$ " + shlex.join(cmd) + "\n")
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            relay = threading.Thread(target=_relay, args=(proc.stdout, sink, on_line), daemon=True)
            relay.start()
            try:
                rc = proc.wait()
            finally:
                stop_child(proc)
                relay.join(timeout=5)
        doc = _load(run_json)
        timing = _load(timing_json)
        return Outcome(rc, why_of(rc, last), doc, timing, last)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def why_of(rc: int, lines: Sequence[str]) -> str:
    """The child's own word for its exit (its ``exit N: ...`` line), else its last line."""
    for line in reversed(lines):
        text = line.partition(": ")[2]
        if text.startswith(f"exit {rc}: "):
            return text[len(f"exit {rc}: ") :]
    for line in reversed(lines):
        text = line.partition(": ")[2]
        if text and not text.startswith("timing:"):
            return text
    return f"exited {rc}"


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


@dataclass
class Progress:
    """``sweep: [2/6] 6.1.0-50: booting; 3.2 min so far, about 21 min left``."""

    total: int
    default_kernel_s: float = 600.0  # a 6.1 kernel under QEMU TCG, loaded host
    started: float = field(default_factory=time.monotonic)
    durations: list[float] = field(default_factory=list)
    index: int = 0
    label: str = ""
    step: str = ""
    kernel_started: float = 0.0
    out: IO[str] = sys.stderr

    def begin(self, index: int, label: str) -> None:
        self.index, self.label, self.step = index, label, ""
        self.kernel_started = time.monotonic()

    def per_kernel_s(self) -> float:
        return (
            sum(self.durations) / len(self.durations) if self.durations else self.default_kernel_s
        )

    def left_s(self, now: float) -> float:
        per = self.per_kernel_s()
        current = max(per - (now - self.kernel_started), 0.0) if self.label else 0.0
        return current + per * max(self.total - self.index, 0)

    def line(self, step: str, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        return (
            f"sweep: [{self.index}/{self.total}] {self.label}: {step}; "
            f"{fmt_minutes(now - self.started)} so far, "
            f"about {fmt_minutes(self.left_s(now))} left"
        )

    def show(self, step: str) -> None:
        self.step = step
        print(self.line(step), file=self.out, flush=True)

    def done(self, seconds: float | None) -> None:
        if seconds is not None:
            self.durations.append(seconds)
        self.label = ""
