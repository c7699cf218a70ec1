#!/usr/bin/env bash
# Create .venv in the checkout and install kvmharness into it.
#   scripts/bootstrap.sh run    what running needs (cffi, ioctl-opt, tabulate)
#   scripts/bootstrap.sh [test] that and what the tests need (pytest, ruff,
#                               hypothesis, matplotlib, kcidb-io, ...: the test extra)
# Idempotent: re-installs only when pyproject.toml changed since the last run,
# or when the tests need what a run-only install left out.
set -euo pipefail
level="${1:-test}"
case "$level" in
    run|test) ;;
    *) echo "bootstrap: usage: bootstrap.sh [run|test]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"

if ! command -v gcc >/dev/null 2>&1; then
    echo "bootstrap: gcc is needed to build guest programs; installing it" >&2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq gcc binutils libc6-dev linux-libc-dev >&2
    else
        echo "bootstrap: install gcc, binutils and the kernel uapi headers, then retry" >&2
        exit 2
    fi
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv" >&2
    "$py" -m venv "$venv"
fi
stamp="$venv/.kvmharness-installed"
hash="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
# the stamp is "HASH LEVEL"; a test install serves a run too
if [ "$have" != "$hash test" ] && [ "$have" != "$hash $level" ]; then
    if [ "$level" = test ]; then
        echo "bootstrap: installing kvmharness and the test tools into $venv" >&2
        spec="$root[test]"
    else
        echo "bootstrap: installing kvmharness and what it needs to run into $venv" >&2
        spec="$root"
    fi
    # pip and the build backend talk a lot (deprecation warnings of setuptools);
    # keep it in a log and show it only when the install fails
    log="$venv/bootstrap.log"
    if ! { "$venv/bin/python" -m pip install -q --upgrade pip \
            && "$venv/bin/python" -m pip install -q -e "$spec"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "bootstrap: pip install failed (its output is above and in $log)" >&2
        exit 1
    fi
    echo "$hash $level" > "$stamp"
fi
