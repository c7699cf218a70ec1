/*
 * KVM uapi declarations used by kvmharness, for cffi in ABI mode (no
 * preprocessor, no compiler at import time).  Written against the x86-64
 * <linux/kvm.h> and <asm/kvm.h>; tests/test_layout.py compiles a C program
 * against the system headers and checks that every struct size and field
 * offset below equals the kernel's.
 *
 * Only the members kvmharness reads are named; the rest of a union is kept
 * at its real size with a padding array so offsets stay exact.
 */
typedef uint8_t  __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int8_t   __s8;
typedef int32_t  __s32;
typedef int64_t  __s64;

#define KVMIO 174
#define KVM_API_VERSION 12

/* exit reasons (kvm_run.exit_reason) */
#define KVM_EXIT_UNKNOWN 0
#define KVM_EXIT_EXCEPTION 1
#define KVM_EXIT_IO 2
#define KVM_EXIT_HYPERCALL 3
#define KVM_EXIT_DEBUG 4
#define KVM_EXIT_HLT 5
#define KVM_EXIT_MMIO 6
#define KVM_EXIT_IRQ_WINDOW_OPEN 7
#define KVM_EXIT_SHUTDOWN 8
#define KVM_EXIT_FAIL_ENTRY 9
#define KVM_EXIT_INTR 10
#define KVM_EXIT_INTERNAL_ERROR 17
#define KVM_EXIT_SYSTEM_EVENT 24
#define KVM_EXIT_X86_RDMSR 29
#define KVM_EXIT_X86_WRMSR 30

#define KVM_EXIT_IO_IN 0
#define KVM_EXIT_IO_OUT 1

/* capabilities (KVM_CHECK_EXTENSION) */
#define KVM_CAP_USER_MEMORY 3
#define KVM_CAP_SET_TSS_ADDR 4
#define KVM_CAP_EXT_CPUID 7
#define KVM_CAP_NR_VCPUS 9
#define KVM_CAP_MP_STATE 14
#define KVM_CAP_ADJUST_CLOCK 39
#define KVM_CAP_VCPU_EVENTS 41
#define KVM_CAP_DEBUGREGS 50
#define KVM_CAP_XSAVE 55
#define KVM_CAP_XCRS 56
#define KVM_CAP_TSC_CONTROL 60
#define KVM_CAP_GET_TSC_KHZ 61
#define KVM_CAP_MAX_VCPUS 66
#define KVM_CAP_KVMCLOCK_CTRL 76
#define KVM_CAP_READONLY_MEM 81
#define KVM_CAP_VCPU_ATTRIBUTES 127
#define KVM_CAP_IMMEDIATE_EXIT 136
#define KVM_CAP_XSAVE2 208
#define KVM_CAP_VM_TSC_CONTROL 214

#define KVM_MEM_LOG_DIRTY_PAGES 1
#define KVM_MEM_READONLY 2

#define KVM_MP_STATE_RUNNABLE 0
#define KVM_MP_STATE_UNINITIALIZED 1
#define KVM_MP_STATE_INIT_RECEIVED 2
#define KVM_MP_STATE_HALTED 3

#define KVM_CLOCK_TSC_STABLE 2
#define KVM_CLOCK_REALTIME 4
#define KVM_CLOCK_HOST_TSC 8

#define KVM_VCPU_TSC_CTRL 0
#define KVM_VCPU_TSC_OFFSET 0

#define KVM_CPUID_FLAG_SIGNIFCANT_INDEX 1

struct kvm_userspace_memory_region {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
};

struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
};

struct kvm_segment {
    __u64 base;
    __u32 limit;
    __u16 selector;
    __u8 type;
    __u8 present, dpl, db, s, l, g, avl;
    __u8 unusable;
    __u8 padding;
};

struct kvm_dtable {
    __u64 base;
    __u16 limit;
    __u16 padding[3];
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    __u64 interrupt_bitmap[4];
};

struct kvm_fpu {
    __u8 fpr[8][16];
    __u16 fcw;
    __u16 fsw;
    __u8 ftwx;
    __u8 pad1;
    __u16 last_opcode;
    __u64 last_ip;
    __u64 last_dp;
    __u8 xmm[16][16];
    __u32 mxcsr;
    __u32 pad2;
};

struct kvm_msr_entry {
    __u32 index;
    __u32 reserved;
    __u64 data;
};

struct kvm_msrs {
    __u32 nmsrs;
    __u32 pad;
    struct kvm_msr_entry entries[];
};

struct kvm_msr_list {
    __u32 nmsrs;
    __u32 indices[];
};

struct kvm_cpuid_entry2 {
    __u32 function;
    __u32 index;
    __u32 flags;
    __u32 eax;
    __u32 ebx;
    __u32 ecx;
    __u32 edx;
    __u32 padding[3];
};

struct kvm_cpuid2 {
    __u32 nent;
    __u32 padding;
    struct kvm_cpuid_entry2 entries[];
};

struct kvm_xsave {
    __u32 region[1024];
};

struct kvm_xcr {
    __u32 xcr;
    __u32 reserved;
    __u64 value;
};

struct kvm_xcrs {
    __u32 nr_xcrs;
    __u32 flags;
    struct kvm_xcr xcrs[16];
    __u64 padding[16];
};

struct kvm_debugregs {
    __u64 db[4];
    __u64 dr6;
    __u64 dr7;
    __u64 flags;
    __u64 reserved[9];
};

struct kvm_vcpu_events {
    struct {
        __u8 injected;
        __u8 nr;
        __u8 has_error_code;
        __u8 pending;
        __u32 error_code;
    } exception;
    struct {
        __u8 injected;
        __u8 nr;
        __u8 soft;
        __u8 shadow;
    } interrupt;
    struct {
        __u8 injected;
        __u8 pending;
        __u8 masked;
        __u8 pad;
    } nmi;
    __u32 sipi_vector;
    __u32 flags;
    struct {
        __u8 smm;
        __u8 pending;
        __u8 smm_inside_nmi;
        __u8 latched_init;
    } smi;
    struct {
        __u8 pending;
    } triple_fault;
    __u8 reserved[26];
    __u8 exception_has_payload;
    __u64 exception_payload;
};

struct kvm_mp_state {
    __u32 mp_state;
};

struct kvm_clock_data {
    __u64 clock;
    __u32 flags;
    __u32 pad0;
    __u64 realtime;
    __u64 host_tsc;
    __u32 pad[4];
};

struct kvm_device_attr {
    __u32 flags;
    __u32 group;
    __u64 attr;
    __u64 addr;
};

struct kvm_run {
    /* in */
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u8 padding1[6];
    /* out */
    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;
    __u64 cr8;
    __u64 apic_base;
    union {
        struct {
            __u64 hardware_exit_reason;
        } hw;
        struct {
            __u64 hardware_entry_failure_reason;
            __u32 cpu;
        } fail_entry;
        struct {
            __u32 exception;
            __u32 error_code;
        } ex;
        struct {
            __u8 direction;
            __u8 size;
            __u16 port;
            __u32 count;
            __u64 data_offset;
        } io;
        struct {
            __u64 phys_addr;
            __u8 data[8];
            __u32 len;
            __u8 is_write;
        } mmio;
        struct {
            __u32 suberror;
            __u32 ndata;
            __u64 data[16];
        } internal;
        struct {
            __u32 type;
            __u32 ndata;
            __u64 data[16];
        } system_event;
        char padding[256];
    };
    __u64 kvm_valid_regs;
    __u64 kvm_dirty_regs;
    union {
        char padding[2048];
    } s;
};
