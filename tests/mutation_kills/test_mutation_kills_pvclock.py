"""pvclock edges that mutation testing found untested (scripts/mutation.py).

The ABI's limits (a u32 mul, an s8 shift) at their very edges, scale_for_khz
at the edges of its loops, and a Pvti built from a C struct.  Each value is
worked by hand or follows from the definition.  No KVM needed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvmharness.pvclock import Pvti, scale, scale_for_khz


def test_scale_accepts_the_abis_edges_and_refuses_one_past_them():
    # mul 0 is a u32 (a zero scale): every delta is 0 ns
    assert scale(12345, 0, 0) == 0
    # shift -128 and 127 are s8: a shift past 64 bits leaves nothing
    assert scale((1 << 64) - 1, (1 << 32) - 1, -128) == 0
    assert scale(1, (1 << 32) - 1, 127) == 0
    assert scale(3, 1 << 31, 63) == (((3 << 63) & ((1 << 64) - 1)) * (1 << 31)) >> 32
    with pytest.raises(ValueError, match="u32, got -1"):
        scale(1, -1, 0)
    with pytest.raises(ValueError, match="u32, got 4294967296"):
        scale(1, 1 << 32, 0)
    with pytest.raises(ValueError, match="s8, got -129"):
        scale(1, 1, -129)
    with pytest.raises(ValueError, match="s8, got 128"):
        scale(1, 1, 128)


@pytest.mark.parametrize(
    "khz, expected",
    [
        # 1 kHz: 1e6 ns per tick = 2**20 * 0.95367..., mul = 1e9 * 2**32 // (1e6 * 2**20)
        (1, (4_096_000_000, 20)),
        # just below 1 GHz: doubled once, mul = 2**32 * 1e9 // 1_999_998_000
        (999_999, (2_147_485_795, 1)),
        # just above 1 GHz: neither halved nor doubled
        (1_000_001, ((10**9 << 32) // 1_000_001_000, 0)),
        # 3 GHz: halved once to 1.5 GHz
        (3_000_000, ((10**9 << 32) // 1_500_000_000, -1)),
        # above 2**32 Hz: halved twice (4.29 GHz > 2 GHz, 2.15 GHz > 2 GHz)
        (4_294_968, ((10**9 << 32) // (4_294_968_000 >> 2), -2)),
    ],
)
def test_scale_for_khz_at_its_loops_edges(khz, expected):
    assert scale_for_khz(khz) == expected
    mul, shift = expected
    # one second of ticks is one second, to the scale's rounding
    assert abs(scale(khz * 1000, mul, shift) - 1_000_000_000) <= 2 + 10**9 // (khz * 1000)


def test_scale_for_khz_refuses_no_frequency():
    with pytest.raises(ValueError, match="positive, got 0"):
        scale_for_khz(0)


def test_pvti_khz_of_a_zero_or_negative_shift_scale_and_of_no_scale():
    mul, shift = scale_for_khz(2_596_122)
    assert shift == -1
    p = Pvti(2, 0, 0, mul, shift, 0)
    assert abs(p.khz() - 2_596_122) < 1
    assert not p.stable
    assert Pvti(2, 0, 0, 0, 0, 1).khz() == 0.0
    assert abs(Pvti(2, 0, 0, 1 << 31, 0, 1).khz() - 2_000_000) < 1e-6


def test_pvti_from_a_c_struct_keeps_every_field_in_place():
    c = SimpleNamespace(
        version=4, tsc_timestamp=11, system_time=22, tsc_to_system_mul=33, tsc_shift=-2, flags=1
    )
    p = Pvti.from_cdata(c)
    assert p == Pvti(4, 11, 22, 33, -2, 1)
    assert p.to_list() == [4, 11, 22, 33, -2, 1]
