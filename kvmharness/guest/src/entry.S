/*
 * Guest entry and exception stubs.  The host enters long mode directly
 * (KVM_SET_SREGS), points RSP at this vCPU's stack and puts the vCPU index
 * in RDI, then starts at _start.
 */
    .section .text.entry, "ax"
    .globl _start
_start:
    call guest_main
    call guest_done
1:  hlt
    jmp 1b

/* One stub per exception vector 0-31.  Vectors whose exceptions push an
 * error code (8, 10-14, 17, 21, 29, 30) do not push a dummy one. */
    .text
.macro STUB vec
stub_\vec:
    .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq $0
    .endif
    pushq $\vec
    jmp exception_common
.endm

    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    STUB \v
    .endr

exception_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    call guest_exception
2:  hlt
    jmp 2b

/* The host reads this table to fill the IDT. */
    .section .rodata
    .globl exception_stubs
    .balign 8
exception_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad stub_\v
    .endr
