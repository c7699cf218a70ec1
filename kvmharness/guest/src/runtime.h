/* The guest runtime: ucalls, assertions and the few instructions guests use. */
#ifndef KVMHARNESS_GUEST_RUNTIME_H
#define KVMHARNESS_GUEST_RUNTIME_H

#include <stdint.h>
#include "guest_abi.h"

void guest_main(uint32_t cpu);
void ucall(uint64_t cmd, uint64_t nargs, const uint64_t *args);
void ucall_assert(const char *file, uint64_t line, const char *msg,
                  uint64_t nargs, const uint64_t *args);

#define GUEST_NARGS(...) (sizeof((uint64_t[]){0, ##__VA_ARGS__}) / sizeof(uint64_t) - 1)

/* Report values to the host and wait for it to resume this vCPU. */
#define GUEST_SYNC(...)                                                      \
    do {                                                                     \
        uint64_t _a[] = {0, ##__VA_ARGS__};                                   \
        ucall(UCALL_SYNC, GUEST_NARGS(__VA_ARGS__), _a + 1);                  \
    } while (0)

/* Fail with file, line, the condition's text and up to 8 values. */
#define GUEST_ASSERT(cond, ...)                                              \
    do {                                                                     \
        if (!(cond)) {                                                       \
            uint64_t _a[] = {0, ##__VA_ARGS__};                               \
            ucall_assert(__FILE__, __LINE__, #cond,                          \
                         GUEST_NARGS(__VA_ARGS__), _a + 1);                   \
        }                                                                    \
    } while (0)

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *a, uint32_t *b,
                         uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d)
                     : "a"(leaf), "c"(subleaf));
}

static inline void wrmsr(uint32_t msr, uint64_t value)
{
    __asm__ volatile("wrmsr" :: "c"(msr), "a"((uint32_t)value),
                     "d"((uint32_t)(value >> 32)) : "memory");
}

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

static inline void compiler_barrier(void)
{
    __asm__ volatile("" ::: "memory");
}

/* 1 if CPUID 0x40000000 carries the KVM signature "KVMKVMKVM\0\0\0". */
int kvm_signature_present(void);
/* EAX of CPUID 0x40000001 (KVM paravirtual features), 0 without KVM. */
uint32_t kvm_features(void);

#endif
