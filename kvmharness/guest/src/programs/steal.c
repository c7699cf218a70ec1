/*
 * Steal-time guest: enables steal time the way a guest kernel does (checks
 * KVM_FEATURE_STEAL_TIME in CPUID 0x40000001, writes the area's gpa | 1 to
 * MSR_KVM_STEAL_TIME), then samples its area forever with the version
 * protocol, reporting each reading with a SYNC.  The host decides when to
 * stop; the guest never finishes on its own.
 */
#include "runtime.h"

/* A kernel that leaves the version odd must not hang the guest: after this
 * many tries the reading is reported as it is, odd version and all, and the
 * host judges it. */
#define STEAL_READ_TRIES 1000

struct kvm_steal_time steal_areas[GUEST_MAX_VCPUS] __attribute__((aligned(64)));

/* Fault injection for the harness's own negative control: non-zero makes
 * vCPU n-1 spin without exiting, as a guest stuck in a broken kernel would. */
volatile uint32_t hang_vcpu_plus_one;

/* Read steal with the seqlock protocol: retry while the version is odd
 * (an update is in progress) or changed under us, a bounded number of times. */
static void read_steal(volatile struct kvm_steal_time *st, struct steal_sample *out)
{
    uint32_t v0, v1, retries = 0;
    uint64_t steal;
    for (;;) {
        v0 = st->version;
        compiler_barrier();
        steal = st->steal;
        compiler_barrier();
        v1 = st->version;
        if (!(v0 & 1) && v0 == v1)
            break;
        if (++retries >= STEAL_READ_TRIES) {
            v1 = v0 | 1;  /* never report a torn reading as a clean one */
            break;
        }
    }
    out->steal = steal;
    out->version = v1;
    out->retries = retries;
    out->tsc = rdtsc();
}

void guest_main(uint32_t cpu)
{
    uint32_t features = kvm_features();
    GUEST_ASSERT(features & (1u << KVM_FEATURE_STEAL_TIME), features);
    wrmsr(MSR_KVM_STEAL_TIME, (uint64_t)(uintptr_t)&steal_areas[cpu] | KVM_MSR_ENABLED);

    for (uint64_t seq = 0;; seq++) {
        struct steal_sample s;
        while (hang_vcpu_plus_one == cpu + 1)
            compiler_barrier();
        read_steal(&steal_areas[cpu], &s);
        GUEST_SYNC(seq, s.steal, s.version, s.retries);
    }
}
