/* The guest side of the ucall channel and exception reporting. */
#include "runtime.h"

void ucall(uint64_t cmd, uint64_t nargs, const uint64_t *args)
{
    struct ucall uc = {0};
    uc.cmd = cmd;
    uc.nargs = nargs > UCALL_MAX_ARGS ? UCALL_MAX_ARGS : nargs;
    for (uint64_t i = 0; i < uc.nargs; i++)
        uc.args[i] = args[i];
    /* The stack is identity-mapped below 4 GiB: its address fits in 32 bits. */
    __asm__ volatile("outl %0, %w1" :: "a"((uint32_t)(uintptr_t)&uc), "Nd"(UCALL_PORT)
                     : "memory");
}

void ucall_assert(const char *file, uint64_t line, const char *msg,
                  uint64_t nargs, const uint64_t *args)
{
    struct ucall uc = {0};
    uc.cmd = UCALL_ASSERT;
    uc.nargs = nargs > UCALL_MAX_ARGS ? UCALL_MAX_ARGS : nargs;
    for (uint64_t i = 0; i < uc.nargs; i++)
        uc.args[i] = args[i];
    uc.file_gva = (uintptr_t)file;
    uc.line = line;
    uc.msg_gva = (uintptr_t)msg;
    for (;;)
        __asm__ volatile("outl %0, %w1" :: "a"((uint32_t)(uintptr_t)&uc), "Nd"(UCALL_PORT)
                         : "memory");
}

void guest_done(void)
{
    for (;;)
        ucall(UCALL_DONE, 0, 0);
}

void guest_exception(struct exception_frame *f)
{
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    uint64_t args[5] = {f->vector, f->error_code, f->rip, cr2, f->rsp};
    for (;;)
        ucall(UCALL_EXCEPTION, 5, args);
}

int kvm_signature_present(void)
{
    uint32_t a, b, c, d;
    cpuid(KVM_CPUID_SIGNATURE, 0, &a, &b, &c, &d);
    /* "KVMK" "VMKV" "M\0\0\0" */
    return b == 0x4b4d564b && c == 0x564b4d56 && d == 0x0000004d;
}

uint32_t kvm_features(void)
{
    uint32_t a, b, c, d;
    if (!kvm_signature_present())
        return 0;
    cpuid(KVM_CPUID_FEATURES, 0, &a, &b, &c, &d);
    return a;
}
