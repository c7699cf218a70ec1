"""Tables (tabulate), JSON and plots of scenario results."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tabulate import tabulate

from kvmharness.checks import format_ns
from kvmharness.scenarios.base import CHARACTERIZED

HEADERS = ["scenario", "strategy", "vCPUs", "MSR written by", "vCPU run by", "contention",
           "steal before (sum)", "steal after (sum)", "largest jump", "wall", "verdict"]


def _ns(v: int | None) -> str:
    return "-" if v is None else format_ns(v)


def verdict_text(res: Any) -> str:
    if res.verdict == CHARACTERIZED:
        return f"characterized: {res.observed}"
    if res.verdict == "holds":
        return "holds"
    return f"{res.verdict}: {res.observed}"


def steal_rows(results: Sequence[Any], *, width: int = 90) -> list[list[str]]:
    rows = []
    for r in results:
        before, after = r.steal_at_boundary()
        verdict = verdict_text(r)
        if width and len(verdict) > width:
            verdict = verdict[: width - 3] + "..."
        rows.append([
            "steal", r.strategy.name, str(r.config.vcpus), r.strategy.msr_writer,
            r.strategy.runner, f"{r.config.contend_ms} ms x2", _ns(before), _ns(after),
            _ns(r.largest_jump_ns()), f"{r.wall_s:.2f} s", verdict,
        ])
    return rows


def steal_table(results: Sequence[Any], *, width: int = 90) -> str:
    return tabulate(steal_rows(results, width=width), headers=HEADERS, tablefmt="simple")


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


def plot_available() -> str | None:
    """None when plotting works, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'kvmharness[plot]')"
    return None


def plot_steal(results: Sequence[Any], path: str) -> None:
    """Steal against time per vCPU, one panel per scenario, the boundary marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), squeeze=False)
    for ax, res in zip(axes[:, 0], results, strict=True):
        t0 = min((r.guest[0].t_ns for r in res.records if r.guest), default=0)
        for rec in res.records:
            # before and after the boundary drawn apart: nothing was sampled between
            cut = rec.boundary if 0 < rec.boundary < len(rec.guest) else len(rec.guest)
            color = None
            for part in (rec.guest[:cut], rec.guest[cut:]):
                if not part:
                    continue
                xs = [(s.t_ns - t0) / 1e9 for s in part]
                ys = [s.value / 1e6 for s in part]
                (line,) = ax.plot(xs, ys, drawstyle="steps-post", linewidth=1, color=color,
                                  label=None if color else f"vcpu{rec.index}")
                color = line.get_color()
            if 0 < rec.boundary < len(rec.guest):
                ax.axvline((rec.guest[rec.boundary].t_ns - t0) / 1e9, color="red",
                           linestyle="--", linewidth=0.8)
        ax.set_title(f"{res.strategy.name}, {res.config.vcpus} vCPU(s): {res.verdict}",
                     fontsize=9)
        ax.set_ylabel("steal (ms)")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("time (s); red dashes: restore boundary")
    fig.tight_layout()
    try:
        with atomic_target(path, ".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
