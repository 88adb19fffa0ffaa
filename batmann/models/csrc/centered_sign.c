/* The centered sign of activations and its straight-through gradient, per sample (AVX2).
 *
 * Rows of x (n, N) float32, one sample each, optionally through a ReLU first (r = relu(x), else
 * r = x). Forward: mu = mean(r), c = r - mu, s = max(sqrt(sum c^2 / (N - 1)), eps), out = +1
 * where c > 0 else -1 (standardize: out = c / s instead). Backward, from g at the output: x_hat =
 * (r - mu) / s, g_hat = g times the surrogate derivative at x_hat (hardtanh: |x_hat| < 1; rbnn:
 * max(0, sqrt(2) t - t^2 |x_hat|); identity: 1, the gradient of the standardisation alone),
 * then the exact gradient of the standardisation
 *     g_r = (g_hat - mean(g_hat) - x_hat * sum(g_hat x_hat) / (N - 1)) / s,
 * and with the ReLU g_x = g_r where x > 0, else 0.
 *
 * Each row is one thread's: its sums run over the row in one fixed order (8 lanes of double
 * accumulators over consecutive blocks of 8, then the lanes added in order, then the tail), so
 * the bits never depend on how rows are split between threads. Each row is read twice (the sums,
 * then the outputs). The float32 operations are the eager formulas' (no fused multiply-adds).
 *
 * Loaded by batmann/models/sign_kernels.py (ctypes); built with -O3 -mavx2.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* relu(v) (max_ps(0, v) is "0 > v ? 0 : v": NaN passes, as torch.relu) */
static inline __m256 relu8(__m256 v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }

/* the 8 floats at p, through a ReLU if relu */
static inline __m256 load_r(const float *p, int relu) {
    const __m256 v = _mm256_loadu_ps(p);
    return relu ? relu8(v) : v;
}
static inline float scalar_r(float v, int relu) { return relu && !(v > 0.0f) && v == v ? 0.0f : v; }

/* acc (two vectors of 4 doubles) += the 8 floats of v, each widened to double */
static inline void add8(__m256d *acc, __m256 v) {
    acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

/* the 8 lanes of acc added in order */
static inline double lanes(const __m256d *acc) {
    double a[4], b[4];
    _mm256_storeu_pd(a, acc[0]);
    _mm256_storeu_pd(b, acc[1]);
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((b[0] + b[1]) + (b[2] + b[3]));
}

/* rows [lo, hi): out (+-1), mu and s per row */
void sign_forward(const float *x, int64_t lo, int64_t hi, int64_t N, int relu, float eps, float *out, float *mu,
                  float *s, int standardize) {
    const int64_t N8 = N / 8 * 8;
    for (int64_t b = lo; b < hi; b++) {
        const float *xr = x + b * N;
        float *o = out + b * N;
        __m256d acc[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
        for (int64_t i = 0; i < N8; i += 8) add8(acc, load_r(xr + i, relu));
        double sum = lanes(acc);
        for (int64_t i = N8; i < N; i++) sum += scalar_r(xr[i], relu);
        const float m = (float)(sum / (double)N);
        const __m256 mv = _mm256_set1_ps(m), one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-1.0f);
        __m256d sq[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
        for (int64_t i = 0; i < N8; i += 8) {
            const __m256 c = _mm256_sub_ps(load_r(xr + i, relu), mv);
            add8(sq, _mm256_mul_ps(c, c));
            if (!standardize)
                _mm256_storeu_ps(o + i, _mm256_blendv_ps(neg, one, _mm256_cmp_ps(c, _mm256_setzero_ps(), _CMP_GT_OQ)));
        }
        double ss = lanes(sq);
        for (int64_t i = N8; i < N; i++) {
            const float c = scalar_r(xr[i], relu) - m;
            ss += (double)(c * c);
            if (!standardize) o[i] = c > 0.0f ? 1.0f : -1.0f;
        }
        const float sd = (float)sqrt(ss / (double)(N > 1 ? N - 1 : 1));
        mu[b] = m;
        s[b] = sd > eps ? sd : eps; /* NaN stays NaN, as clamp_min */
        if (sd != sd) s[b] = sd;
        if (standardize) { /* a third read: c / s, the eager formula's float32 operations */
            const __m256 sv = _mm256_set1_ps(s[b]);
            for (int64_t i = 0; i < N8; i += 8)
                _mm256_storeu_ps(o + i, _mm256_div_ps(_mm256_sub_ps(load_r(xr + i, relu), mv), sv));
            for (int64_t i = N8; i < N; i++) o[i] = (scalar_r(xr[i], relu) - m) / s[b];
        }
    }
}

/* g_hat at x_hat: surrogate 0 = hardtanh, 1 = rbnn with slope t */
static inline __m256 surrogate(__m256 g, __m256 xh, int kind, __m256 a, __m256 t2) {
    const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), xh);
    if (kind == 2) return g;
    if (kind == 0) return _mm256_and_ps(g, _mm256_cmp_ps(ax, _mm256_set1_ps(1.0f), _CMP_LT_OQ));
    return _mm256_mul_ps(g, _mm256_max_ps(_mm256_setzero_ps(), _mm256_sub_ps(a, _mm256_mul_ps(t2, ax))));
}
static inline float surrogate1(float g, float xh, int kind, float a, float t2) {
    const float ax = fabsf(xh);
    if (kind == 2) return g;
    if (kind == 0) return ax < 1.0f ? g : 0.0f;
    const float d = a - t2 * ax;
    return g * (0.0f > d ? 0.0f : d);
}

/* rows [lo, hi): gx, the gradient at x of the centered sign (see above) given g at its output;
 * kind 0 hardtanh, 1 rbnn with slope t, 2 the identity (the standardisation's gradient) */
void sign_backward(const float *x, const float *mu, const float *s, const float *g, int64_t lo, int64_t hi, int64_t N,
                   int relu, int kind, float t, float *gx) {
    const int64_t N8 = N / 8 * 8;
    const float a = (float)(sqrt(2.0) * t), t2 = t * t;
    const __m256 av = _mm256_set1_ps(a), t2v = _mm256_set1_ps(t2);
    for (int64_t b = lo; b < hi; b++) {
        const float *xr = x + b * N, *gr = g + b * N;
        float *o = gx + b * N;
        const __m256 mv = _mm256_set1_ps(mu[b]), sv = _mm256_set1_ps(s[b]);
        __m256d sg[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()}, sp[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
        for (int64_t i = 0; i < N8; i += 8) {
            const __m256 xh = _mm256_div_ps(_mm256_sub_ps(load_r(xr + i, relu), mv), sv);
            const __m256 gh = surrogate(_mm256_loadu_ps(gr + i), xh, kind, av, t2v);
            add8(sg, gh);
            add8(sp, _mm256_mul_ps(gh, xh));
        }
        double sum_g = lanes(sg), sum_p = lanes(sp);
        for (int64_t i = N8; i < N; i++) {
            const float xh = (scalar_r(xr[i], relu) - mu[b]) / s[b];
            const float gh = surrogate1(gr[i], xh, kind, a, t2);
            sum_g += gh;
            sum_p += (double)(gh * xh);
        }
        const float mg = (float)(sum_g / (double)N), proj = (float)(sum_p / (double)(N > 1 ? N - 1 : 1));
        const __m256 mgv = _mm256_set1_ps(mg), pv = _mm256_set1_ps(proj);
        for (int64_t i = 0; i < N8; i += 8) {
            const __m256 xv = _mm256_loadu_ps(xr + i);
            const __m256 xh = _mm256_div_ps(_mm256_sub_ps(relu ? relu8(xv) : xv, mv), sv);
            const __m256 gh = surrogate(_mm256_loadu_ps(gr + i), xh, kind, av, t2v);
            __m256 r = _mm256_div_ps(_mm256_sub_ps(_mm256_sub_ps(gh, mgv), _mm256_mul_ps(xh, pv)), sv);
            if (relu) r = _mm256_and_ps(r, _mm256_cmp_ps(xv, _mm256_setzero_ps(), _CMP_GT_OQ));
            _mm256_storeu_ps(o + i, r);
        }
        for (int64_t i = N8; i < N; i++) {
            const float xh = (scalar_r(xr[i], relu) - mu[b]) / s[b];
            const float gh = surrogate1(gr[i], xh, kind, a, t2);
            const float r = ((gh - mg) - xh * proj) / s[b];
            o[i] = relu && !(xr[i] > 0.0f) ? 0.0f : r;
        }
    }
}
