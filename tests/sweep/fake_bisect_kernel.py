"""A stand-in for bisect-kernel in tests/test_sweep.py: boots nothing.

It answers as bisect-kernel does: its log lines on stderr, --timing-json,
and the inner command's --json, which it copies from a saved run document
chosen by the kernel image's release ($FAKE_SWEEP_DOCS: a JSON map from
release to a .json(.gz) path).  A release not in the map "does not boot"
(exit 125); $FAKE_SWEEP_SLEEP makes it hang in the inner step (for SIGTERM)."""

import gzip
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kvmharness.sweep.kernels import image_release  # noqa: E402


def main(argv: list[str]) -> int:
    image = Path(argv[0])
    timing = Path(argv[argv.index("--timing-json") + 1])
    out = Path(argv[argv.index("--json") + 1])
    release = image_release(image)
    docs = json.loads(os.environ.get("FAKE_SWEEP_DOCS", "{}"))
    calls = os.environ.get("FAKE_SWEEP_CALLS")
    if calls:
        with open(calls, "a") as f:
            f.write(release + "\n")
    log = lambda m: print(f"bisect-kernel: {m}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"booting {release} ({image}) under QEMU TCG")
    if release not in docs:
        log("exit 125: the kernel did not reach user space (panic, or no virtio/9p support)")
        timing.write_text(json.dumps({"exit": 125, "total_s": 1.5}))
        return 125
    log("booted after 1.0 s")
    log("KVM loaded after 1.2 s")
    if os.environ.get("FAKE_SWEEP_SLEEP"):
        pidfile = os.environ.get("FAKE_SWEEP_PIDFILE")
        if pidfile:
            Path(pidfile).write_text(str(os.getpid()))
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
        time.sleep(float(os.environ["FAKE_SWEEP_SLEEP"]))
    src = docs[release]
    with (
        gzip.open(src, "rb") if src.endswith(".gz") else open(src, "rb") as f,
        open(out, "wb") as g,
    ):
        shutil.copyfileobj(f, g)
    rc = json.loads(out.read_text()).get("exit_code", 0)
    log("inner command done after 2.0 s")
    log(f"exit {rc}: good")
    timing.write_text(json.dumps({"exit": rc, "total_s": 120.0, "boot_s": 30.0}))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
