/* semihost.h: the few Arm semihosting calls the mps2 example needs (file I/O and exit on
 * the host, through the debugger or qemu's -semihosting). Not needed in real firmware. */
#ifndef SEMIHOST_H
#define SEMIHOST_H

#include <stdint.h>

enum {
    SH_OPEN = 0x01,
    SH_CLOSE = 0x02,
    SH_WRITE = 0x05,
    SH_READ = 0x06,
    SH_GET_CMDLINE = 0x15,
    SH_EXIT = 0x18
};
#define SH_EXIT_OK 0x20026u    /* ADP_Stopped_ApplicationExit: qemu exits with status 0 */
#define SH_EXIT_ERROR 0x20023u /* ADP_Stopped_RunTimeErrorUnknown: qemu exits with 1 */

static inline uintptr_t semihost(uintptr_t op, const void *arg)
{
    register uintptr_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static inline void semihost_exit(uintptr_t reason)
{
    for (;;)
        semihost(SH_EXIT, (const void *)reason);
}

#endif /* SEMIHOST_H */
