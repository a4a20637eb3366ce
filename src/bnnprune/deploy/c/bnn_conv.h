/* bnn_conv.h: the convolution kernels of a bnnprune C export (plain C99, no allocation).
 *
 * static inline, so that each layer's function in model.c calls them with its sizes as
 * constants: the loops over a tile's pixels and channels unroll and their accumulators stay
 * in registers. Binary weights are in the bnnprune engine's layout: blocks of BNN_BLOCK
 * output channels, window word k of a block's channel q at w[BNN_BLOCK*k + q] (zero weights
 * past the last channel); float weights are the (taps, co) matrix. One structure on every
 * path, chosen at compile time:
 *
 *   path        binary: channels per vector, popcount    float: channels per vector
 *   AVX-512     8, vpopcntq (needs AVX512F + VPOPCNTDQ)  16 (AVX512F)
 *   AVX2        4, vpshufb nibble counts summed in       8 (needs FMA as well)
 *               bytes over up to 31 words, then vpsadbw;
 *               windows under 8 words by full adders
 *   NEON        2, cnt summed in bytes over up to 31     4
 *               words, then uaddlp/uadalp (aarch64)
 *   CSA32       1, carry-save adders on 32-bit words     1, fmaf (a 4-pixel tile with an FPU)
 *   portable    1, bnn_popcount64 (C99)                  1, fmaf
 *
 * CSA32 is the path of Cortex-M cores (32-bit, no popcount instruction): one pixel and one
 * channel at a time, the window's words summed by carry-save adders (Harley-Seal) before
 * one SWAR bit count per two words (bnn_csa_count).
 *
 * Build options: BNN_NO_SIMD (portable path), BNN_CSA32 (the CSA32 path on any CPU, e.g. to
 * check it on a host), BNN_PORTABLE_POPCOUNT (the C99 bit count even where the compiler has
 * a popcount instruction), BNN_POPCOUNT32 (the portable path's SWAR on 32-bit halves, no
 * libgcc call: its default on Cortex-M), BNN_SOFT_FMA (a correctly rounded fmaf from double
 * arithmetic: the default on 32-bit ARM without fused multiply-add, M0+/M3), BNN_NO_FMA
 * (a*b+c in float convolutions: faster on FPUs without fused multiply-add; logits then
 * differ from the engine in the last bits).
 */
#ifndef BNN_CONV_H
#define BNN_CONV_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define BNN_BLOCK 16

#if defined(__GNUC__) || defined(__clang__)
#define BNN_INLINE static inline __attribute__((always_inline))
#else
#define BNN_INLINE static inline
#endif

/* A layer's function in model.c (it calls the kernels below with its sizes): kept out of
 * model_run, where the compiler would inline a layer called once and then allocate its
 * registers around the other layers' values (on the M4 that cost 6% more instructions). */
#if defined(__GNUC__) || defined(__clang__)
#define BNN_LAYER __attribute__((noinline))
#else
#define BNN_LAYER
#endif

/* full unrolling of the loops over a tile's pixels and vectors (their bounds are constants) */
#if defined(__clang__)
#define BNN_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__) && __GNUC__ >= 8
#define BNN_UNROLL _Pragma("GCC unroll 16")
#else
#define BNN_UNROLL
#endif

/* Hints to GNU compilers, no instructions: BNN_OPAQUE(v) hides v's value (a constant stays
 * in a register instead of being folded into immediates; a pointer's loads are not related
 * to those of another iteration), BNN_PIN(v) also keeps the computations from v from being
 * hoisted out of the enclosing loop. */
#if defined(__GNUC__) || defined(__clang__)
#define BNN_OPAQUE(v) __asm__("" : "+r"(v))
#define BNN_PIN(v) __asm__ volatile("" : "+r"(v))
#else
#define BNN_OPAQUE(v) (void)0
#define BNN_PIN(v) (void)0
#endif

/* ------------------------------------------------------------------ scalar popcount */

/* The compiler's popcount only where it is one instruction (else libgcc's __popcountdi2).
 * 32-bit cores (Cortex-M) have no popcount instruction: SWAR on the two 32-bit halves,
 * summed before the one multiply, with no 64-bit multiply (also BNN_POPCOUNT32). */
#if defined(BNN_POPCOUNT32) || (defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M')
BNN_INLINE uint32_t bnn_popcount64(uint64_t x)
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
#elif !defined(BNN_PORTABLE_POPCOUNT) && (defined(__GNUC__) || defined(__clang__)) \
    && (defined(__POPCNT__) || defined(__aarch64__))
#define bnn_popcount64(x) ((uint32_t)__builtin_popcountll(x))
#else
BNN_INLINE uint32_t bnn_popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (uint32_t)((x * 0x0101010101010101ull) >> 56);
}
#endif

/* ------------------------------------------------------------------ scalar fmaf */

#if defined(BNN_SOFT_FMA) || (defined(__arm__) && !defined(__ARM_FEATURE_FMA))
/* No fused multiply-add instruction (Cortex-M0+/M3, or soft float): the C library's fmaf
 * may round twice (newlib's computes in double, then rounds to float); this one rounds
 * once. a*b is exact in double (24 + 24 bits), so s = a*b + c in double is the nearest
 * double to the exact value v, and rounding s to float gives v's rounding unless s is a
 * tie for that rounding (exactly halfway between two floats) while v is not. Only then
 * (and for results below 2^-149) the exact error of the sum (TwoSum) is taken and s made
 * odd towards it ("round to odd", 53 >= 24 + 2 bits), which breaks the tie v's way. */
static inline float bnn_fmaf(float a, float b, float c)
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
#define BNN_FMAF(a, b, c) bnn_fmaf((a), (b), (c))
#define BNN_FMAF_SOFT 1
#else
#define BNN_FMAF(a, b, c) fmaf((a), (b), (c))
#endif

/* Unrolling by 4 of the float convs' loops over a window's rows and taps, on the CSA32 path
 * with a hardware fused multiply-add: a 3 x 3 first layer becomes one run of loads and
 * vfma (the M4's conv1 took a third fewer instructions; a longer window costs at most
 * four copies of the loop body). Not with the software bnn_fmaf: four inlined copies of
 * it per tap grew the M3's code sixfold for 2% fewer instructions. */
#if !defined(BNN_FMAF_SOFT) && (defined(BNN_CSA32) \
    || (defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M'))
#if defined(__clang__)
#define BNN_UNROLL_TAPS _Pragma("clang loop unroll_count(4)")
#elif defined(__GNUC__) && __GNUC__ >= 8
#define BNN_UNROLL_TAPS _Pragma("GCC unroll 4")
#else
#define BNN_UNROLL_TAPS
#endif
#else
#define BNN_UNROLL_TAPS
#endif

/* ------------------------------------------------------------------ paths */

#if !defined(BNN_NO_SIMD) \
    && (defined(BNN_CSA32) || (defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M'))
#define BNN_PATH_CSA32 1
#elif !defined(BNN_NO_SIMD) && defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#define BNN_PATH_AVX512 1
#elif !defined(BNN_NO_SIMD) && defined(__AVX2__)
#define BNN_PATH_AVX2 1
#elif !defined(BNN_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON)
#define BNN_PATH_NEON 1
#else
#define BNN_PATH_PORTABLE 1
#endif

#if defined(BNN_PATH_AVX512) || defined(BNN_PATH_AVX2)
#include <immintrin.h>
#elif defined(BNN_PATH_NEON)
#include <arm_neon.h>
#endif

/* Binary vectors: bnn_acc_t holds the running XOR-popcounts of BNN_VW channels, a pass
 * BNN_XPV vectors for each of BNN_XP pixels (the accumulators a path keeps in registers).
 *   bnn_bcast(x)            an input word, for every channel of a vector
 *   bnn_xpc(a, x, w)        a + popcount(x ^ w[l]) in lane l (paths that count bytes,
 *                           BNN_BYTE_COUNTS, have bnn_pop8 and bnn_acc_b8 instead)
 *   bnn_neg_bits(a, init)   bit l = (a_l + init[l] < 0), init int32 (the sum in 64 bits)
 *   bnn_counts(a, c)        c[l] = a_l */
#if defined(BNN_PATH_AVX512)
#define BNN_VW 8
#define BNN_XPV 2
#define BNN_XP 4
typedef __m512i bnn_acc_t;
typedef __m512i bnn_xb_t;
BNN_INLINE bnn_acc_t bnn_acc_zero(void) { return _mm512_setzero_si512(); }
BNN_INLINE bnn_xb_t bnn_bcast(uint64_t x) { return _mm512_set1_epi64((long long)x); }
BNN_INLINE bnn_acc_t bnn_xpc(bnn_acc_t a, bnn_xb_t x, const uint64_t *w)
{
    return _mm512_add_epi64(a, _mm512_popcnt_epi64(
        _mm512_xor_si512(x, _mm512_loadu_si512((const void *)w))));
}
BNN_INLINE uint32_t bnn_neg_bits(bnn_acc_t a, const int32_t *init)
{
    const __m512i i64 =
        _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(const void *)init));
    return (uint32_t)_mm512_cmplt_epi64_mask(_mm512_add_epi64(a, i64), _mm512_setzero_si512());
}
BNN_INLINE void bnn_counts(bnn_acc_t a, int32_t *c)
{
    _mm256_storeu_si256((__m256i *)(void *)c, _mm512_cvtepi64_epi32(a));
}
#elif defined(BNN_PATH_AVX2)
#define BNN_VW 4
#define BNN_XPV 4
#define BNN_XP 2
typedef __m256i bnn_acc_t;
typedef __m256i bnn_xb_t;
BNN_INLINE bnn_acc_t bnn_acc_zero(void) { return _mm256_setzero_si256(); }
typedef __m256i bnn_b8_t;
BNN_INLINE bnn_xb_t bnn_bcast(uint64_t x) { return _mm256_set1_epi64x((long long)x); }
BNN_INLINE bnn_xb_t bnn_xw(bnn_xb_t x, const uint64_t *w)
{
    return _mm256_xor_si256(x, _mm256_loadu_si256((const __m256i *)(const void *)w));
}
BNN_INLINE bnn_b8_t bnn_pop8(bnn_xb_t v)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}
BNN_INLINE bnn_b8_t bnn_b8_zero(void) { return _mm256_setzero_si256(); }
BNN_INLINE bnn_b8_t bnn_b8_add(bnn_b8_t a, bnn_b8_t b) { return _mm256_add_epi8(a, b); }
BNN_INLINE bnn_acc_t bnn_acc_b8(bnn_acc_t a, bnn_b8_t b)
{
    return _mm256_add_epi64(a, _mm256_sad_epu8(b, _mm256_setzero_si256()));
}
BNN_INLINE bnn_xb_t bnn_xb_xor(bnn_xb_t a, bnn_xb_t b) { return _mm256_xor_si256(a, b); }
BNN_INLINE bnn_xb_t bnn_xb_and(bnn_xb_t a, bnn_xb_t b) { return _mm256_and_si256(a, b); }
BNN_INLINE bnn_xb_t bnn_xb_or(bnn_xb_t a, bnn_xb_t b) { return _mm256_or_si256(a, b); }
#define BNN_BYTE_COUNTS 1
#define BNN_SHORT_WORDS 8
BNN_INLINE uint32_t bnn_neg_bits(bnn_acc_t a, const int32_t *init)
{
    const __m256i s = _mm256_add_epi64(a, _mm256_cvtepi32_epi64(
        _mm_loadu_si128((const __m128i *)(const void *)init)));
    return (uint32_t)_mm256_movemask_pd(_mm256_castsi256_pd(s));
}
BNN_INLINE void bnn_counts(bnn_acc_t a, int32_t *c)
{
    const __m256i lows = _mm256_permutevar8x32_epi32(a, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
    _mm_storeu_si128((__m128i *)(void *)c, _mm256_castsi256_si128(lows));
}
#elif defined(BNN_PATH_NEON)
#define BNN_VW 2
#define BNN_XPV 8
#define BNN_XP 2
typedef uint64x2_t bnn_acc_t;
typedef uint64x2_t bnn_xb_t;
typedef uint8x16_t bnn_b8_t;
BNN_INLINE bnn_acc_t bnn_acc_zero(void) { return vdupq_n_u64(0); }
BNN_INLINE bnn_xb_t bnn_bcast(uint64_t x) { return vdupq_n_u64(x); }
BNN_INLINE bnn_xb_t bnn_xw(bnn_xb_t x, const uint64_t *w) { return veorq_u64(x, vld1q_u64(w)); }
BNN_INLINE bnn_b8_t bnn_pop8(bnn_xb_t v) { return vcntq_u8(vreinterpretq_u8_u64(v)); }
BNN_INLINE bnn_b8_t bnn_b8_zero(void) { return vdupq_n_u8(0); }
BNN_INLINE bnn_b8_t bnn_b8_add(bnn_b8_t a, bnn_b8_t b) { return vaddq_u8(a, b); }
BNN_INLINE bnn_acc_t bnn_acc_b8(bnn_acc_t a, bnn_b8_t b)
{
    return vpadalq_u32(a, vpaddlq_u16(vpaddlq_u8(b)));
}
#define BNN_BYTE_COUNTS 1
BNN_INLINE uint32_t bnn_neg_bits(bnn_acc_t a, const int32_t *init)
{
    const uint64x2_t s = vshrq_n_u64(vreinterpretq_u64_s64(
        vaddq_s64(vreinterpretq_s64_u64(a), vmovl_s32(vld1_s32(init)))), 63);
    return (uint32_t)(vgetq_lane_u64(s, 0) | (vgetq_lane_u64(s, 1) << 1));
}
BNN_INLINE void bnn_counts(bnn_acc_t a, int32_t *c)
{
    c[0] = (int32_t)vgetq_lane_u64(a, 0);
    c[1] = (int32_t)vgetq_lane_u64(a, 1);
}
#elif defined(BNN_PATH_CSA32)
/* 32-bit cores: one pixel and one channel at a time, counted in 32-bit words by carry-save
 * adders (bnn_xpc_pass below); the counts fit 32 bits (the init sums stay in int32: the
 * thresholds are in [-1, K], padding channels' init is INT32_MIN) */
#define BNN_VW 1
#define BNN_XPV 1
#define BNN_XP 1
typedef uint32_t bnn_acc_t;
BNN_INLINE uint32_t bnn_neg_bits(bnn_acc_t a, const int32_t *init)
{
    return (uint32_t)((int32_t)a + init[0] < 0);
}
BNN_INLINE void bnn_counts(bnn_acc_t a, int32_t *c) { c[0] = (int32_t)a; }
#else
/* the tile (BNN_XP pixels x BNN_XPV channels) may be set for a core's register count */
#define BNN_VW 1
#ifndef BNN_XPV
#define BNN_XPV 4
#endif
#ifndef BNN_XP
#define BNN_XP 2
#endif
typedef uint64_t bnn_acc_t;
typedef uint64_t bnn_xb_t;
BNN_INLINE bnn_acc_t bnn_acc_zero(void) { return 0; }
BNN_INLINE bnn_xb_t bnn_bcast(uint64_t x) { return x; }
BNN_INLINE bnn_acc_t bnn_xpc(bnn_acc_t a, bnn_xb_t x, const uint64_t *w)
{
    return a + bnn_popcount64(x ^ *w);
}
BNN_INLINE uint32_t bnn_neg_bits(bnn_acc_t a, const int32_t *init)
{
    return (uint32_t)((int64_t)a + init[0] < 0);
}
BNN_INLINE void bnn_counts(bnn_acc_t a, int32_t *c) { c[0] = (int32_t)a; }
#endif

#define BNN_XC (BNN_VW * BNN_XPV) /* channels per pass: a divisor of BNN_BLOCK */
/* vectors of the pass over a half block (8 channels) where passes are 16 channels */
#define BNN_XPV_HALF (BNN_XPV >= 2 ? BNN_XPV / 2 : BNN_XPV)

/* Float vectors: bnn_fv_t holds BNN_FV channels, a pass BNN_FPV vectors for each of BNN_FP
 * pixels. bnn_fv_madd(x, w, a) = x*w + a, rounded once (fmaf) unless BNN_NO_FMA;
 * bnn_fv_nge_bits(a, b): bit l = !(a_l >= b_l) (1 for NaN). */
#if defined(BNN_PATH_AVX512)
#define BNN_FV 16
#define BNN_FPV 1
#define BNN_FP 8
typedef __m512 bnn_fv_t;
BNN_INLINE bnn_fv_t bnn_fv_zero(void) { return _mm512_setzero_ps(); }
BNN_INLINE bnn_fv_t bnn_fv_bcast(float x) { return _mm512_set1_ps(x); }
BNN_INLINE bnn_fv_t bnn_fv_load(const float *p) { return _mm512_loadu_ps(p); }
BNN_INLINE void bnn_fv_store(float *p, bnn_fv_t v) { _mm512_storeu_ps(p, v); }
BNN_INLINE bnn_fv_t bnn_fv_add(bnn_fv_t a, bnn_fv_t b) { return _mm512_add_ps(a, b); }
BNN_INLINE bnn_fv_t bnn_fv_mul(bnn_fv_t a, bnn_fv_t b) { return _mm512_mul_ps(a, b); }
#if defined(BNN_NO_FMA)
BNN_INLINE bnn_fv_t bnn_fv_madd(bnn_fv_t x, bnn_fv_t w, bnn_fv_t a)
{
    return _mm512_add_ps(_mm512_mul_ps(x, w), a);
}
#else
BNN_INLINE bnn_fv_t bnn_fv_madd(bnn_fv_t x, bnn_fv_t w, bnn_fv_t a)
{
    return _mm512_fmadd_ps(x, w, a);
}
#endif
BNN_INLINE uint32_t bnn_fv_nge_bits(bnn_fv_t a, bnn_fv_t b)
{
    return (uint32_t)_mm512_cmp_ps_mask(a, b, _CMP_NGE_UQ);
}
#elif defined(BNN_PATH_AVX2) && (defined(__FMA__) || defined(BNN_NO_FMA))
#define BNN_FV 8
#define BNN_FPV 2
#define BNN_FP 4
typedef __m256 bnn_fv_t;
BNN_INLINE bnn_fv_t bnn_fv_zero(void) { return _mm256_setzero_ps(); }
BNN_INLINE bnn_fv_t bnn_fv_bcast(float x) { return _mm256_set1_ps(x); }
BNN_INLINE bnn_fv_t bnn_fv_load(const float *p) { return _mm256_loadu_ps(p); }
BNN_INLINE void bnn_fv_store(float *p, bnn_fv_t v) { _mm256_storeu_ps(p, v); }
BNN_INLINE bnn_fv_t bnn_fv_add(bnn_fv_t a, bnn_fv_t b) { return _mm256_add_ps(a, b); }
BNN_INLINE bnn_fv_t bnn_fv_mul(bnn_fv_t a, bnn_fv_t b) { return _mm256_mul_ps(a, b); }
#if defined(BNN_NO_FMA)
BNN_INLINE bnn_fv_t bnn_fv_madd(bnn_fv_t x, bnn_fv_t w, bnn_fv_t a)
{
    return _mm256_add_ps(_mm256_mul_ps(x, w), a);
}
#else
BNN_INLINE bnn_fv_t bnn_fv_madd(bnn_fv_t x, bnn_fv_t w, bnn_fv_t a)
{
    return _mm256_fmadd_ps(x, w, a);
}
#endif
BNN_INLINE uint32_t bnn_fv_nge_bits(bnn_fv_t a, bnn_fv_t b)
{
    return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_NGE_UQ));
}
/* The float conv's taps in registers (bnn_fconv_pass): each weight vector loaded once for
 * the tile's pixels, not folded as a memory operand into each FMA, and the inputs loaded
 * afresh each tap, not carried from the previous ones (GCC's predictive commoning: the
 * pixels of a stride-1 tile share taps), which spilled the 4 x 2 tile's accumulators (NIN's
 * 3 -> 192 5x5 first conv: the whole inference took 1.29x as long without the first hint,
 * 1.11x without the second, bench_c.py's build, AMD EPYC Zen 3). */
#if defined(__GNUC__) || defined(__clang__)
#define BNN_FV_KEEP(v) __asm__("" : "+x"(v))
#define BNN_FTAP_FRESH 1
#endif
#elif defined(BNN_PATH_NEON)
#define BNN_FV 4
#define BNN_FPV 4
#define BNN_FP 4
typedef float32x4_t bnn_fv_t;
BNN_INLINE bnn_fv_t bnn_fv_zero(void) { return vdupq_n_f32(0.0f); }
BNN_INLINE bnn_fv_t bnn_fv_bcast(float x) { return vdupq_n_f32(x); }
BNN_INLINE bnn_fv_t bnn_fv_load(const float *p) { return vld1q_f32(p); }
BNN_INLINE void bnn_fv_store(float *p, bnn_fv_t v) { vst1q_f32(p, v); }
BNN_INLINE bnn_fv_t bnn_fv_add(bnn_fv_t a, bnn_fv_t b) { return vaddq_f32(a, b); }
BNN_INLINE bnn_fv_t bnn_fv_mul(bnn_fv_t a, bnn_fv_t b) { return vmulq_f32(a, b); }
#if defined(BNN_NO_FMA)
BNN_INLINE bnn_fv_t bnn_fv_madd(bnn_fv_t x, bnn_fv_t w, bnn_fv_t a)
{
    return vaddq_f32(vmulq_f32(x, w), a);
}
#else
BNN_INLINE bnn_fv_t bnn_fv_madd(bnn_fv_t x, bnn_fv_t w, bnn_fv_t a)
{
    return vfmaq_f32(a, x, w);
}
#endif
BNN_INLINE uint32_t bnn_fv_nge_bits(bnn_fv_t a, bnn_fv_t b)
{
    static const uint32_t weights[4] = {1u, 2u, 4u, 8u};
    return vaddvq_u32(vbicq_u32(vld1q_u32(weights), vcgeq_f32(a, b)));
}
#else
#define BNN_FV 1
#ifndef BNN_FPV
#define BNN_FPV 4
#endif
#ifndef BNN_FP
#if defined(BNN_PATH_CSA32) && defined(__ARM_FP)
#define BNN_FP 4 /* a Cortex-M FPU's 32 single registers hold a 4 x 4 tile */
#else
#define BNN_FP 2
#endif
#endif
typedef float bnn_fv_t;
BNN_INLINE bnn_fv_t bnn_fv_zero(void) { return 0.0f; }
BNN_INLINE bnn_fv_t bnn_fv_bcast(float x) { return x; }
BNN_INLINE bnn_fv_t bnn_fv_load(const float *p) { return *p; }
BNN_INLINE void bnn_fv_store(float *p, bnn_fv_t v) { *p = v; }
BNN_INLINE bnn_fv_t bnn_fv_add(bnn_fv_t a, bnn_fv_t b) { return a + b; }
BNN_INLINE bnn_fv_t bnn_fv_mul(bnn_fv_t a, bnn_fv_t b) { return a * b; }
#if defined(BNN_NO_FMA)
BNN_INLINE bnn_fv_t bnn_fv_madd(bnn_fv_t x, bnn_fv_t w, bnn_fv_t a) { return x * w + a; }
#else
BNN_INLINE bnn_fv_t bnn_fv_madd(bnn_fv_t x, bnn_fv_t w, bnn_fv_t a)
{
    return BNN_FMAF(x, w, a);
}
#endif
BNN_INLINE uint32_t bnn_fv_nge_bits(bnn_fv_t a, bnn_fv_t b) { return (uint32_t)!(a >= b); }
#endif

#define BNN_FC (BNN_FV * BNN_FPV) /* float channels per pass: a divisor of BNN_BLOCK */
#ifndef BNN_FV_KEEP
#define BNN_FV_KEEP(v) (void)0
#endif

/* bits | bnn_fv_nge_bits(a, b) << s; one channel a vector: a conditional OR (on Thumb-2
 * "it lt; orrlt" after the compare, where a 0/1 value takes two more instructions) */
#if BNN_FV == 1
BNN_INLINE uint32_t bnn_fv_or_nge(uint32_t bits, bnn_fv_t a, bnn_fv_t b, int s)
{
    if (!(a >= b))
        bits |= 1u << s;
    return bits;
}
#else
BNN_INLINE uint32_t bnn_fv_or_nge(uint32_t bits, bnn_fv_t a, bnn_fv_t b, int s)
{
    return bits | bnn_fv_nge_bits(a, b) << s;
}
#endif
#define BNN_FPV_HALF (BNN_FPV >= 2 ? BNN_FPV / 2 : BNN_FPV)

/* A window, as the kernels walk it: pixel p of a tile starts at x + p*pstep, its window is
 * kh rows rstep apart of seg consecutive words (or floats). lo_last: the high 32 bits of
 * the window's last word are 0 in x and in the weights (a dense patch of K bits with
 * K % 64 in 1..32), which 32-bit cores then skip. */
typedef struct {
    ptrdiff_t pstep, rstep;
    int kh, seg, lo_last;
} bnn_win_t;

/* ------------------------------------------------------------------ binary conv */

#if defined(BNN_PATH_CSA32)
/* Carry-save counting on 32-bit words (Harley-Seal): BNN_CSA adds three words bitwise into
 * a sum word l and a carry word h (weight 2), five logic operations for two new words. */
#define BNN_CSA(h, l, a, b, c)                                                                \
    do {                                                                                      \
        const uint32_t u_ = (a) ^ (b);                                                        \
        (h) = ((a) & (b)) | (u_ & (c));                                                       \
        (l) = u_ ^ (c);                                                                       \
    } while (0)

/* The SWAR masks, kept in registers: Thumb-2 masks a shifted operand with a register in
 * one instruction (and r, m, v, lsr #1), with an immediate in two (m4 masks v >> 4 in
 * bnn_nibbles_to_bytes). */
typedef struct {
    uint32_t m1, m2, m4;
} bnn_masks_t;

BNN_INLINE bnn_masks_t bnn_masks(void)
{
    bnn_masks_t m = {0x55555555u, 0x33333333u, 0x0f0f0f0fu};
    BNN_OPAQUE(m.m1);
    BNN_OPAQUE(m.m2);
    BNN_OPAQUE(m.m4);
    return m;
}

/* The two 32-bit halves of the 64-bit word at p. */
typedef struct {
    uint32_t lo, hi;
} bnn_w32x2_t;

#if defined(__GNUC__) && !defined(__clang__) && defined(__thumb2__)
/* One ldrd: gcc splits a 64-bit load whose halves are used apart into two ldr when it tunes
 * for the M4. The operand is a 64-bit memory reference, so GCC gives it an address that
 * ldrd takes (an offset of at most 1020 from a register). */
BNN_INLINE bnn_w32x2_t bnn_load2(const uint64_t *p)
{
    bnn_w32x2_t v;
    __asm__("ldrd %0, %1, %2" : "=r"(v.lo), "=r"(v.hi) : "m"(*p));
    return v;
}
#else
BNN_INLINE bnn_w32x2_t bnn_load2(const uint64_t *p)
{
    const uint64_t v = *p;
    const bnn_w32x2_t r = {(uint32_t)v, (uint32_t)(v >> 32)};
    return r;
}
#endif

/* bit counts of each nibble of v (at most 4) */
BNN_INLINE uint32_t bnn_pop_nibbles(uint32_t v, bnn_masks_t m)
{
    v = v - (m.m1 & (v >> 1));
    return (v & m.m2) + (m.m2 & (v >> 2));
}

/* bit counts of each byte of v (at most 8) */
BNN_INLINE uint32_t bnn_pop_bytes(uint32_t v, bnn_masks_t m)
{
    v = bnn_pop_nibbles(v, m);
    return m.m4 & (v + (v >> 4));
}

/* acc + the sum of v's four bytes: bnn_add_bytes where that sum is below 256, bnn_sum_bytes
 * for any; usada8 where the core has the DSP instructions (M4, M7), else multiplies */
#if defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>
BNN_INLINE uint32_t bnn_add_bytes(uint32_t acc, uint32_t v) { return __usada8(v, 0, acc); }
BNN_INLINE uint32_t bnn_sum_bytes(uint32_t acc, uint32_t v) { return __usada8(v, 0, acc); }
#else
BNN_INLINE uint32_t bnn_add_bytes(uint32_t acc, uint32_t v)
{
    return acc + ((v * 0x01010101u) >> 24);
}

BNN_INLINE uint32_t bnn_sum_bytes(uint32_t acc, uint32_t v)
{
    v = (v & 0x00ff00ffu) + ((v >> 8) & 0x00ff00ffu);
    return acc + ((v * 0x00010001u) >> 16);
}
#endif

/* Carry-save step of the 64-bit words at xp and wp: the two halves of their XOR into ones,
 * the carry (weight 2) returned. */
BNN_INLINE uint32_t bnn_csa_at(const uint64_t *xp, const uint64_t *wp, uint32_t *ones)
{
    const bnn_w32x2_t a = bnn_load2(xp), b = bnn_load2(wp);
    uint32_t t;
    BNN_CSA(t, *ones, *ones, a.lo ^ b.lo, a.hi ^ b.hi);
    return t;
}

/* Half-adder step of a window's last word whose high half is 0 (lo_last): the low half of
 * the XOR into ones, the carry (weight 2) returned. */
BNN_INLINE uint32_t bnn_csa_lo_at(const uint64_t *xp, const uint64_t *wp, uint32_t *ones)
{
    const uint32_t a = (uint32_t)*xp ^ (uint32_t)*wp, t = *ones & a;
    *ones ^= a;
    return t;
}

/* Window words whose weights one base register reaches: ldrd takes offsets up to 1020
 * bytes, and word k of a channel is BNN_BLOCK * 8 * k bytes from word 0. */
#define BNN_CSA_REACH (1024 / (BNN_BLOCK * 8))

/* The same for the window's word k (row k / seg, word k % seg); wb is the channel's weights
 * from word BNN_CSA_REACH * (k / BNN_CSA_REACH) on. */
BNN_INLINE uint32_t bnn_csa_word(const uint64_t *x, bnn_win_t win, const uint64_t *wb, int k,
                                 uint32_t *ones)
{
    const uint64_t *xp = x + k / win.seg * win.rstep + k % win.seg;
    const uint64_t *wp = wb + BNN_BLOCK * (k % BNN_CSA_REACH);
    if (win.lo_last && k == win.kh * win.seg - 1)
        return bnn_csa_lo_at(xp, wp, ones);
    return bnn_csa_at(xp, wp, ones);
}

/* The weights from word k on, a new base every BNN_CSA_REACH words (pinned: else the
 * compiler folds the step back into offsets ldrd does not take, and computes and spills
 * an address per word). */
BNN_INLINE const uint64_t *bnn_csa_base(const uint64_t *wb, int k)
{
    if (k > 0 && k % BNN_CSA_REACH == 0) {
        wb += BNN_BLOCK * BNN_CSA_REACH;
        BNN_PIN(wb);
    }
    return wb;
}

/* The longest window (in 64-bit words) whose carries of weight 2 are counted directly (in
 * groups, bnn_csa_carry) instead of going through a twos word. Counting a carry costs
 * about 1.3 instructions a word more than adding it into twos, but without twos the final
 * count saves about 7 (its bit count and the carries of twos): the direct count pays up to
 * about 5 words (on the M4, instructions in the channel loop of `small`'s bconv2, 4.5 words:
 * 95 -> 92; of bconv3, 9 words: 165 -> 166). */
#define BNN_CSA_NO_TWOS 5

/* The largest window (in 64-bit words) counted fully unrolled, as one run of words. */
#define BNN_CSA_FLAT 32

/* Carries (of weight 4, or 2 without twos) counted a group at a time: their nibble counts
 * (at most 4 each) summed over BNN_CSA_GROUP carries (at most 12 a nibble), then the
 * group's bytes (at most 24) added to a byte-wise total without a horizontal sum. */
#define BNN_CSA_GROUP 3

/* The bytes of nibble counts of at most 15: at most 30 each. */
BNN_INLINE uint32_t bnn_nibbles_to_bytes(uint32_t v, bnn_masks_t m)
{
    return (v & m.m4) + (m.m4 & (v >> 4));
}

/* Carry i of nc into the group's nibble counts quad and, when the group is full or i is
 * the last, the group into the byte-wise total bytes (at most 8 a carry). */
BNN_INLINE void bnn_csa_carry(uint32_t f, int i, int nc, bnn_masks_t m, uint32_t *quad,
                              uint32_t *bytes)
{
    const uint32_t q = bnn_pop_nibbles(f, m);
    *quad = i % BNN_CSA_GROUP == 0 ? q : *quad + q;
    if (i % BNN_CSA_GROUP == BNN_CSA_GROUP - 1 || i == nc - 1) {
        const uint32_t b = bnn_nibbles_to_bytes(*quad, m);
        *bytes = i < BNN_CSA_GROUP ? b : *bytes + b;
    }
}

/* XOR-popcount of one pixel's window with one channel's weights, plus acc: the window's
 * 32-bit words go through carry-save adders into ones and twos (bit counts of weight 1 and
 * 2), whose carries (weight 4) are counted once per two 64-bit words; ones and twos are
 * counted at the end. A window of up to BNN_CSA_FLAT words is one unrolled run (pairs may
 * straddle rows, every address an offset from x and w; the carries counted in groups,
 * bnn_csa_carry; up to BNN_CSA_NO_TWOS words without twos), a longer one goes row by row. */
BNN_INLINE uint32_t bnn_csa_count(const uint64_t *x, bnn_win_t win, const uint64_t *w,
                                  bnn_masks_t m, uint32_t acc)
{
    uint32_t ones = 0, twos = 0, fours = 0, quad = 0, f, ta, tb;
    const int n = win.kh * win.seg, nc = (n + 1) / 2;
    const uint64_t *wb = w;
    int r, j, k;
    BNN_PIN(x); /* the window's addresses as offsets from x, not hoisted out of the channel
                 * loop into registers that then spill */
    if (n <= BNN_CSA_NO_TWOS) { /* a short window: its carries counted without twos */
        BNN_UNROLL
        for (k = 0; k < n; ++k) {
            wb = bnn_csa_base(wb, k);
            ta = bnn_csa_word(x, win, wb, k, &ones);
            bnn_csa_carry(ta, k, n, m, &quad, &fours);
        }
        /* ones: at most 8 a byte; 2 x the carries' bytes, at most 16 n */
        return bnn_sum_bytes(acc, bnn_pop_bytes(ones, m) + (fours << 1));
    }
    if (n <= BNN_CSA_FLAT) {
        BNN_UNROLL
        for (k = 0; k + 2 <= n; k += 2) {
            wb = bnn_csa_base(wb, k);
            ta = bnn_csa_word(x, win, wb, k, &ones);
            wb = bnn_csa_base(wb, k + 1);
            tb = bnn_csa_word(x, win, wb, k + 1, &ones);
            BNN_CSA(f, twos, twos, ta, tb);
            bnn_csa_carry(f, k / 2, nc, m, &quad, &fours);
        }
        if (n % 2 != 0) { /* an odd last word: its carry half-added into twos */
            wb = bnn_csa_base(wb, n - 1);
            ta = bnn_csa_word(x, win, wb, n - 1, &ones);
            f = twos & ta;
            twos ^= ta;
            bnn_csa_carry(f, nc - 1, nc, m, &quad, &fours);
        }
        /* ones + 2 twos: at most 12 a nibble, 24 a byte; with 4 x fours (at most 8 nc a
         * byte) one horizontal sum while a byte holds both */
        f = bnn_pop_nibbles(ones, m) + (bnn_pop_nibbles(twos, m) << 1);
        f = bnn_nibbles_to_bytes(f, m);
        if (24 + 4 * 8 * nc <= 255)
            return bnn_sum_bytes(acc, f + (fours << 2));
        return bnn_sum_bytes(acc, f) + (bnn_sum_bytes(0, fours) << 2);
    }
    for (r = 0; r < win.kh; ++r) {
        const uint64_t *xr = x + r * win.rstep;
        const uint64_t *wr = w + (ptrdiff_t)r * win.seg * BNN_BLOCK;
        for (j = 0; j + 2 <= win.seg; j += 2) {
            ta = bnn_csa_at(xr + j, wr + BNN_BLOCK * j, &ones);
            tb = bnn_csa_at(xr + j + 1, wr + BNN_BLOCK * (j + 1), &ones);
            BNN_CSA(f, twos, twos, ta, tb);
            fours = bnn_add_bytes(fours, bnn_pop_bytes(f, m));
        }
        if (j < win.seg) {
            ta = bnn_csa_at(xr + j, wr + BNN_BLOCK * j, &ones);
            f = twos & ta;
            twos ^= ta;
            fours = bnn_add_bytes(fours, bnn_pop_bytes(f, m));
        }
    }
    /* ones + 2 twos: at most 12 a nibble; their bytes summed onto acc, 4 fours last (one
     * add with a shifted operand) */
    f = bnn_pop_nibbles(ones, m) + (bnn_pop_nibbles(twos, m) << 1);
    return bnn_add_bytes(bnn_add_bytes(acc, f & m.m4), m.m4 & (f >> 4)) + (fours << 2);
}

BNN_INLINE void bnn_xpc_pass(const uint64_t *x, int np, bnn_win_t win, const uint64_t *w,
                             int nv, bnn_acc_t acc[BNN_XP][BNN_XPV])
{
    (void)np;
    (void)nv;
    acc[0][0] = bnn_csa_count(x, win, w, bnn_masks(), 0);
}
#else
#if defined(BNN_BYTE_COUNTS)
/* Paths without a vector popcount of 64-bit lanes (BNN_BYTE_COUNTS: AVX2, NEON) count bytes:
 *   bnn_b8_t                 a vector of byte counts
 *   bnn_xw(x, w)             x ^ w[l] in lane l
 *   bnn_pop8(v)              the bit count of each byte of v
 *   bnn_acc_b8(a, b)         a + the sum of b's bytes in each 64-bit lane
 * A window sums its words' byte counts bytewise, over up to BNN_BYTE_WORDS words (at most 8
 * a byte and word: 31 x 8 < 256), then adds them into the 64-bit accumulators once
 * (bnn_xpc_window; AVX2: vpshufb nibble counts, one vpsadbw; NEON: cnt, then uaddlp, uaddlp,
 * uadalp). On AVX2 a window of fewer than BNN_SHORT_WORDS words counts straight line, three
 * words at a time through a full adder (bnn_xpc_short); on NEON that took more instructions
 * than bytes (a word costs eor, cnt, add there). As the engine's per-word GEMM on AVX2
 * (engine/kernels/intrinsics.py: BYTE_WORDS, byte_min_words, SHORT_WORDS). */
#define BNN_BYTE_WORDS 31

BNN_INLINE void bnn_b8_flush(int np, int nv, bnn_b8_t b8[BNN_XP][BNN_XPV],
                             bnn_acc_t acc[BNN_XP][BNN_XPV])
{
    int p, v;
    BNN_UNROLL
    for (p = 0; p < np; ++p) {
        BNN_UNROLL
        for (v = 0; v < nv; ++v) {
            acc[p][v] = bnn_acc_b8(acc[p][v], b8[p][v]);
            b8[p][v] = bnn_b8_zero();
        }
    }
}

#if defined(BNN_SHORT_WORDS)
/* A window of n < BNN_SHORT_WORDS words, unrolled (n is a constant in each layer): per
 * vector and pixel, each three XOR results through one full adder into a sum and a carry,
 * counted as pop(sum) + 2 pop(carry) in bytes (at most 8 n a byte), the last n % 3 words
 * one count each, then one bnn_acc_b8. Word k is row k / seg, word k % seg. */
BNN_INLINE void bnn_xpc_short(const uint64_t *x, int np, bnn_win_t win, const uint64_t *w,
                              int nv, bnn_acc_t acc[BNN_XP][BNN_XPV])
{
    const int n = win.kh * win.seg;
    int p, v, k;
    BNN_UNROLL
    for (p = 0; p < np; ++p) {
        BNN_UNROLL
        for (v = 0; v < nv; ++v) {
            bnn_xb_t d[BNN_SHORT_WORDS];
            bnn_b8_t c = bnn_b8_zero();
            BNN_UNROLL
            for (k = 0; k < n; ++k)
                d[k] = bnn_xw(bnn_bcast(x[p * win.pstep + k / win.seg * win.rstep
                                          + k % win.seg]),
                              w + BNN_BLOCK * k + BNN_VW * v);
            BNN_UNROLL
            for (k = 0; k + 3 <= n; k += 3) {
                const bnn_xb_t u = bnn_xb_xor(d[k], d[k + 1]);
                const bnn_xb_t carry = bnn_xb_or(bnn_xb_and(d[k], d[k + 1]),
                                                 bnn_xb_and(u, d[k + 2]));
                const bnn_b8_t cc = bnn_pop8(carry);
                c = bnn_b8_add(c, bnn_b8_add(bnn_pop8(bnn_xb_xor(u, d[k + 2])),
                                             bnn_b8_add(cc, cc)));
            }
            BNN_UNROLL
            for (k = n - n % 3; k < n; ++k)
                c = bnn_b8_add(c, bnn_pop8(d[k]));
            acc[p][v] = bnn_acc_b8(acc[p][v], c);
        }
    }
}
#endif /* BNN_SHORT_WORDS */
#endif /* BNN_BYTE_COUNTS */

/* XOR-popcounts of np pixels x nv vectors over the window, added to acc: bnn_xpc per word,
 * or (BNN_BYTE_COUNTS) byte counts summed bytewise and added every BNN_BYTE_WORDS words */
BNN_INLINE void bnn_xpc_window(const uint64_t *x, int np, bnn_win_t win, const uint64_t *w,
                               int nv, bnn_acc_t acc[BNN_XP][BNN_XPV])
{
    int r, j, p, v;
#if defined(BNN_BYTE_COUNTS)
    bnn_b8_t b8[BNN_XP][BNN_XPV];
    int run = 0;
    BNN_UNROLL
    for (p = 0; p < BNN_XP; ++p) {
        BNN_UNROLL
        for (v = 0; v < BNN_XPV; ++v)
            b8[p][v] = bnn_b8_zero();
    }
#endif
    for (r = 0; r < win.kh; ++r) {
        const uint64_t *xr = x + r * win.rstep;
        const uint64_t *wr = w + (ptrdiff_t)r * win.seg * BNN_BLOCK;
        for (j = 0; j < win.seg; ++j) {
            bnn_xb_t xb[BNN_XP];
            BNN_UNROLL
            for (p = 0; p < np; ++p)
                xb[p] = bnn_bcast(xr[p * win.pstep + j]);
            BNN_UNROLL
            for (v = 0; v < nv; ++v) {
                BNN_UNROLL
                for (p = 0; p < np; ++p)
#if defined(BNN_BYTE_COUNTS)
                    b8[p][v] = bnn_b8_add(b8[p][v], bnn_pop8(bnn_xw(
                        xb[p], wr + BNN_BLOCK * j + BNN_VW * v)));
#else
                    acc[p][v] = bnn_xpc(acc[p][v], xb[p], wr + BNN_BLOCK * j + BNN_VW * v);
#endif
            }
#if defined(BNN_BYTE_COUNTS)
            if (++run == BNN_BYTE_WORDS) {
                bnn_b8_flush(np, nv, b8, acc);
                run = 0;
            }
#endif
        }
    }
#if defined(BNN_BYTE_COUNTS)
    bnn_b8_flush(np, nv, b8, acc);
#endif
}

/* XOR-popcounts of np pixels x nv vectors of channels (one pass) over the window; w points
 * at the pass's first channel in its block. */
BNN_INLINE void bnn_xpc_pass(const uint64_t *x, int np, bnn_win_t win, const uint64_t *w,
                             int nv, bnn_acc_t acc[BNN_XP][BNN_XPV])
{
    int p, v;
    BNN_UNROLL
    for (p = 0; p < BNN_XP; ++p) {
        BNN_UNROLL
        for (v = 0; v < BNN_XPV; ++v)
            acc[p][v] = bnn_acc_zero();
    }
#if defined(BNN_SHORT_WORDS) /* AVX2 */
    if (win.kh * win.seg < BNN_SHORT_WORDS) {
        bnn_xpc_short(x, np, win, w, nv, acc);
        return;
    }
#endif
    bnn_xpc_window(x, np, win, w, nv, acc);
}
#endif

/* Threshold mode: for one pass at channel c (bit c & 63 of the word), OR the bits
 * (count > thr) xor flip, as the sign of count + init, into each pixel's word. */
BNN_INLINE void bnn_bits_pass(const uint64_t *x, int np, bnn_win_t win, const uint64_t *w,
                              int nv, const int32_t *init, int c, uint64_t word[BNN_XP])
{
    bnn_acc_t acc[BNN_XP][BNN_XPV];
    int p, v;
    bnn_xpc_pass(x, np, win, w, nv, acc);
    BNN_UNROLL
    for (p = 0; p < np; ++p) {
        BNN_UNROLL
        for (v = 0; v < nv; ++v)
            word[p] |= (uint64_t)bnn_neg_bits(acc[p][v], init + c + BNN_VW * v)
                       << ((c + BNN_VW * v) & 63);
    }
}

#if defined(BNN_PATH_CSA32)
/* The bits, from bit 0 of the 32-bit half whose first channel is k0, of channels [a, b). */
BNN_INLINE uint32_t bnn_span_bits(int k0, int a, int b)
{
    a = a < k0 ? k0 : a;
    b = b < k0 + 32 ? b : k0 + 32;
    if (b <= a)
        return 0;
    return (b - a == 32 ? ~0u : (1u << (b - a)) - 1u) << (a - k0);
}

/* Threshold mode, one pixel (np is 1), in 32-bit halves: the sign of count + init[k] of
 * each channel shifted in from the top. Channels from co to the last block's end are
 * padding (their init is INT32_MIN: bit 1, which xmask clears), those past it 0. */
BNN_INLINE void bnn_bconv_bits_tile(const uint64_t *x, int np, bnn_win_t win,
                                    const uint64_t *w, int co, const int32_t *init,
                                    const uint64_t *xmask, uint64_t *out, int wdo)
{
    const ptrdiff_t bsize = (ptrdiff_t)win.kh * win.seg * BNN_BLOCK;
    const int cpad = (co + BNN_BLOCK - 1) / BNN_BLOCK * BNN_BLOCK;
    const bnn_masks_t m = bnn_masks();
    int g, h, b, q;
    (void)np;
    for (g = 0; g < wdo; ++g) {
        uint32_t half[2];
        for (h = 0; h < 2; ++h) {
            const int k0 = 64 * g + 32 * h, n = co - k0 < 32 ? co - k0 : 32;
            uint32_t bits = 0;
            for (b = k0 / BNN_BLOCK; b * BNN_BLOCK < k0 + n; ++b) { /* blocks of the half */
                const uint64_t *wb = w + b * bsize;
                const int32_t *ib = init + b * BNN_BLOCK;
                const int nq = k0 + n - b * BNN_BLOCK < BNN_BLOCK ? k0 + n - b * BNN_BLOCK
                                                                  : BNN_BLOCK;
                for (q = 0; q < nq; ++q) {
                    const int32_t sum = (int32_t)bnn_csa_count(x, win, wb + q, m,
                                                               (uint32_t)ib[q]);
                    bits = (bits >> 1) | ((uint32_t)sum & 0x80000000u);
                }
            }
            if (n < 32)
                bits = n > 0 ? bits >> (32 - n) : 0;
            half[h] = bits | bnn_span_bits(k0, co, cpad);
        }
        out[g] = ((uint64_t)half[1] << 32 | half[0]) ^ xmask[g];
    }
}
#else
/* Threshold mode, np pixels: every output word computed in registers and stored once,
 * out[p*wdo + g] = bits ^ xmask[g] (xmask, init: the engine's threshold_init). */
BNN_INLINE void bnn_bconv_bits_tile(const uint64_t *x, int np, bnn_win_t win,
                                    const uint64_t *w, int co, const int32_t *init,
                                    const uint64_t *xmask, uint64_t *out, int wdo)
{
    const int nblk = (co + BNN_BLOCK - 1) / BNN_BLOCK;
    const ptrdiff_t bsize = (ptrdiff_t)win.kh * win.seg * BNN_BLOCK;
    int g, b, c0, p;
    for (g = 0; g < wdo; ++g) {
        uint64_t word[BNN_XP];
        const int b1 = nblk < 4 * g + 4 ? nblk : 4 * g + 4;
        BNN_UNROLL
        for (p = 0; p < BNN_XP; ++p)
            word[p] = 0;
        for (b = 4 * g; b < b1; ++b) {
            /* a last block of at most 8 channels: only its first 8 */
            const int width = co - BNN_BLOCK * b <= BNN_BLOCK / 2 ? BNN_BLOCK / 2 : BNN_BLOCK;
            const uint64_t *wb = w + b * bsize;
            for (c0 = 0; c0 + BNN_XC <= width; c0 += BNN_XC)
                bnn_bits_pass(x, np, win, wb + c0, BNN_XPV, init, BNN_BLOCK * b + c0, word);
            if (c0 < width) /* passes of 16 channels, a half block */
                bnn_bits_pass(x, np, win, wb + c0, BNN_XPV_HALF, init, BNN_BLOCK * b + c0,
                              word);
            if (width < BNN_BLOCK) { /* the padding channels not computed: negative, as init */
                BNN_UNROLL
                for (p = 0; p < BNN_XP; ++p)
                    word[p] |= (uint64_t)0xff << ((BNN_BLOCK * b + BNN_BLOCK / 2) & 63);
            }
        }
        BNN_UNROLL
        for (p = 0; p < np; ++p)
            out[p * wdo + g] = word[p] ^ xmask[g];
    }
}
#endif

/* Float mode: for one pass at channel c, out[p*co + k] = ((K - 2*count) * m1 + a1) * m2 + a2
 * (float32, each operation rounded) for its channels k < co. */
BNN_INLINE void bnn_affine_pass(const uint64_t *x, int np, bnn_win_t win, const uint64_t *w,
                                int nv, int c, int co, int32_t nbits, const float *const *aff,
                                float *out)
{
    bnn_acc_t acc[BNN_XP][BNN_XPV];
    int32_t cnt[BNN_XP][BNN_XC] = {{0}}; /* zeroed: compilers cannot see n <= nv*BNN_VW */
    const int n = co - c < BNN_VW * nv ? co - c : BNN_VW * nv;
    int p, v, i;
    bnn_xpc_pass(x, np, win, w, nv, acc);
    BNN_UNROLL
    for (p = 0; p < np; ++p) {
        BNN_UNROLL
        for (v = 0; v < nv; ++v)
            bnn_counts(acc[p][v], &cnt[p][BNN_VW * v]);
    }
    BNN_UNROLL
    for (p = 0; p < np; ++p)
        for (i = 0; i < n; ++i) {
            const int k = c + i;
            float f = (float)(nbits - 2 * cnt[p][i]);
            f = f * aff[0][k];
            f = f + aff[1][k];
            f = f * aff[2][k];
            out[(ptrdiff_t)p * co + k] = f + aff[3][k];
        }
}

#if defined(BNN_PATH_CSA32)
/* Float mode, one pixel (np is 1): out[k] = ((K - 2*count) * m1 + a1) * m2 + a2, in two
 * passes: the counts (kept in out's words), then the affine maps. One loop doing both kept
 * the four parameter pointers and the channel's weight address in stack slots (bconv4 of
 * `small` took 330 instructions per output on the M4, now 317 by bench_mcu --per-op). */
BNN_INLINE void bnn_bconv_affine_tile(const uint64_t *x, int np, bnn_win_t win,
                                      const uint64_t *w, int co, int32_t nbits,
                                      const float *const *aff, float *out)
{
    const ptrdiff_t bsize = (ptrdiff_t)win.kh * win.seg * BNN_BLOCK;
    const bnn_masks_t m = bnn_masks();
    int k, q;
    (void)np;
    for (k = 0; k < co; k += BNN_BLOCK) {
        const uint64_t *wb = w + k / BNN_BLOCK * bsize;
        const int nq = co - k < BNN_BLOCK ? co - k : BNN_BLOCK;
        for (q = 0; q < nq; ++q) {
            const uint32_t c = bnn_csa_count(x, win, wb + q, m, 0);
            memcpy(out + k + q, &c, sizeof c);
        }
    }
    for (k = 0; k < co; ++k) {
        uint32_t c;
        float f;
        memcpy(&c, out + k, sizeof c);
        f = (float)(nbits - 2 * (int32_t)c) * aff[0][k];
        f = f + aff[1][k];
        f = f * aff[2][k];
        out[k] = f + aff[3][k];
    }
}
#else
/* Float mode, np pixels: aff = {m1, a1, m2, a2}, nbits = K, out (np, co) floats. */
BNN_INLINE void bnn_bconv_affine_tile(const uint64_t *x, int np, bnn_win_t win,
                                      const uint64_t *w, int co, int32_t nbits,
                                      const float *const *aff, float *out)
{
    const int nblk = (co + BNN_BLOCK - 1) / BNN_BLOCK;
    const ptrdiff_t bsize = (ptrdiff_t)win.kh * win.seg * BNN_BLOCK;
    int b, c0;
    for (b = 0; b < nblk; ++b) {
        const int width = co - BNN_BLOCK * b <= BNN_BLOCK / 2 ? BNN_BLOCK / 2 : BNN_BLOCK;
        const uint64_t *wb = w + b * bsize;
        for (c0 = 0; c0 + BNN_XC <= width; c0 += BNN_XC)
            bnn_affine_pass(x, np, win, wb + c0, BNN_XPV, BNN_BLOCK * b + c0, co, nbits, aff,
                            out);
        if (c0 < width)
            bnn_affine_pass(x, np, win, wb + c0, BNN_XPV_HALF, BNN_BLOCK * b + c0, co, nbits,
                            aff, out);
    }
}
#endif

/* One output row of wo pixels: tiles of BNN_XP pixels, then one at a time. */
BNN_INLINE void bnn_bconv_bits_row(const uint64_t *x, int wo, bnn_win_t win, const uint64_t *w,
                                   int co, const int32_t *init, const uint64_t *xmask,
                                   uint64_t *out)
{
    const int wdo = (co + 63) / 64;
    int ox = 0;
    for (; ox + BNN_XP <= wo; ox += BNN_XP)
        bnn_bconv_bits_tile(x + ox * win.pstep, BNN_XP, win, w, co, init, xmask,
                            out + (ptrdiff_t)ox * wdo, wdo);
    for (; ox < wo; ++ox)
        bnn_bconv_bits_tile(x + ox * win.pstep, 1, win, w, co, init, xmask,
                            out + (ptrdiff_t)ox * wdo, wdo);
}

BNN_INLINE void bnn_bconv_affine_row(const uint64_t *x, int wo, bnn_win_t win,
                                     const uint64_t *w, int co, int32_t nbits,
                                     const float *const *aff, float *out)
{
    int ox = 0;
    for (; ox + BNN_XP <= wo; ox += BNN_XP)
        bnn_bconv_affine_tile(x + ox * win.pstep, BNN_XP, win, w, co, nbits, aff,
                              out + (ptrdiff_t)ox * co);
    for (; ox < wo; ++ox)
        bnn_bconv_affine_tile(x + ox * win.pstep, 1, win, w, co, nbits, aff,
                              out + (ptrdiff_t)ox * co);
}

/* ------------------------------------------------------------------ float conv */

/* The float conv of np pixels x nv vectors of channels: acc = fma over the window's taps in
 * (ky, kx, ci) order, from 0 (the engine's order and roundings). The weights are the
 * layer's (taps, co) matrix, unpadded (w points at the pass's first channel of tap 0), and
 * BNN_BLOCK floats of zeros after it: a last pass reads past channel co. */
BNN_INLINE void bnn_fconv_pass(const float *x, int np, bnn_win_t win, const float *w, int co,
                               int nv, bnn_fv_t acc[BNN_FP][BNN_FPV])
{
    int r, j, p, v;
    BNN_UNROLL
    for (p = 0; p < BNN_FP; ++p) {
        BNN_UNROLL
        for (v = 0; v < BNN_FPV; ++v)
            acc[p][v] = bnn_fv_zero();
    }
    BNN_UNROLL_TAPS
    for (r = 0; r < win.kh; ++r) {
        const float *xr = x + r * win.rstep;
        const float *wr = w + (ptrdiff_t)r * win.seg * co;
        BNN_UNROLL_TAPS
        for (j = 0; j < win.seg; ++j) {
            bnn_fv_t xb[BNN_FP];
            const float *xj = xr + j;
#if defined(BNN_FTAP_FRESH)
            BNN_OPAQUE(xj);
#endif
            BNN_UNROLL
            for (p = 0; p < np; ++p)
                xb[p] = bnn_fv_bcast(xj[p * win.pstep]);
            BNN_UNROLL
            for (v = 0; v < nv; ++v) {
                bnn_fv_t wv = bnn_fv_load(wr + (ptrdiff_t)co * j + BNN_FV * v);
                BNN_FV_KEEP(wv);
                BNN_UNROLL
                for (p = 0; p < np; ++p)
                    acc[p][v] = bnn_fv_madd(xb[p], wv, acc[p][v]);
            }
        }
    }
}

/* The float epilogue of a float conv: thr (folded thresholds, the engine's sign_thresholds)
 * or bias, alpha, beta, each padded to whole blocks. */
typedef struct {
    const float *thr, *bias, *alpha, *beta;
} bnn_fepi_t;

/* Sign bits of one pass at channel c: !(acc >= thr), or !((acc + b) * alpha + beta >= 0).
 * A pass's bits (at most BNN_FC) are gathered in 32 bits at constant positions, then moved
 * to bit c & 63 of the word once per pixel (on 32-bit cores a 64-bit shift by a variable
 * takes several instructions). */
BNN_INLINE void bnn_fsign_pass(const float *x, int np, bnn_win_t win, const float *w, int co,
                               int nv, bnn_fepi_t e, int c, uint64_t word[BNN_FP])
{
    bnn_fv_t acc[BNN_FP][BNN_FPV];
    uint32_t bits[BNN_FP] = {0};
    int p, v;
    bnn_fconv_pass(x, np, win, w, co, nv, acc);
    BNN_UNROLL
    for (v = 0; v < nv; ++v) {
        const int k = c + BNN_FV * v;
        if (e.thr != NULL) {
            const bnn_fv_t t = bnn_fv_load(e.thr + k);
            BNN_UNROLL
            for (p = 0; p < np; ++p)
                bits[p] = bnn_fv_or_nge(bits[p], acc[p][v], t, BNN_FV * v);
        } else {
            const bnn_fv_t b = bnn_fv_load(e.bias + k), a = bnn_fv_load(e.alpha + k);
            const bnn_fv_t be = bnn_fv_load(e.beta + k), zero = bnn_fv_zero();
            BNN_UNROLL
            for (p = 0; p < np; ++p) {
                const bnn_fv_t y = bnn_fv_add(bnn_fv_mul(bnn_fv_add(acc[p][v], b), a), be);
                bits[p] = bnn_fv_or_nge(bits[p], y, zero, BNN_FV * v);
            }
        }
    }
    BNN_UNROLL
    for (p = 0; p < np; ++p)
        word[p] |= (uint64_t)bits[p] << (c & 63);
}

/* Packed sign bits of np pixels: out[p*wdo + g], ANDed with the channels that exist. */
BNN_INLINE void bnn_fconv_bits_tile(const float *x, int np, bnn_win_t win, const float *w,
                                    int co, bnn_fepi_t e, const uint64_t *wmask,
                                    uint64_t *out, int wdo)
{
    const int nblk = (co + BNN_BLOCK - 1) / BNN_BLOCK;
    int g, b, c0, p;
    for (g = 0; g < wdo; ++g) {
        uint64_t word[BNN_FP];
        const int b1 = nblk < 4 * g + 4 ? nblk : 4 * g + 4;
        BNN_UNROLL
        for (p = 0; p < BNN_FP; ++p)
            word[p] = 0;
        for (b = 4 * g; b < b1; ++b) {
            const int width = co - BNN_BLOCK * b <= BNN_BLOCK / 2 ? BNN_BLOCK / 2 : BNN_BLOCK;
            const int cb = BNN_BLOCK * b;
            for (c0 = 0; c0 + BNN_FC <= width; c0 += BNN_FC)
                bnn_fsign_pass(x, np, win, w + cb + c0, co, BNN_FPV, e, cb + c0, word);
            if (c0 < width)
                bnn_fsign_pass(x, np, win, w + cb + c0, co, BNN_FPV_HALF, e, cb + c0, word);
        }
        BNN_UNROLL
        for (p = 0; p < np; ++p)
            out[p * wdo + g] = word[p] & wmask[g];
    }
}

/* Floats of one pass at channel c: out[p*co + k] = (acc + bias) * alpha + beta, k < co. */
BNN_INLINE void bnn_ffloat_pass(const float *x, int np, bnn_win_t win, const float *w, int nv,
                                bnn_fepi_t e, int c, int co, float *out)
{
    bnn_fv_t acc[BNN_FP][BNN_FPV];
    float vals[BNN_FP][BNN_FC];
    const int n = co - c < BNN_FV * nv ? co - c : BNN_FV * nv;
    int p, v, i;
    bnn_fconv_pass(x, np, win, w, co, nv, acc);
    BNN_UNROLL
    for (p = 0; p < np; ++p) {
        BNN_UNROLL
        for (v = 0; v < nv; ++v)
            bnn_fv_store(&vals[p][BNN_FV * v], acc[p][v]);
    }
    BNN_UNROLL
    for (p = 0; p < np; ++p)
        for (i = 0; i < n; ++i) {
            const int k = c + i;
            const float y = vals[p][i] + e.bias[k];
            const float t = y * e.alpha[k];
            out[(ptrdiff_t)p * co + k] = t + e.beta[k];
        }
}

BNN_INLINE void bnn_fconv_float_tile(const float *x, int np, bnn_win_t win, const float *w,
                                     int co, bnn_fepi_t e, float *out)
{
    const int nblk = (co + BNN_BLOCK - 1) / BNN_BLOCK;
    int b, c0;
    for (b = 0; b < nblk; ++b) {
        const int width = co - BNN_BLOCK * b <= BNN_BLOCK / 2 ? BNN_BLOCK / 2 : BNN_BLOCK;
        const int cb = BNN_BLOCK * b;
        for (c0 = 0; c0 + BNN_FC <= width; c0 += BNN_FC)
            bnn_ffloat_pass(x, np, win, w + cb + c0, BNN_FPV, e, cb + c0, co, out);
        if (c0 < width)
            bnn_ffloat_pass(x, np, win, w + cb + c0, BNN_FPV_HALF, e, cb + c0, co, out);
    }
}

BNN_INLINE void bnn_fconv_bits_row(const float *x, int wo, bnn_win_t win, const float *w,
                                   int co, bnn_fepi_t e, const uint64_t *wmask, uint64_t *out)
{
    const int wdo = (co + 63) / 64;
    int ox = 0;
    for (; ox + BNN_FP <= wo; ox += BNN_FP)
        bnn_fconv_bits_tile(x + ox * win.pstep, BNN_FP, win, w, co, e, wmask,
                            out + (ptrdiff_t)ox * wdo, wdo);
    for (; ox < wo; ++ox)
        bnn_fconv_bits_tile(x + ox * win.pstep, 1, win, w, co, e, wmask,
                            out + (ptrdiff_t)ox * wdo, wdo);
}

BNN_INLINE void bnn_fconv_float_row(const float *x, int wo, bnn_win_t win, const float *w,
                                    int co, bnn_fepi_t e, float *out)
{
    int ox = 0;
    for (; ox + BNN_FP <= wo; ox += BNN_FP)
        bnn_fconv_float_tile(x + ox * win.pstep, BNN_FP, win, w, co, e,
                             out + (ptrdiff_t)ox * co);
    for (; ox < wo; ++ox)
        bnn_fconv_float_tile(x + ox * win.pstep, 1, win, w, co, e, out + (ptrdiff_t)ox * co);
}

#endif /* BNN_CONV_H */
