/* Gradients of a convolution followed by ReLU and a 2x2 stride-2 max pool (AVX2 + FMA, or AVX-512).
 *
 * Behind a 2x2 max pool, each pooled output passes its gradient to one convolution output of its
 * window (the argmax), and the ReLU drops it where the output was clipped: at most a quarter of
 * the convolution's output gradient is non-zero, and where it is non-zero is known. The two
 * gradient products of the convolution are computed from the pooled gradient and the argmax
 * alone, a quarter of the multiply-adds of the dense products.
 *
 * Layouts (float32): g (n, O, P) the pooled gradient already times dReLU and alpha, P = Hp * Wp
 * pooled positions; d (n, O, P) uint8 argmax offsets dy * 2 + dx in the 2x2 window (ps = 2, the
 * pool's stride; ps = 1: no pool, P the convolution's output positions, every offset 0); the input a
 * (n, C, H, W) and its gradient ga (n, C, H, W), each image turned channels-last (and back) in a
 * buffer of the kernel's own; weights wt (k, k, C / 64 blocks, O, 64)
 * (the last block as wide as the channels left); weight gradient gw (O, k, k, C). C is a
 * multiple of 8. Each output element is summed in one fixed order, whatever the image or channel
 * ranges the caller splits the work into (so any thread count gives the same bits); the weight
 * gradient of an image range is one partial sum, which the caller adds to the others in order.
 *
 * The inner loops have two forms, chosen at run time (pooled_grad_isa): 256-bit, one list of
 * terms at a time into 8 accumulators of 8 floats; or 512-bit (compiled for AVX-512F alone), two
 * lists at a time, each into 4 accumulators of 16 floats. Every float is summed in the same
 * order by both, so the bits are the same; the 512-bit form keeps twice the multiply-adds in
 * flight (faster on Zen 4 too, whose 512-bit operations run as two halves).
 *
 * Loaded by batmann/models/pooled_grad.py (ctypes); built with -O3 -mavx2 -mfma.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NV 8 /* vectors of 8 floats per tile: 64 channels */

/* a non-zero gradient and where it applies (a row or an offset, < 2^31) in one 64-bit word: one
 * load per term of the inner loops instead of two */
static inline int64_t pack(float v, int64_t at) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (int64_t)((uint64_t)at << 32 | u);
}
static inline __m256 value(int64_t w) { return _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)w)); }
static inline int64_t where_of(int64_t w) { return w >> 32; }

/* n bytes aligned to a cache line (64 bytes: no vector load of a row split across two lines),
 * released with free() */
static void *lines(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64); }

/* the inner loops' width in bits, 256 or 512 (0: not chosen yet) */
static int isa = 0;

/* The loops the kernels use: 512 on CPUs with AVX-512F, else 256. want (256 or 512) selects one
 * where the CPU runs it (0: keep the choice); returns the one in use. */
int pooled_grad_isa(int want) {
    __builtin_cpu_init();
    const int has512 = __builtin_cpu_supports("avx512f");
    if (want == 256 || (want == 512 && has512)) isa = want;
    if (isa == 0) isa = has512 ? 512 : 256;
    return isa;
}

#define AVX512 __attribute__((target("avx512f")))

AVX512 static inline __m512 value512(int64_t w) { return _mm512_castsi512_ps(_mm512_set1_epi32((int32_t)w)); }

/* acc[0..3] (64 floats) += the terms [t0, t1) of list times their rows, at base + where * stride */
AVX512 static inline void terms512(__m512 *acc, const int64_t *list, int32_t t0, int32_t t1, const float *base,
                                   int64_t stride) {
    for (int32_t t = t0; t < t1; t++) {
        const __m512 x = value512(list[t]);
        const float *r = base + where_of(list[t]) * stride;
        for (int v = 0; v < 4; v++) acc[v] = _mm512_fmadd_ps(x, _mm512_loadu_ps(r + 16 * v), acc[v]);
    }
}

/* terms512 of list a [a0, a1) into acc_a and of list b [b0, b1) into acc_b, side by side while
 * both have terms: each accumulator sums its own list's terms in order */
AVX512 static inline void two_lists512(__m512 *acc_a, const int64_t *la, int32_t a0, int32_t a1, __m512 *acc_b,
                                       const int64_t *lb, int32_t b0, int32_t b1, const float *base, int64_t stride) {
    const int32_t n = a1 - a0 < b1 - b0 ? a1 - a0 : b1 - b0;
    for (int32_t t = 0; t < n; t++) {
        const __m512 xa = value512(la[a0 + t]), xb = value512(lb[b0 + t]);
        const float *ra = base + where_of(la[a0 + t]) * stride, *rb = base + where_of(lb[b0 + t]) * stride;
        for (int v = 0; v < 4; v++) acc_a[v] = _mm512_fmadd_ps(xa, _mm512_loadu_ps(ra + 16 * v), acc_a[v]);
        for (int v = 0; v < 4; v++) acc_b[v] = _mm512_fmadd_ps(xb, _mm512_loadu_ps(rb + 16 * v), acc_b[v]);
    }
    terms512(acc_a, la, a0 + n, a1, base, stride);
    terms512(acc_b, lb, b0 + n, b1, base, stride);
}

/* the input gradient's inner loop at one pooled position, 64 channels: dst[q] += the sum of the
 * terms [s[q], s[q + 1]) of pk times their weight rows (wtile + o * 64), groups q = 0, 1 and 2, 3
 * side by side */
AVX512 static void input_groups512(const int64_t *pk, const int32_t *s, float *const *dst, const float *wtile) {
    for (int q = 0; q < 4; q += 2) {
        __m512 a[4], b[4];
        for (int v = 0; v < 4; v++) a[v] = b[v] = _mm512_setzero_ps();
        two_lists512(a, pk, s[q], s[q + 1], b, pk, s[q + 1], s[q + 2], wtile, 64);
        if (s[q] != s[q + 1])
            for (int v = 0; v < 4; v++)
                _mm512_storeu_ps(dst[q] + 16 * v, _mm512_add_ps(_mm512_loadu_ps(dst[q] + 16 * v), a[v]));
        if (s[q + 1] != s[q + 2])
            for (int v = 0; v < 4; v++)
                _mm512_storeu_ps(dst[q + 1] + 16 * v, _mm512_add_ps(_mm512_loadu_ps(dst[q + 1] + 16 * v), b[v]));
    }
}

/* the weight gradient's inner loop at one (kh, kw, 64 channels), rows o < no of gw (K apart from
 * dst): += the sum of o's cnt[o] terms (lists chunk apart) times their patch rows (at + where),
 * output channels two at a time */
AVX512 static void weight_rows512(const int64_t *lp, const int32_t *cnt, int64_t no, int64_t chunk, const float *at,
                                  float *dst, int64_t K) {
    int64_t o = 0;
    for (; o + 2 <= no; o += 2) {
        float *da = dst + o * K, *db = da + K;
        __m512 a[4], b[4];
        for (int v = 0; v < 4; v++) {
            a[v] = _mm512_loadu_ps(da + 16 * v);
            b[v] = _mm512_loadu_ps(db + 16 * v);
        }
        two_lists512(a, lp + o * chunk, 0, cnt[o], b, lp + (o + 1) * chunk, 0, cnt[o + 1], at, 1);
        for (int v = 0; v < 4; v++) {
            _mm512_storeu_ps(da + 16 * v, a[v]);
            _mm512_storeu_ps(db + 16 * v, b[v]);
        }
    }
    if (o < no) {
        float *da = dst + o * K;
        __m512 a[4];
        for (int v = 0; v < 4; v++) a[v] = _mm512_loadu_ps(da + 16 * v);
        terms512(a, lp + o * chunk, 0, cnt[o], at, 1);
        for (int v = 0; v < 4; v++) _mm512_storeu_ps(da + 16 * v, a[v]);
    }
}

/* floats between pixels of the weight gradient's channels-last image beyond its C channels: at
 * C = 128 the patch rows of a chunk would start a multiple of 512 bytes apart and share half of
 * the L1 cache's sets; one cache line more spreads them over all, and keeps every row on a line
 * boundary (C a multiple of 16, the buffer from `lines`): no 256- or 512-bit load of a row is
 * split across two lines (pooled_grad.PIXEL_PAD: the same) */
#define PIXEL_PAD 16

/* d (cols, rows) = the transpose of s (rows, cols), both row-major, d's rows ds floats apart */
static void transpose_to(const float *s, int64_t rows, int64_t cols, float *d, int64_t ds) {
    int64_t r = 0;
    for (; r + 8 <= rows; r += 8) {
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8) {
            const float *x = s + r * cols + c;
            __m256 t[8], u[8];
            for (int i = 0; i < 4; i++) {
                const __m256 a = _mm256_loadu_ps(x + (2 * i) * cols), b = _mm256_loadu_ps(x + (2 * i + 1) * cols);
                t[2 * i] = _mm256_unpacklo_ps(a, b);
                t[2 * i + 1] = _mm256_unpackhi_ps(a, b);
            }
            for (int h = 0; h < 2; h++) { /* rows 4h .. 4h + 3 */
                u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
                u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
                u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
                u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            float *y = d + c * ds + r;
            for (int i = 0; i < 4; i++) {
                _mm256_storeu_ps(y + i * ds, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
                _mm256_storeu_ps(y + (i + 4) * ds, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
            }
        }
        for (; c < cols; c++)
            for (int64_t i = r; i < r + 8; i++) d[c * ds + i] = s[i * cols + c];
    }
    for (; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) d[c * ds + r] = s[r * cols + c];
}

static void transpose(const float *s, int64_t rows, int64_t cols, float *d) { transpose_to(s, rows, cols, d, rows); }

/* float32 -> bfloat16 bits, rounded to nearest even, NaN -> 0x7FC0 (as torch converts) */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if (f != f) return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* ga (hi - lo, C, H, W) float32, overwritten: the input gradient of images [lo, hi); with
 * ga_bf16, ga (hi - lo, H, W, C) bfloat16 (channels-last), each rounded to nearest even */
int pooled_grad_input(const float *g, const uint8_t *d, int64_t lo, int64_t hi, int64_t O, int64_t Hp, int64_t Wp,
                      int64_t ps, const float *wt, int64_t C, int64_t k, int64_t H, int64_t W, void *ga,
                      int ga_bf16) {
    const int64_t P = Hp * Wp;
    int64_t *pk = lines((size_t)(P * O + 1) * sizeof(int64_t)); /* + a slot for the zeros' writes */
    int32_t *start = malloc((size_t)(P * 5) * sizeof(int32_t));
    float *out = lines((size_t)(H * W * C) * sizeof(float)); /* one image, channels-last */
    if (!pk || !start || !out) {
        free(pk); free(start); free(out);
        return 1;
    }
    const int32_t spare = (int32_t)(P * O); /* where the zero gradients' entries go */
    for (int64_t b = lo; b < hi; b++) {
        const float *gb = g + b * O * P;
        const uint8_t *db = d + b * O * P;
        memset(out, 0, (size_t)(H * W * C) * sizeof(float));
        /* per pooled position, its non-zero gradients grouped by argmax offset (a counting sort) */
        for (int64_t p = 0; p < P; p++) { /* without branches on the data: zeros count 0, write to a spare slot */
            int32_t cnt[4] = {0, 0, 0, 0};
            for (int64_t o = 0; o < O; o++) cnt[db[o * P + p] & 3] += gb[o * P + p] != 0.0f;
            int32_t *s = start + p * 5;
            s[0] = (int32_t)(p * O);
            for (int q = 0; q < 4; q++) s[q + 1] = s[q] + cnt[q];
            int32_t pos[4] = {s[0], s[1], s[2], s[3]};
            for (int64_t o = 0; o < O; o++) {
                const float v = gb[o * P + p];
                const int q = db[o * P + p] & 3, nz = v != 0.0f;
                pk[nz ? pos[q] : spare] = pack(v, o);
                pos[q] += nz;
            }
        }
        for (int64_t kh = 0; kh < k; kh++)
            for (int64_t kw = 0; kw < k; kw++)
                for (int64_t cb = 0; cb < C; cb += NV * 8) {
                    const int64_t nv = (C - cb) / 8 < NV ? (C - cb) / 8 : NV;
                    const float *wtile = wt + (kh * k + kw) * O * C + cb * O; /* (O, 8 nv) rows */
                    for (int64_t p = 0; p < P; p++) {
                        const int64_t i = p / Wp, j = p % Wp;
                        const int32_t *s = start + p * 5;
                        if (isa == 512 && nv == NV) {
                            float *dsts[4];
                            for (int q = 0; q < 4; q++)
                                dsts[q] = out + ((ps * i + (q >> 1) + kh) * W + (ps * j + (q & 1) + kw)) * C + cb;
                            input_groups512(pk, s, dsts, wtile);
                            continue;
                        }
                        for (int q = 0; q < 4; q++) {
                            if (s[q] == s[q + 1]) continue;
                            float *dst = out + ((ps * i + (q >> 1) + kh) * W + (ps * j + (q & 1) + kw)) * C + cb;
                            if (nv == NV) {
                                __m256 acc[NV];
                                for (int v = 0; v < NV; v++) acc[v] = _mm256_setzero_ps();
                                for (int32_t t = s[q]; t < s[q + 1]; t++) {
                                    const __m256 x = value(pk[t]);
                                    const float *w = wtile + where_of(pk[t]) * NV * 8;
                                    for (int v = 0; v < NV; v++)
                                        acc[v] = _mm256_fmadd_ps(x, _mm256_loadu_ps(w + 8 * v), acc[v]);
                                }
                                for (int v = 0; v < NV; v++)
                                    _mm256_storeu_ps(dst + 8 * v, _mm256_add_ps(_mm256_loadu_ps(dst + 8 * v), acc[v]));
                            } else {
                                for (int64_t v = 0; v < nv; v++) {
                                    __m256 acc = _mm256_setzero_ps();
                                    for (int32_t t = s[q]; t < s[q + 1]; t++)
                                        acc = _mm256_fmadd_ps(value(pk[t]),
                                                              _mm256_loadu_ps(wtile + where_of(pk[t]) * nv * 8 + 8 * v), acc);
                                    _mm256_storeu_ps(dst + 8 * v, _mm256_add_ps(_mm256_loadu_ps(dst + 8 * v), acc));
                                }
                            }
                        }
                    }
                }
        if (ga_bf16) {
            uint16_t *dst = (uint16_t *)ga + (b - lo) * H * W * C;
            for (int64_t i = 0; i < H * W * C; i++) dst[i] = to_bf16(out[i]);
        } else {
            transpose(out, H * W, C, (float *)ga + (b - lo) * C * H * W);
        }
    }
    free(pk); free(start); free(out);
    return 0;
}

/* gw rows [olo, ohi) of (O, k, k, C), overwritten: the weight gradient over images [blo, bhi),
 * summed image by image; within an image, chunk by chunk of `chunk` pooled positions. a is
 * float32 (n, C, H, W), or with a_bf16 bfloat16 (n, H, W, C) (channels-last). */
int pooled_grad_weight(const float *g, const uint8_t *d, int64_t blo, int64_t bhi, int64_t O, int64_t Hp, int64_t Wp,
                       int64_t ps, const void *a, int64_t C, int64_t k, int64_t H, int64_t W, int64_t olo, int64_t ohi,
                       int64_t chunk, float *gw, int a_bf16) {
    const int64_t P = Hp * Wp, K = k * k * C, no = ohi - olo;
    /* per output channel, the chunk's non-zero gradients and where their patches start */
    int64_t *lp = lines((size_t)(no * chunk) * sizeof(int64_t));
    int32_t *cnt = malloc((size_t)no * sizeof(int32_t));
    const int64_t Cs = C + PIXEL_PAD; /* floats from one pixel to the next in ab */
    float *ab = lines((size_t)(H * W * Cs) * sizeof(float)); /* one image, channels-last */
    int64_t *at0 = malloc((size_t)P * sizeof(int64_t)); /* where each window's patch starts in ab */
    if (!lp || !cnt || !ab || !at0) {
        free(lp); free(cnt); free(ab); free(at0);
        return 1;
    }
    for (int64_t p = 0; p < P; p++) at0[p] = (ps * (p / Wp) * W + ps * (p % Wp)) * Cs;
    const int64_t qoff[4] = {0, Cs, W * Cs, (W + 1) * Cs}; /* argmax offset dy * 2 + dx within the window */
    memset(gw + olo * K, 0, (size_t)(no * K) * sizeof(float));
    for (int64_t b = blo; b < bhi; b++) {
        if (a_bf16) { /* exact: a bfloat16 is the upper half of a float32 */
            const uint16_t *src = (const uint16_t *)a + b * H * W * C;
            for (int64_t px = 0; px < H * W; px++)
                for (int64_t c = 0; c < C; c++) {
                    const uint32_t u = (uint32_t)src[px * C + c] << 16;
                    memcpy(ab + px * Cs + c, &u, sizeof u);
                }
        } else {
            transpose_to((const float *)a + b * C * H * W, C, H * W, ab, Cs);
        }
        for (int64_t p0 = 0; p0 < P; p0 += chunk) {
            const int64_t np = P - p0 < chunk ? P - p0 : chunk;
            for (int64_t o = olo; o < ohi; o++) {
                const float *go = g + (b * O + o) * P + p0;
                const uint8_t *dq = d + (b * O + o) * P + p0;
                /* every position written, the count advanced only past non-zero gradients (no
                 * branch to mispredict; a slot past the count is overwritten or unused) */
                int64_t *list = lp + (o - olo) * chunk;
                int32_t c = 0;
                for (int64_t p = 0; p < np; p++) {
                    list[c] = pack(go[p], at0[p0 + p] + qoff[dq[p] & 3]);
                    c += go[p] != 0.0f;
                }
                cnt[o - olo] = c;
            }
            for (int64_t kh = 0; kh < k; kh++)
                for (int64_t kw = 0; kw < k; kw++)
                    for (int64_t cb = 0; cb < C; cb += NV * 8) {
                        const int64_t nv = (C - cb) / 8 < NV ? (C - cb) / 8 : NV;
                        const float *at = ab + (kh * W + kw) * Cs + cb;
                        const int64_t off = (kh * k + kw) * C + cb;
                        if (isa == 512 && nv == NV) {
                            weight_rows512(lp, cnt, no, chunk, at, gw + olo * K + off, K);
                            continue;
                        }
                        for (int64_t o = olo; o < ohi; o++) {
                            const int64_t *pl = lp + (o - olo) * chunk;
                            const int32_t n_o = cnt[o - olo];
                            float *dst = gw + o * K + off;
                            if (nv == NV) {
                                __m256 acc[NV];
                                for (int v = 0; v < NV; v++) acc[v] = _mm256_loadu_ps(dst + 8 * v);
                                for (int32_t t = 0; t < n_o; t++) {
                                    const __m256 x = value(pl[t]);
                                    const float *r = at + where_of(pl[t]);
                                    for (int v = 0; v < NV; v++)
                                        acc[v] = _mm256_fmadd_ps(x, _mm256_loadu_ps(r + 8 * v), acc[v]);
                                }
                                for (int v = 0; v < NV; v++) _mm256_storeu_ps(dst + 8 * v, acc[v]);
                            } else {
                                for (int64_t v = 0; v < nv; v++) {
                                    __m256 acc = _mm256_loadu_ps(dst + 8 * v);
                                    for (int32_t t = 0; t < n_o; t++)
                                        acc = _mm256_fmadd_ps(value(pl[t]), _mm256_loadu_ps(at + where_of(pl[t]) + 8 * v), acc);
                                    _mm256_storeu_ps(dst + 8 * v, acc);
                                }
                            }
                        }
                    }
        }
    }
    free(lp); free(cnt); free(ab); free(at0);
    return 0;
}

/* relu(v * al) with NaN kept and -0 kept (as "z < 0 ? 0 : z"): max(0, z) returns z unless 0 > z */
static inline __m256 relu_scaled(__m256 v, __m256 al) {
    return _mm256_max_ps(_mm256_setzero_ps(), _mm256_mul_ps(v, al));
}

/* the even and odd elements of the 16 floats at r, in order */
static inline void deinterleave(const float *r, __m256 *even, __m256 *odd) {
    const __m256 a = _mm256_loadu_ps(r), b = _mm256_loadu_ps(r + 8);
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))),
                                                   _MM_SHUFFLE(3, 1, 2, 0)));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))),
                                                  _MM_SHUFFLE(3, 1, 2, 0)));
}

/* The forward's epilogue, for images [lo, hi) of y (n, O, Ho, Wo): out = the 2x2 stride-2 max pool
 * of relu(y * alpha[o]) (n, O, Ho / 2, Wo / 2), d = its offset in the window (the first maximum in
 * scan order, NaN winning, as max_pool2d), y_at = y there. Eight pooled columns at a time, the
 * columns left one by one; both compute the same comparisons. */
void relu_pool_argmax(const float *y, const float *alpha, int64_t lo, int64_t hi, int64_t O, int64_t Ho, int64_t Wo,
                      float *out, uint8_t *d, float *y_at) {
    const int64_t Hp = Ho / 2, Wp = Wo / 2;
    for (int64_t b = lo; b < hi; b++)
        for (int64_t o = 0; o < O; o++) {
            const float al = alpha[o];
            const __m256 alv = _mm256_set1_ps(al);
            const float *yo = y + (b * O + o) * Ho * Wo;
            const int64_t base = (b * O + o) * Hp * Wp;
            for (int64_t i = 0; i < Hp; i++) {
                int64_t j = 0;
                for (; j + 8 <= Wp; j += 8) {
                    __m256 v[4];
                    deinterleave(yo + (2 * i) * Wo + 2 * j, &v[0], &v[1]);
                    deinterleave(yo + (2 * i + 1) * Wo + 2 * j, &v[2], &v[3]);
                    __m256 best = relu_scaled(v[0], alv), ybest = v[0], qbest = _mm256_setzero_ps();
                    for (int q = 1; q < 4; q++) {
                        const __m256 z = relu_scaled(v[q], alv);
                        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(z, best, _CMP_GT_OQ),
                                                         _mm256_cmp_ps(z, z, _CMP_UNORD_Q));
                        best = _mm256_blendv_ps(best, z, take);
                        ybest = _mm256_blendv_ps(ybest, v[q], take);
                        qbest = _mm256_blendv_ps(qbest, _mm256_castsi256_ps(_mm256_set1_epi32(q)), take);
                    }
                    const int64_t at = base + i * Wp + j;
                    _mm256_storeu_ps(out + at, best);
                    _mm256_storeu_ps(y_at + at, ybest);
                    const __m256i qi = _mm256_castps_si256(qbest); /* 0..3 in each 32-bit lane */
                    const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
                    _mm_storel_epi64((__m128i *)(d + at), _mm_packus_epi16(q16, q16));
                }
                for (; j < Wp; j++) {
                    float best = 0.0f, ybest = 0.0f;
                    int q_best = 0;
                    for (int q = 0; q < 4; q++) {
                        const float v = yo[(2 * i + (q >> 1)) * Wo + 2 * j + (q & 1)];
                        float z = v * al;
                        z = z < 0.0f ? 0.0f : z; /* relu, NaN kept */
                        if (q == 0 || z > best || z != z) {
                            best = z;
                            ybest = v;
                            q_best = q;
                        }
                    }
                    out[base + i * Wp + j] = best;
                    d[base + i * Wp + j] = (uint8_t)q_best;
                    y_at[base + i * Wp + j] = ybest;
                }
            }
        }
}

/* For images [lo, hi): the convolution's output gradient as bfloat16, channels-last
 * out (n, 2 Hp, 2 Wp, O): g (n, O, Hp, Wp) at offset d of each 2x2 window, zero elsewhere. */
void unpool_bf16(const float *g, const uint8_t *d, int64_t lo, int64_t hi, int64_t O, int64_t Hp, int64_t Wp,
                 uint16_t *out) {
    const int64_t P = Hp * Wp, Wo = 2 * Wp;
    for (int64_t b = lo; b < hi; b++) {
        uint16_t *ob = out + (b - lo) * 4 * P * O;
        memset(ob, 0, (size_t)(4 * P * O) * sizeof(uint16_t));
        const float *gb = g + b * O * P;
        const uint8_t *db = d + b * O * P;
        for (int64_t p = 0; p < P; p++) {
            const int64_t i = p / Wp, j = p % Wp;
            uint16_t *win = ob + ((2 * i) * Wo + 2 * j) * O;
            for (int64_t o = 0; o < O; o++) {
                const int q = db[o * P + p] & 3;
                win[((q >> 1) * Wo + (q & 1)) * O + o] = to_bf16(gb[o * P + p]);
            }
        }
    }
}

/* For images [lo, hi) of (n, O, P): gy = (kept ? g : 0) * scale[o] (the values of torch.where
 * and the product: the gradient behind alpha and the ReLU), and part[o] += the sum over these
 * images and positions, in order, of (kept ? g : 0) * y_at (float32 products, double sums: the
 * gradient of alpha, per image group). kept is 0 or 1 per element. */
void pooled_grad_scale(const float *g, const uint8_t *kept, const float *y_at, const float *scale, int64_t lo,
                       int64_t hi, int64_t O, int64_t P, float *gy, double *part) {
    for (int64_t b = lo; b < hi; b++)
        for (int64_t o = 0; o < O; o++) {
            const int64_t base = (b * O + o) * P;
            const float al = scale[o];
            double acc = 0.0;
            for (int64_t p = 0; p < P; p++) {
                const float z = kept[base + p] ? g[base + p] : 0.0f;
                gy[base + p] = z * al;
                acc += (double)(z * y_at[base + p]);
            }
            part[o] += acc;
        }
}

/* Images [lo, hi) of a bfloat16 tensor (n, P, C) (channels-last, P pixels) into float32
 * (n, C, P): exact (a bfloat16 is the upper half of a float32). Returns 1 where its buffer
 * cannot be had. */
int bf16_nhwc_to_f32_nchw(const uint16_t *src, int64_t lo, int64_t hi, int64_t C, int64_t P, float *dst) {
    float *buf = lines((size_t)(P * C) * sizeof(float));
    if (!buf) return 1;
    for (int64_t b = lo; b < hi; b++) {
        const uint16_t *s = src + b * P * C;
        for (int64_t i = 0; i < P * C; i++) {
            const uint32_t u = (uint32_t)s[i] << 16;
            memcpy(buf + i, &u, sizeof u);
        }
        transpose(buf, P, C, dst + b * C * P);
    }
    free(buf);
    return 0;
}
