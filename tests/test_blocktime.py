"""The blocktime accountant: the hard cases scripted, a property test against
brute force, and the comparison with the models of QEMU's designs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmharness.blocktime import (
    LATENCY_BUCKETS,
    BlocktimeAccountant,
    QemuHashModel,
    SlotScanModel,
    brute_force,
    bucket_label,
    latency_bucket,
    replay,
    sequences,
    smallest_disagreement,
)

A, B, C = 0x1000, 0x2000, 0x3000
US = 1000


def test_one_fault_one_placement():
    acc = BlocktimeAccountant(1)
    acc.fault(A, 0, 100)
    assert acc.outstanding(0) == 1
    assert acc.placed(A, 350) == 1
    r = acc.report()
    assert r.blocked_ns == [250] and r.faults == [1] and r.all_blocked_ns == 250
    assert r.outstanding == [0] and r.placements == 1 and r.unwaited_placements == 0


def test_several_vcpus_blocked_on_one_address():
    acc = BlocktimeAccountant(3)
    acc.fault(A, 0, 0)
    acc.fault(A, 1, 10)
    acc.fault(A, 2, 30)
    assert acc.placed(A, 100) == 3
    r = acc.report()
    assert r.blocked_ns == [100, 90, 70]
    assert r.faults == [1, 1, 1]
    assert r.all_blocked_ns == 70  # from the last vCPU's fault to the placement


def test_two_outstanding_faults_on_one_vcpu_count_their_union_once():
    # the fault thread read B's message before A's page was placed
    acc = BlocktimeAccountant(1)
    acc.fault(A, 0, 0)
    acc.fault(B, 0, 10)
    acc.placed(A, 20)
    assert acc.outstanding(0) == 1  # still blocked: its interval has not ended
    assert acc.report().blocked_ns == [0]
    acc.placed(B, 30)
    r = acc.report()
    assert r.blocked_ns == [30] and r.faults == [2] and r.all_blocked_ns == 30
    # same answer when the later fault is placed first
    acc = BlocktimeAccountant(1)
    acc.fault(A, 0, 0)
    acc.fault(B, 0, 10)
    acc.placed(B, 20)
    acc.placed(A, 30)
    assert acc.report().blocked_ns == [30]


def test_retried_fault_on_the_same_address():
    acc = BlocktimeAccountant(2)
    acc.fault(A, 0, 0)
    acc.fault(A, 0, 40)  # the kernel retried the fault before the page came
    acc.fault(B, 1, 5)
    r = acc.report()
    assert r.retried == 1 and r.faults == [2, 1]
    acc.placed(B, 60)
    assert acc.placed(A, 100) == 2
    r = acc.report()
    assert r.blocked_ns == [100, 55]
    assert r.all_blocked_ns == 55  # both down from 5 until B at 60
    assert r.buckets[0][0] == 2  # two latencies (100 ns and 60 ns), both under 1 us


def test_placement_nobody_waited_on_changes_nothing():
    acc = BlocktimeAccountant(2)
    acc.fault(A, 0, 0)
    assert acc.placed(C, 5) == 0
    acc.placed(A, 10)
    acc.placed(A, 20)  # EEXIST-like second placement
    r = acc.report()
    assert r.blocked_ns == [10, 0] and r.unwaited_placements == 2 and r.placements == 3


def test_non_vcpu_faults_are_counted_apart():
    acc = BlocktimeAccountant(1)
    acc.fault(A, None, 0)
    acc.fault(A, 0, 50)
    acc.placed(A, 3000 * US)
    r = acc.report()
    assert r.non_vcpu_faults == 1 and r.non_vcpu_wait_ns == 3000 * US
    assert r.faults == [1] and r.blocked_ns == [3000 * US - 50]
    assert r.non_vcpu_buckets[latency_bucket(3000 * US)] == 1


def test_open_intervals_count_up_to_now():
    acc = BlocktimeAccountant(2)
    acc.fault(A, 0, 0)
    acc.fault(B, 1, 10)
    r = acc.report(now_ns=50)
    assert r.blocked_ns == [50, 40] and r.all_blocked_ns == 40
    assert acc.report().blocked_ns == [0, 0]


def test_latency_buckets_are_log2_microseconds():
    assert latency_bucket(0) == 0 and latency_bucket(999) == 0 and latency_bucket(1999) == 0
    assert latency_bucket(2000) == 1 and latency_bucket(3999) == 1 and latency_bucket(4000) == 2
    assert latency_bucket(1024 * US) == 10
    assert latency_bucket(10**15) == LATENCY_BUCKETS - 1
    assert bucket_label(0) == "0-2us" and bucket_label(10) == "1.024ms-2.048ms"


def test_bad_vcpu_is_refused():
    acc = BlocktimeAccountant(2)
    with pytest.raises(ValueError):
        acc.fault(A, 2, 0)
    with pytest.raises(ValueError):
        BlocktimeAccountant(0)


# --------------------------------------------------------------------------
# property: equal to brute force over the same intervals


@st.composite
def event_sequences(draw):
    vcpus = draw(st.integers(1, 4))
    n = draw(st.integers(0, 30))
    t = 0
    events = []
    for _ in range(n):
        t += draw(st.integers(0, 5))
        if draw(st.booleans()):
            v = (
                draw(st.one_of(st.none(), st.integers(0, vcpus - 1)))
                if draw(st.integers(0, 9)) == 0
                else draw(st.integers(0, vcpus - 1))
            )
            events.append(("F", v, draw(st.integers(0, 3)), t))
        else:
            events.append(("P", draw(st.integers(0, 3)), t))
    now = t + draw(st.integers(0, 5))
    return vcpus, events, now


@settings(max_examples=200, deadline=None)
@given(event_sequences())
def test_accountant_equals_brute_force(case):
    vcpus, events, now = case
    r = replay(BlocktimeAccountant(vcpus), events, now)
    assert r.figures() == brute_force(events, vcpus, now)
    # latencies: one per resolved fault, vCPU and non-vCPU alike
    resolved = sum(sum(b) for b in r.buckets) + sum(r.non_vcpu_buckets)
    assert resolved == sum(
        1
        for i, e in enumerate(events)
        if e[0] == "F" and any(p[0] == "P" and p[1] == e[2] for p in events[i + 1 :])
    )
    # physics: a vCPU is blocked no longer than the run, all-blocked no longer than any vCPU
    assert all(0 <= b <= now for b in r.blocked_ns)
    assert r.all_blocked_ns <= min(r.blocked_ns)


# --------------------------------------------------------------------------
# the reference models


def test_sequences_enumerate_only_complete_runs():
    seqs = list(sequences(2, 1, 1))
    assert seqs == [(("F", 0, 0, 0), ("P", 0, 1))]


def test_accountant_has_no_disagreement_up_to_six_events():
    assert smallest_disagreement(BlocktimeAccountant, max_length=6) is None


def test_qemu_2025_model_smallest_disagreement_is_two_outstanding_faults():
    d = smallest_disagreement(QemuHashModel, max_length=6)
    assert d is not None
    assert d.events == (("F", 0, 0, 0), ("F", 0, 1, 1), ("P", 0, 2), ("P", 1, 3))
    assert d.truth[0] == [3] and d.model[0] == [2]  # only the last fault's latency counted
    assert d.model[2] == d.truth[2]  # its all-blocked total agrees
    assert "F(v0,A,t=0) F(v0,B,t=1) P(A,t=2) P(B,t=3)" in d.describe()


def test_qemu_2025_model_gets_retries_on_one_address_right():
    # prepending puts the oldest entry last, so it is the one that ends the interval
    events = [("F", 0, A, 0), ("F", 0, A, 1), ("P", A, 2)]
    assert replay(QemuHashModel(1), events).figures() == brute_force(events, 1)


def test_slot_model_overwrites_a_second_fault():
    d = smallest_disagreement(SlotScanModel, max_length=4)
    assert d is not None and len(d.events) == 3
    assert d.events == (("F", 0, 0, 0), ("F", 0, 0, 1), ("P", 0, 2))


def test_all_models_agree_without_concurrent_faults_per_vcpu():
    events = [
        ("F", 0, A, 0),
        ("F", 1, A, 1),
        ("P", A, 5),
        ("F", 0, B, 6),
        ("F", 1, C, 7),
        ("P", C, 9),
        ("P", B, 12),
    ]
    truth = brute_force(events, 2)
    for model in (BlocktimeAccountant(2), QemuHashModel(2), SlotScanModel(2)):
        assert replay(model, events).figures() == truth
