"""The postcopy judge: a pure function from a run record to a verdict.

The record (:class:`PostcopyRecord`, what ``PostcopyResult.to_json`` writes)
holds what the kernel and the guest reported, raw: each userfaultfd message
(time read, page, the thread id the kernel named, how many placements came
before it), each placement (time, page, who placed it, when its UFFDIO_COPY
began), per vCPU its thread id, the touching KVM_RUN (start, end, its
thread's CPU time and run_delay, and those of every other thread of the
process over it), the guest's stall per touch and the value it read, its
steal before and after, its checksums, and, for a vCPU the watchdog stopped
in KVM_RUN, where and how its thread spent the wait.

The judge derives everything else: which fault is a vCPU's (from the thread
id, never from what the live run decided), the exact blocktime (by replaying
the events through :class:`~kvmharness.blocktime.BlocktimeAccountant`), what
QEMU's two designs would have reported from the same events, and the
verdict.  It drives nothing (``tests/test_layers.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kvmharness import checks
from kvmharness.blocktime import (
    BlocktimeAccountant,
    BlocktimeReport,
    QemuHashModel,
    SlotScanModel,
)
from kvmharness.checks import Violation, format_ns
from kvmharness.judges import SCHEMA_VERSION, Judgement, RecordError, deltas, undeltas
from kvmharness.judges.stopped import Stopped, judge_stopped
from kvmharness.scenarios.base import Kind, Verdict, verdict_for

log = logging.getLogger(__name__)

FAMILY = "postcopy"
PAGE_SIZE = 4096
HEAD_QWORDS = 4
U64 = (1 << 64) - 1
MIX = 0x9E3779B97F4A7C15

KIND_LOST = "lost"
KIND_MISATTRIBUTED = "misattributed"
KIND_SPURIOUS = "spurious-fault"
KIND_SILENT_STALL = "stall-without-fault"
KIND_OVER_WALL = "blocktime-over-wall"
KIND_OVER_GUEST = "blocktime-over-guest-stall"
KIND_UNDER_GUEST = "guest-stall-over-blocktime"
KIND_STEAL = "steal-over-run-delay"

#: placement ``how`` codes in a record: resolver, stream, flush (the
#: watchdog), and a page found present that nobody here placed (EEXIST)
HOW = {"r": "resolver", "s": "stream", "f": "flush", "x": "stranger"}
#: A wake-up schedstat does not see: the IPI to an idle CPU and its exit from
#: idle before the woken thread is even queued (tens of us on a VM's vCPU).
WAKE_NS = 100_000


# --------------------------------------------------------------------------
# the guest's pattern (postcopy.c writes and checks the same)


def head_value(gpa: int, seed: int) -> int:
    return ((gpa ^ seed) * MIX) & U64


def fill_value(base: int, seed: int) -> int:
    return (((base | 0xFFF) ^ seed) * MIX) & U64


def page_qwords(base: int, seed: int) -> list[int]:
    """The 512 qwords of the page at guest-physical ``base``."""
    heads = [head_value(base + 8 * i, seed) for i in range(HEAD_QWORDS)]
    return heads + [fill_value(base, seed)] * (512 - HEAD_QWORDS)


def sums(qwords: list[int], s1: int = 0, s2: int = 0) -> tuple[int, int]:
    """The guest's checksum over ``qwords`` in order: s1 += q, s2 += s1 (mod 2^64)."""
    for q in qwords:
        s1 = (s1 + q) & U64
        s2 = (s2 + s1) & U64
    return s1, s2


def share_of(vcpu: int, vcpus: int, pages: int) -> list[int]:
    """The pages vCPU ``vcpu`` fills on the source and checks on the destination."""
    return list(range(vcpu, pages, vcpus))


def expected_sums(vcpu: int, vcpus: int, pages: int, data_gpa: int, seed: int) -> tuple[int, int]:
    s1 = s2 = 0
    for p in share_of(vcpu, vcpus, pages):
        s1, s2 = sums(page_qwords(data_gpa + p * PAGE_SIZE, seed), s1, s2)
    return s1, s2


# --------------------------------------------------------------------------
# the record


@dataclass(frozen=True)
class Fault:
    t_ns: int  # when the fault thread read the message
    page: int  # (address - start of the region) // PAGE_SIZE; outside [0, pages): foreign
    tid: int  # the thread the kernel named
    after: int  # how many placements were processed before it (replay order)


@dataclass(frozen=True)
class Placement:
    t_ns: int  # stamped after UFFDIO_COPY returned, under the pager's lock
    page: int
    how: str  # a key of HOW
    copy_ns: int  # t_ns minus when the UFFDIO_COPY was issued


@dataclass
class VcpuRecord:
    tid: int
    state: str  # "done", "stopped" (watchdog, in KVM_RUN), "unplaced" (pages never came)
    run_start_ns: int = 0
    run_end_ns: int = 0
    cpu_ns: int = 0
    run_delay_ns: int = 0
    others_ns: int = 0  # CPU time + run_delay of every other thread over the touching run
    steal_before: int = U64
    steal_after: int = U64
    guest_tsc_ns: int = 0
    stall_ns: list[int] = field(default_factory=list)
    value: list[int] = field(default_factory=list)
    checksum: int | None = None  # s1: the sum of every qword of its share
    checksum2: int | None = None  # s2: the sum of s1 after each qword
    bad_gpa: int = 0
    stopped: Stopped | None = None
    verify_ns: int = 0  # when the host let it check its memory (every page placed)


@dataclass
class PostcopyRecord:
    variant: str
    kind: Kind
    vcpus: int
    latency_us: int
    budget_s: float
    seed: int
    pages: int
    data_gpa: int
    plans: list[list[int]]
    helper_page: int | None
    switch_interval_ns: int
    faults: list[Fault]
    placements: list[Placement]
    vcpu: list[VcpuRecord]
    fault_thread: tuple[int, int]  # (CPU time, run_delay) over the run
    helper: dict[str, int] | None
    host_mismatch: list[int]
    eexist: int
    harness: list[str]
    watchdog: bool

    @classmethod
    def from_dict(cls, rec: dict[str, Any]) -> PostcopyRecord:
        if rec.get("family") != FAMILY:
            raise RecordError(f"not a postcopy record: family {rec.get('family')!r}")
        if rec.get("schema") != SCHEMA_VERSION:
            raise RecordError(f"postcopy record of schema {rec.get('schema')!r}")
        try:
            c = rec["config"]
            f = rec["faults"]
            p = rec["placements"]
            v = rec["vcpu"]
            t0 = int(rec["t0_ns"])
            faults = [
                Fault(t + t0, pg, tid, a)
                for t, pg, tid, a in zip(
                    undeltas(f["t_ns"]), f["page"], f["tid"], f["after"], strict=True
                )
            ]
            placements = [
                Placement(t + t0, pg, h, cp)
                for t, pg, h, cp in zip(
                    undeltas(p["t_ns"]), p["page"], p["how"], p["copy_ns"], strict=True
                )
            ]
            n = int(rec["vcpus"])
            vcpus = []
            for i in range(n):
                st = v["stopped"][i]
                vcpus.append(
                    VcpuRecord(
                        tid=v["tid"][i],
                        state=v["state"][i],
                        run_start_ns=v["run_start_ns"][i] + t0 if v["run_start_ns"][i] else 0,
                        run_end_ns=v["run_end_ns"][i] + t0 if v["run_end_ns"][i] else 0,
                        cpu_ns=v["cpu_ns"][i],
                        run_delay_ns=v["run_delay_ns"][i],
                        others_ns=v["others_ns"][i],
                        steal_before=v["steal_before"][i],
                        steal_after=v["steal_after"][i],
                        guest_tsc_ns=v["guest_tsc_ns"][i],
                        stall_ns=list(v["stall_ns"][i]),
                        value=list(v["value"][i]),
                        checksum=v["checksum"][i],
                        checksum2=v["checksum2"][i],
                        bad_gpa=v["bad_gpa"][i],
                        stopped=Stopped(**st) if st else None,
                        verify_ns=v["verify_ns"][i] + t0 if v["verify_ns"][i] else 0,
                    )
                )
            return cls(
                variant=str(rec["variant"]),
                kind=Kind(rec.get("kind", "promise")),
                vcpus=n,
                latency_us=int(c["latency_us"]),
                budget_s=float(c["budget_s"]),
                seed=int(c["seed"]),
                pages=int(c["pages"]),
                data_gpa=int(c["data_gpa"]),
                plans=[list(pl) for pl in c["plans"]],
                helper_page=c.get("helper_page"),
                switch_interval_ns=int(c["switch_interval_ns"]),
                faults=faults,
                placements=placements,
                vcpu=vcpus,
                fault_thread=tuple(rec["threads"]["fault"]),  # type: ignore[arg-type]
                helper=rec.get("helper"),
                host_mismatch=list(rec["host"]["mismatch"]),
                eexist=int(rec["host"]["eexist"]),
                harness=list(rec["host"]["harness"]),
                watchdog=bool(rec["host"]["watchdog"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"postcopy record unreadable: {exc!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The record's series (the caller adds verdict, notes and such)."""
        times = [f.t_ns for f in self.faults] + [p.t_ns for p in self.placements]
        times += [o.run_start_ns for o in self.vcpu if o.run_start_ns]
        t0 = min(times, default=1) - 1  # times are stored from 1: 0 means "not taken"

        def rel(t: int) -> int:
            return t - t0 if t else 0

        vs = self.vcpu
        return {
            "schema": SCHEMA_VERSION,
            "family": FAMILY,
            "variant": self.variant,
            "kind": str(self.kind),
            "vcpus": self.vcpus,
            "config": {
                "variant": self.variant,
                "vcpus": self.vcpus,
                "latency_us": self.latency_us,
                "budget_s": self.budget_s,
                "seed": self.seed,
                "pages": self.pages,
                "pages_per_vcpu": max((len(p) for p in self.plans), default=0),
                "data_gpa": self.data_gpa,
                "plans": self.plans,
                "helper_page": self.helper_page,
                "switch_interval_ns": self.switch_interval_ns,
            },
            "t0_ns": t0,
            "faults": {
                "t_ns": deltas([f.t_ns - t0 for f in self.faults]),
                "page": [f.page for f in self.faults],
                "tid": [f.tid for f in self.faults],
                "after": [f.after for f in self.faults],
            },
            "placements": {
                "t_ns": deltas([p.t_ns - t0 for p in self.placements]),
                "page": [p.page for p in self.placements],
                "how": "".join(p.how for p in self.placements),
                "copy_ns": [p.copy_ns for p in self.placements],
            },
            "vcpu": {
                "tid": [o.tid for o in vs],
                "state": [o.state for o in vs],
                "run_start_ns": [rel(o.run_start_ns) for o in vs],
                "run_end_ns": [rel(o.run_end_ns) for o in vs],
                "cpu_ns": [o.cpu_ns for o in vs],
                "run_delay_ns": [o.run_delay_ns for o in vs],
                "others_ns": [o.others_ns for o in vs],
                "steal_before": [o.steal_before for o in vs],
                "steal_after": [o.steal_after for o in vs],
                "guest_tsc_ns": [o.guest_tsc_ns for o in vs],
                "stall_ns": [o.stall_ns for o in vs],
                "value": [o.value for o in vs],
                "checksum": [o.checksum for o in vs],
                "checksum2": [o.checksum2 for o in vs],
                "bad_gpa": [o.bad_gpa for o in vs],
                "stopped": [o.stopped.__dict__ if o.stopped else None for o in vs],
                "verify_ns": [rel(o.verify_ns) for o in vs],
            },
            "threads": {"fault": list(self.fault_thread)},
            "helper": self.helper,
            "host": {
                "mismatch": self.host_mismatch,
                "eexist": self.eexist,
                "harness": self.harness,
                "watchdog": self.watchdog,
            },
        }


# --------------------------------------------------------------------------
# replay


@dataclass
class Replay:
    """What the events say once replayed in the order the pager processed them."""

    report: BlocktimeReport
    models: dict[str, BlocktimeReport]
    vcpu_of: list[int | None]  # per fault: the vCPU whose thread the kernel named
    placed_at: list[int | None]  # per fault: when its page was placed (None: never)
    placed_by: list[str]  # per fault: HOW key, or "before" (placed before it was read)
    copy_late: list[int]  # per fault: t_placed - copy start (0 for "before")
    diverged: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model: the first placement after which its figures left the accountant's."""


def replay(r: PostcopyRecord) -> Replay:
    vcpu_by_tid = {o.tid: i for i, o in enumerate(r.vcpu) if o.tid}
    acc = BlocktimeAccountant(r.vcpus)
    models: dict[str, Any] = {
        "qemu-hash": QemuHashModel(r.vcpus),
        "slot-scan": SlotScanModel(r.vcpus),
    }
    sinks: list[Any] = [acc, *models.values()]
    received: dict[int, Placement] = {}
    waiting: dict[int, list[int]] = {}
    n = len(r.faults)
    vcpu_of: list[int | None] = [vcpu_by_tid.get(f.tid) for f in r.faults]
    placed_at: list[int | None] = [None] * n
    placed_by = [""] * n
    copy_late = [0] * n
    done = 0

    diverged: dict[str, dict[str, Any]] = {}

    def compare(page: int, t: int, what: str) -> None:
        if len(diverged) == len(models):
            return
        truth = acc.report().figures()
        for name, m in models.items():
            if name not in diverged and m.report().figures() != truth:
                diverged[name] = {"after": what, "page": page, "t_ns": t}

    def place(p: Placement) -> None:
        if p.page in received:
            return
        received[p.page] = p
        for s in sinks:
            s.placed(p.page, p.t_ns)
        for i in waiting.pop(p.page, []):
            placed_at[i], placed_by[i], copy_late[i] = p.t_ns, p.how, p.copy_ns
        compare(p.page, p.t_ns, f"placement by {HOW.get(p.how, p.how)}")

    for i, f in enumerate(r.faults):
        while done < min(f.after, len(r.placements)):
            place(r.placements[done])
            done += 1
        if not 0 <= f.page < r.pages:
            continue  # foreign: judged apart
        for s in sinks:
            s.fault(f.page, vcpu_of[i], f.t_ns)
        if f.page in received:  # the copy woke it already; nothing waits
            for s in sinks:
                s.placed(f.page, f.t_ns)
            placed_at[i], placed_by[i] = f.t_ns, "before"
            compare(f.page, f.t_ns, "a message read after its page was placed")
        else:
            waiting.setdefault(f.page, []).append(i)
    for p in r.placements[done:]:
        place(p)
    return Replay(
        acc.report(),
        {k: m.report() for k, m in models.items()},
        vcpu_of,
        placed_at,
        placed_by,
        copy_late,
        diverged,
    )


# --------------------------------------------------------------------------
# judging


@dataclass
class Agreement:
    """Per vCPU: host blocktime against the guest's stalls on its faulted pages."""

    vcpu: int
    blocktime_ns: int
    guest_stall_ns: int
    slack_ns: int  # allowed excess of the guest's stall over blocktime
    tolerance_ns: int  # allowed excess of blocktime over the guest's stall (conversion)
    faults: int
    latency_floor_ns: int  # faults x latency over disjoint resolver-placed faults
    stall_all_ns: int = 0  # the guest stall over every touch (judged against blocktime + slack)


def _max_disjoint(intervals: list[tuple[int, int]]) -> int:
    count, end = 0, None
    for s, e in sorted(intervals, key=lambda iv: iv[1]):
        if end is None or s >= end:
            count, end = count + 1, e
    return count


def judge(record: dict[str, Any]) -> Judgement:
    if "faults" not in record and record.get("error"):  # it never ran: nothing to re-judge
        return Judgement(Verdict(record["verdict"]), str(record.get("observed", "")), [], {})
    r = PostcopyRecord.from_dict(record)
    rp = replay(r)
    out, harness, notes = _judge(r, rp)
    notes["blocktime"] = rp.report.to_json()
    notes["models"] = models_against_accountant(rp)
    untestable: list[str] = []
    for i, o in enumerate(r.vcpu):
        if o.state == "stopped":
            if o.stopped is None:
                harness.append(f"vcpu{i} was stopped and nothing recorded where")
                continue
            bad, why = judge_stopped(f"vcpu{i}", 0, o.stopped, r.budget_s)
            if bad is not None:
                out.append(bad)
            elif why:
                untestable.append(why)
        elif o.state == "unplaced":
            harness.append(f"vcpu{i}: the pager did not place every page within the budget")
        elif o.state != "done":
            harness.append(f"vcpu{i} ended in state {o.state!r}")
    if out:
        return Judgement(verdict_for(r.kind, broken=True), describe(r, rp, out, notes), out, notes)
    if harness:
        return Judgement(Verdict.ERROR, "harness self-check: " + "; ".join(harness), out, notes)
    if untestable:
        return Judgement(Verdict.UNTESTABLE, untestable[0], out, notes)
    return Judgement(verdict_for(r.kind), describe(r, rp, out, notes), out, notes)


def models_against_accountant(rp: Replay) -> dict[str, dict[str, Any]]:
    """What QEMU's two designs report from this run's events, and where they
    differ from the exact accountant (information: QEMU is not under test)."""
    truth = rp.report
    out = {}
    for name, m in rp.models.items():
        d_v = [a - b for a, b in zip(m.blocked_ns, truth.blocked_ns, strict=True)]
        d_all = m.all_blocked_ns - truth.all_blocked_ns
        parts = [
            f"vcpu{v} {'+' if d > 0 else '-'}{format_ns(abs(d))}" for v, d in enumerate(d_v) if d
        ]
        if d_all:
            parts.append(f"all-blocked {'+' if d_all > 0 else '-'}{format_ns(abs(d_all))}")
        if m.faults != truth.faults:
            parts.append(f"faults {m.faults} (exact {truth.faults})")
        first = rp.diverged.get(name)
        if first and parts:
            parts.append(f"from the {first['after']} of page {first['page']}")
        out[name] = {
            "blocked_ns": m.blocked_ns,
            "all_blocked_ns": m.all_blocked_ns,
            "faults": m.faults,
            "delta_ns": d_v,
            "all_blocked_delta_ns": d_all,
            "differs": bool(parts),
            "summary": ", ".join(parts) if parts else "same as the accountant",
            "first_divergence": first,
        }
    return out


def describe(
    r: PostcopyRecord, rp: Replay, violations: list[Violation], notes: dict[str, Any]
) -> str:
    if violations:
        counts = checks.summarize(violations)
        w = violations[0]
        return (
            ", ".join(f"{k} x{v}" for k, v in counts.items())
            + f"; first: {w.series}[{w.index}] {w.detail}"
        )
    rep = rp.report
    steal = sum(
        max(0, o.steal_after - o.steal_before)
        for o in r.vcpu
        if o.steal_before != U64 and o.steal_after != U64
    )
    stall = sum(a["guest_stall_ns"] for a in notes.get("agreement", []))
    return (
        f"nothing lost; {sum(rep.faults)} vCPU faults, blocktime {format_ns(sum(rep.blocked_ns))}, "
        f"all-blocked {format_ns(rep.all_blocked_ns)}, guest stall "
        f"{format_ns(stall)}, steal {format_ns(steal)}"
    )


def _judge(r: PostcopyRecord, rp: Replay) -> tuple[list[Violation], list[str], dict[str, Any]]:
    out: list[Violation] = []
    harness = list(r.harness)
    notes: dict[str, Any] = {}
    rep = rp.report
    lat = r.latency_us * 1000
    done = [o.state == "done" for o in r.vcpu]
    # nothing lost
    for i, o in enumerate(r.vcpu):
        s = f"vcpu{i}"
        if not done[i]:
            continue
        bad = [
            p
            for p, val in zip(r.plans[i], o.value, strict=True)
            if val != head_value(r.data_gpa + p * PAGE_SIZE, r.seed)
        ]
        if bad:
            out.append(
                checks.violation(
                    KIND_LOST,
                    s,
                    0,
                    None,
                    None,
                    f"first touch of page {bad[0]} read a wrong value ({len(bad)} page(s))",
                    counter="memory",
                )
            )
        want = expected_sums(i, r.vcpus, r.pages, r.data_gpa, r.seed)
        got = (o.checksum, o.checksum2)
        if o.bad_gpa or got != want:
            out.append(
                checks.violation(
                    KIND_LOST,
                    s,
                    0,
                    None,
                    None,
                    f"guest check of its {len(share_of(i, r.vcpus, r.pages))} pages: first "
                    f"bad qword at gpa {o.bad_gpa:#x}, checksum "
                    f"{'/'.join('-' if x is None else hex(x) for x in got)} (host expects "
                    f"{want[0]:#x}/{want[1]:#x})",
                    counter="memory",
                )
            )
    if r.host_mismatch:
        pg = r.host_mismatch
        out.append(
            checks.violation(
                KIND_LOST,
                "host",
                0,
                None,
                None,
                f"{len(pg)} placed page(s) differ from the source, first page {pg[0]}",
                counter="memory",
            )
        )
    placed = {p.page for p in r.placements}
    missing = r.pages - len(placed)
    if missing and all(done):
        harness.append(f"{missing} page(s) never placed")
    strangers = [p for p in r.placements if p.how == "x"]
    if strangers:
        out.append(
            checks.violation(
                KIND_LOST,
                "host",
                0,
                None,
                None,
                f"{len(strangers)} "
                "page(s) were present before anyone placed them (UFFDIO_COPY EEXIST)",
                counter="memory",
            )
        )
    # attribution
    # no helper (or one that reported no thread): no thread id, not even 0, is its
    helper_tid = (r.helper or {}).get("tid")
    foreign = [f for f in r.faults if not 0 <= f.page < r.pages]
    for f, v in zip(r.faults, rp.vcpu_of, strict=True):
        if f in foreign:
            continue
        if v is not None and f.page not in r.plans[v]:
            out.append(
                checks.violation(
                    KIND_MISATTRIBUTED,
                    f"vcpu{v}",
                    f.page,
                    None,
                    None,
                    f"fault on page {f.page} named vcpu{v}'s thread {f.tid}, but "
                    "that vCPU never touches it",
                    counter="fault",
                )
            )
        if v is None and f.tid != helper_tid:
            # Only vCPU threads (and the helper, in its variant) ever touch the
            # region: a fault named after any other thread was someone's fault
            # reported under the wrong thread id.
            out.append(
                checks.violation(
                    KIND_MISATTRIBUTED,
                    "uffd",
                    f.page,
                    None,
                    None,
                    f"fault on page {f.page} named thread {f.tid}, which is no vCPU's"
                    + (f" and not the helper's ({helper_tid})" if helper_tid else "")
                    + ": a vCPU's fault must name that vCPU's thread",
                    counter="fault",
                )
            )
    for i, f in enumerate(r.faults):
        v = rp.vcpu_of[i]
        if v is None or rp.placed_by[i] != "before" or not r.vcpu[v].verify_ns:
            continue
        if f.t_ns > r.vcpu[v].verify_ns:  # read once it was checking its memory
            out.append(
                checks.violation(
                    KIND_SPURIOUS,
                    f"vcpu{v}",
                    f.page,
                    None,
                    None,
                    f"fault on page {f.page}, placed before vcpu{v} began checking its memory",
                    counter="fault",
                )
            )
    if foreign:
        out.append(
            checks.violation(
                KIND_MISATTRIBUTED,
                "uffd",
                0,
                None,
                None,
                f"{len(foreign)} fault(s) outside the registered range, first page offset "
                f"{foreign[0].page}",
                counter="fault",
            )
        )
    if r.helper_page is not None:
        h = r.helper or {}
        got = [
            f
            for f, v in zip(r.faults, rp.vcpu_of, strict=True)
            if f.page == r.helper_page and v is None
        ]
        if "value" not in h:
            harness.append("the helper thread did not finish its read")
        else:
            if h["value"] != head_value(r.data_gpa + r.helper_page * PAGE_SIZE, r.seed):
                out.append(
                    checks.violation(
                        KIND_LOST,
                        "helper",
                        r.helper_page,
                        None,
                        None,
                        f"the helper read {h['value']:#x} from its page",
                        counter="memory",
                    )
                )
            if not got and h["t1"] - h["t0"] >= lat:
                out.append(
                    checks.violation(
                        KIND_SILENT_STALL,
                        "helper",
                        r.helper_page,
                        None,
                        None,
                        f"the helper waited {format_ns(h['t1'] - h['t0'])} on a missing "
                        "page and no fault message named it",
                        counter="fault",
                    )
                )
    # per vCPU: wall, guest agreement, silent stalls, steal
    agreement: list[Agreement] = []
    for v, o in enumerate(r.vcpu):
        s = f"vcpu{v}"
        if not done[v] or not o.run_end_ns:
            continue
        mine = [
            i
            for i, fv in enumerate(rp.vcpu_of)
            if fv == v and rp.placed_at[i] is not None and 0 <= r.faults[i].page < r.pages
        ]
        pages = {r.faults[i].page for i in mine}
        wall = o.run_end_ns - o.run_start_ns
        bt = rep.blocked_ns[v]
        # The vCPU wakes during UFFDIO_COPY; the host stamps the placement only
        # after it returns (and after the lock), so each placement may be late
        # by that gap, which the host measured itself.
        late = sum(rp.copy_late[i] for i in mine)
        if bt > wall + late:
            out.append(
                checks.violation(
                    KIND_OVER_WALL,
                    s,
                    0,
                    wall,
                    bt,
                    f"blocktime {format_ns(bt)} exceeds the "
                    f"{format_ns(wall)} its touching KVM_RUN lasted "
                    f"(+{format_ns(late)} stamped after the copies began)",
                    counter="blocktime",
                )
            )
        resolver = [(r.faults[i].t_ns, rp.placed_at[i]) for i in mine if rp.placed_by[i] == "r"]
        floor = lat * _max_disjoint(resolver)  # type: ignore[arg-type]
        total = sum(rp.placed_at[i] - r.faults[i].t_ns for i in mine)  # type: ignore[operator]
        if bt < floor or bt > total:
            harness.append(f"{s}: blocktime {bt} outside [{floor}, {total}] of its own faults")
        plan = r.plans[v]
        stalled = sum(st for p, st in zip(plan, o.stall_ns, strict=True) if p in pages)
        stall_all = sum(o.stall_ns)
        # What can stall the guest on a touch besides the blocked interval the
        # host measured (fault message read -> page placed): the vCPU thread
        # waiting on a run queue or running (the fault's work, the wake-up), and
        # every other thread of this process being late (the fault thread
        # waking, reading, taking the GIL; a lock holder preempted), each
        # measured over this very KVM_RUN, plus the two wake-ups per fault
        # that schedstat does not see (an idle CPU's IPI and exit).
        # The guest's ns come from its TSC at KVM's tsc_khz: off by as much as
        # its interval over the touches exceeds the host's around them (it lies
        # inside), plus the conversion's rounding.
        rate_err = 0.0
        if o.guest_tsc_ns and wall:
            rate_err = max(0.0, o.guest_tsc_ns / wall - 1.0)
        wakes = WAKE_NS * 2 * len(mine)
        conv = int(stall_all * (rate_err + 1e-3))
        slack = o.run_delay_ns + o.cpu_ns + o.others_ns + wakes + conv
        tol = int(stalled * (rate_err + 1e-3)) + 1000 * len(mine) + late
        agreement.append(Agreement(v, bt, stalled, slack, tol, len(mine), floor, stall_all))
        if bt > stalled + tol:
            out.append(
                checks.violation(
                    KIND_OVER_GUEST,
                    s,
                    0,
                    stalled,
                    bt,
                    f"host blocktime {format_ns(bt)} exceeds what the guest saw stalled on "
                    f"the same {len(pages)} page(s), {format_ns(stalled)} (+{format_ns(tol)} "
                    "conversion)",
                    counter="blocktime",
                )
            )
        if stall_all > bt + slack:
            k = max(range(len(plan)), key=lambda k: o.stall_ns[k])
            heard = "with" if plan[k] in pages else "with no"
            out.append(
                checks.violation(
                    KIND_UNDER_GUEST if mine else KIND_SILENT_STALL,
                    s,
                    k,
                    bt,
                    stall_all,
                    f"the guest stalled {format_ns(stall_all)} over its {len(plan)} touches, "
                    f"more than blocktime {format_ns(bt)} + everything else that can "
                    f"stall it, {format_ns(slack)} (its thread's run_delay "
                    f"{format_ns(o.run_delay_ns)} and CPU {format_ns(o.cpu_ns)}, the other "
                    f"threads' {format_ns(o.others_ns)}, wake-ups {format_ns(wakes)}, TSC "
                    f"conversion {format_ns(conv)}); "
                    f"longest: touch {k} of page {plan[k]}, {format_ns(o.stall_ns[k])}, "
                    f"{heard} fault message from its thread",
                    counter="blocktime",
                )
            )
        d_steal = o.steal_after - o.steal_before
        if o.steal_before != U64 and o.steal_after != U64 and d_steal > o.run_delay_ns:
            out.append(
                checks.violation(
                    KIND_STEAL,
                    s,
                    0,
                    o.run_delay_ns,
                    d_steal,
                    f"steal grew {format_ns(d_steal)} over the touching KVM_RUN, more than "
                    f"its thread's run_delay {format_ns(o.run_delay_ns)} (blocktime "
                    f"{format_ns(bt)}): time asleep on a missing page counted as steal?",
                    counter="steal",
                )
            )
    if rep.all_blocked_ns > min(rep.blocked_ns, default=0):
        harness.append("all-blocked time exceeds a vCPU's blocktime")
    notes["agreement"] = [a.__dict__ for a in agreement]
    return out, harness, notes
