/* main_mps2.c: runs a bnnprune C export on an emulated Cortex-M board (qemu mps2) and
 * checks it against the host: reads raw float32 images, MODEL_INPUT_SIZE floats each in
 * (C, H, W) order, from the host file named first on the semihosting command line and
 * writes one line per image to the file named second: the logits' float32 bit patterns
 * as 8 hex digits (exact, and no printf or float formatting on the device).
 *
 * model_run is bracketed by calls to mcu_mark(), where qemu_insn_count.c snapshots its
 * instruction counter: the difference is the instructions of one inference.
 * The scratch arena is followed by guard words; a write past MODEL_SCRATCH_BYTES fails.
 */
#include <stdint.h>
#include <string.h>

#include "model.h"
#include "semihost.h"

#define GUARD_WORDS 8
#define GUARD 0xA5A5A5A5A5A5A5A5ull

static uint64_t arena[(MODEL_SCRATCH_BYTES + 7) / 8 + GUARD_WORDS];
static float input[MODEL_INPUT_SIZE];
static float logits[MODEL_OUTPUT_SIZE];
static char line[9 * MODEL_OUTPUT_SIZE + 1];

/* An empty function the instruction counter watches: called before and after model_run. */
__attribute__((noinline)) void mcu_mark(void)
{
    __asm__ volatile("" ::: "memory");
}

static int sh_open(const char *name, uintptr_t mode)
{
    const uintptr_t block[3] = {(uintptr_t)name, mode, strlen(name)};
    return (int)semihost(SH_OPEN, block);
}

/* Bytes NOT transferred (semihosting's convention). */
static uintptr_t sh_io(uintptr_t op, int fd, void *buf, uintptr_t len)
{
    const uintptr_t block[3] = {(uintptr_t)fd, (uintptr_t)buf, len};
    return semihost(op, block);
}

/* The command line "IMAGES LOGITS" (qemu: -semihosting-config arg=IMAGES,arg=LOGITS). */
static int args(char *buf, uintptr_t size, char **images, char **out)
{
    uintptr_t block[2] = {(uintptr_t)buf, size};
    char *sp;
    if (semihost(SH_GET_CMDLINE, block) != 0)
        return -1;
    buf[size - 1] = '\0';
    sp = strchr(buf, ' ');
    if (sp == NULL)
        return -1;
    *sp = '\0';
    *images = buf;
    *out = sp + 1;
    return 0;
}

int main(void)
{
    static const char hex[] = "0123456789abcdef";
    static char cmdline[256];
    uint64_t *guard = arena + (MODEL_SCRATCH_BYTES + 7) / 8;
    char *images, *out;
    int fin, fout, i, k;
    uintptr_t missing;
    if (args(cmdline, sizeof cmdline, &images, &out) != 0)
        return 1;
    fin = sh_open(images, 1);  /* "rb" */
    fout = sh_open(out, 5);    /* "wb" */
    if (fin < 0 || fout < 0)
        return 1;
    for (i = 0; i < GUARD_WORDS; ++i)
        guard[i] = GUARD;
    while ((missing = sh_io(SH_READ, fin, input, sizeof input)) == 0) {
        mcu_mark();
        if (model_run(input, logits, arena) != 0)
            return 1;
        mcu_mark();
        for (i = 0; i < GUARD_WORDS; ++i)
            if (guard[i] != GUARD)
                return 1;
        for (i = 0; i < MODEL_OUTPUT_SIZE; ++i) {
            uint32_t bits;
            memcpy(&bits, &logits[i], sizeof bits);
            for (k = 0; k < 8; ++k)
                line[9 * i + k] = hex[(bits >> (28 - 4 * k)) & 15u];
            line[9 * i + 8] = i + 1 < MODEL_OUTPUT_SIZE ? ' ' : '\n';
        }
        if (sh_io(SH_WRITE, fout, line, sizeof line - 1) != 0)
            return 1;
    }
    if (missing != sizeof input)  /* the file ends inside an image */
        return 1;
    semihost(SH_CLOSE, (uintptr_t[]){(uintptr_t)fin});
    semihost(SH_CLOSE, (uintptr_t[]){(uintptr_t)fout});
    return 0;
}
