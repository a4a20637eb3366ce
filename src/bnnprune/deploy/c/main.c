/* main.c: host check of a bnnprune C export (not needed on the device).
 *
 * Reads raw native-endian float32 images, MODEL_INPUT_SIZE floats each in (C, H, W) order
 * (PyTorch's layout, already normalized), from the file given as argument or from stdin,
 * and prints one line of MODEL_OUTPUT_SIZE logits per image (%.9g: float32 round-trips).
 * The scratch arena is followed by guard words; a run that writes past
 * MODEL_SCRATCH_BYTES is reported and fails.
 *
 *   cc -std=c99 -O2 model.c bnn_kernels.c main.c -lm -o model && ./model images.f32
 */
#include <stdio.h>
#include <string.h>

#include "model.h"

#define GUARD_WORDS 8
#define GUARD 0xA5A5A5A5A5A5A5A5ull

static uint64_t arena[(MODEL_SCRATCH_BYTES + 7) / 8 + GUARD_WORDS];
static float input[MODEL_INPUT_SIZE];
static float logits[MODEL_OUTPUT_SIZE];

int main(int argc, char **argv)
{
    FILE *f = stdin;
    uint64_t *guard = arena + (MODEL_SCRATCH_BYTES + 7) / 8;
    long images = 0;
    size_t got;
    int i;
    if (argc > 2) {
        fprintf(stderr, "usage: %s [images.f32]\n", argv[0]);
        return 2;
    }
    if (argc == 2 && (f = fopen(argv[1], "rb")) == NULL) {
        perror(argv[1]);
        return 2;
    }
    for (i = 0; i < GUARD_WORDS; ++i)
        guard[i] = GUARD;
    while ((got = fread(input, sizeof(float), MODEL_INPUT_SIZE, f)) == MODEL_INPUT_SIZE) {
        if (model_run(input, logits, arena) != 0) {
            fprintf(stderr, "model_run failed on image %ld\n", images);
            return 1;
        }
        for (i = 0; i < GUARD_WORDS; ++i)
            if (guard[i] != GUARD) {
                fprintf(stderr, "scratch overflow past MODEL_SCRATCH_BYTES on image %ld\n",
                        images);
                return 1;
            }
        for (i = 0; i < MODEL_OUTPUT_SIZE; ++i)
            printf(i ? " %.9g" : "%.9g", (double)logits[i]);
        printf("\n");
        ++images;
    }
    if (got != 0) {
        fprintf(stderr, "input ends inside an image (%lu of %d floats)\n",
                (unsigned long)got, MODEL_INPUT_SIZE);
        return 1;
    }
    if (f != stdin)
        fclose(f);
    return 0;
}
