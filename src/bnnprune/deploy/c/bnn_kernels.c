/* bnn_kernels.c: runtime kernels of a bnnprune C export (see bnn_kernels.h).
 *
 * The kernels that are not convolutions (those are static inline in bnn_conv.h). Every float
 * result is computed with the same operations in the same order as the bnnprune engine
 * (separate roundings), so a build with floating-point contraction off (the default of
 * -std=c99) gives the engine's logits.
 */
#include "bnn_kernels.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ------------------------------------------------------------------ padding */

void bnn_band_bits(const uint64_t *x, int h, int w, int wd, int pw, int y0, int kh,
                   const uint64_t *pad, uint64_t *band)
{
    const size_t n = (size_t)wd * sizeof(uint64_t);
    const size_t row = (size_t)(w + 2 * pw) * (size_t)wd;
    int r, xx;
    for (r = 0; r < kh; ++r) {
        uint64_t *o = band + (size_t)r * row;
        const int y = y0 + r;
        if (y < 0 || y >= h) {
            for (xx = 0; xx < w + 2 * pw; ++xx)
                memcpy(o + (size_t)xx * (size_t)wd, pad, n);
            continue;
        }
        for (xx = 0; xx < pw; ++xx) {
            memcpy(o + (size_t)xx * (size_t)wd, pad, n);
            memcpy(o + (size_t)(w + pw + xx) * (size_t)wd, pad, n);
        }
        memcpy(o + (size_t)pw * (size_t)wd, x + (size_t)y * (size_t)w * (size_t)wd,
               (size_t)w * n);
    }
}

void bnn_band_f(const float *x, int h, int w, int c, int pw, int y0, int kh, float *band)
{
    const size_t row = (size_t)(w + 2 * pw) * (size_t)c;
    const size_t side = (size_t)pw * (size_t)c * sizeof(float);
    int r;
    for (r = 0; r < kh; ++r) {
        float *o = band + (size_t)r * row;
        const int y = y0 + r;
        if (y < 0 || y >= h) {
            memset(o, 0, row * sizeof(float));
            continue;
        }
        memset(o, 0, side);
        memcpy(o + (size_t)pw * (size_t)c, x + (size_t)y * (size_t)w * (size_t)c,
               (size_t)w * (size_t)c * sizeof(float));
        memset(o + (size_t)(w + pw) * (size_t)c, 0, side);
    }
}

/* ------------------------------------------------------------------ packing */

void bnn_sign_pack(const float *x, int pixels, int c, const float *alpha, const float *beta,
                   uint64_t *out)
{
    const int wd = BNN_WORDS(c);
    int p, k, j;
    for (p = 0; p < pixels; ++p) {
        const float *row = x + (size_t)p * (size_t)c;
        uint64_t *o = out + (size_t)p * (size_t)wd;
        for (k = 0; k < wd; ++k) {
            uint64_t word = 0;
            const int n = c - 64 * k < 64 ? c - 64 * k : 64;
            for (j = 0; j < n; ++j) {
                const int ch = 64 * k + j;
                float v = row[ch];
                if (alpha != NULL) {
                    v = v * alpha[ch];
                    v = v + beta[ch];
                }
                if (!(v >= 0.0f))
                    word |= (uint64_t)1 << j;
            }
            o[k] = word;
        }
    }
}

/* ------------------------------------------------------------------ pooling */

void bnn_maxpool_bits(const uint64_t *x, int h, int w, int c, int kh, int kw, int sh, int sw,
                      int ph, int pw, int ho, int wo, uint64_t *out)
{
    const int wd = BNN_WORDS(c);
    int oy, ox, yy, xx, k;
    for (oy = 0; oy < ho; ++oy) {
        const int y0 = oy * sh - ph;
        const int ya = y0 > 0 ? y0 : 0, yb = y0 + kh < h ? y0 + kh : h;
        for (ox = 0; ox < wo; ++ox) {
            const int x0 = ox * sw - pw;
            const int xa = x0 > 0 ? x0 : 0, xb = x0 + kw < w ? x0 + kw : w;
            uint64_t *o = out + ((size_t)oy * (size_t)wo + (size_t)ox) * (size_t)wd;
            for (k = 0; k < wd; ++k) { /* each word ANDed in a register, stored once */
                uint64_t acc = ~(uint64_t)0;
                for (yy = ya; yy < yb; ++yy)
                    for (xx = xa; xx < xb; ++xx)
                        acc &= x[((size_t)yy * (size_t)w + (size_t)xx) * (size_t)wd + (size_t)k];
                o[k] = acc;
            }
        }
    }
}

void bnn_maxpool_f(const float *x, int h, int w, int c, int kh, int kw, int sh, int sw,
                   int ph, int pw, int ho, int wo, float *out)
{
    int oy, ox, yy, xx, k;
    for (oy = 0; oy < ho; ++oy) {
        const int y0 = oy * sh - ph;
        const int ya = y0 > 0 ? y0 : 0, yb = y0 + kh < h ? y0 + kh : h;
        for (ox = 0; ox < wo; ++ox) {
            const int x0 = ox * sw - pw;
            const int xa = x0 > 0 ? x0 : 0, xb = x0 + kw < w ? x0 + kw : w;
            float *o = out + ((size_t)oy * (size_t)wo + (size_t)ox) * (size_t)c;
            for (k = 0; k < c; ++k)
                o[k] = -INFINITY;
            for (yy = ya; yy < yb; ++yy)
                for (xx = xa; xx < xb; ++xx) {
                    const float *s = x + ((size_t)yy * (size_t)w + (size_t)xx) * (size_t)c;
                    for (k = 0; k < c; ++k)
                        if (s[k] > o[k] || isnan(s[k]))
                            o[k] = s[k];
                }
        }
    }
}

void bnn_avgpool(const float *x, int h, int w, int c, int kh, int kw, int sh, int sw,
                 int ph, int pw, int count_include_pad, int ho, int wo, float *out)
{
    int oy, ox, yy, xx, k;
    for (oy = 0; oy < ho; ++oy) {
        for (ox = 0; ox < wo; ++ox) {
            int y0 = oy * sh - ph, x0 = ox * sw - pw;
            int y1 = y0 + kh < h + ph ? y0 + kh : h + ph;
            int x1 = x0 + kw < w + pw ? x0 + kw : w + pw;
            const int pool = (y1 - y0) * (x1 - x0);
            float div;
            float *o = out + ((size_t)oy * (size_t)wo + (size_t)ox) * (size_t)c;
            y0 = y0 > 0 ? y0 : 0;
            x0 = x0 > 0 ? x0 : 0;
            y1 = y1 < h ? y1 : h;
            x1 = x1 < w ? x1 : w;
            div = (float)(count_include_pad ? pool : (y1 - y0) * (x1 - x0));
            for (k = 0; k < c; ++k)
                o[k] = 0.0f;
            if (y0 >= y1 || x0 >= x1)
                continue;
            for (yy = y0; yy < y1; ++yy)
                for (xx = x0; xx < x1; ++xx) {
                    const float *s = x + ((size_t)yy * (size_t)w + (size_t)xx) * (size_t)c;
                    for (k = 0; k < c; ++k)
                        o[k] += s[k];
                }
            for (k = 0; k < c; ++k)
                o[k] = o[k] / div;
        }
    }
}

void bnn_adaptive_avgpool(const float *x, int h, int w, int c, int ho, int wo, float *out)
{
    int oy, ox, yy, xx, k;
    for (oy = 0; oy < ho; ++oy) {
        const int y0 = (oy * h) / ho, y1 = ((oy + 1) * h + ho - 1) / ho;
        for (ox = 0; ox < wo; ++ox) {
            const int x0 = (ox * w) / wo, x1 = ((ox + 1) * w + wo - 1) / wo;
            const float dy = (float)(y1 - y0), dx = (float)(x1 - x0);
            float *o = out + ((size_t)oy * (size_t)wo + (size_t)ox) * (size_t)c;
            for (k = 0; k < c; ++k)
                o[k] = 0.0f;
            for (yy = y0; yy < y1; ++yy)
                for (xx = x0; xx < x1; ++xx) {
                    const float *s = x + ((size_t)yy * (size_t)w + (size_t)xx) * (size_t)c;
                    for (k = 0; k < c; ++k)
                        o[k] += s[k];
                }
            for (k = 0; k < c; ++k)
                o[k] = o[k] / dy / dx;
        }
    }
}

/* ------------------------------------------------------------------ elementwise */

void bnn_add(const float *a, const float *b, size_t n, float *out)
{
    size_t i;
    for (i = 0; i < n; ++i)
        out[i] = a[i] + b[i];
}

void bnn_affine(const float *x, int pixels, int c, const float *alpha, const float *beta,
                float *out)
{
    int p, k;
    for (p = 0; p < pixels; ++p)
        for (k = 0; k < c; ++k) {
            const size_t i = (size_t)p * (size_t)c + (size_t)k;
            const float v = x[i] * alpha[k];
            out[i] = v + beta[k];
        }
}

void bnn_prelu(const float *x, int pixels, int c, const float *shift, const float *slope,
               const float *bias, float *out)
{
    int p, k;
    for (p = 0; p < pixels; ++p)
        for (k = 0; k < c; ++k) {
            const size_t i = (size_t)p * (size_t)c + (size_t)k;
            float t = x[i] + shift[k];
            if (t < 0.0f)
                t = t * slope[k];
            out[i] = t + bias[k];
        }
}

void bnn_concat_f(const float *x, int pixels, int c, int off, int cout, float *out)
{
    int p;
    for (p = 0; p < pixels; ++p)
        memcpy(out + (size_t)p * (size_t)cout + (size_t)off, x + (size_t)p * (size_t)c,
               (size_t)c * sizeof(float));
}

void bnn_concat_bits(const uint64_t *x, int pixels, int c, int off, int cout, uint64_t *out)
{
    const int wd = BNN_WORDS(c), wdo = BNN_WORDS(cout), i0 = off >> 6, s = off & 63;
    int p, k;
    for (p = 0; p < pixels; ++p) {
        const uint64_t *xs = x + (size_t)p * (size_t)wd;
        uint64_t *o = out + (size_t)p * (size_t)wdo;
        for (k = 0; k < wd; ++k) {
            if (s == 0) {
                o[i0 + k] |= xs[k];
            } else {
                o[i0 + k] |= xs[k] << s;
                if (i0 + k + 1 < wdo)
                    o[i0 + k + 1] |= xs[k] >> (64 - s);
            }
        }
    }
}

void bnn_clamp(const float *x, size_t n, int has_lo, float lo, int has_hi, float hi,
               float *out)
{
    size_t i;
    for (i = 0; i < n; ++i) {
        float v = x[i];
        if (has_lo && v < lo)
            v = lo;
        if (has_hi && v > hi)
            v = hi;
        out[i] = v;
    }
}

void bnn_chw_to_hwc(const float *in, int c, int h, int w, float *out)
{
    int k, y, x;
    for (k = 0; k < c; ++k)
        for (y = 0; y < h; ++y)
            for (x = 0; x < w; ++x)
                out[((size_t)y * (size_t)w + (size_t)x) * (size_t)c + (size_t)k] =
                    in[((size_t)k * (size_t)h + (size_t)y) * (size_t)w + (size_t)x];
}

void bnn_hwc_to_chw(const float *in, int h, int w, int c, float *out)
{
    int k, y, x;
    for (k = 0; k < c; ++k)
        for (y = 0; y < h; ++y)
            for (x = 0; x < w; ++x)
                out[((size_t)k * (size_t)h + (size_t)y) * (size_t)w + (size_t)x] =
                    in[((size_t)y * (size_t)w + (size_t)x) * (size_t)c + (size_t)k];
}
