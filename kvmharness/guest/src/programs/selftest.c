/*
 * Guest self-tests of the runtime: each mode exercises one thing the
 * harness relies on.  The host picks the mode by writing `test_mode`
 * before the first KVM_RUN.
 */
#include "runtime.h"

enum {
    MODE_COMPUTE = 0,      /* SYNC(cpu, 6*7, fib(20)) then DONE */
    MODE_UNMAPPED = 1,     /* read 1 GiB: not mapped, #PF */
    MODE_ASSERT = 2,       /* a failing GUEST_ASSERT */
    MODE_CPUID = 3,        /* SYNC(signature present, KVM feature bits) */
    MODE_STEAL_MSR = 4,    /* wrmsr MSR_KVM_STEAL_TIME, SYNC(value written) */
    MODE_SPIN = 5,         /* loop forever without exits */
    MODE_IO_LOOP = 6,      /* io_loop_count port writes, then DONE */
    MODE_RDTSC = 7,        /* SYNC(two rdtsc readings) */
    MODE_CMPXCHG = 8,      /* lock cmpxchg on memory */
};

#define BENCH_PORT 0xe4

volatile uint64_t test_mode;
volatile uint64_t io_loop_count;
volatile uint64_t spin_counter;
volatile uint64_t cmpxchg_word;
struct kvm_steal_time steal_areas[GUEST_MAX_VCPUS] __attribute__((aligned(64)));

static uint64_t fib(uint64_t n)
{
    uint64_t a = 0, b = 1;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t t = a + b;
        a = b;
        b = t;
    }
    return a;
}

void guest_main(uint32_t cpu)
{
    switch (test_mode) {
    case MODE_COMPUTE:
        GUEST_SYNC(cpu, 6 * 7, fib(20));
        break;
    case MODE_UNMAPPED:
        GUEST_SYNC(*(volatile uint64_t *)0x40000000ull);
        break;
    case MODE_ASSERT:
        GUEST_ASSERT(cpu == 99, cpu, 42);
        break;
    case MODE_CPUID:
        GUEST_SYNC(kvm_signature_present(), kvm_features());
        break;
    case MODE_STEAL_MSR: {
        uint64_t value = (uint64_t)(uintptr_t)&steal_areas[cpu] | KVM_MSR_ENABLED;
        wrmsr(MSR_KVM_STEAL_TIME, value);
        GUEST_SYNC(value, rdmsr(MSR_KVM_STEAL_TIME));
        break;
    }
    case MODE_SPIN:
        for (;;)
            spin_counter++;
    case MODE_IO_LOOP:
        for (uint64_t i = io_loop_count; i; i--)
            __asm__ volatile("outb %%al, %w0" :: "Nd"(BENCH_PORT), "a"(0));
        break;
    case MODE_RDTSC: {
        uint64_t t0 = rdtsc();
        uint64_t t1 = rdtsc();
        GUEST_SYNC(t0, t1);
        break;
    }
    case MODE_CMPXCHG: {
        uint64_t expected = 5, desired = 9;
        cmpxchg_word = 5;
        __asm__ volatile("lock cmpxchgq %2, %1"
                         : "+a"(expected), "+m"(cmpxchg_word) : "r"(desired) : "memory");
        GUEST_SYNC(cmpxchg_word, expected);
        break;
    }
    default:
        GUEST_ASSERT(0, test_mode);
    }
}
