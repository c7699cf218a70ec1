"""The one way kvmharness writes files: atomically, honouring the umask.

A reader never sees a half-written file: data goes to a temp file beside the
target, which replaces the target only when complete and is removed on any
error (or SIGTERM, which unwinds as an exception).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def atomic_target(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on any
    error it is removed: never a half-written file at ``path``.

    The file gets the permissions the umask gives (0666 & ~umask), as if opened
    directly, not mkstemp's 0600: reports are meant to be shared.
    """
    d = os.path.dirname(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(d, f".kvmharness-{secrets.token_hex(6)}{suffix}")
        try:
            # the kernel applies the umask (and any default ACL) to 0666
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name in {d}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_target(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str, payload: dict[str, Any]) -> None:
    """``payload`` as JSON at ``path`` (``-``: stdout), atomically.

    A run's records are series of integers: written one key and one result per
    line, without indentation inside a result, a default run is about 0.45 MB
    rather than 1.7 MB (``jq .`` shows it indented)."""
    text = _dumps_lines(payload) + "\n"
    if path == "-":
        print(text, end="")
    else:
        atomic_write_text(path, text)


def _dumps_lines(payload: dict[str, Any]) -> str:
    """Top-level keys one per line; a list of objects one object per line."""
    parts = []
    for key, value in payload.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            inner = ",\n".join("  " + json.dumps(v, separators=(",", ":")) for v in value)
            parts.append(f"{json.dumps(key)}: [\n{inner}\n ]")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}")
    return "{\n " + ",\n ".join(parts) + "\n}" if parts else "{}"
