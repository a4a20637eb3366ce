/* bnn_kernels.c: runtime kernels of a bnnprune C export (see bnn_kernels.h).
 *
 * Every float result is computed with the same operations in the same order as the
 * bnnprune engine (separate roundings, fmaf in the float convolution), so a build with
 * floating-point contraction off (the default of -std=c99) gives the engine's logits.
 */
#include "bnn_kernels.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#if !defined(BNN_NO_SIMD) && defined(__AVX2__)
#include <immintrin.h>
#define BNN_AVX2 1
#elif !defined(BNN_NO_SIMD) && (defined(__ARM_NEON) || defined(__ARM_NEON__))
#include <arm_neon.h>
#define BNN_NEON 1
#endif

#if defined(BNN_NO_FMA)
#define BNN_MADD(a, b, c) ((a) * (b) + (c))
#elif defined(BNN_SOFT_FMA) || (defined(__arm__) && !defined(__ARM_FEATURE_FMA))
/* No fused multiply-add instruction (Cortex-M0+/M3, or soft float): the C library's fmaf
 * may round twice (newlib's computes in double, then rounds to float); this one rounds
 * once. a*b is exact in double (24 + 24 bits), so s = a*b + c in double is the nearest
 * double to the exact value v, and rounding s to float gives v's rounding unless s is a
 * tie for that rounding (exactly halfway between two floats) while v is not. Only then
 * (and for results below 2^-149) the exact error of the sum (TwoSum) is taken and s made
 * odd towards it ("round to odd", 53 >= 24 + 2 bits), which breaks the tie v's way. */
static float bnn_fmaf(float a, float b, float c)
{
    const double p = (double)a * (double)b;
    double s = p + (double)c;
    uint64_t bits;
    int exp2, low;
    memcpy(&bits, &s, sizeof bits);
    exp2 = (int)((bits >> 52) & 0x7ff) - 1023;
    low = exp2 >= -126 ? 29 : 29 - 126 - exp2; /* mantissa bits below float precision */
    if (low > 52 || (bits & ((1ull << low) - 1u)) == 1ull << (low - 1)) {
        const double t = s - p;
        const double e = (p - (s - t)) + ((double)c - t);
        if (e != 0.0 && isfinite(s) && (bits & 1u) == 0) {
            bits += ((e > 0.0) == (s > 0.0)) ? 1u : ~(uint64_t)0;
            memcpy(&s, &bits, sizeof s);
        }
    }
    return (float)s;
}
#define BNN_MADD(a, b, c) bnn_fmaf((a), (b), (c))
#else
#define BNN_MADD(a, b, c) fmaf((a), (b), (c))
#endif

/* ------------------------------------------------------------------ popcount */

#if defined(BNN_POPCOUNT32) || (defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M')
/* 32-bit cores (Cortex-M) have no popcount instruction and __builtin_popcountll calls
 * libgcc's __popcountdi2: SWAR on the two halves, summed before the one multiply. */
static uint32_t bnn_popcount64(uint64_t x)
{
    uint32_t lo = (uint32_t)x, hi = (uint32_t)(x >> 32);
    lo = lo - ((lo >> 1) & 0x55555555u);
    hi = hi - ((hi >> 1) & 0x55555555u);
    lo = (lo & 0x33333333u) + ((lo >> 2) & 0x33333333u);
    hi = (hi & 0x33333333u) + ((hi >> 2) & 0x33333333u);
    lo = (lo + (lo >> 4)) & 0x0f0f0f0fu;
    hi = (hi + (hi >> 4)) & 0x0f0f0f0fu;
    return ((lo + hi) * 0x01010101u) >> 24;
}
#elif !defined(BNN_PORTABLE_POPCOUNT) && (defined(__GNUC__) || defined(__clang__))
#define bnn_popcount64(x) ((uint32_t)__builtin_popcountll(x))
#else
static uint32_t bnn_popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (uint32_t)((x * 0x0101010101010101ull) >> 56);
}
#endif

#if defined(BNN_AVX2)
static __m256i bnn_popcnt_bytes(__m256i v)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
    __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
}

static uint32_t bnn_hsum(__m256i v)
{
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return (uint32_t)((uint64_t)_mm_cvtsi128_si64(s) + (uint64_t)_mm_extract_epi64(s, 1));
}
#endif

/* popcount(a XOR b) over n words, for 4 weight rows b, b+n, b+2n, b+3n at once. */
static void bnn_xpc4(const uint64_t *a, const uint64_t *b, int n, uint32_t *cnt)
{
    int i = 0, j;
    uint32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
#if defined(BNN_AVX2)
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (; i + 4 <= n; i += 4) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(a + i));
        s0 = _mm256_add_epi64(s0, bnn_popcnt_bytes(_mm256_xor_si256(
            x, _mm256_loadu_si256((const __m256i *)(b + i)))));
        s1 = _mm256_add_epi64(s1, bnn_popcnt_bytes(_mm256_xor_si256(
            x, _mm256_loadu_si256((const __m256i *)(b + n + i)))));
        s2 = _mm256_add_epi64(s2, bnn_popcnt_bytes(_mm256_xor_si256(
            x, _mm256_loadu_si256((const __m256i *)(b + 2 * n + i)))));
        s3 = _mm256_add_epi64(s3, bnn_popcnt_bytes(_mm256_xor_si256(
            x, _mm256_loadu_si256((const __m256i *)(b + 3 * n + i)))));
    }
    c0 = bnn_hsum(s0);
    c1 = bnn_hsum(s1);
    c2 = bnn_hsum(s2);
    c3 = bnn_hsum(s3);
#elif defined(BNN_NEON)
    uint64x2_t s0 = vdupq_n_u64(0), s1 = s0, s2 = s0, s3 = s0;
    for (; i + 2 <= n; i += 2) {
        uint64x2_t x = vld1q_u64(a + i);
        s0 = vpadalq_u32(s0, vpaddlq_u16(vpaddlq_u8(vcntq_u8(vreinterpretq_u8_u64(
            veorq_u64(x, vld1q_u64(b + i)))))));
        s1 = vpadalq_u32(s1, vpaddlq_u16(vpaddlq_u8(vcntq_u8(vreinterpretq_u8_u64(
            veorq_u64(x, vld1q_u64(b + n + i)))))));
        s2 = vpadalq_u32(s2, vpaddlq_u16(vpaddlq_u8(vcntq_u8(vreinterpretq_u8_u64(
            veorq_u64(x, vld1q_u64(b + 2 * n + i)))))));
        s3 = vpadalq_u32(s3, vpaddlq_u16(vpaddlq_u8(vcntq_u8(vreinterpretq_u8_u64(
            veorq_u64(x, vld1q_u64(b + 3 * n + i)))))));
    }
    c0 = (uint32_t)(vgetq_lane_u64(s0, 0) + vgetq_lane_u64(s0, 1));
    c1 = (uint32_t)(vgetq_lane_u64(s1, 0) + vgetq_lane_u64(s1, 1));
    c2 = (uint32_t)(vgetq_lane_u64(s2, 0) + vgetq_lane_u64(s2, 1));
    c3 = (uint32_t)(vgetq_lane_u64(s3, 0) + vgetq_lane_u64(s3, 1));
#endif
    for (j = i; j < n; ++j) {
        uint64_t x = a[j];
        c0 += bnn_popcount64(x ^ b[j]);
        c1 += bnn_popcount64(x ^ b[n + j]);
        c2 += bnn_popcount64(x ^ b[2 * n + j]);
        c3 += bnn_popcount64(x ^ b[3 * n + j]);
    }
    cnt[0] = c0;
    cnt[1] = c1;
    cnt[2] = c2;
    cnt[3] = c3;
}

/* popcount(a XOR b) over n words. */
static uint32_t bnn_xpc1(const uint64_t *a, const uint64_t *b, int n)
{
    int i = 0;
    uint32_t c = 0;
#if defined(BNN_AVX2)
    __m256i s = _mm256_setzero_si256();
    for (; i + 4 <= n; i += 4)
        s = _mm256_add_epi64(s, bnn_popcnt_bytes(_mm256_xor_si256(
            _mm256_loadu_si256((const __m256i *)(a + i)),
            _mm256_loadu_si256((const __m256i *)(b + i)))));
    c = bnn_hsum(s);
#elif defined(BNN_NEON)
    uint64x2_t s = vdupq_n_u64(0);
    for (; i + 2 <= n; i += 2)
        s = vpadalq_u32(s, vpaddlq_u16(vpaddlq_u8(vcntq_u8(vreinterpretq_u8_u64(
            veorq_u64(vld1q_u64(a + i), vld1q_u64(b + i)))))));
    c = (uint32_t)(vgetq_lane_u64(s, 0) + vgetq_lane_u64(s, 1));
#endif
    for (; i < n; ++i)
        c += bnn_popcount64(a[i] ^ b[i]);
    return c;
}

/* ------------------------------------------------------------------ binary conv */

/* The window of output pixel (oy, ox) as `l->words` words (taps in ky, kx order). */
static void bnn_gather(const bnn_bconv_t *l, const uint64_t *x, int oy, int ox,
                       uint64_t *patch)
{
    const int wd = BNN_WORDS(l->cin), nw = l->words;
    int ky, kx, k, pos = 0, t = 0;
    if (l->dense)
        memset(patch, 0, (size_t)nw * sizeof(uint64_t));
    for (ky = 0; ky < l->kh; ++ky) {
        const int yy = oy * l->sh - l->ph + ky;
        for (kx = 0; kx < l->kw; ++kx, ++t) {
            const int xx = ox * l->sw - l->pw + kx;
            const uint64_t *src = (yy >= 0 && yy < l->h && xx >= 0 && xx < l->w)
                ? x + ((size_t)yy * (size_t)l->w + (size_t)xx) * (size_t)wd : l->pad;
            if (!l->dense) {
                memcpy(patch + (size_t)t * (size_t)wd, src, (size_t)wd * sizeof(uint64_t));
                continue;
            }
            {
                const int i0 = pos >> 6, s = pos & 63;
                for (k = 0; k < wd; ++k) {
                    const int i = i0 + k;
                    if (s == 0) {
                        patch[i] |= src[k];
                    } else {
                        patch[i] |= src[k] << s;
                        if (i + 1 < nw)
                            patch[i + 1] |= src[k] >> (64 - s);
                    }
                }
            }
            pos += l->cin;
        }
    }
}

void bnn_bconv(const bnn_bconv_t *l, const uint64_t *x, void *out, uint64_t *patch)
{
    const int nw = l->words, co = l->cout, wdo = BNN_WORDS(l->cout);
    const int32_t nbits = (int32_t)l->cin * l->kh * l->kw;
    int oy, ox, c, q;
    uint32_t cnt[4];
    for (oy = 0; oy < l->ho; ++oy) {
        for (ox = 0; ox < l->wo; ++ox) {
            const size_t pix = (size_t)oy * (size_t)l->wo + (size_t)ox;
            const uint64_t *win = x;
            if (patch != NULL) {
                bnn_gather(l, x, oy, ox, patch);
                win = patch;
            }
            if (l->thr != NULL) {
                uint64_t *ob = (uint64_t *)out + pix * (size_t)wdo;
                memset(ob, 0, (size_t)wdo * sizeof(uint64_t));
                for (c = 0; c < co; c += 4) {
                    const int nc = co - c < 4 ? co - c : 4;
                    if (nc == 4)
                        bnn_xpc4(win, l->wb + (size_t)c * (size_t)nw, nw, cnt);
                    else
                        for (q = 0; q < nc; ++q)
                            cnt[q] = bnn_xpc1(win, l->wb + (size_t)(c + q) * (size_t)nw,
                                              nw);
                    for (q = 0; q < nc; ++q) {
                        const uint64_t bit = (uint64_t)(((int32_t)cnt[q] > l->thr[c + q])
                                                        ^ (l->flip[c + q] != 0));
                        ob[(c + q) >> 6] |= bit << ((c + q) & 63);
                    }
                }
            } else {
                float *of = (float *)out + pix * (size_t)co;
                for (c = 0; c < co; c += 4) {
                    const int nc = co - c < 4 ? co - c : 4;
                    if (nc == 4)
                        bnn_xpc4(win, l->wb + (size_t)c * (size_t)nw, nw, cnt);
                    else
                        for (q = 0; q < nc; ++q)
                            cnt[q] = bnn_xpc1(win, l->wb + (size_t)(c + q) * (size_t)nw,
                                              nw);
                    for (q = 0; q < nc; ++q) {
                        const int k = c + q;
                        float v = (float)(nbits - 2 * (int32_t)cnt[q]);
                        v = v * l->m1[k];
                        v = v + l->a1[k];
                        v = v * l->m2[k];
                        of[k] = v + l->a2[k];
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ float conv */

void bnn_fconv(const bnn_fconv_t *l, const float *x, float *out_f, uint64_t *out_bits,
               float *row)
{
    const int co = l->cout, ci = l->cin, wdo = BNN_WORDS(l->cout);
    int oy, ox, ky, kx, k, c;
    for (oy = 0; oy < l->ho; ++oy) {
        for (ox = 0; ox < l->wo; ++ox) {
            const size_t pix = (size_t)oy * (size_t)l->wo + (size_t)ox;
            float *acc = out_f != NULL ? out_f + pix * (size_t)co : row;
            for (c = 0; c < co; ++c)
                acc[c] = 0.0f;
            /* taps outside the input are zeros: fmaf(0, w, acc) == acc, so they are skipped */
            for (ky = 0; ky < l->kh; ++ky) {
                const int yy = oy * l->sh - l->ph + ky;
                if (yy < 0 || yy >= l->h)
                    continue;
                for (kx = 0; kx < l->kw; ++kx) {
                    const int xx = ox * l->sw - l->pw + kx;
                    const float *xs, *wt;
                    if (xx < 0 || xx >= l->w)
                        continue;
                    xs = x + ((size_t)yy * (size_t)l->w + (size_t)xx) * (size_t)ci;
                    wt = l->wt + ((size_t)ky * (size_t)l->kw + (size_t)kx) * (size_t)ci
                                 * (size_t)co;
                    for (k = 0; k < ci; ++k) {
                        const float xv = xs[k];
                        const float *wr = wt + (size_t)k * (size_t)co;
                        for (c = 0; c < co; ++c)
                            acc[c] = BNN_MADD(xv, wr[c], acc[c]);
                    }
                }
            }
            for (c = 0; c < co; ++c) {
                float v = acc[c] + l->b[c];
                v = v * l->alpha[c];
                acc[c] = v + l->beta[c];
            }
            if (out_f == NULL)
                bnn_sign_pack(acc, 1, co, NULL, NULL, out_bits + pix * (size_t)wdo);
        }
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
            for (k = 0; k < wd; ++k)
                o[k] = ~(uint64_t)0;
            for (yy = ya; yy < yb; ++yy)
                for (xx = xa; xx < xb; ++xx) {
                    const uint64_t *s = x + ((size_t)yy * (size_t)w + (size_t)xx) * (size_t)wd;
                    for (k = 0; k < wd; ++k)
                        o[k] &= s[k];
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
