/*
 * The contract between guest programs and the host: shared by the guest C
 * sources (compiled with -I cdefs) and by the host's cffi (ffi.cdef), so
 * both sides see one layout.  Plain C only: no preprocessor beyond integer
 * #defines, because cffi parses this file too.
 */

/* The KVM paravirtual ABI (Documentation/virt/kvm/x86/msr.rst, cpuid.rst):
 * MSR numbers, the enable bit, CPUID leaves and feature bits, in one place. */
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define MSR_KVM_STEAL_TIME 0x4b564d03
#define KVM_MSR_ENABLED 1
#define KVM_CPUID_SIGNATURE 0x40000000
#define KVM_CPUID_FEATURES 0x40000001
#define KVM_FEATURE_CLOCKSOURCE2 3
#define KVM_FEATURE_STEAL_TIME 5
#define KVM_FEATURE_CLOCKSOURCE_STABLE_BIT 24
#define PVCLOCK_TSC_STABLE_BIT 1

#define UCALL_PORT 233
#define UCALL_MAX_ARGS 8
#define GUEST_MAX_VCPUS 1024

#define UCALL_NONE 0
#define UCALL_SYNC 1
#define UCALL_DONE 2
#define UCALL_ASSERT 3
#define UCALL_EXCEPTION 4

/*
 * One request from a vCPU.  The guest builds it on its own stack and passes
 * its guest-physical address (below 4 GiB) as the 32-bit value of one
 * `outl` to UCALL_PORT, so the host decodes it from the kvm_run page
 * without another ioctl.
 */
struct ucall {
    uint64_t cmd;
    uint64_t nargs;
    uint64_t args[8];
    uint64_t file_gva;      /* const char *, for ASSERT */
    uint64_t line;
    uint64_t msg_gva;       /* const char *, for ASSERT */
};

/* What the exception stubs push, lowest address first. */
struct exception_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector;
    uint64_t error_code;
    uint64_t rip;
    uint64_t cs;
    uint64_t rflags;
    uint64_t rsp;
    uint64_t ss;
};

/* The KVM steal-time area (Documentation/virt/kvm/x86/msr.rst). */
struct kvm_steal_time {
    uint64_t steal;
    uint32_t version;
    uint32_t flags;
    uint8_t preempted;
    uint8_t u8_pad[3];
    uint32_t pad[11];
};

/* One guest reading of its steal-time area, taken with the version protocol. */
struct steal_sample {
    uint64_t steal;
    uint32_t version;
    uint32_t retries;
    uint64_t tsc;
};

/* kvmclock per-vCPU time info (pvclock ABI). */
struct pvclock_vcpu_time_info {
    uint32_t version;
    uint32_t pad0;
    uint64_t tsc_timestamp;
    uint64_t system_time;
    uint32_t tsc_to_system_mul;
    int8_t tsc_shift;
    uint8_t flags;
    uint8_t pad[2];
};

/* The kvmclock guest (programs/clock.c): what the host sets before a run,
 * and one reading as the guest stores it for the host to collect. */
#define MSR_IA32_TSC 0x10
#define CLOCK_BATCH_MAX 16
#define CLOCK_READ_TRIES 1000
#define CLOCK_MODE_WARP 1       /* compare each reading with the shared last value */
#define CLOCK_MODE_VDSO 2       /* also read vCPU 0's area while it has the stable bit */
#define CLOCK_MODE_RAW_TSC 4    /* benchmark: read only the TSC */
#define CLOCK_MODE_SELFTEST 8   /* one SYNC of instruction and arithmetic self-tests */
#define CLOCK_MODE_AREA0 16     /* every vCPU reads vCPU 0's area as its own (the vDSO's way) */
#define CLOCK_MODE_MARK 32      /* vCPU 0 marks its area and has KVM rewrite it; the others watch */
/* CLOCK_MODE_MARK: vCPU 0 sets its area's version to the next multiple of 4,
 * m, and pad0 to clock_mark(m) in one 8-byte store (time fields untouched, so
 * the record stays valid), then rewrites MSR_KVM_SYSTEM_TIME_NEW, which has
 * KVM rewrite the area before vCPU 0 runs again.  KVM's record never holds a
 * mark (its pad0 is 0), so with one-instant loads and stores the mark of m
 * is present only under m itself or under m + 1 while KVM writes (odd,
 * skipped).  The mark of m under m + 2 (even, 2 mod 4) is KVM's version
 * published over a record it has not written yet: "torn".  A mark of any
 * other version ("mixed") pairs the halves of two instants: a load or store
 * of the 8 bytes that was not one instant (a platform that emulates it), not
 * something KVM's writes in any order can leave. */
#define CLOCK_MARK_TAG 0x6b000000u  /* 'k' in pad0's top byte */
#define CLOCK_MARK_TAG_MASK 0xff000000u
#define CLOCK_MARK_SEQ_MASK 0x00ffffffu
/* the mark of version m (a multiple of 4): CLOCK_MARK_TAG | (m / 4 & CLOCK_MARK_SEQ_MASK) */

/* What CLOCK_MODE_MARK counted on one vCPU since the VM started. */
struct clock_watch {
    uint64_t rounds;        /* vCPU 0: marks followed by a rewrite of MSR_KVM_SYSTEM_TIME_NEW */
    uint64_t rewritten;     /* vCPU 0: rounds after which the version had moved (KVM wrote) */
    uint64_t kept;          /* vCPU 0: of those, rounds whose mark KVM's record left in place */
    uint64_t watches;       /* watchers: reads of vCPU 0's version and pad0 under an even version */
    uint64_t marked;        /* watchers: of those, the mark of the version read (the guest's own) */
    uint64_t torn;          /* watchers: the mark of version - 2 under a version 2 mod 4 */
    uint64_t torn_version;  /* watchers: the first such version */
    uint64_t mixed;         /* watchers: a mark of any other version (the load or store was not one instant) */
    uint64_t mixed_head;    /* watchers: the first such read, pad0 << 32 | version */
};

/* One kvmclock reading.  version is the area's version the fields were
 * read under; an odd one means the guest gave up after CLOCK_READ_TRIES. */
struct clock_sample {
    uint64_t ns;          /* system_time + scale(tsc - tsc_timestamp) of its own area */
    uint64_t tsc;         /* the rdtsc that reading used */
    uint64_t vdso_ns;     /* the same from vCPU 0's area (CLOCK_MODE_VDSO), else 0 */
    uint32_t version;
    uint8_t flags;        /* the area's flags (PVCLOCK_TSC_STABLE_BIT) */
    uint8_t vdso_used;    /* 1 when vdso_ns is a reading */
    uint16_t tries;       /* version retries */
};
