/* Weight-only int8 matrix products for small batches on x86-64 CPUs with AVX2 and FMA.
 *
 * Built and loaded at run time by dsm/nn/native.py (see its docstring); every function has a
 * C ABI and takes raw pointers to contiguous tensors.
 *
 *   y[m, n] = sum_k x[m, k] * q[n, k] * scale[n]   x, y float32; q int8 [N, K]; scale bf16 [N]
 *
 * (An int4 version of the same loop measured slower than PyTorch's packed int4 kernel here, so
 * int4 stays on PyTorch's.)
 *
 * At one or two activation rows a product is bound by reading the weights, so each weight row
 * is read once for up to two activation rows and the rows of N are split between threads.
 * Every output element is summed in the same order whatever M and the thread count are, so a
 * slot's result does not depend on the batch it runs in.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MB 2 /* activation rows per pass over a weight row */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 i8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* int8: dot products of one weight row with `mb` (1 or 2) activation rows. */
static inline __attribute__((always_inline)) void dot_i8(const float *x, int64_t ldx, int mb, int64_t K, const int8_t *w,
                          float *out) {
    __m256 a[MB][4];
    for (int i = 0; i < MB; i++)
        for (int j = 0; j < 4; j++) a[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(w + k + 1024), _MM_HINT_T0);
        for (int j = 0; j < 4; j++) {
            __m256 wv = i8x8(w + k + 8 * j);
            for (int i = 0; i < mb; i++)
                a[i][j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * ldx + k + 8 * j), wv, a[i][j]);
        }
    }
    for (int i = 0; i < mb; i++) {
        float s = hsum(_mm256_add_ps(_mm256_add_ps(a[i][0], a[i][1]),
                                     _mm256_add_ps(a[i][2], a[i][3])));
        for (int64_t kk = k; kk < K; kk++) s += x[i * ldx + kk] * (float)w[kk];
        out[i] = s;
    }
}

void dsm_int8_matmul(const float *x, int64_t M, int64_t K, const int8_t *q,
                     const uint16_t *scale, int64_t N, float *y, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const float s = bf16_to_f32(scale[n]);
        float out[MB];
        for (int64_t m = 0; m < M; m += MB) {
            int mb = (M - m) < MB ? (int)(M - m) : MB;
            if (mb == 2)
                dot_i8(x + m * K, K, 2, K, q + n * K, out);
            else
                dot_i8(x + m * K, K, 1, K, q + n * K, out);
            for (int i = 0; i < mb; i++) y[(m + i) * N + n] = out[i] * s;
        }
    }
}
