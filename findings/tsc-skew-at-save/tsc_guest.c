/* Report the TSC the guest reads, at every stop. */
#include "runtime.h"

void guest_main(uint32_t cpu)
{
    for (;;)
        GUEST_SYNC(rdtsc(), cpu);
}
