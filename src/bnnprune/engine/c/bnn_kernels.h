/* bnn_kernels.h: runtime kernels of a bnnprune C export (plain C99, no allocation).
 *
 * Layout (as in the bnnprune engine): activations are channels-last for one image.
 * Float values are float32 (H, W, C); binary values are packed per pixel into
 * BNN_WORDS(C) 64-bit words, bit j of word k = channel 64k + j, bit 1 = -1, bit 0 = +1,
 * unused high bits of the last word always 0.
 *
 * Build options (all optional):
 *   BNN_PORTABLE_POPCOUNT  use the portable SWAR popcount instead of __builtin_popcountll
 *   BNN_POPCOUNT32         SWAR popcount on 32-bit halves, no libgcc call (the default on
 *                          Cortex-M, which has no popcount instruction)
 *   BNN_SOFT_FMA           a correctly rounded fmaf built from double arithmetic (the
 *                          default on 32-bit ARM without a fused multiply-add: M0+, M3)
 *   BNN_NO_SIMD            disable the AVX2 (x86, -mavx2) and NEON (ARM) popcount paths
 *   BNN_NO_FMA             float convolutions use a*b+c instead of fmaf (faster on FPUs
 *                          without fused multiply-add; logits then differ from the engine
 *                          in the last bits, classes almost never)
 */
#ifndef BNN_KERNELS_H
#define BNN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define BNN_WORDS(c) (((c) + 63) / 64)

/* A binary (XNOR-popcount) convolution or linear layer.
 * p = popcount(window XOR weights) over K = cin*kh*kw bits (taps outside the input read
 * the pad words). Threshold mode (thr != NULL): output bit = (p > thr) xor flip.
 * Float mode: output = ((float)(K - 2p) * m1 + a1) * m2 + a2. */
typedef struct {
    int h, w, cin;             /* input */
    int kh, kw, sh, sw, ph, pw;
    int ho, wo, cout;          /* output */
    int dense;                 /* 1: a window's taps are packed bit-densely, back to back */
    int words;                 /* words per window = per weight row */
    const uint64_t *pad;       /* BNN_WORDS(cin) words read for taps outside the input */
    const uint64_t *wb;        /* cout rows of `words` words */
    const int32_t *thr;        /* threshold mode */
    const uint8_t *flip;
    const float *m1, *a1, *m2, *a2; /* float mode */
} bnn_bconv_t;

/* A full-precision convolution or linear layer with its epilogue:
 * acc = sum over taps (ky, kx, ci) of fmaf(x, w, acc); v = (acc + b) * alpha + beta. */
typedef struct {
    int h, w, cin;
    int kh, kw, sh, sw, ph, pw;
    int ho, wo, cout;
    const float *wt;           /* (kh*kw*cin, cout) */
    const float *b, *alpha, *beta;
} bnn_fconv_t;

/* Binary conv of packed x into `out` (uint64 bits in threshold mode, float otherwise).
 * `patch` holds `words` words of scratch; NULL when the window is the whole input
 * (a linear layer on a flattened image, not dense, no padding). */
void bnn_bconv(const bnn_bconv_t *l, const uint64_t *x, void *out, uint64_t *patch);

/* Float conv into float `out_f` (H, W, cout), or into sign bits `out_bits` when out_f is
 * NULL; `row` holds cout floats of scratch in that case. */
void bnn_fconv(const bnn_fconv_t *l, const float *x, float *out_f, uint64_t *out_bits,
               float *row);

/* Sign bits of x (or of x*alpha + beta when alpha is not NULL): bit = !(v >= 0). */
void bnn_sign_pack(const float *x, int pixels, int c, const float *alpha, const float *beta,
                   uint64_t *out);

/* Max-pool of packed bits (AND over the window's pixels inside the input). */
void bnn_maxpool_bits(const uint64_t *x, int h, int w, int c, int kh, int kw, int sh, int sw,
                      int ph, int pw, int ho, int wo, uint64_t *out);

/* Float max-pool (-inf padding, NaN propagates). */
void bnn_maxpool_f(const float *x, int h, int w, int c, int kh, int kw, int sh, int sw,
                   int ph, int pw, int ho, int wo, float *out);

/* Average pool: float32 sum in row-major order over the window's pixels inside the input,
 * divided by the window size (count_include_pad) or the number of those pixels. */
void bnn_avgpool(const float *x, int h, int w, int c, int kh, int kw, int sh, int sw,
                 int ph, int pw, int count_include_pad, int ho, int wo, float *out);

/* Adaptive average pool with PyTorch's bin edges floor(i*H/o) .. ceil((i+1)*H/o). */
void bnn_adaptive_avgpool(const float *x, int h, int w, int c, int ho, int wo, float *out);

void bnn_add(const float *a, const float *b, size_t n, float *out);

/* out = x * alpha[c] + beta[c], per channel of pixels x c values. */
void bnn_affine(const float *x, int pixels, int c, const float *alpha, const float *beta,
                float *out);

/* out = x clamped to [lo, hi]; has_lo / has_hi say which bounds exist. */
void bnn_clamp(const float *x, size_t n, int has_lo, float lo, int has_hi, float hi,
               float *out);

/* (C, H, W) <-> (H, W, C) float layouts of one image. */
void bnn_chw_to_hwc(const float *in, int c, int h, int w, float *out);
void bnn_hwc_to_chw(const float *in, int h, int w, int c, float *out);

#endif /* BNN_KERNELS_H */
