/*
 * The C side of scripts/bench_kvm_run.py: KVM_RUN in a loop on a vCPU that
 * Python created and set up, so the guest, its memory and the long-mode
 * state are the ones the binding runs.  Built as a shared object and called
 * through cffi's dlopen in the same process (same fd, same kvm_run mapping).
 *
 * Each iteration does what the Python loop does: one KVM_RUN, then check
 * that the exit is port I/O on the expected port.
 */
#include <errno.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>

/*
 * Returns n when all n runs exited with port I/O on `port`.  On another exit
 * returns how many matched before it (kvm_run still holds that exit).  On an
 * ioctl failure returns -errno.
 */
long run_loop(int vcpu_fd, struct kvm_run *run, long n, unsigned int port)
{
    for (long i = 0; i < n; i++) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0)
            return -errno;
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != port)
            return i;
    }
    return n;
}
