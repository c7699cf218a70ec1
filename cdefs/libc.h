/*
 * The few libc calls kvmharness makes through cffi.
 *
 * ioctl(2) and syscall(2) are variadic in libc.  They are declared here with
 * a fixed pointer-sized third argument: on x86-64 System V a variadic callee
 * reads integer arguments from the same registers as a fixed one (only %al,
 * an upper bound on vector registers used, differs, and these functions pass
 * no vector arguments), and a fixed signature lets cffi call without building
 * a variadic call frame on every KVM_RUN.
 */
#define PROT_NONE 0
#define PROT_READ 1
#define PROT_WRITE 2
#define PROT_EXEC 4
#define MAP_SHARED 1
#define MAP_PRIVATE 2
#define MAP_ANONYMOUS 32
#define MAP_NORESERVE 16384
#define O_RDWR 2
#define O_CLOEXEC 524288
#define O_NONBLOCK 2048

int ioctl(int fd, unsigned long request, void *arg);
long syscall(long number, long arg1);
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
