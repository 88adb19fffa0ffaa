/* Exact +-1 x +-1 convolutions by XOR and population count (AVX2, or AVX-512 VPOPCNTDQ).
 *
 * A +-1 value is one bit (1 for +1, 0 for -1). For K such products, sum = K - 2 * popcount(a ^ w):
 * an integer, computed exactly and converted to float once. Loaded by
 * batmann/models/popcount_kernels.py (ctypes); built with -O3 -mavx2 -mpopcnt. The counting loop
 * has two forms, chosen at run time (pm1_isa): 256-bit blocks counted by nibble lookup (AVX2), or
 * 512-bit blocks counted by VPOPCNTQ where the CPU has AVX-512 VPOPCNTDQ (compiled for that
 * target alone). Both count the same bits, so every output is the same.
 *
 * Layouts: activations packed channels-last, (n, H, W, cw) 64-bit words per pixel (channel c in
 * bit c % 64 of word c / 64, unused bits 0); weights (O, kwp) words in (kh, kw, word) order,
 * zero-padded to kwp, a multiple of 4 words (256 bits).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* bits of the +-1 int8 values x[b, p, c] (strides in elements) into out[(b * P + p) * cw + c / 64] */
void pm1_pack(const int8_t *x, int64_t n, int64_t P, int64_t C, int64_t sb, int64_t sp, int64_t sc,
              int64_t cw, uint64_t *out) {
    memset(out, 0, (size_t)(n * P * cw) * sizeof(uint64_t));
    for (int64_t b = 0; b < n; b++) {
        const int8_t *xb = x + b * sb;
        uint64_t *ob = out + b * P * cw;
        if (sc <= sp) { /* channels contiguous (or nearly): one pixel at a time */
            for (int64_t p = 0; p < P; p++) {
                const int8_t *xp = xb + p * sp;
                uint64_t *op = ob + p * cw;
                for (int64_t c = 0; c < C; c++)
                    op[c >> 6] |= (uint64_t)(xp[c * sc] > 0) << (c & 63);
            }
        } else { /* pixels contiguous: one channel plane at a time */
            for (int64_t c = 0; c < C; c++) {
                const int8_t *xc = xb + c * sc;
                const int s = (int)(c & 63);
                uint64_t *oc = ob + (c >> 6);
                for (int64_t p = 0; p < P; p++)
                    oc[p * cw] |= (uint64_t)(xc[p * sp] > 0) << s;
            }
        }
    }
}

/* The words of eight pixels (out: 8 x cw words) from channel planes x (C planes of stride sc, the
 * eight pixels contiguous in each): per channel one compare gives a byte of eight pixel bits;
 * per 64 channels the 64 bytes are transposed into the eight pixels' words by shifting bit p of
 * each byte to its top and collecting the tops (movemask). */
static void pack_above_8(const float *x, float m, int64_t C, int64_t sc, int64_t cw, uint64_t *out) {
    const __m256 mv = _mm256_set1_ps(m);
    for (int64_t w = 0; w < cw; w++) {
        uint8_t bytes[64] = {0};
        const int64_t cn = C - 64 * w < 64 ? C - 64 * w : 64;
        for (int64_t c = 0; c < cn; c++)
            bytes[c] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + (64 * w + c) * sc), mv, _CMP_GT_OQ));
        const __m256i lo = _mm256_loadu_si256((const __m256i *)bytes), hi = _mm256_loadu_si256((const __m256i *)(bytes + 32));
        for (int p = 0; p < 8; p++) {
            const __m128i sh = _mm_cvtsi32_si128(7 - p);
            const uint32_t a = (uint32_t)_mm256_movemask_epi8(_mm256_sll_epi16(lo, sh));
            const uint32_t b = (uint32_t)_mm256_movemask_epi8(_mm256_sll_epi16(hi, sh));
            out[p * cw + w] = (uint64_t)a | (uint64_t)b << 32;
        }
    }
}

/* bits of x[b, p, c] > mu[b] (float32; the centered sign) into out[(b * P + p) * cw + c / 64] */
void pm1_pack_above(const float *x, const float *mu, int64_t n, int64_t P, int64_t C, int64_t sb, int64_t sp,
                    int64_t sc, int64_t cw, uint64_t *out) {
    memset(out, 0, (size_t)(n * P * cw) * sizeof(uint64_t));
    for (int64_t b = 0; b < n; b++) {
        const float *xb = x + b * sb;
        const float m = mu[b];
        uint64_t *ob = out + b * P * cw;
        if (sc <= sp) {
            for (int64_t p = 0; p < P; p++) {
                const float *xp = xb + p * sp;
                uint64_t *op = ob + p * cw;
                for (int64_t c = 0; c < C; c++)
                    op[c >> 6] |= (uint64_t)(xp[c * sc] > m) << (c & 63);
            }
        } else {
            int64_t p0 = 0;
            if (sp == 1) /* contiguous channel planes: eight pixels at a time */
                for (; p0 + 8 <= P; p0 += 8) pack_above_8(xb + p0, m, C, sc, cw, ob + p0 * cw);
            for (int64_t c = 0; c < C; c++) {
                const float *xc = xb + c * sc;
                const int s = (int)(c & 63);
                uint64_t *oc = ob + (c >> 6);
                for (int64_t p = p0; p < P; p++)
                    oc[p * cw] |= (uint64_t)(xc[p * sp] > m) << s;
            }
        }
    }
}

/* per-byte popcount of a ^ b (Mula's nibble lookup) */
static inline __m256i xor_count(__m256i a, __m256i b, __m256i lut, __m256i low) {
    const __m256i v = _mm256_xor_si256(a, b);
    const __m256i lo = _mm256_and_si256(v, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

static inline int64_t byte_sum(__m256i acc) {
    const __m256i s = _mm256_sad_epu8(acc, _mm256_setzero_si256());
    const __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return _mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1);
}

/* counts[j] = popcount(a ^ w_j) over nb 256-bit blocks, for one patch a and eight weight rows
 * w_j = w + j * nb. Byte counters gain at most 8 per block: flushed every 31 blocks. */
static inline void count_1x8(const __m256i *a, const __m256i *w, int64_t nb, int32_t counts[8]) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    for (int j = 0; j < 8; j++) counts[j] = 0;
    for (int64_t i0 = 0; i0 < nb; i0 += 31) {
        const int64_t i1 = i0 + 31 < nb ? i0 + 31 : nb;
        __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        for (int64_t i = i0; i < i1; i++) {
            const __m256i x = _mm256_load_si256(a + i);
            c0 = _mm256_add_epi8(c0, xor_count(x, _mm256_loadu_si256(w + i), lut, low));
            c1 = _mm256_add_epi8(c1, xor_count(x, _mm256_loadu_si256(w + nb + i), lut, low));
            c2 = _mm256_add_epi8(c2, xor_count(x, _mm256_loadu_si256(w + 2 * nb + i), lut, low));
            c3 = _mm256_add_epi8(c3, xor_count(x, _mm256_loadu_si256(w + 3 * nb + i), lut, low));
            c4 = _mm256_add_epi8(c4, xor_count(x, _mm256_loadu_si256(w + 4 * nb + i), lut, low));
            c5 = _mm256_add_epi8(c5, xor_count(x, _mm256_loadu_si256(w + 5 * nb + i), lut, low));
            c6 = _mm256_add_epi8(c6, xor_count(x, _mm256_loadu_si256(w + 6 * nb + i), lut, low));
            c7 = _mm256_add_epi8(c7, xor_count(x, _mm256_loadu_si256(w + 7 * nb + i), lut, low));
        }
        counts[0] += (int32_t)byte_sum(c0); counts[1] += (int32_t)byte_sum(c1);
        counts[2] += (int32_t)byte_sum(c2); counts[3] += (int32_t)byte_sum(c3);
        counts[4] += (int32_t)byte_sum(c4); counts[5] += (int32_t)byte_sum(c5);
        counts[6] += (int32_t)byte_sum(c6); counts[7] += (int32_t)byte_sum(c7);
    }
}

/* A tile of np patches (np * kwp words) against the Op rows of wb (kwp words each; Op a multiple
 * of 8): counts[i * Op + o] = popcount(patch_i ^ wb_o). Eight rows at a time over every patch of
 * the tile, so each row is read from memory once per tile, not once per patch. */
static void count_rows_avx2(const uint64_t *patches, int64_t np, const uint64_t *wb, int64_t Op, int64_t kwp,
                            int32_t *counts) {
    for (int64_t o = 0; o < Op; o += 8)
        for (int64_t i = 0; i < np; i++)
            count_1x8((const __m256i *)(patches + i * kwp), (const __m256i *)(wb + o * kwp), kwp / 4,
                      counts + i * Op + o);
}

#define AVX512_POPCNT __attribute__((target("avx512f,avx512vpopcntdq")))

/* the sums of each row's eight 64-bit lanes (each < 2^31), rows 0..7 in order */
AVX512_POPCNT static inline __m256i lane_sums(const __m512i c[8]) {
    __m256i d[8];
    for (int j = 0; j < 8; j++) d[j] = _mm512_cvtepi64_epi32(c[j]);
    const __m256i h01 = _mm256_hadd_epi32(d[0], d[1]), h23 = _mm256_hadd_epi32(d[2], d[3]);
    const __m256i h45 = _mm256_hadd_epi32(d[4], d[5]), h67 = _mm256_hadd_epi32(d[6], d[7]);
    /* each 128-bit half of h0123 holds rows 0..3's sums over its own lanes: add the halves */
    const __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                            _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

/* count_rows_avx2 on 512-bit blocks (8 words; the last block masked where kwp is not a multiple of
 * 8) and VPOPCNTQ, two patches at a time (each row's load serves both): 64-bit counters */
AVX512_POPCNT static void count_rows_avx512(const uint64_t *patches, int64_t np, const uint64_t *wb, int64_t Op,
                                            int64_t kwp, int32_t *counts) {
    const int64_t full = kwp / 8, tail = kwp % 8;
    const __mmask8 tm = (__mmask8)((1u << tail) - 1u);
    for (int64_t o = 0; o < Op; o += 8) {
        const uint64_t *w = wb + o * kwp;
        int64_t i = 0;
        for (; i + 2 <= np; i += 2) {
            const uint64_t *pa = patches + i * kwp, *pb = pa + kwp;
            __m512i ca[8], cb[8];
            for (int j = 0; j < 8; j++) ca[j] = cb[j] = _mm512_setzero_si512();
            for (int64_t t = 0; t <= full; t++) {
                if (t == full && !tail) break;
                const __mmask8 m = t < full ? (__mmask8)0xFF : tm;
                const __m512i xa = _mm512_maskz_loadu_epi64(m, pa + 8 * t), xb = _mm512_maskz_loadu_epi64(m, pb + 8 * t);
                for (int j = 0; j < 8; j++) {
                    const __m512i r = _mm512_maskz_loadu_epi64(m, w + j * kwp + 8 * t);
                    ca[j] = _mm512_add_epi64(ca[j], _mm512_popcnt_epi64(_mm512_xor_si512(xa, r)));
                    cb[j] = _mm512_add_epi64(cb[j], _mm512_popcnt_epi64(_mm512_xor_si512(xb, r)));
                }
            }
            _mm256_storeu_si256((__m256i *)(counts + i * Op + o), lane_sums(ca));
            _mm256_storeu_si256((__m256i *)(counts + (i + 1) * Op + o), lane_sums(cb));
        }
        for (; i < np; i++) {
            const uint64_t *pa = patches + i * kwp;
            __m512i ca[8];
            for (int j = 0; j < 8; j++) ca[j] = _mm512_setzero_si512();
            for (int64_t t = 0; t <= full; t++) {
                if (t == full && !tail) break;
                const __mmask8 m = t < full ? (__mmask8)0xFF : tm;
                const __m512i xa = _mm512_maskz_loadu_epi64(m, pa + 8 * t);
                for (int j = 0; j < 8; j++)
                    ca[j] = _mm512_add_epi64(ca[j], _mm512_popcnt_epi64(
                                                        _mm512_xor_si512(xa, _mm512_maskz_loadu_epi64(m, w + j * kwp + 8 * t))));
            }
            _mm256_storeu_si256((__m256i *)(counts + i * Op + o), lane_sums(ca));
        }
    }
}

/* the counting loop in use: 256 (AVX2) or 512 (AVX-512 VPOPCNTDQ); 0 until first asked */
static int isa = 0;

/* The counting loop the kernels use: 512 where the CPU has AVX-512 VPOPCNTDQ, else 256. want
 * (256 or 512) selects one where the CPU runs it (0: keep the choice); returns the one in use. */
int pm1_isa(int want) {
    __builtin_cpu_init();
    const int has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
    if (want == 256 || (want == 512 && has512)) isa = want;
    if (isa == 0) isa = has512 ? 512 : 256;
    return isa;
}

/* output pixels per tile: their patches are counted against each group of weight rows in turn */
#define TILE 16

/* the patch of output pixel (y, x) of image xa (H, W, cw words): k rows of k * cw words each,
 * then zeros up to kwp words */
static void gather_patch(const uint64_t *xa, int64_t W, int64_t cw, int64_t k, int64_t stride,
                         int64_t y, int64_t x, int64_t kwp, uint64_t *patch) {
    const int64_t run = k * cw;
    for (int64_t kh = 0; kh < k; kh++)
        memcpy(patch + kh * run, xa + ((y * stride + kh) * W + x * stride) * cw, (size_t)run * sizeof(uint64_t));
    memset(patch + k * run, 0, (size_t)(kwp - k * run) * sizeof(uint64_t));
}

/* out[b * sob + o * soc + p * sop] = K - 2 * popcount(patch(b, p) ^ wb[o]) for the n images of xa
 * (n, H, W, cw), O output channels, output pixels p = y * Wo + x. wb holds O rounded up to a
 * multiple of 8 rows (the extra rows are computed and dropped). Epilogue, in float32 as the
 * separate element-wise ops would do it: times scale[o] unless scale is NULL (one rounded
 * product), then max(v, 0) if relu (+0 for v <= 0). pool (with relu, even Ho and Wo): out is the
 * 2x2, stride-2 max pool of that, (Ho / 2) x (Wo / 2) pixels, zeroed by the caller (the values
 * are >= 0, so max(0, ...) is the max of the four). Returns 0, or -1 without memory. */
int pm1_conv(const uint64_t *xa, int64_t n, int64_t H, int64_t W, int64_t cw, int64_t k, int64_t stride,
             const uint64_t *wb, int64_t O, int64_t kwp, int64_t K,
             float *out, int64_t sob, int64_t soc, int64_t sop, const float *scale, int relu, int pool) {
    const int64_t Ho = (H - k) / stride + 1, Wo = (W - k) / stride + 1, P = Ho * Wo, Op = (O + 7) / 8 * 8;
    void (*count_rows)(const uint64_t *, int64_t, const uint64_t *, int64_t, int64_t, int32_t *) =
        (isa ? isa : pm1_isa(0)) == 512 ? count_rows_avx512 : count_rows_avx2; /* set at load */
    uint64_t *patch = aligned_alloc(32, (size_t)(TILE * kwp) * sizeof(uint64_t));
    /* on a cache line: rows of 8 counts never split across two lines */
    int32_t *counts = aligned_alloc(64, ((size_t)(TILE * Op) * sizeof(int32_t) + 63) / 64 * 64);
    if (patch == NULL || counts == NULL) {
        free(patch); free(counts);
        return -1;
    }
    const __m256 zero = _mm256_setzero_ps();
    const __m256i kv = _mm256_set1_epi32((int32_t)K);
    for (int64_t b = 0; b < n; b++) {
        const uint64_t *xb = xa + b * H * W * cw;
        float *ob = out + b * sob;
        for (int64_t p0 = 0; p0 < P; p0 += TILE) {
            const int64_t np = P - p0 < TILE ? P - p0 : TILE;
            for (int64_t i = 0; i < np; i++)
                gather_patch(xb, W, cw, k, stride, (p0 + i) / Wo, (p0 + i) % Wo, kwp, patch + i * kwp);
            count_rows(patch, np, wb, Op, kwp, counts);
            for (int64_t i = 0; i < np; i++) {
                const int64_t p = p0 + i, y = p / Wo, x = p % Wo, q = pool ? (y / 2) * (Wo / 2) + x / 2 : p;
                const int32_t *cp = counts + i * Op;
                /* eight channels at a time (the rows past O are computed and dropped): the same
                 * float32 operations as one by one; max_ps(a, b) is a > b ? a : b */
                for (int64_t o = 0; o < O; o += 8) {
                    const __m256i c = _mm256_loadu_si256((const __m256i *)(cp + o));
                    __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(kv, _mm256_slli_epi32(c, 1)));
                    const int64_t m = O - o < 8 ? O - o : 8;
                    if (scale != NULL) {
                        float sc[8] = {0};
                        if (m < 8) memcpy(sc, scale + o, (size_t)m * sizeof(float));
                        v = _mm256_mul_ps(v, _mm256_loadu_ps(m == 8 ? scale + o : sc));
                    }
                    if (relu) v = _mm256_max_ps(v, zero); /* v > 0 ? v : +0 */
                    float *dst = ob + o * soc + q * sop;
                    if (soc == 1 && m == 8) {
                        if (pool) v = _mm256_max_ps(v, _mm256_loadu_ps(dst)); /* unconditional: no branch */
                        _mm256_storeu_ps(dst, v);
                    } else {
                        float vs[8];
                        _mm256_storeu_ps(vs, v);
                        for (int64_t j = 0; j < m; j++) {
                            float u = vs[j];
                            if (pool) {
                                const float cur = dst[j * soc];
                                u = u > cur ? u : cur;
                            }
                            dst[j * soc] = u;
                        }
                    }
                }
            }
        }
    }
    free(patch); free(counts);
    return 0;
}
