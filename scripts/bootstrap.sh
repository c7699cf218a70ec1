#!/usr/bin/env bash
# Create .venv in the checkout and install kvmharness with its test extras.
# Idempotent: re-installs only when pyproject.toml changed since the last run.
set -euo pipefail
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
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing kvmharness and its dependencies into $venv" >&2
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -e "$root[test]" >&2
    echo "$want" > "$stamp"
fi
