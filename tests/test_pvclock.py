"""The pvclock scale, on the host and in the guest, against worked values."""

from __future__ import annotations

import pytest

from kvmharness.pvclock import Pvti, scale, scale_for_khz

# (delta, mul, shift, expected), each worked by hand:
WORKED = [
    # mul = 2**31 is 0.5: half the delta
    (1_000_000, 1 << 31, 0, 500_000),
    # shift -1 halves first: 500 * (2**32 - 1) >> 32 = 500 - 1
    (1000, (1 << 32) - 1, -1, 499),
    # shift +3 multiplies by 8 first: 8000 * 0.5
    (1000, 1 << 31, 3, 4000),
    # 2.596122 GHz, KVM's scale (3308756133, -1): one second of ticks is
    # 1298061000 * 3308756133 >> 32 = 999999999 (mul is rounded down)
    (2_596_122_000, 3308756133, -1, 999_999_999),
    # large delta: 2**63 >> 4 = 2**59; 2**59 * (2**32 - 1) >> 32 = 2**59 - 2**27
    (1 << 63, (1 << 32) - 1, -4, (1 << 59) - (1 << 27)),
    # the largest delta and mul: (2**64-1)(2**32-1) = 2**96 - 2**64 - 2**32 + 1,
    # >> 32 = 2**64 - 2**32 - 1 (the low 32 bits, 1, are dropped)
    ((1 << 64) - 1, (1 << 32) - 1, 0, (1 << 64) - (1 << 32) - 1),
    # a left shift drops the bits that leave 64, as the guest's u64 does
    (1 << 62, 1 << 31, 2, 0),
    # the most negative shift leaves nothing
    ((1 << 64) - 1, (1 << 32) - 1, -64, 0),
    (0, 12345, 5, 0),
]


@pytest.mark.parametrize("delta, mul, shift, expected", WORKED)
def test_scale_worked_values(delta, mul, shift, expected):
    assert scale(delta, mul, shift) == expected


def test_scale_rejects_values_outside_the_abi():
    with pytest.raises(ValueError):
        scale(1, 1 << 32, 0)
    with pytest.raises(ValueError):
        scale(1, 1, 128)


@pytest.mark.parametrize(
    "khz, expected",
    [
        (2596122, (3308756133, -1)),  # seen from KVM on this machine's kvm_pvm
        (1_000_000, (1 << 31, 1)),  # 1 GHz: ratio 1 = 0.5 * 2**1
        (2_000_000, (1 << 31, 0)),  # 2 GHz: 0.5 ns per tick
    ],
)
def test_scale_for_khz(khz, expected):
    assert scale_for_khz(khz) == expected
    mul, shift = expected
    assert abs(scale(khz * 1000, mul, shift) - 1_000_000_000) <= 2


def test_pvti_ns_at_wraps_like_the_guest():
    p = Pvti(2, tsc_timestamp=1000, system_time=5_000, mul=1 << 31, shift=1, flags=1)
    assert p.ns_at(1000) == 5000
    assert p.ns_at(3000) == 7000
    assert p.stable
    # a TSC below tsc_timestamp wraps the delta as u64: a huge reading, as in C
    assert p.ns_at(999) > 1 << 63
    assert round(p.khz()) == 1_000_000


@pytest.mark.kvm
@pytest.mark.parametrize("delta, mul, shift, expected", WORKED)
def test_guest_scale_and_instructions(make_guest, delta, mul, shift, expected):
    """The guest's C computes the same worked values; lfence+rdtsc advances and
    lock cmpxchg swaps (each instruction the clock guest relies on, tested)."""
    from kvmharness.ffi import lib

    gvm = make_guest("clock")
    gvm.sym("clock_mode", "uint32_t")[0] = lib.CLOCK_MODE_SELFTEST
    gvm.sym("selftest_delta", "uint64_t")[0] = delta
    gvm.sym("selftest_mul", "uint32_t")[0] = mul
    gvm.sym("selftest_shift", "int32_t")[0] = shift
    uc = gvm.expect(gvm.vcpus[0], lib.UCALL_SYNC)
    got, tsc_step, seen, word = uc.args
    assert got == expected
    assert 0 < tsc_step < 1 << 40, "two ordered rdtsc readings advance"
    assert (seen, word) == (5, 9), "lock cmpxchg swapped 5 for 9"
