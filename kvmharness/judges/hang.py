"""A scenario that never returned: which of its threads hung, and how.

The run's hang guard (:mod:`kvmharness.host.hangguard`) fires when a scenario
outlives its deadline.  Over the last stretch before it (the *window*) it
read every thread's CPU time and run_delay growth (``schedstat``), its state
and its ``wchan``.  Each thread is then judged by the same physics as a vCPU
the watchdog stopped (:func:`kvmharness.judges.stopped.judge_stopped`, with
the window as its budget):

* a thread that ran a real share of the window and still did not finish:
  **stuck**, broken;
* otherwise, a thread that waited on a run queue for most of the window: the
  host is too loaded to judge, untestable (only load makes a thread wait
  there, and the sleeping threads may be waiting on it);
* every thread slept: **hung**, broken.  A kernel lock left held (a
  ``mutex_lock_killable`` that nobody will ever release) looks exactly so:
  no CPU, no run_delay; load cannot make a thread sleep.

The guard judges only a scenario that stopped making progress
(:mod:`kvmharness.host.progress`): over the window some thread stayed inside
the same harness call (then only those threads are judged: they are what did
not finish), or no harness call returned at all (then every thread is).  A
scenario whose calls kept returning is slow, not hung: the guard waits more
windows, and if it is still progressing at its cap the scenario is
**untestable** (the host is too slow to judge it in time), never broken.

The record of such a scenario carries ``hang`` (the window, the threads and,
since the progress rule, ``progress``: the calls that returned in the
window, the tids stalled inside one call, the time since the scenario began
and the cap), so ``kvmharness judge`` re-judges it with this module alone.  A
record without ``progress`` (older runs) is judged on its threads alone, as
it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from kvmharness import checks
from kvmharness.judges.stopped import KIND_HUNG, Stopped, judge_stopped


@dataclass(frozen=True)
class ThreadSample:
    """One thread over the window."""

    tid: int
    name: str
    cpu_ns: int  # CPU time it got in the window
    queued_ns: int  # its run_delay growth in the window
    state: str = "?"  # /proc state letter at the end (S, D, R, ...)
    wchan: str = ""  # where in the kernel it sleeps, if it does
    where: str = ""  # what the harness was doing on it (e.g. "kvm.py:675 set_msrs")

    @classmethod
    def of(cls, d: dict[str, Any]) -> ThreadSample:
        return cls(
            int(d["tid"]),
            str(d["name"]),
            int(d["cpu_ns"]),
            int(d["queued_ns"]),
            str(d.get("state", "?")),
            str(d.get("wchan", "")),
            str(d.get("where", "")),
        )


def _label(t: ThreadSample) -> str:
    parts = [f"thread {t.name} (tid {t.tid}, state {t.state}"]
    if t.wchan and t.wchan != "0":
        parts.append(f", in {t.wchan}")
    parts.append(")")
    if t.where:
        parts.append(f" at {t.where}")
    return "".join(parts)


def judge_threads(
    threads: list[ThreadSample], window_ns: int, scenario: str
) -> tuple[checks.Violation | None, str | None]:
    """(violation, untestable reason) for a scenario that did not return; exactly
    one is set.  ``threads`` in order of interest (the one to name first)."""
    if not threads or window_ns <= 0:
        return None, f"{scenario} did not return and no thread of it could be read"
    window_s = window_ns / 1e9
    judged = [
        (t, *judge_stopped(t.name, i, Stopped(0, window_ns, t.cpu_ns, t.queued_ns), window_s))
        for i, t in enumerate(threads)
    ]
    for t, v, _ in judged:
        if v is not None and v.kind == checks.KIND_STUCK:
            return replace(
                v,
                detail=f"{scenario} did not return: {_label(t)} ran "
                f"{checks.format_ns(t.cpu_ns)} of the last {checks.format_ns(window_ns)} "
                "without finishing",
            ), None
    for t, v, why in judged:
        if v is None:
            return None, (
                f"{scenario} did not return, but {_label(t)} waited "
                f"{checks.format_ns(t.queued_ns)} of the last {checks.format_ns(window_ns)} "
                f"on a run queue: the host is too loaded to judge ({why})"
            )
    t, v, _ = judged[0]
    assert v is not None and v.kind == KIND_HUNG
    return replace(
        v,
        detail=f"hung: {scenario} did not return; {_label(t)} slept through the last "
        f"{checks.format_ns(window_ns)} (ran {checks.format_ns(t.cpu_ns)}, waited "
        f"{checks.format_ns(t.queued_ns)} on a run queue), and so did every other thread: "
        "a hang in the kernel (e.g. a lock left held), not load",
        counter="ioctl",
    ), None


def progress_facts(
    returns: int, stalled: list[int], elapsed_ns: int, cap_s: float
) -> dict[str, Any]:
    """What the guard saw of the scenario's progress over the window: how many
    harness calls returned, the tids that stayed inside one call, how long the
    scenario had run and its cap (a record's ``hang.progress``)."""
    return {
        "returns": returns,
        "stalled": list(stalled),
        "elapsed_ns": elapsed_ns,
        "cap_s": cap_s,
    }


def hang_record(
    threads: list[ThreadSample],
    window_ns: int,
    deadline_s: float,
    progress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a record keeps of a hang (its ``hang`` key)."""
    out: dict[str, Any] = {
        "window_ns": window_ns,
        "deadline_s": deadline_s,
        "threads": [asdict(t) for t in threads],
    }
    if progress is not None:
        out["progress"] = progress
    return out


def judge_progress(
    threads: list[ThreadSample], window_ns: int, scenario: str, progress: dict[str, Any]
) -> tuple[checks.Violation | None, str | None]:
    """:func:`judge_threads` under the progress rule: only the threads stalled
    inside one call are judged; with none, a scenario whose calls returned is
    still progressing (untestable), one whose calls did not has all its
    threads judged."""
    stalled = {int(t) for t in progress["stalled"]}
    returns = int(progress["returns"])
    in_call = [t for t in threads if t.tid in stalled]
    if in_call:
        return judge_threads(in_call, window_ns, scenario)
    if returns == 0 or stalled:  # (stalled threads the guard could not read: judge all)
        return judge_threads(threads, window_ns, scenario)
    elapsed_s = int(progress["elapsed_ns"]) / 1e9
    return None, (
        f"{scenario} still progressing after {elapsed_s:.0f} s ({returns} KVM calls returned "
        f"in the last {checks.format_ns(window_ns)}, none stuck in one): this host is too "
        f"slow to judge it in time (cap {float(progress['cap_s']):.0f} s)"
    )


def judge(record: dict[str, Any]) -> Any:
    """Re-judge a record that carries ``hang``."""
    from kvmharness.judges import Judgement, RecordError
    from kvmharness.scenarios.base import Verdict

    h = record["hang"]
    try:
        threads = [ThreadSample.of(d) for d in h["threads"]]
        window_ns = int(h["window_ns"])
        progress = h.get("progress")
        if progress is not None:
            int(progress["returns"]), int(progress["elapsed_ns"]), float(progress["cap_s"])
            [int(t) for t in progress["stalled"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"hang record unreadable: {exc!r}") from exc
    scenario = f"{record.get('family')}/{record.get('variant')}"
    if progress is None:  # a record from before the progress rule
        v, why = judge_threads(threads, window_ns, scenario)
    else:
        v, why = judge_progress(threads, window_ns, scenario, progress)
    if v is None:
        return Judgement(Verdict.UNTESTABLE, str(why), [])
    # broken whatever the variant's kind: a kernel that hangs is no characterization
    return Judgement(Verdict.BROKEN, v.detail, [v])
