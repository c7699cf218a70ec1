/*
 * A counter that must survive a snapshot.
 *
 * The guest counts in memory (`ticks`) and in a local variable held in a
 * register or on its stack (`mine`); both must agree at every step.  A restore
 * that loses or mixes up memory, registers or the stack breaks the assertion
 * (or the step the host expects next).  The guest stops after `last_tick`
 * (set by the host) and returns, which sends DONE.
 */
#include "runtime.h"

volatile uint64_t ticks;             /* the counter the test follows */
volatile uint64_t last_tick = 10;    /* set by the host */

void guest_main(uint32_t cpu)
{
    (void)cpu;
    uint64_t mine = 0;
    while (mine < last_tick) {
        ticks = ticks + 1;
        mine += 1;
        GUEST_ASSERT(ticks == mine, ticks, mine);
        GUEST_SYNC(ticks);
    }
}
