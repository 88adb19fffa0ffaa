/* The weight and bias gradients of a convolution with a small fan-in (the first layer: one input
 * channel, 5 x 5), from its output gradient and its input (AVX2 + FMA).
 *
 * Layouts (float32, contiguous): g (n, O, Ho, Wo) the output gradient, x (n, C, H, W) the input,
 * Ho = H - k + 1, Wo = W - k + 1 (stride 1, no padding), Wo >= 8; gw (O, C, k, k) and gb (O,).
 *
 * The sums run along output rows, 8 columns at a time: the columns 0, 8, 16, ... and, where 8 does
 * not divide Wo, a last group ending at Wo whose columns already summed are masked off. Each
 * (o, c, dy, dx) keeps 8 lane sums over the images of the call (in image order, then rows, then
 * column groups), added at the end in one fixed tree: every element is summed in one order
 * whatever the threads, and the caller adds the parts of its image ranges in order.
 *
 * The inner loop takes up to five kernel columns at a time and two output channels (ten
 * accumulators on AVX2's 16 registers), or four where AVX-512VL gives 32 (small_fan_in_channels):
 * each input row loaded once for every channel of the pass. Every accumulator sums the same terms
 * in the same order either way: the same bits.
 *
 * The forward (small_fan_in_forward) runs along output rows too: for each image row and pass of
 * output channels, the row's column groups (as above, the last one ending at Wo) take every
 * (c, dy, dx) term in that order, one multiply-add each, then the bias: each output is one
 * thread's sum in one order, the same bits on any thread count and either channel count.
 *
 * Loaded by batmann/models/small_fan_in.py (ctypes); built with -O3 -mavx2 -mfma.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GROUP 5 /* kernel columns per pass of the inner loop */

/* lane sums of NO output channels (rows g[i], each (Ho, Wo)) for kernel columns [u0, u0 + gs) of
 * one (c, dy), over one image: p[i] (gs, 8) lane sums, updated */
#define COLUMNS(NAME, NO, ATTR)                                                                                 \
    static inline __attribute__((always_inline)) ATTR void NAME##_at(const float *const *g, const float *xs,   \
                                                                     int64_t Ho, int64_t Wo, int64_t W,        \
                                                                     int64_t u0, int gs, __m256 mask,          \
                                                                     float *const *p) {                        \
        __m256 acc[NO][GROUP];                                                                                  \
        for (int i = 0; i < NO; i++)                                                                            \
            for (int j = 0; j < gs; j++) acc[i][j] = _mm256_loadu_ps(p[i] + 8 * j);                            \
        const int64_t full = Wo / 8 * 8;                                                                        \
        for (int64_t y = 0; y < Ho; y++) {                                                                      \
            const float *rx = xs + y * W + u0;                                                                  \
            for (int64_t x0 = 0; x0 < Wo; x0 += 8) {                                                            \
                const int64_t at = x0 < full ? x0 : Wo - 8; /* the last group ends at Wo */                     \
                __m256 vg[NO];                                                                                  \
                for (int i = 0; i < NO; i++) {                                                                  \
                    vg[i] = _mm256_loadu_ps(g[i] + y * Wo + at);                                                \
                    if (x0 >= full) vg[i] = _mm256_and_ps(vg[i], mask);                                         \
                }                                                                                               \
                for (int j = 0; j < gs; j++) {                                                                  \
                    const __m256 v = _mm256_loadu_ps(rx + at + j);                                              \
                    for (int i = 0; i < NO; i++) acc[i][j] = _mm256_fmadd_ps(vg[i], v, acc[i][j]);              \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        for (int i = 0; i < NO; i++)                                                                            \
            for (int j = 0; j < gs; j++) _mm256_storeu_ps(p[i] + 8 * j, acc[i][j]);                            \
    }                                                                                                           \
    /* gs a constant in each case: the accumulators stay in registers */                                       \
    static ATTR void NAME(const float *const *g, const float *xs, int64_t Ho, int64_t Wo, int64_t W,           \
                          int64_t u0, int gs, __m256 mask, float *const *p) {                                   \
        switch (gs) {                                                                                           \
        case 5: NAME##_at(g, xs, Ho, Wo, W, u0, 5, mask, p); break;                                             \
        case 4: NAME##_at(g, xs, Ho, Wo, W, u0, 4, mask, p); break;                                             \
        case 3: NAME##_at(g, xs, Ho, Wo, W, u0, 3, mask, p); break;                                             \
        case 2: NAME##_at(g, xs, Ho, Wo, W, u0, 2, mask, p); break;                                             \
        default: NAME##_at(g, xs, Ho, Wo, W, u0, 1, mask, p); break;                                            \
        }                                                                                                       \
    }

/* two channels on AVX2's 16 registers; four where AVX-512VL gives 32 (the same sums, the same bits) */
COLUMNS(columns2, 2, )
COLUMNS(columns4, 4, __attribute__((target("avx2,fma,avx512f,avx512vl"))))

/* output channels per pass of the inner loop, 2 or 4 (0: not chosen yet) */
static int per_pass = 0;

/* 4 where the CPU has AVX-512VL, else 2; want (2 or 4) selects one where the CPU runs it (0: keep
 * the choice). Returns the one in use. */
int small_fan_in_channels(int want) {
    __builtin_cpu_init();
    const int vl = __builtin_cpu_supports("avx512vl");
    if (want == 2 || (want == 4 && vl)) per_pass = want;
    if (per_pass == 0) per_pass = vl ? 4 : 2;
    return per_pass;
}

/* the 8 lanes of s added in one fixed tree */
static inline float lanes(const float *s) {
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* gw (O, C, k, k), overwritten: the weight gradient over images [lo, hi); gb (O,), if not NULL,
 * overwritten: the bias gradient. Returns 0, or 1 where a buffer could not be allocated. */
int small_fan_in_grad(const float *g, const float *x, int64_t lo, int64_t hi, int64_t O, int64_t C, int64_t H,
                      int64_t W, int64_t k, float *gw, float *gb) {
    const int no = small_fan_in_channels(0);
    const int64_t Ho = H - k + 1, Wo = W - k + 1, F = C * k * k, P = Ho * Wo;
    /* (O, F, 8) and (O, 8) lane sums, zeroed, on 32-byte boundaries (no vector split across lines) */
    float *part = aligned_alloc(32, (size_t)(O * F * 8) * sizeof(float));
    float *bias = aligned_alloc(32, (size_t)(O * 8) * sizeof(float));
    if (!part || !bias) {
        free(part); free(bias);
        return 1;
    }
    memset(part, 0, (size_t)(O * F * 8) * sizeof(float));
    memset(bias, 0, (size_t)(O * 8) * sizeof(float));
    const int r = (int)(Wo % 8); /* the last group's lanes below 8 - r were summed before */
    int32_t keep[8];
    for (int i = 0; i < 8; i++) keep[i] = r && i >= 8 - r ? -1 : 0;
    const __m256 mask = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)keep));
    for (int64_t n = lo; n < hi; n++) {
        for (int64_t o = 0; o < O; o += no) {
            const float *rows[4];
            float *p[4];
            float scratch[4][GROUP * 8] = {{0}}; /* the sums of channels past O (rows repeated), dropped */
            for (int64_t c = 0; c < C; c++)
                for (int64_t dy = 0; dy < k; dy++) {
                    const float *xs = x + ((n * C + c) * H + dy) * W;
                    for (int64_t u0 = 0; u0 < k; u0 += GROUP) {
                        const int gs = (int)(k - u0 < GROUP ? k - u0 : GROUP);
                        for (int i = 0; i < no; i++) {
                            const int64_t oi = o + i < O ? o + i : O - 1;
                            rows[i] = g + (n * O + oi) * P;
                            p[i] = o + i < O ? part + ((o + i) * F + (c * k + dy) * k + u0) * 8 : scratch[i];
                        }
                        if (no == 4)
                            columns4(rows, xs, Ho, Wo, W, u0, gs, mask, p);
                        else
                            columns2(rows, xs, Ho, Wo, W, u0, gs, mask, p);
                    }
                }
        }
        if (gb)
            for (int64_t o = 0; o < O; o++) {
                const float *go = g + (n * O + o) * P;
                __m256 s = _mm256_loadu_ps(bias + 8 * o);
                const int64_t full = Wo / 8 * 8;
                for (int64_t y = 0; y < Ho; y++)
                    for (int64_t x0 = 0; x0 < Wo; x0 += 8) {
                        __m256 v = _mm256_loadu_ps(go + y * Wo + (x0 < full ? x0 : Wo - 8));
                        if (x0 >= full) v = _mm256_and_ps(v, mask);
                        s = _mm256_add_ps(s, v);
                    }
                _mm256_storeu_ps(bias + 8 * o, s);
            }
    }
    for (int64_t i = 0; i < O * F; i++) gw[i] = lanes(part + 8 * i);
    if (gb)
        for (int64_t o = 0; o < O; o++) gb[o] = lanes(bias + 8 * o);
    free(part); free(bias);
    return 0;
}

/* NO output channels [o, o + NO) (rows past O repeat O - 1; their stores are skipped) of one output
 * row (image n, row y), the gn column groups at at[]: y[o, y, at + :8] = the sum over (c, dy, dx) of
 * w[o, c, dy, dx] * x[c, y + dy, at + dx + :8], then + b[o] */
#define FORWARD(NAME, NO, ATTR)                                                                              \
    static inline __attribute__((always_inline)) ATTR void NAME##_at(                                       \
        const float *xn, const float *w, const float *b, float *yn, int64_t o, int64_t O, int64_t C,         \
        int64_t H, int64_t W, int64_t k, int64_t y, const int64_t *at, int gn) {                             \
        const int64_t Ho = H - k + 1, Wo = W - k + 1, F = C * k * k;                                         \
        const float *wr[NO];                                                                                 \
        for (int i = 0; i < NO; i++) wr[i] = w + (o + i < O ? o + i : O - 1) * F;                            \
        __m256 acc[NO][4];                                                                                   \
        for (int i = 0; i < NO; i++)                                                                         \
            for (int j = 0; j < gn; j++) acc[i][j] = _mm256_setzero_ps();                                    \
        for (int64_t c = 0; c < C; c++)                                                                      \
            for (int64_t dy = 0; dy < k; dy++) {                                                             \
                const float *rx = xn + (c * H + y + dy) * W;                                                 \
                const int64_t f0 = (c * k + dy) * k;                                                         \
                for (int64_t dx = 0; dx < k; dx++) {                                                         \
                    __m256 wv[NO];                                                                           \
                    for (int i = 0; i < NO; i++) wv[i] = _mm256_broadcast_ss(wr[i] + f0 + dx);               \
                    for (int j = 0; j < gn; j++) {                                                           \
                        const __m256 v = _mm256_loadu_ps(rx + at[j] + dx);                                   \
                        for (int i = 0; i < NO; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], v, acc[i][j]);       \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        for (int i = 0; i < NO && o + i < O; i++) {                                                          \
            const __m256 bv = _mm256_set1_ps(b ? b[o + i] : 0.0f);                                           \
            for (int j = 0; j < gn; j++)                                                                     \
                _mm256_storeu_ps(yn + ((o + i) * Ho + y) * Wo + at[j], b ? _mm256_add_ps(acc[i][j], bv) : acc[i][j]); \
        }                                                                                                    \
    }                                                                                                        \
    /* every column group of the row, four at a time (gn a constant in each case: registers) */              \
    static ATTR void NAME(const float *xn, const float *w, const float *b, float *yn, int64_t o, int64_t O,  \
                          int64_t C, int64_t H, int64_t W, int64_t k, int64_t y) {                          \
        const int64_t Wo = W - k + 1, ng = (Wo + 7) / 8;                                                     \
        for (int64_t g0 = 0; g0 < ng; g0 += 4) {                                                             \
            int64_t at[4];                                                                                   \
            const int gn = (int)(ng - g0 < 4 ? ng - g0 : 4);                                                 \
            for (int j = 0; j < gn; j++) at[j] = 8 * (g0 + j) + 8 <= Wo ? 8 * (g0 + j) : Wo - 8;             \
            switch (gn) {                                                                                    \
            case 4: NAME##_at(xn, w, b, yn, o, O, C, H, W, k, y, at, 4); break;                              \
            case 3: NAME##_at(xn, w, b, yn, o, O, C, H, W, k, y, at, 3); break;                              \
            case 2: NAME##_at(xn, w, b, yn, o, O, C, H, W, k, y, at, 2); break;                              \
            default: NAME##_at(xn, w, b, yn, o, O, C, H, W, k, y, at, 1); break;                             \
            }                                                                                                \
        }                                                                                                    \
    }

FORWARD(forward2, 2, )
FORWARD(forward4, 4, __attribute__((target("avx2,fma,avx512f,avx512vl"))))

/* y (n, O, Ho, Wo), images [lo, hi) written: the convolution of x (n, C, H, W) with w (O, C, k, k)
 * (stride 1, no padding), plus b (O,) unless NULL */
void small_fan_in_forward(const float *x, const float *w, const float *b, int64_t lo, int64_t hi, int64_t O,
                          int64_t C, int64_t H, int64_t W, int64_t k, float *y) {
    const int no = small_fan_in_channels(0);
    const int64_t Ho = H - k + 1, Wo = W - k + 1;
    for (int64_t n = lo; n < hi; n++) {
        const float *xn = x + n * C * H * W;
        float *yn = y + n * O * Ho * Wo;
        for (int64_t o = 0; o < O; o += no)
            for (int64_t r = 0; r < Ho; r++) {
                if (no == 4)
                    forward4(xn, w, b, yn, o, O, C, H, W, k, r);
                else
                    forward2(xn, w, b, yn, o, O, C, H, W, k, r);
            }
    }
}
