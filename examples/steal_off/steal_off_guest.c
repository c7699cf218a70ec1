/*
 * Steal time stops when the guest turns it off.
 *
 * The guest enables its steal-time area (MSR_KVM_STEAL_TIME = gpa | 1), is
 * kept waiting by the host for a while, then disables it (MSR = 0) and is
 * kept waiting again.  KVM must stop writing the area once it is disabled:
 * a guest kernel that gives the page back (kexec, hot-unplug, hibernation)
 * relies on it.  Each phase busy-waits `busy_cycles` TSC cycles (the host
 * sets it), so the phase lasts the same wall time however fast the guest's
 * instructions run.
 */
#include "runtime.h"

struct kvm_steal_time area __attribute__((aligned(64)));
volatile uint64_t busy_cycles = 1000000;  /* set by the host: TSC cycles per phase */

static void busy(void)
{
    uint64_t end = rdtsc() + busy_cycles;
    while (rdtsc() < end)
        compiler_barrier();
}

void guest_main(uint32_t cpu)
{
    (void)cpu;
    volatile struct kvm_steal_time *st = &area;
    uint32_t features = kvm_features();
    GUEST_ASSERT(features & (1u << KVM_FEATURE_STEAL_TIME), features);

    /* Phase 1: enabled.  KVM writes the area at every guest entry. */
    wrmsr(MSR_KVM_STEAL_TIME, (uint64_t)(uintptr_t)&area | KVM_MSR_ENABLED);
    GUEST_SYNC(st->steal, st->version);
    uint64_t steal_on = st->steal;
    busy();
    GUEST_SYNC(steal_on, st->steal, st->version);

    /* Phase 2: disabled.  From the wrmsr on, nothing may change the area. */
    wrmsr(MSR_KVM_STEAL_TIME, 0);
    uint64_t steal_off = st->steal;
    uint32_t version_off = st->version;
    GUEST_SYNC(steal_off, version_off);
    busy();
    GUEST_ASSERT(st->steal == steal_off && st->version == version_off,
                 steal_off, st->steal, version_off, st->version);
    GUEST_SYNC(st->steal, st->version);
}
