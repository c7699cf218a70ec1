"""A vCPU the watchdog stopped in KVM_RUN: stuck, hung, or starved.

While a thread sits in ``KVM_RUN`` for ``waited`` ns of wall time it is in
one of three states: on a CPU (``cpu``, its CPU time), runnable but waiting
on a run queue (``queued``, its run_delay growth, from schedstat), or asleep.
So ``slept = waited - cpu - queued``.  That gives three outcomes:

* it ran a real share of the budget and never came back: **stuck** (a guest
  or KVM loop), broken;
* it mostly slept: **hung** (a lost wakeup, a lock left held), broken; load
  cannot make a thread sleep, it can only make it wait on a run queue;
* otherwise it mostly waited on a run queue: the host was too loaded to
  judge, and only then is the run untestable.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmharness import checks

#: Stuck when the thread ran at least this share of the budget meanwhile.
STUCK_MIN_CPU_SHARE = 0.1
#: Hung when the thread slept at least this share of the time it was stopped.
HUNG_MIN_SLEEP_SHARE = 0.5

KIND_HUNG = "hung"


@dataclass(frozen=True)
class Stopped:
    """What the watchdog saw of a vCPU it stopped."""

    rip: int
    waited_ns: int  # wall time since KVM_RUN was issued
    cpu_ns: int  # CPU time its thread got meanwhile (guest time included)
    queued_ns: int | None = None  # its run_delay growth meanwhile (None: not recorded)


def judge_stopped(
    series: str, index: int, s: Stopped, budget_s: float
) -> tuple[checks.Violation | None, str | None]:
    """(violation, untestable reason) for a stopped vCPU; exactly one is set."""
    if s.cpu_ns >= STUCK_MIN_CPU_SHARE * budget_s * 1e9:
        return (
            checks.violation(
                checks.KIND_STUCK,
                series,
                index,
                None,
                None,
                f"KVM_RUN did not return in {checks.format_ns(s.waited_ns)} though its thread "
                f"ran {checks.format_ns(s.cpu_ns)} meanwhile; stopped at guest rip {s.rip:#x}",
                counter="run",
            ),
            None,
        )
    if s.queued_ns is not None:
        slept = s.waited_ns - s.cpu_ns - s.queued_ns
        if slept >= HUNG_MIN_SLEEP_SHARE * s.waited_ns:
            return (
                checks.violation(
                    KIND_HUNG,
                    series,
                    index,
                    None,
                    None,
                    f"KVM_RUN did not return in {checks.format_ns(s.waited_ns)} and its thread "
                    f"slept {checks.format_ns(slept)} of it (ran {checks.format_ns(s.cpu_ns)}, "
                    f"waited {checks.format_ns(s.queued_ns)} on a run queue): a hang inside "
                    f"KVM_RUN, not load; stopped at guest rip {s.rip:#x}",
                    counter="run",
                ),
                None,
            )
        return None, (
            f"{series} was stopped after {checks.format_ns(s.waited_ns)} in KVM_RUN; its thread "
            f"ran only {checks.format_ns(s.cpu_ns)} and waited {checks.format_ns(s.queued_ns)} "
            "on a run queue: the host is too loaded to judge"
        )
    return None, (
        f"{series} was stopped after {checks.format_ns(s.waited_ns)} in KVM_RUN with only "
        f"{checks.format_ns(s.cpu_ns)} of CPU and no run_delay recorded: cannot tell load "
        "from a hang"
    )
