/* Turn steal time on, then report the steal-time area at every stop. */
#include "runtime.h"

struct kvm_steal_time area __attribute__((aligned(64)));

void guest_main(uint32_t cpu)
{
    (void)cpu;
    volatile struct kvm_steal_time *st = &area;

    wrmsr(MSR_KVM_STEAL_TIME, (uint64_t)(uintptr_t)&area | KVM_MSR_ENABLED);
    for (;;)
        GUEST_SYNC(st->steal, st->version);
}
