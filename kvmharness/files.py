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
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    if path == "-":
        print(text, end="")
    else:
        atomic_write_text(path, text)


def save_figure(fig: Any, path: str) -> None:
    """Write a matplotlib figure as PNG through :func:`atomic_target`, then close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with atomic_target(path, ".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
