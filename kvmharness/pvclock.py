"""The pvclock arithmetic, on the host: the same scale the guest computes.

A kvmclock area (``struct pvclock_vcpu_time_info``) turns a TSC reading into
nanoseconds as::

    ns = system_time + scale(tsc - tsc_timestamp, tsc_to_system_mul, tsc_shift)

where ``scale`` shifts the 64-bit delta left by ``tsc_shift`` (right when it
is negative), then takes the high 64 bits of the 96-bit product with the
32-bit ``tsc_to_system_mul`` (i.e. ``(delta * mul) >> 32``).  Everything is
u64 arithmetic: a TSC below ``tsc_timestamp`` wraps the delta, and a left
shift drops the bits that leave 64, as in the guest's C.

Pure functions, no KVM: the guest's C (``programs/clock.c``) and this module
are checked against the same worked values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

U64_MASK = (1 << 64) - 1
PVCLOCK_TSC_STABLE_BIT = 1


def scale(delta: int, mul: int, shift: int) -> int:
    """``(delta shifted by shift) * mul >> 32``, in u64 arithmetic like the guest's."""
    if not 0 <= mul < 1 << 32:
        raise ValueError(f"tsc_to_system_mul must be a u32, got {mul}")
    if not -128 <= shift <= 127:
        raise ValueError(f"tsc_shift must be an s8, got {shift}")
    delta &= U64_MASK
    if shift < 0:
        delta >>= -shift
    else:
        delta = (delta << shift) & U64_MASK
    return ((delta * mul) >> 32) & U64_MASK


def scale_for_khz(khz: int) -> tuple[int, int]:
    """(mul, shift) that turn ticks of a ``khz`` TSC into ns, as KVM chooses them:
    halve the tick rate until it is at most twice 1 GHz (shift down), then
    double it until it exceeds 1 GHz (shift up), so mul = 1e9 / rate * 2**32
    is below 2**32 and keeps the most bits."""
    if khz <= 0:
        raise ValueError(f"khz must be positive, got {khz}")
    rate, ns_per_s, shift = khz * 1000, 1_000_000_000, 0
    while rate > 2 * ns_per_s or rate >= 1 << 32:
        rate >>= 1
        shift -= 1
    while rate <= ns_per_s or ns_per_s >= 1 << 32:
        if ns_per_s >= 1 << 32 or rate & 0x80000000:
            ns_per_s >>= 1
        else:
            rate <<= 1
        shift += 1
    return (ns_per_s << 32) // rate, shift


@dataclass(frozen=True)
class Pvti:
    """One snapshot of a ``struct pvclock_vcpu_time_info``."""

    version: int
    tsc_timestamp: int
    system_time: int
    mul: int
    shift: int
    flags: int

    @property
    def stable(self) -> bool:
        return bool(self.flags & PVCLOCK_TSC_STABLE_BIT)

    def ns_at(self, tsc: int) -> int:
        """kvmclock at guest TSC ``tsc`` by this area."""
        return (
            self.system_time + scale((tsc - self.tsc_timestamp) & U64_MASK, self.mul, self.shift)
        ) & U64_MASK

    def khz(self) -> float:
        """The TSC frequency this area's scale implies (kHz)."""
        if not self.mul:
            return 0.0
        return 1e6 * 2.0**32 / self.mul / 2.0**self.shift

    @classmethod
    def from_cdata(cls, p: Any) -> Pvti:
        return cls(
            p.version, p.tsc_timestamp, p.system_time, p.tsc_to_system_mul, p.tsc_shift, p.flags
        )

    def to_list(self) -> list[int]:
        return [
            self.version,
            self.tsc_timestamp,
            self.system_time,
            self.mul,
            self.shift,
            self.flags,
        ]
