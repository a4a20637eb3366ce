/* bnn_kernels.h: runtime kernels of a bnnprune C export (plain C99, no allocation).
 *
 * Layout (as in the bnnprune engine): activations are channels-last for one image.
 * Float values are float32 (H, W, C); binary values are packed per pixel into
 * BNN_WORDS(C) 64-bit words, bit j of word k = channel 64k + j, bit 1 = -1, bit 0 = +1,
 * unused high bits of the last word always 0.
 *
 * The convolutions and their build options are in bnn_conv.h.
 */
#ifndef BNN_KERNELS_H
#define BNN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define BNN_WORDS(c) (((c) + 63) / 64)

/* The kh input rows y0 .. y0+kh-1 of a convolution's window band, padded: rows of
 * W + 2pw pixels, taps outside x (H, W, wd words per pixel) reading the words pad. A conv
 * reads its windows in place from the band of each output row, so the padded input is never
 * whole in RAM. */
void bnn_band_bits(const uint64_t *x, int h, int w, int wd, int pw, int y0, int kh,
                   const uint64_t *pad, uint64_t *band);

/* bnn_band_bits for float x (H, W, C), zeros outside it. */
void bnn_band_f(const float *x, int h, int w, int c, int pw, int y0, int kh, float *band);

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

/* out = prelu(x + shift, slope) + bias per channel (PReLU, RPReLU): t = x + shift,
 * t * slope where t < 0, then + bias (float32, each operation rounded). */
void bnn_prelu(const float *x, int pixels, int c, const float *shift, const float *slope,
               const float *bias, float *out);

/* Channel concatenation: x (pixels x c) into channels off .. off+c-1 of out (pixels x cout).
 * The bit version ORs into out, which starts zeroed. */
void bnn_concat_f(const float *x, int pixels, int c, int off, int cout, float *out);
void bnn_concat_bits(const uint64_t *x, int pixels, int c, int off, int cout, uint64_t *out);

/* out = x clamped to [lo, hi]; has_lo / has_hi say which bounds exist. */
void bnn_clamp(const float *x, size_t n, int has_lo, float lo, int has_hi, float hi,
               float *out);

/* (C, H, W) <-> (H, W, C) float layouts of one image. */
void bnn_chw_to_hwc(const float *in, int c, int h, int w, float *out);
void bnn_hwc_to_chw(const float *in, int h, int w, int c, float *out);

#endif /* BNN_KERNELS_H */
