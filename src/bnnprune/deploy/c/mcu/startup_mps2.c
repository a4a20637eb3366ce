/* startup_mps2.c: minimal Cortex-M startup for qemu's mps2 boards (an385 M3, an386 M4,
 * an500 M7): vector table, .data copy, .bss clear, FPU enable, main. Any fault ends the
 * run with an error through semihosting instead of hanging. An example, not a BSP. */
#include <stdint.h>
#include <string.h>

#include "semihost.h"

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[];
int main(void);

void Reset_Handler(void);
void Fault_Handler(void);

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(uintptr_t)_estack, /* initial stack pointer */
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    0, 0, 0, 0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMonitor */
    0,
    Fault_Handler, /* PendSV */
    Fault_Handler, /* SysTick */
};

void Fault_Handler(void)
{
    semihost_exit(SH_EXIT_ERROR);
}

void Reset_Handler(void)
{
#if defined(__ARM_FP)
    /* full access to coprocessors 10 and 11 (the FPU) before any float instruction */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    memcpy(_sdata, _sidata, (size_t)((char *)_edata - (char *)_sdata));
    memset(_sbss, 0, (size_t)((char *)_ebss - (char *)_sbss));
    semihost_exit(main() == 0 ? SH_EXIT_OK : SH_EXIT_ERROR);
}
