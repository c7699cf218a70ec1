/*
 * Postcopy guest: one program that migrates in the middle.
 *
 * On the source each vCPU enables steal time, writes the pattern into its
 * share of the data region (page p belongs to vCPU p % pc_vcpus) and
 * reports FILLED: the host migrates at that exit.  On the destination,
 * whose data region starts missing, the vCPU reports READY, reads its
 * steal, touches the pages of its plan in order, timing each first touch
 * with rdtsc, reads its steal again and reports TOUCHED; then it checks
 * every qword of its share against the pattern and reports VERIFIED with
 * the checksum and the address of the first bad qword (0: none).
 *
 * The checksum is of every byte the guest holds, not of what it should
 * hold: a Fletcher-style pair over the qwords of its share in order,
 * s1 += q, s2 += s1 (mod 2^64), so a changed, lost or moved qword changes
 * it.  Two instructions a qword (kvm_pvm emulates each, ~1 us): 1216 a page.
 *
 * The pattern of page at gpa `base`: qwords 0..pc_head_qwords-1 hold
 * head(base + 8 i), the rest fill(base), all keyed by pc_seed, so a page
 * missing, in the wrong place or half copied never matches.  The rest is
 * written and checked with `rep stosq` / `repe scasq`: each instruction is
 * emulated on some hosts (kvm_pvm), a string instruction once per page.
 */
#include "runtime.h"

/* The layout the host reads (kvmharness/scenarios/postcopy.py checks pc_abi). */
#define PC_ABI_VERSION 3
#define PC_MAX_VCPUS 64
#define PC_MAX_TOUCHES 128
#define PC_SYNC_FILLED 0xf111
#define PC_SYNC_READY 0x5eed
#define PC_SYNC_TOUCHED 0x7007
#define PC_SYNC_VERIFIED 0xc4ec
/* pc_touch[cpu][k][]: */
#define PC_T0 0
#define PC_T1 1
#define PC_VALUE 2
#define PC_TOUCH_WORDS 3
/* pc_result[cpu][]: */
#define PC_STEAL_BEFORE 0
#define PC_STEAL_AFTER 1
#define PC_TSC_START 2
#define PC_TSC_END 3
#define PC_CHECKSUM 4
#define PC_BAD_GPA 5
#define PC_CHECKSUM2 6
#define PC_RESULT_WORDS 8

const uint64_t pc_abi[] = {PC_ABI_VERSION, PC_MAX_VCPUS, PC_MAX_TOUCHES, PC_TOUCH_WORDS,
                           PC_RESULT_WORDS, PC_SYNC_FILLED, PC_SYNC_READY, PC_SYNC_TOUCHED,
                           PC_SYNC_VERIFIED};

volatile uint64_t pc_data_gpa;
volatile uint64_t pc_pages;
volatile uint64_t pc_seed;
volatile uint64_t pc_vcpus;
volatile uint64_t pc_head_qwords;

uint32_t pc_plan[PC_MAX_VCPUS][PC_MAX_TOUCHES];
volatile uint32_t pc_plan_len[PC_MAX_VCPUS];
uint64_t pc_touch[PC_MAX_VCPUS][PC_MAX_TOUCHES][PC_TOUCH_WORDS];
uint64_t pc_result[PC_MAX_VCPUS][PC_RESULT_WORDS];
struct kvm_steal_time steal_areas[PC_MAX_VCPUS] __attribute__((aligned(64)));

#define MIX 0x9e3779b97f4a7c15ull

static inline uint64_t head(uint64_t gpa, uint64_t seed)
{
    return (gpa ^ seed) * MIX;
}

static inline uint64_t fill_value(uint64_t base, uint64_t seed)
{
    return ((base | 0xfff) ^ seed) * MIX;  /* an address no head qword has */
}

static uint64_t read_steal(volatile struct kvm_steal_time *st)
{
    for (uint32_t tries = 0; tries < 1000; tries++) {
        uint32_t v0 = st->version;
        compiler_barrier();
        uint64_t steal = st->steal;
        compiler_barrier();
        if (!(v0 & 1) && v0 == st->version)
            return steal;
    }
    return ~0ull;
}

static void fill(uint32_t cpu)
{
    uint64_t n = pc_head_qwords, seed = pc_seed;
    for (uint64_t p = cpu; p < pc_pages; p += pc_vcpus) {
        uint64_t base = pc_data_gpa + p * 4096;
        uint64_t *q = (uint64_t *)(uintptr_t)base;
        for (uint64_t i = 0; i < n; i++)
            q[i] = head(base + 8 * i, seed);
        uint64_t *d = q + n, c = 512 - n;
        __asm__ volatile("rep stosq" : "+D"(d), "+c"(c) : "a"(fill_value(base, seed))
                         : "memory");
    }
}

/* s1 += q[i], s2 += s1 over the 512 qwords of a page, 8 a loop. */
static void sum_page(const uint64_t *q, uint64_t *s1, uint64_t *s2)
{
    uint64_t a = *s1, b = *s2, n = 512 / 8;
#define PC_ADD(off) "add " #off "(%[q]), %[a]\n\tadd %[a], %[b]\n\t"
    __asm__ volatile("1:\n\t"
                     PC_ADD(0) PC_ADD(8) PC_ADD(16) PC_ADD(24)
                     PC_ADD(32) PC_ADD(40) PC_ADD(48) PC_ADD(56)
                     "add $64, %[q]\n\t"
                     "dec %[n]\n\t"
                     "jnz 1b"
                     : [a] "+r"(a), [b] "+r"(b), [q] "+r"(q), [n] "+r"(n)
                     :
                     : "cc", "memory");
#undef PC_ADD
    *s1 = a;
    *s2 = b;
}

static void verify(uint32_t cpu, uint64_t *s1, uint64_t *s2, uint64_t *bad_gpa)
{
    uint64_t n = pc_head_qwords, seed = pc_seed;
    *bad_gpa = 0;
    *s1 = *s2 = 0;
    for (uint64_t p = cpu; p < pc_pages; p += pc_vcpus) {
        uint64_t base = pc_data_gpa + p * 4096;
        volatile uint64_t *q = (volatile uint64_t *)(uintptr_t)base;
        for (uint64_t i = 0; i < n; i++) {
            if (q[i] != head(base + 8 * i, seed) && !*bad_gpa)
                *bad_gpa = base + 8 * i;
        }
        uint64_t want = fill_value(base, seed);
        uint64_t *d = (uint64_t *)(uintptr_t)(base + 8 * n), c = 512 - n;
        __asm__ volatile("repe scasq" : "+D"(d), "+c"(c) : "a"(want) : "memory", "cc");
        /* stopped early (c left, or the last compared qword differs): d - 1 is bad */
        if ((c || d[-1] != want) && !*bad_gpa)
            *bad_gpa = (uint64_t)(uintptr_t)(d - 1);
        sum_page((const uint64_t *)(uintptr_t)base, s1, s2);
    }
}

void guest_main(uint32_t cpu)
{
    GUEST_ASSERT(cpu < PC_MAX_VCPUS && cpu < pc_vcpus, cpu, pc_vcpus);
    uint32_t features = kvm_features();
    GUEST_ASSERT(features & (1u << KVM_FEATURE_STEAL_TIME), features);
    wrmsr(MSR_KVM_STEAL_TIME, (uint64_t)(uintptr_t)&steal_areas[cpu] | KVM_MSR_ENABLED);
    fill(cpu);
    GUEST_SYNC(PC_SYNC_FILLED);            /* the host migrates here */

    GUEST_SYNC(PC_SYNC_READY);
    uint64_t *r = pc_result[cpu];
    r[PC_STEAL_BEFORE] = read_steal(&steal_areas[cpu]);
    r[PC_TSC_START] = rdtsc();
    uint32_t len = pc_plan_len[cpu];
    for (uint32_t k = 0; k < len && k < PC_MAX_TOUCHES; k++) {
        volatile uint64_t *q = (volatile uint64_t *)(uintptr_t)(
            pc_data_gpa + (uint64_t)pc_plan[cpu][k] * 4096);
        uint64_t t0 = rdtsc();
        uint64_t v = *q;
        uint64_t t1 = rdtsc();
        pc_touch[cpu][k][PC_T0] = t0;
        pc_touch[cpu][k][PC_T1] = t1;
        pc_touch[cpu][k][PC_VALUE] = v;
    }
    r[PC_TSC_END] = rdtsc();
    r[PC_STEAL_AFTER] = read_steal(&steal_areas[cpu]);
    GUEST_SYNC(PC_SYNC_TOUCHED);

    uint64_t bad, s1, s2;
    verify(cpu, &s1, &s2, &bad);
    r[PC_CHECKSUM] = s1;
    r[PC_CHECKSUM2] = s2;
    r[PC_BAD_GPA] = bad;
    GUEST_SYNC(PC_SYNC_VERIFIED, r[PC_CHECKSUM], bad);
}
