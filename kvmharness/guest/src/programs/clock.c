/*
 * kvmclock guest: enables kvmclock the way a guest kernel does (checks
 * KVM_FEATURE_CLOCKSOURCE2 in CPUID 0x40000001, writes its area's gpa | 1 to
 * MSR_KVM_SYSTEM_TIME_NEW), then reads it in batches forever.
 *
 * Each reading takes the version protocol (even version, fields, ordered
 * rdtsc, same version again), computes ns with the pvclock scale (shift,
 * then the high 64 bits of the 64x32 product) and is stored in this vCPU's
 * row of clock_samples.  With CLOCK_MODE_WARP every reading is compared with
 * one value shared by all vCPUs (the latest reading any of them published,
 * advanced with lock cmpxchg): a reading below it is a warp.  With
 * CLOCK_MODE_VDSO the guest also reads vCPU 0's area while that area has
 * PVCLOCK_TSC_STABLE_BIT, as the Linux vDSO does, against a second shared
 * value.  With CLOCK_MODE_AREA0 every vCPU reads vCPU 0's area instead of
 * its own (each still enables its own, so KVM updates it): readers racing
 * vCPU 0's updates, as vDSO readers do.  With CLOCK_MODE_MARK, after each
 * reading vCPU 0 marks its area and has KVM rewrite it while the other vCPUs
 * watch it for KVM's version published over a record it had not written yet
 * (see guest_abi.h).  One SYNC per batch carries the counts; the host collects the
 * samples from guest memory, so the guest loop stays short.
 *
 * Every loop is bounded: a version stuck odd is reported as odd after
 * CLOCK_READ_TRIES tries, never waited out.
 */
#include "runtime.h"

struct pvclock_vcpu_time_info pvti[GUEST_MAX_VCPUS] __attribute__((aligned(4096)));
struct clock_sample clock_samples[GUEST_MAX_VCPUS][CLOCK_BATCH_MAX] __attribute__((aligned(64)));

/* Set by the host (between SYNCs). */
volatile uint32_t clock_batch = 8;
volatile uint32_t clock_mode = CLOCK_MODE_WARP | CLOCK_MODE_VDSO;
/* CLOCK_MODE_MARK: TSC ticks of marking (vCPU 0) or watching (the others) after each reading. */
volatile uint64_t clock_mark_ticks = 0;

/* CLOCK_MODE_MARK counters, one row per vCPU (the host reads them). */
struct clock_watch clock_watch[GUEST_MAX_VCPUS] __attribute__((aligned(64)));

/* Shared by all vCPUs: the latest readings published. */
volatile uint64_t clock_last_ns __attribute__((aligned(64)));
volatile uint64_t clock_last_vdso_ns __attribute__((aligned(64)));

/* CLOCK_MODE_SELFTEST inputs (host-written) and a word for cmpxchg. */
volatile uint64_t selftest_delta;
volatile uint32_t selftest_mul;
volatile int32_t selftest_shift;
volatile uint64_t selftest_word;

static inline uint64_t rdtsc_ordered(void)
{
    /* lfence: the TSC is read after the loads before it (the version and
     * the shared last value), as Linux's rdtsc_ordered(). */
    __asm__ volatile("lfence" ::: "memory");
    return rdtsc();
}

static inline uint64_t cmpxchg64(volatile uint64_t *p, uint64_t old, uint64_t new_)
{
    __asm__ volatile("lock cmpxchgq %2, %1" : "+a"(old), "+m"(*p) : "r"(new_) : "memory");
    return old;
}

uint64_t pvclock_scale(uint64_t delta, uint32_t mul, int8_t shift)
{
    /* A shift of 64 or more leaves nothing (and would be undefined in C). */
    if (shift <= -64 || shift >= 64)
        delta = 0;
    else if (shift < 0)
        delta >>= -shift;
    else
        delta <<= shift;
    return (uint64_t)(((unsigned __int128)delta * mul) >> 32);
}

/* One reading of *p with the version protocol; returns the retries. */
static uint32_t pvclock_read(volatile struct pvclock_vcpu_time_info *p, uint64_t *ns,
                             uint64_t *tsc_out, uint32_t *version, uint8_t *flags)
{
    uint32_t v0, v1, tries = 0, mul;
    uint64_t ts, st, tsc;
    int8_t shift;
    for (;;) {
        v0 = p->version;
        compiler_barrier();
        ts = p->tsc_timestamp;
        st = p->system_time;
        mul = p->tsc_to_system_mul;
        shift = p->tsc_shift;
        *flags = p->flags;
        tsc = rdtsc_ordered();
        compiler_barrier();
        v1 = p->version;
        if (!(v0 & 1) && v0 == v1)
            break;
        if (++tries >= CLOCK_READ_TRIES) {
            v1 = v0 | 1;  /* never report a torn reading as a clean one */
            break;
        }
    }
    *ns = st + pvclock_scale(tsc - ts, mul, shift);
    *tsc_out = tsc;
    *version = v1;
    return tries;
}

/* Compare ``now`` (read after loading ``last``) with the shared value and
 * publish it; a reading below a value published before it began is a warp. */
static void warp_check(volatile uint64_t *shared, uint64_t last, uint64_t now,
                       uint64_t *warps, uint64_t *max_warp)
{
    if ((int64_t)(now - last) < 0) {
        (*warps)++;
        if (last - now > *max_warp)
            *max_warp = last - now;
        return;
    }
    for (uint32_t i = 0; i < CLOCK_READ_TRIES && (int64_t)(now - last) > 0; i++) {
        uint64_t seen = cmpxchg64(shared, last, now);
        if (seen == last)
            break;
        last = seen;  /* someone published a later reading meanwhile: not a warp */
    }
}

/* version and pad0 are the area's first 8 bytes: one aligned 64-bit load or
 * store takes or puts both at one instant (x86 keeps it atomic). */
static inline uint64_t head_of(uint32_t version, uint32_t pad0)
{
    return (uint64_t)pad0 << 32 | version;
}

/* the mark of version m, a multiple of 4 (guest_abi.h) */
static inline uint32_t mark_of(uint32_t m)
{
    return CLOCK_MARK_TAG | ((m >> 2) & CLOCK_MARK_SEQ_MASK);
}

/* vCPU 0: mark its own area (a version m, 0 mod 4, above the current one and
 * m's mark in pad0, in one store: were they two, KVM could rewrite the area
 * between them, when vCPU 0 exits there) and have KVM rewrite it.  KVM
 * updates the area before vCPU 0 runs again, from vCPU 0's thread. */
static void mark_round(struct clock_watch *w)
{
    volatile uint64_t *head = (volatile uint64_t *)&pvti[0];
    uint32_t mark = ((uint32_t)*head | 3) + 1;
    *head = head_of(mark, mark_of(mark));
    compiler_barrier();
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uint64_t)(uintptr_t)&pvti[0] | KVM_MSR_ENABLED);
    w->rounds++;
    uint64_t now = *head;
    if ((uint32_t)now != mark) {
        w->rewritten++;
        if ((uint32_t)(now >> 32) == mark_of(mark))
            w->kept++;
    }
}

/* The others: vCPU 0's version and pad0 at one instant.  The mark of
 * version - 2 under an even version 2 mod 4 is a record KVM had not written
 * yet under the version it publishes when done; a mark of any other version
 * than the one read is two instants in one load (guest_abi.h). */
static void watch_once(struct clock_watch *w)
{
    uint64_t now = *(volatile uint64_t *)&pvti[0];
    uint32_t version = (uint32_t)now;
    uint32_t pad0 = (uint32_t)(now >> 32);
    if (version & 1)
        return;
    w->watches++;
    if ((pad0 & CLOCK_MARK_TAG_MASK) != CLOCK_MARK_TAG)
        return;
    if ((version & 3) == 0 && pad0 == mark_of(version)) {
        w->marked++;
    } else if ((version & 3) == 2 && pad0 == mark_of(version - 2)) {
        if (!w->torn++)
            w->torn_version = version;
    } else if (!w->mixed++) {
        w->mixed_head = now;
    }
}

static void mark_or_watch(uint32_t cpu)
{
    struct clock_watch *w = &clock_watch[cpu];
    uint64_t end = rdtsc() + clock_mark_ticks;
    do {
        if (cpu == 0)
            mark_round(w);
        else
            watch_once(w);
    } while ((int64_t)(rdtsc() - end) < 0);
}

static void selftest(void)
{
    uint64_t t0 = rdtsc_ordered(), t1 = rdtsc_ordered();
    selftest_word = 5;
    uint64_t seen = cmpxchg64(&selftest_word, 5, 9);
    GUEST_SYNC(pvclock_scale(selftest_delta, selftest_mul, (int8_t)selftest_shift),
               t1 - t0, seen, selftest_word);
}

void guest_main(uint32_t cpu)
{
    uint32_t features = kvm_features();
    GUEST_ASSERT(features & (1u << KVM_FEATURE_CLOCKSOURCE2), features);
    if (clock_mode & CLOCK_MODE_SELFTEST) {
        selftest();
        return;
    }
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uint64_t)(uintptr_t)&pvti[cpu] | KVM_MSR_ENABLED);

    for (uint64_t seq = 0;; seq++) {
        uint32_t mode = clock_mode, n = clock_batch;
        uint64_t warps = 0, max_warp = 0, vwarps = 0, max_vwarp = 0;
        if (n > CLOCK_BATCH_MAX)
            n = CLOCK_BATCH_MAX;
        uint64_t start = rdtsc_ordered();
        for (uint32_t i = 0; i < n; i++) {
            struct clock_sample *s = &clock_samples[cpu][i];
            if (mode & CLOCK_MODE_RAW_TSC) {
                s->tsc = rdtsc_ordered();
                continue;
            }
            uint64_t last = clock_last_ns, vlast = clock_last_vdso_ns;
            uint64_t ns, tsc, vns = 0, vtsc;
            uint32_t version, vversion;
            uint8_t flags, vflags = 0;
            s->tries = (uint16_t)pvclock_read((mode & CLOCK_MODE_AREA0) ? &pvti[0] : &pvti[cpu],
                                              &ns, &tsc, &version, &flags);
            s->vdso_used = 0;
            if ((mode & CLOCK_MODE_VDSO) && (pvti[0].flags & PVCLOCK_TSC_STABLE_BIT)) {
                pvclock_read(&pvti[0], &vns, &vtsc, &vversion, &vflags);
                if (!(vversion & 1) && (vflags & PVCLOCK_TSC_STABLE_BIT)) {
                    s->vdso_used = 1;
                    if (mode & CLOCK_MODE_WARP)
                        warp_check(&clock_last_vdso_ns, vlast, vns, &vwarps, &max_vwarp);
                }
            }
            if ((mode & CLOCK_MODE_WARP) && !(version & 1))
                warp_check(&clock_last_ns, last, ns, &warps, &max_warp);
            s->ns = ns;
            s->tsc = tsc;
            s->vdso_ns = vns;
            s->version = version;
            s->flags = flags;
            if (mode & CLOCK_MODE_MARK)
                mark_or_watch(cpu);
        }
        uint64_t end = rdtsc_ordered();
        GUEST_SYNC(seq, n, warps, max_warp, vwarps, max_vwarp, start, end);
    }
}
