/* ops.c: forward and backward kernels on local, row-major blocks (see ops.h).
 *
 * What it does: LayerNorm, ReLU, inverted dropout with counter-based (layout-independent)
 * masks, multi-head scaled dot-product attention (one gemm_sgemm per (batch, head) and
 * matmul, with row strides so q/k/v can be column slices of a fused projection),
 * embedding lookup and scatter-add, fairseq's sinusoidal positions, and fairseq's
 * label-smoothed cross-entropy.
 * What it does not do: no communication (every function works on the block it is
 * given), no allocation (scratch comes from the caller), no linear layers (the model
 * calls dmat / cblas for those).
 *
 * Speed: the elementwise loops are written plainly (restrict pointers, no calls inside)
 * so that gcc -O3 -march=x86-64-v3 vectorizes them; exp() inside softmax loops is a
 * vectorizable Cephes-style polynomial (ops_expf_) accurate to ~2 ulp, because glibc's
 * expf is not vectorized without -ffast-math.
 */
#include "ops.h"

#include "common.h"
#include "gemm.h"

#include <cblas.h>
#if defined(__AVX__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <math.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------------------- */

/* exp(x) for x <= 0 (callers pass x - rowmax) as a polynomial that the vectorizer can
 * inline (Cephes expf, ~2 ulp): x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-7
 * polynomial, 2^n through the exponent bits. x < -87.3 (exp < 1.2e-38), -inf and NaN give
 * exactly 0. The clamp and the flush are integer bit operations, not float selects: with
 * gcc's default -ftrapping-math a float select before float arithmetic stops
 * if-conversion and the loop stays scalar. */
static inline float ops_expf_(float x) {
  const uint32_t lim = 0x42ae999au; /* bits of 87.3f */
  uint32_t xb;
  memcpy(&xb, &x, sizeof xb);
  xb &= 0x7fffffffu;                                      /* |x| */
  uint32_t keep = ~(uint32_t)((int32_t)(lim - xb) >> 31); /* |x| <= lim: all ones */
  uint32_t cb = xb < lim ? xb : lim;
  float a;
  memcpy(&a, &cb, sizeof a);
  x = -a;
  float t = x * 1.44269504088896341f + 12582912.0f; /* round to nearest via 1.5*2^23 */
  float n = t - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float two_n;
  memcpy(&two_n, &bits, sizeof two_n);
  float res = p * two_n;
  uint32_t rb;
  memcpy(&rb, &res, sizeof rb);
  rb &= keep;
  memcpy(&res, &rb, sizeof res);
  return res;
}

/* max over x[0..n) (n >= 1). gcc does not vectorize a float max reduction without
 * -ffinite-math-only, so AVX uses intrinsics (two independent accumulators). */
static float ops_rowmax_(const float *restrict x, int n) {
  float m = x[0];
  int j = 0;
#ifdef __AVX__
  if (n >= 16) {
    __m256 m0 = _mm256_loadu_ps(x), m1 = _mm256_loadu_ps(x + 8);
    for (j = 16; j + 16 <= n; j += 16) {
      m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
      m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8));
    }
    float lane[8];
    _mm256_storeu_ps(lane, _mm256_max_ps(m0, m1));
    for (int l = 0; l < 8; l++)
      m = lane[l] > m ? lane[l] : m;
  }
#endif
  for (; j < n; j++)
    m = x[j] > m ? x[j] : m;
  return m;
}

/* sum_j a[j] * b[j] */
static float ops_dot_(const float *restrict a, const float *restrict b, int n) {
  float acc[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= n; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++)
      acc[l] += a[j + l] * b[j + l];
  for (; j < n; j++)
    acc[0] += a[j] * b[j];
  return ops_lanes_total(acc);
}

/* sum_j a[j] * b[j] * (c[j] - mu) */
static float ops_dot3_centered_(const float *restrict a, const float *restrict b,
                                const float *restrict c, float mu, int n) {
  float acc[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= n; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++)
      acc[l] += a[j + l] * b[j + l] * (c[j + l] - mu);
  for (; j < n; j++)
    acc[0] += a[j] * b[j] * (c[j] - mu);
  return ops_lanes_total(acc);
}

/* s[j] = exp(s[j] - m) in place (s[j] <= m); returns sum_j s[j]. */
static float ops_exp_inplace_sum_(float *restrict s, float m, int n) {
  float acc[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= n; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++) {
      float e = ops_expf_(s[j + l] - m);
      s[j + l] = e;
      acc[l] += e;
    }
  for (; j < n; j++) {
    s[j] = ops_expf_(s[j] - m);
    acc[0] += s[j];
  }
  return ops_lanes_total(acc);
}

/* sum_j exp(z[j] - m) in float (z[j] <= m) and sum_j z[j] in double. */
static float ops_sum_exp_(const float *restrict z, float m, int n, double *sum_z) {
  float acc[OPS_LANES] = {0};
  double accd[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= n; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++) {
      acc[l] += ops_expf_(z[j + l] - m);
      accd[l] += (double)z[j + l];
    }
  for (; j < n; j++) {
    acc[0] += ops_expf_(z[j] - m);
    accd[0] += (double)z[j];
  }
  double sz = 0.0;
  for (int l = 0; l < OPS_LANES; l++)
    sz += accd[l];
  *sum_z = sz;
  return ops_lanes_total(acc);
}

/* The 24-bit hash value whose scaled version is ops_hash_uniform: splitmix64's output
 * number `counter` for the stream seeded with `key`. */
static inline uint32_t ops_hash24_(uint64_t key, uint64_t counter) {
  return (uint32_t)(common_mix64(key + (counter + 1) * 0x9e3779b97f4a7c15ULL) >> 40);
}

/* ---- hashing ---------------------------------------------------------------------- */

float ops_hash_uniform(uint64_t key, uint64_t counter) {
  return (float)ops_hash24_(key, counter) * (1.0f / 16777216.0f);
}

float ops_hash_normal(uint64_t key, uint64_t counter) {
  /* u1 in (0, 1] so the log never sees 0. */
  double u1 = 1.0 - (double)ops_hash_uniform(key, 2 * counter);
  double u2 = (double)ops_hash_uniform(key, 2 * counter + 1);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t ops_hash_key(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  const uint64_t g = 0x9e3779b97f4a7c15ULL;
  uint64_t h = common_mix64(a + g);
  h = common_mix64(h ^ (b + 2 * g));
  h = common_mix64(h ^ (c + 3 * g));
  h = common_mix64(h ^ (d + 4 * g));
  return h;
}

/* ---- LayerNorm -------------------------------------------------------------------- */

/* y(n,d), mean(n), rstd(n) from x(n,d), g(d), b(d). Two-pass mean/variance per row. */
void ops_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                           const float *b, int n, int d, float eps) {
  CHECK(y != x, "ops_layernorm_forward: y may not alias x");
  for (int i = 0; i < n; i++) {
    const float *restrict xr = x + (int64_t)i * d;
    float *restrict yr = y + (int64_t)i * d;
    const float *restrict gg = g, *restrict bb = b;
    float mu = ops_row_sum(xr, d) / (float)d;
    float v = ops_row_sumsq_centered(xr, mu, d);
    float rs = 1.0f / sqrtf(v / (float)d + eps);
    for (int j = 0; j < d; j++)
      yr[j] = (xr[j] - mu) * rs * gg[j] + bb[j];
    mean[i] = mu;
    rstd[i] = rs;
  }
}

/* dx(n,d) += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * g;
 * dg(d) += sum_rows dy * xhat; db(d) += sum_rows dy. dx, dg, db may each be NULL. */
/* One row of LayerNorm backward's reductions, fused: dg(d) += dy * (x - mu) * rs,
 * db(d) += dy, *s1 = sum dy * g and *s2 = sum dy * g * (x - mu), in one sweep instead of
 * three. Same lanes and the same expressions as ops_dot_ / ops_dot3_centered_ and the
 * dg/db loop: the same bits. */
static void ops_ln_bwd_row_sums_(float *restrict dg, float *restrict db, float *s1, float *s2,
                                 const float *restrict dyr, const float *restrict xr,
                                 const float *restrict gg, float mu, float rs, int d) {
  float a1[OPS_LANES] = {0}, a2[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= d; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++) {
      float dyv = dyr[j + l], xc = xr[j + l] - mu;
      dg[j + l] += dyv * xc * rs;
      db[j + l] += dyv;
      a1[l] += dyv * gg[j + l];
      a2[l] += dyv * gg[j + l] * xc;
    }
  for (; j < d; j++) {
    float dyv = dyr[j], xc = xr[j] - mu;
    dg[j] += dyv * xc * rs;
    db[j] += dyv;
    a1[0] += dyv * gg[j];
    a2[0] += dyv * gg[j] * xc;
  }
  *s1 = ops_lanes_total(a1);
  *s2 = ops_lanes_total(a2);
}

void ops_layernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *g, int n, int d) {
  if (dx && dg && db) { /* the training case: one sweep for the sums, one for dx */
    for (int i = 0; i < n; i++) {
      const float *restrict xr = x + (int64_t)i * d;
      const float *restrict dyr = dy + (int64_t)i * d;
      const float *restrict gg = g;
      float *restrict dxr = dx + (int64_t)i * d;
      float mu = mean[i], rs = rstd[i], s1, s2;
      ops_ln_bwd_row_sums_(dg, db, &s1, &s2, dyr, xr, gg, mu, rs, d);
      float m1 = s1 / (float)d, m2 = s2 * rs / (float)d;
      for (int j = 0; j < d; j++)
        dxr[j] += rs * (dyr[j] * gg[j] - m1 - (xr[j] - mu) * rs * m2);
    }
    return;
  }
  for (int i = 0; i < n; i++) {
    const float *restrict xr = x + (int64_t)i * d;
    const float *restrict dyr = dy + (int64_t)i * d;
    const float *restrict gg = g;
    float mu = mean[i], rs = rstd[i];
    if (dg && db) { /* one pass for both */
      float *restrict dgg = dg, *restrict dbb = db;
      for (int j = 0; j < d; j++) {
        dgg[j] += dyr[j] * (xr[j] - mu) * rs;
        dbb[j] += dyr[j];
      }
    } else if (dg) {
      float *restrict dgg = dg;
      for (int j = 0; j < d; j++)
        dgg[j] += dyr[j] * (xr[j] - mu) * rs;
    } else if (db) {
      float *restrict dbb = db;
      for (int j = 0; j < d; j++)
        dbb[j] += dyr[j];
    }
    if (dx) {
      float *restrict dxr = dx + (int64_t)i * d;
      float s1 = ops_dot_(dyr, gg, d), s2 = ops_dot3_centered_(dyr, gg, xr, mu, d) * rs;
      float m1 = s1 / (float)d, m2 = s2 / (float)d;
      for (int j = 0; j < d; j++)
        dxr[j] += rs * (dyr[j] * gg[j] - m1 - (xr[j] - mu) * rs * m2);
    }
  }
}

/* ---- ReLU ------------------------------------------------------------------------- */

void ops_relu_forward(float *y, const float *x, int64_t n) {
  if (y == x) {
    float *restrict yy = y;
    for (int64_t i = 0; i < n; i++)
      yy[i] = yy[i] > 0.0f ? yy[i] : 0.0f;
  } else {
    float *restrict yy = y;
    const float *restrict xx = x;
    for (int64_t i = 0; i < n; i++)
      yy[i] = xx[i] > 0.0f ? xx[i] : 0.0f;
  }
}

void ops_relu_backward(float *dx, const float *dy, const float *y, int64_t n) {
  float *restrict a = dx;
  const float *restrict g = dy, *restrict yy = y;
  for (int64_t i = 0; i < n; i++)
    a[i] += yy[i] > 0.0f ? g[i] : 0.0f;
}

/* A select, not a conditional store: gcc turns `if (!(y > 0)) dy = 0` into a masked store
 * (vmaskmovps), which is slow on AMD; the select is a compare and an and. NaN in y gives
 * 0, as the condition !(y > 0) does. With the activation dropout, where y > 0 the element
 * was kept exactly when yd = y * scale is neither 0 nor NaN (y * 0 = 0; +inf * 0 = NaN),
 * and the product dy * (scale or 0) is ops_dropout's. */
void ops_relu_backward_inplace(float *dy, const float *y, const float *yd, float p, int rows,
                               int cols, float *dcol) {
  CHECK(p >= 0.0f && p <= 1.0f, "ops_relu_backward_inplace: p = %g is not in [0, 1]", (double)p);
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  for (int i = 0; i < rows; i++) {
    float *restrict d = dy + (int64_t)i * cols;
    const float *restrict yr = y + (int64_t)i * cols;
    float *restrict dc = dcol;
    if (yd && p >= 1.0f) { /* ops_dropout gave zeros */
      for (int j = 0; j < cols; j++)
        d[j] = 0.0f;
    } else if (yd) {
      const float *restrict ydr = yd + (int64_t)i * cols;
      int j = 0;
#ifdef __AVX__ /* gcc keeps the loop below scalar: a float select before a product */
      const __m256 zero = _mm256_setzero_ps(), vscale = _mm256_set1_ps(scale);
      for (; j + 8 <= cols; j += 8) {
        __m256 kept = _mm256_cmp_ps(_mm256_loadu_ps(ydr + j), zero, _CMP_NEQ_OQ); /* not 0, NaN */
        __m256 prod = _mm256_mul_ps(_mm256_loadu_ps(d + j), _mm256_and_ps(kept, vscale));
        __m256 pos = _mm256_cmp_ps(_mm256_loadu_ps(yr + j), zero, _CMP_GT_OQ);
        _mm256_storeu_ps(d + j, _mm256_and_ps(pos, prod));
      }
#endif
      for (; j < cols; j++) {
        float f = ((ydr[j] != 0.0f) & (ydr[j] == ydr[j])) ? scale : 0.0f;
        float prod = d[j] * f;
        d[j] = yr[j] > 0.0f ? prod : 0.0f;
      }
    } else {
      for (int j = 0; j < cols; j++)
        d[j] = yr[j] > 0.0f ? d[j] : 0.0f;
    }
    if (dc)
      for (int j = 0; j < cols; j++)
        dc[j] += d[j];
  }
}

/* ---- Dropout ---------------------------------------------------------------------- */

/* One row of dropout: y[j] = hash24(key, base + j) < thr ? 0 : x[j] * scale.
 * x == y is handled by the caller through ops_dropout_row_inplace_. */
static void ops_dropout_row_(float *restrict y, const float *restrict x, int cols, uint64_t base,
                             uint32_t thr, float scale, uint64_t key) {
  for (int j = 0; j < cols; j++)
    y[j] = x[j] * (ops_hash24_(key, base + (uint64_t)j) < thr ? 0.0f : scale);
}

static void ops_dropout_row_inplace_(float *restrict y, int cols, uint64_t base, uint32_t thr,
                                     float scale, uint64_t key) {
  for (int j = 0; j < cols; j++)
    y[j] = y[j] * (ops_hash24_(key, base + (uint64_t)j) < thr ? 0.0f : scale);
}

#ifdef __AVX2__
/* z * c mod 2^64 in each 64-bit lane: AVX2 has no 64-bit multiply, so it is put together
 * from 32x32->64 products: lo(z) lo(c) + (lo(z) hi(c) + hi(z) lo(c)) << 32. */
static inline __m256i ops_mul64_(__m256i z, __m256i c, __m256i c_hi) {
  __m256i ll = _mm256_mul_epu32(z, c);
  __m256i cross =
      _mm256_add_epi64(_mm256_mul_epu32(z, c_hi), _mm256_mul_epu32(_mm256_srli_epi64(z, 32), c));
  return _mm256_add_epi64(ll, _mm256_slli_epi64(cross, 32));
}

/* The top 24 bits of common_mix64 of 8 states (lanes 0..3 in za, 4..7 in zb), as 8 x 32-bit
 * lanes in order, bit for bit. Only bits 40..63 of the result are wanted, so: the last
 * `z ^= z >> 31` is left out (it changes bits 0..32 only), and of the last product only the
 * high 32-bit word is formed, hi(lo z * lo c) + lo(lo z * hi c) + lo(hi z * lo c) (mod 2^32),
 * the two cross terms on 8 lanes at once with 32-bit multiplies. */
static inline __m256i ops_hash24x8_(__m256i za, __m256i zb) {
  const __m256i c1 = _mm256_set1_epi64x((long long)0xBF58476D1CE4E5B9ULL);
  const __m256i c1h = _mm256_set1_epi64x((long long)(0xBF58476D1CE4E5B9ULL >> 32));
  const __m256i c2lo = _mm256_set1_epi64x((long long)(0x94D049BB133111EBULL & 0xffffffffu));
  const __m256i c2lo8 = _mm256_set1_epi32((int)(0x94D049BB133111EBULL & 0xffffffffu));
  const __m256i c2hi8 = _mm256_set1_epi32((int)(0x94D049BB133111EBULL >> 32));
  za = ops_mul64_(_mm256_xor_si256(za, _mm256_srli_epi64(za, 30)), c1, c1h);
  zb = ops_mul64_(_mm256_xor_si256(zb, _mm256_srli_epi64(zb, 30)), c1, c1h);
  za = _mm256_xor_si256(za, _mm256_srli_epi64(za, 27));
  zb = _mm256_xor_si256(zb, _mm256_srli_epi64(zb, 27));
  __m256 lla = _mm256_castsi256_ps(_mm256_mul_epu32(za, c2lo)); /* lo z * lo c, 64-bit */
  __m256 llb = _mm256_castsi256_ps(_mm256_mul_epu32(zb, c2lo));
  __m256 fa = _mm256_castsi256_ps(za), fb = _mm256_castsi256_ps(zb);
  /* 32-bit words of 8 lanes, per 128-bit half [a0 a1 b0 b1 | a2 a3 b2 b3]: */
  __m256i llhi = _mm256_castps_si256(_mm256_shuffle_ps(lla, llb, _MM_SHUFFLE(3, 1, 3, 1)));
  __m256i zlo = _mm256_castps_si256(_mm256_shuffle_ps(fa, fb, _MM_SHUFFLE(2, 0, 2, 0)));
  __m256i zhi = _mm256_castps_si256(_mm256_shuffle_ps(fa, fb, _MM_SHUFFLE(3, 1, 3, 1)));
  __m256i hi = _mm256_add_epi32(
      llhi, _mm256_add_epi32(_mm256_mullo_epi32(zlo, c2hi8), _mm256_mullo_epi32(zhi, c2lo8)));
  hi = _mm256_permute4x64_epi64(hi, _MM_SHUFFLE(3, 1, 2, 0)); /* lanes in order */
  return _mm256_srli_epi32(hi, 8);                            /* (z >> 40), < 2^24 */
}

/* The same row as ops_dropout_row_ (y may equal x) for its first cols - cols % 8 elements
 * (returned; the caller does the tail), 8 elements a step: the splitmix64
 * states of counters base+j .. base+j+7 are key + (base+j+1+l) * G, so they advance by 8G;
 * the 24-bit values are the top bits of each lane, gathered into one 8 x 32-bit vector.
 * The masks and the products are bit-identical to the scalar loop. bits (or NULL): the
 * mask, one byte per 8 elements (bit l: element j + l dropped). */
static int ops_dropout_row_avx2_(float *y, const float *x, int cols, uint64_t base, uint32_t thr,
                                 float scale, uint64_t key, uint8_t *bits) {
  const uint64_t G = 0x9e3779b97f4a7c15ULL;
  int j = 0;
  if (cols >= 8) {
    uint64_t z0 = key + (base + 1) * G;
    __m256i za = _mm256_set_epi64x((long long)(z0 + 3 * G), (long long)(z0 + 2 * G),
                                   (long long)(z0 + G), (long long)z0);        /* lanes 0..3 */
    __m256i zb = _mm256_add_epi64(za, _mm256_set1_epi64x((long long)(4 * G))); /* 4..7 */
    const __m256i step = _mm256_set1_epi64x((long long)(8 * G));
    const __m256i vthr = _mm256_set1_epi32((int)thr);
    const __m256 vscale = _mm256_set1_ps(scale);
    for (; j + 8 <= cols; j += 8) {
      __m256i h24 = ops_hash24x8_(za, zb); /* < 2^24: a signed compare is fine */
      __m256 drop = _mm256_castsi256_ps(_mm256_cmpgt_epi32(vthr, h24)); /* h24 < thr */
      __m256 f = _mm256_andnot_ps(drop, vscale);                        /* 0 or scale */
      _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), f));
      if (bits) bits[j >> 3] = (uint8_t)_mm256_movemask_ps(drop);
      za = _mm256_add_epi64(za, step);
      zb = _mm256_add_epi64(zb, step);
    }
  }
  return j;
}
#endif

/* The scalar rule from element j0 (a multiple of 8) to the end of the row, keeping the
 * mask's bits (y may equal x: each element is read before it is written). */
static void ops_dropout_row_bits_(float *y, const float *x, int j0, int cols, uint64_t base,
                                  uint32_t thr, float scale, uint64_t key, uint8_t *bits) {
  for (int j = j0; j < cols; j++) {
    int drop = ops_hash24_(key, base + (uint64_t)j) < thr;
    if ((j & 7) == 0) bits[j >> 3] = 0;
    bits[j >> 3] |= (uint8_t)(drop << (j & 7));
    y[j] = x[j] * (drop ? 0.0f : scale);
  }
}

/* One row of dropout, y(cols) = mask(x) (y may equal x): the vector path, then the scalar
 * loops for what it left; bits (or NULL): the row's mask, ceil(cols / 8) bytes. */
static void ops_dropout_row_any_(float *yr, const float *xr, int cols, uint64_t base, uint32_t thr,
                                 float scale, uint64_t key, uint8_t *bits) {
  int j = 0; /* elements done by the vector path (a multiple of 8); the scalar loops finish */
#ifdef __AVX2__
  j = ops_dropout_row_avx2_(yr, xr, cols, base, thr, scale, key, bits);
#endif
  if (bits)
    ops_dropout_row_bits_(yr, xr, j, cols, base, thr, scale, key, bits);
  else if (yr == xr)
    ops_dropout_row_inplace_(yr + j, cols - j, base + (uint64_t)j, thr, scale, key);
  else
    ops_dropout_row_(yr + j, xr + j, cols - j, base + (uint64_t)j, thr, scale, key);
}

/* The checks of every dropout entry point; sets the threshold and the scale for 0 < p < 1. */
static void ops_dropout_prepare_(const char *who, int cols, int64_t row0, int64_t col0,
                                 int64_t cols_global, float p, uint32_t *thr, float *scale) {
  CHECK(p >= 0.0f && p <= 1.0f, "%s: p = %g is not in [0, 1]", who, (double)p);
  CHECK(col0 >= 0 && col0 + cols <= cols_global && row0 >= 0,
        "%s: block (row0 %lld, col0 %lld, cols %d) outside cols_global %lld", who, (long long)row0,
        (long long)col0, cols, (long long)cols_global);
  /* u < p with u = k * 2^-24 (k integer) <=> k < ceil(p * 2^24) (p * 2^24 is exact). */
  *thr = p > 0.0f && p < 1.0f ? (uint32_t)ceilf(p * 16777216.0f) : 0;
  *scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
}

/* y(rows, cols) = dropout of x(rows, cols), element (i,j) at global index
 * (row0 + i) * cols_global + col0 + j. */
void ops_dropout(float *y, const float *x, int rows, int cols, int64_t row0, int64_t col0,
                 int64_t cols_global, float p, uint64_t key) {
  uint32_t thr;
  float scale;
  ops_dropout_prepare_("ops_dropout", cols, row0, col0, cols_global, p, &thr, &scale);
  int64_t n = (int64_t)rows * cols;
  if (p == 0.0f) {
    if (y != x) memcpy(y, x, (size_t)n * sizeof(float));
    return;
  }
  if (p >= 1.0f) { /* every element dropped */
    memset(y, 0, (size_t)n * sizeof(float));
    return;
  }
  for (int i = 0; i < rows; i++)
    ops_dropout_row_any_(y + (int64_t)i * cols, x + (int64_t)i * cols, cols,
                         (uint64_t)((row0 + i) * cols_global + col0), thr, scale, key, NULL);
}

/* y(cols) = x * (0 where the row's mask bit is set, else scale): the product of
 * ops_dropout_row_avx2_ and ops_dropout_row_, from the kept bits (y may equal x). */
static void ops_dropout_row_apply_(float *y, const float *x, int cols, const uint8_t *bits,
                                   float scale) {
  int j = 0;
#ifdef __AVX2__
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256 vscale = _mm256_set1_ps(scale);
  for (; j + 8 <= cols; j += 8) {
    __m256i b = _mm256_and_si256(_mm256_set1_epi32(bits[j >> 3]), sel);
    __m256 drop = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, sel));
    __m256 f = _mm256_andnot_ps(drop, vscale); /* 0 or scale */
    _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), f));
  }
#endif
  for (; j < cols; j++)
    y[j] = x[j] * ((bits[j >> 3] >> (j & 7)) & 1 ? 0.0f : scale);
}

/* Row by row: the dropout of a row into y (L1-sized), then the add while it is in cache. */
void ops_dropout_add(float *y, const float *r, const float *x, int rows, int cols, int64_t row0,
                     int64_t col0, int64_t cols_global, float p, uint64_t key, uint8_t *bits) {
  uint32_t thr;
  float scale;
  ops_dropout_prepare_("ops_dropout_add", cols, row0, col0, cols_global, p, &thr, &scale);
  CHECK(y != r || rows * cols == 0, "ops_dropout_add: y may not alias r");
  for (int i = 0; i < rows; i++) {
    float *yr = y + (int64_t)i * cols;
    const float *xr = x + (int64_t)i * cols; /* may be yr */
    if (p == 0.0f) {                         /* dropout is the identity */
      if (yr != xr) memcpy(yr, xr, (size_t)cols * sizeof(float));
    } else if (p >= 1.0f) { /* ops_dropout's zeros */
      memset(yr, 0, (size_t)cols * sizeof(float));
    } else {
      ops_dropout_row_any_(yr, xr, cols, (uint64_t)((row0 + i) * cols_global + col0), thr, scale,
                           key, bits ? bits + (int64_t)i * ops_dropout_row_bytes(cols) : NULL);
    }
    ops_acc(yr, r + (int64_t)i * cols, cols); /* ops_add's a + b: the same sum */
  }
}

void ops_dropout_backward(float *g, float *dy_copy, float *gcol, const float *dy, int rows,
                          int cols, int64_t row0, int64_t col0, int64_t cols_global, float p,
                          uint64_t key, const uint8_t *bits) {
  uint32_t thr;
  float scale;
  ops_dropout_prepare_("ops_dropout_backward", cols, row0, col0, cols_global, p, &thr, &scale);
  CHECK(g != dy && g != dy_copy, "ops_dropout_backward: g may not alias dy or dy_copy");
  for (int i = 0; i < rows; i++) {
    float *restrict gr = g + (int64_t)i * cols;
    const float *restrict dr = dy + (int64_t)i * cols;
    if (p == 0.0f)
      memcpy(gr, dr, (size_t)cols * sizeof(float));
    else if (p >= 1.0f)
      memset(gr, 0, (size_t)cols * sizeof(float));
    else if (bits)
      ops_dropout_row_apply_(gr, dr, cols, bits + (int64_t)i * ops_dropout_row_bytes(cols), scale);
    else
      ops_dropout_row_any_(gr, dr, cols, (uint64_t)((row0 + i) * cols_global + col0), thr, scale,
                           key, NULL);
    if (dy_copy) memcpy(dy_copy + (int64_t)i * cols, dr, (size_t)cols * sizeof(float));
    if (gcol) {
      float *restrict gc = gcol;
      for (int j = 0; j < cols; j++)
        gc[j] += gr[j];
    }
  }
}

/* ---- Attention -------------------------------------------------------------------- */

/* In-place masked softmax of one score row s(Tk): keys j >= jlim (causal) and keys with
 * pad[j] != 0 get exactly 0; a row with no allowed key becomes all zeros. */
static void ops_softmax_row_(float *restrict s, int Tk, int jlim, const uint8_t *restrict pad) {
  if (pad)
    for (int j = 0; j < jlim; j++)
      s[j] = pad[j] ? -INFINITY : s[j];
  for (int j = jlim; j < Tk; j++)
    s[j] = 0.0f;
  float m = jlim > 0 ? ops_rowmax_(s, jlim) : -INFINITY;
  if (m == -INFINITY) { /* fully masked row: zeros, not NaN */
    for (int j = 0; j < jlim; j++)
      s[j] = 0.0f;
    return;
  }
  float sum = ops_exp_inplace_sum_(s, m, jlim); /* masked: exp(-inf) = exactly 0 */
  float inv = 1.0f / sum;
  for (int j = 0; j < jlim; j++)
    s[j] *= inv;
}

/* out(B*Tq, ldo) = heads of dropout(softmax(q k^T / sqrt(dh) + masks)) v; probs saved. */
void ops_attention_forward(float *out, int ldo, float *probs, const float *q, int ldq,
                           const float *k, const float *v, int ldk, const uint8_t *key_pad,
                           int causal, int B, int Tq, int Tk, int H, int dh, float p, uint64_t key,
                           int64_t b0, int h0, int Hg, float *scratch) {
  CHECK(ldq >= H * dh && ldk >= H * dh && ldo >= H * dh, "ops_attention_forward: bad strides");
  CHECK(!causal || Tq <= Tk, "ops_attention_forward: causal needs Tq <= Tk");
  const float alpha = 1.0f / sqrtf((float)dh);
  for (int b = 0; b < B; b++) {
    const uint8_t *pad = key_pad ? key_pad + (int64_t)b * Tk : NULL;
    for (int h = 0; h < H; h++) {
      float *P = probs + ((int64_t)b * H + h) * Tq * Tk;             /* (Tq, Tk) */
      const float *qb = q + (int64_t)b * Tq * ldq + (int64_t)h * dh; /* (Tq, dh) ld ldq */
      const float *kb = k + (int64_t)b * Tk * ldk + (int64_t)h * dh; /* (Tk, dh) ld ldk */
      const float *vb = v + (int64_t)b * Tk * ldk + (int64_t)h * dh; /* (Tk, dh) ld ldk */
      float *ob = out + (int64_t)b * Tq * ldo + (int64_t)h * dh;     /* (Tq, dh) ld ldo */
      /* S(Tq, Tk) = alpha * Q K^T */
      gemm_sgemm('N', 'T', Tq, Tk, dh, alpha, qb, ldq, kb, ldk, 0.0f, P, Tk);
      for (int i = 0; i < Tq; i++) {
        int jlim = causal ? i + (Tk - Tq) + 1 : Tk;
        ops_softmax_row_(P + (int64_t)i * Tk, Tk, jlim, pad);
      }
      const float *A = P;
      if (p > 0.0f) {
        ops_dropout(scratch, P, Tq, Tk, ((b0 + b) * Hg + h0 + h) * (int64_t)Tq, 0, Tk, p, key);
        A = scratch;
      }
      /* O(Tq, dh) = A(Tq, Tk) V(Tk, dh) */
      gemm_sgemm('N', 'N', Tq, dh, Tk, 1.0f, A, Tk, vb, ldk, 0.0f, ob, ldo);
    }
  }
}

/* dS(Tq,Tk) = P * (dP - rowsum(P * dP)), in place over dP. */
static void ops_softmax_backward_(float *restrict dP, const float *restrict P, int Tq, int Tk) {
  for (int i = 0; i < Tq; i++) {
    float *restrict d = dP + (int64_t)i * Tk;
    const float *restrict pr = P + (int64_t)i * Tk;
    float s = ops_dot_(pr, d, Tk);
    for (int j = 0; j < Tk; j++)
      d[j] = pr[j] * (d[j] - s);
  }
}

/* dcol(cols) += the column sums of x(rows, cols) (row stride ld), row after row. */
static void ops_colsum_acc_(float *restrict dcol, const float *restrict x, int rows, int cols,
                            int64_t ld) {
  for (int i = 0; i < rows; i++) {
    const float *restrict xr = x + (int64_t)i * ld;
    for (int j = 0; j < cols; j++)
      dcol[j] += xr[j];
  }
}

/* Backward of ops_attention_forward; dq, dk, dv may each be NULL (not wanted). beta = 1
 * accumulates into them, beta = 0 writes them (each (b, h) block is one gemm's output, so
 * beta goes to that gemm). dbq, dbk, dbv (H*dh, or NULL) += the column sums of the blocks
 * just written (beta = 0 only): for each column the rows come in order (b outer, t inner),
 * as in a sum over the whole array afterwards. */
static void ops_attention_backward_(float *dq, float *dk, float *dv, float beta, float *dbq,
                                    float *dbk, float *dbv, const float *dout, int ldo,
                                    const float *probs, const float *q, int ldq, const float *k,
                                    const float *v, int ldk, int B, int Tq, int Tk, int H, int dh,
                                    float p, uint64_t key, int64_t b0, int h0, int Hg,
                                    float *scratch) {
  CHECK(ldq >= H * dh && ldk >= H * dh && ldo >= H * dh, "ops_attention_backward: bad strides");
  const float alpha = 1.0f / sqrtf((float)dh);
  float *Pd = scratch;                    /* (Tq, Tk): dropout(P) */
  float *dP = scratch + (int64_t)Tq * Tk; /* (Tq, Tk) */
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < H; h++) {
      const float *P = probs + ((int64_t)b * H + h) * Tq * Tk;
      int64_t off_q = (int64_t)b * Tq * ldq + (int64_t)h * dh;
      int64_t off_k = (int64_t)b * Tk * ldk + (int64_t)h * dh;
      const float *dob = dout + (int64_t)b * Tq * ldo + (int64_t)h * dh; /* (Tq, dh) */
      int64_t row0 = ((b0 + b) * Hg + h0 + h) * (int64_t)Tq;
      if (dv) {
        const float *A = P;
        if (p > 0.0f) {
          ops_dropout(Pd, P, Tq, Tk, row0, 0, Tk, p, key);
          A = Pd;
        }
        /* dV(Tk, dh) += A^T(Tk, Tq) dO(Tq, dh) */
        gemm_sgemm('T', 'N', Tk, dh, Tq, 1.0f, A, Tk, dob, ldo, beta, dv + off_k, ldk);
        if (dbv) ops_colsum_acc_(dbv + (int64_t)h * dh, dv + off_k, Tk, dh, ldk);
      }
      if (!dq && !dk) continue;
      /* dA(Tq, Tk) = dO V^T; then through dropout and softmax. */
      gemm_sgemm('N', 'T', Tq, Tk, dh, 1.0f, dob, ldo, v + off_k, ldk, 0.0f, dP, Tk);
      if (p > 0.0f) ops_dropout(dP, dP, Tq, Tk, row0, 0, Tk, p, key);
      ops_softmax_backward_(dP, P, Tq, Tk);
      /* dQ(Tq, dh) += alpha dS K ; dK(Tk, dh) += alpha dS^T Q */
      if (dq) {
        gemm_sgemm('N', 'N', Tq, dh, Tk, alpha, dP, Tk, k + off_k, ldk, beta, dq + off_q, ldq);
        if (dbq) ops_colsum_acc_(dbq + (int64_t)h * dh, dq + off_q, Tq, dh, ldq);
      }
      if (dk) {
        gemm_sgemm('T', 'N', Tk, dh, Tq, alpha, dP, Tk, q + off_q, ldq, beta, dk + off_k, ldk);
        if (dbk) ops_colsum_acc_(dbk + (int64_t)h * dh, dk + off_k, Tk, dh, ldk);
      }
    }
  }
}

void ops_attention_backward(float *dq, float *dk, float *dv, const float *dout, int ldo,
                            const float *probs, const float *q, int ldq, const float *k,
                            const float *v, int ldk, int B, int Tq, int Tk, int H, int dh, float p,
                            uint64_t key, int64_t b0, int h0, int Hg, float *scratch) {
  ops_attention_backward_(dq, dk, dv, 1.0f, NULL, NULL, NULL, dout, ldo, probs, q, ldq, k, v, ldk,
                          B, Tq, Tk, H, dh, p, key, b0, h0, Hg, scratch);
}

void ops_attention_backward_set(float *dq, float *dk, float *dv, float *dbq, float *dbk, float *dbv,
                                const float *dout, int ldo, const float *probs, const float *q,
                                int ldq, const float *k, const float *v, int ldk, int B, int Tq,
                                int Tk, int H, int dh, float p, uint64_t key, int64_t b0, int h0,
                                int Hg, float *scratch) {
  ops_attention_backward_(dq, dk, dv, 0.0f, dbq, dbk, dbv, dout, ldo, probs, q, ldq, k, v, ldk, B,
                          Tq, Tk, H, dh, p, key, b0, h0, Hg, scratch);
}

/* ---- Embedding and positions ------------------------------------------------------ */

void ops_embedding_forward(float *y, const int32_t *tokens, const float *table, int n, int d,
                           float scale) {
  for (int i = 0; i < n; i++) {
    CHECK(tokens[i] >= 0, "ops_embedding_forward: negative token id %d", tokens[i]);
    float *restrict yr = y + (int64_t)i * d;
    const float *restrict tr = table + (int64_t)tokens[i] * d;
    for (int j = 0; j < d; j++)
      yr[j] = scale * tr[j];
  }
}

void ops_embedding_backward(float *dtable, const float *dy, const int32_t *tokens, int n, int d,
                            float scale, int pad) {
  for (int i = 0; i < n; i++) {
    if (tokens[i] == pad) continue;
    CHECK(tokens[i] >= 0, "ops_embedding_backward: negative token id %d", tokens[i]);
    float *restrict tr = dtable + (int64_t)tokens[i] * d;
    const float *restrict dr = dy + (int64_t)i * d;
    for (int j = 0; j < d; j++)
      tr[j] += scale * dr[j];
  }
}

/* fairseq's SinusoidalPositionalEmbedding.get_embedding, computed in float as fairseq does
 * (freq_i = exp(i * -(ln 10000 / (half - 1))), arg = pos * freq_i, then sin | cos). */
void ops_positions_add(float *y, int B, int T, int d, int pos0) {
  ops_positions_add_cols(y, d, B, T, d, 0, d, pos0);
}

void ops_positions_add_cols(float *y, int ld, int B, int T, int d, int col0, int cols, int pos0) {
  CHECK(d % 2 == 0 && d >= 4, "ops_positions_add: d = %d must be even and >= 4", d);
  CHECK(col0 >= 0 && cols >= 0 && col0 + cols <= d && ld >= cols,
        "ops_positions_add_cols: bad block");
  int half = d / 2;
  float c = (float)(-log(10000.0) / (double)(half - 1));
  enum { CHUNK = 256 }; /* PE values of one position, a chunk of columns at a time */
  float pe[CHUNK];
  for (int t = 0; t < T; t++) {
    float pos = (float)(pos0 + t);
    for (int j0 = 0; j0 < cols; j0 += CHUNK) {
      int nj = cols - j0 < CHUNK ? cols - j0 : CHUNK;
      for (int jj = 0; jj < nj; jj++) {
        int j = j0 + jj, i = col0 + j < half ? col0 + j : col0 + j - half;
        float a = pos * expf((float)i * c);
        pe[jj] = col0 + j < half ? sinf(a) : cosf(a);
      }
      /* rows b*T + t: contiguous runs of nj floats (the old loop strode over b) */
      for (int b = 0; b < B; b++) {
        float *restrict yr = y + ((int64_t)b * T + t) * ld + j0;
        for (int jj = 0; jj < nj; jj++)
          yr[jj] += pe[jj];
      }
    }
  }
}

/* ---- Cross-entropy ---------------------------------------------------------------- */

/* e(V) = exp(z - m); returns sum_j e[j] in float and sum_j z[j] in double, in the 16 lanes
 * of ops_sum_exp_ (the same bits). e and z do not overlap: see ops_exp_store_sum_inplace_. */
static float ops_exp_store_sum_(float *restrict e, const float *restrict z, int V, float m,
                                double *sum_z) {
  float acc[OPS_LANES] = {0};
  double accd[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= V; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++) {
      float ex = ops_expf_(z[j + l] - m);
      e[j + l] = ex;
      acc[l] += ex;
      accd[l] += (double)z[j + l];
    }
  for (; j < V; j++) {
    e[j] = ops_expf_(z[j] - m);
    acc[0] += e[j];
    accd[0] += (double)z[j];
  }
  double sz = 0.0;
  for (int l = 0; l < OPS_LANES; l++)
    sz += accd[l];
  *sum_z = sz;
  return ops_lanes_total(acc);
}

/* The same with e == z: z(V) = exp(z - m) in place. */
static float ops_exp_store_sum_inplace_(float *restrict z, int V, float m, double *sum_z) {
  float acc[OPS_LANES] = {0};
  double accd[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= V; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++) {
      float zz = z[j + l], ex = ops_expf_(zz - m);
      z[j + l] = ex;
      acc[l] += ex;
      accd[l] += (double)zz;
    }
  for (; j < V; j++) {
    float zz = z[j];
    z[j] = ops_expf_(zz - m);
    acc[0] += z[j];
    accd[0] += (double)zz;
  }
  double sz = 0.0;
  for (int l = 0; l < OPS_LANES; l++)
    sz += accd[l];
  *sum_z = sz;
  return ops_lanes_total(acc);
}

/* out(V) = gs * (e * inv - epsi) in place over e (e = exp(z - m)); the caller fixes the
 * target. */
static void ops_xent_grad_row_(float *restrict e, int V, float inv, float gs, float epsi) {
  for (int j = 0; j < V; j++)
    e[j] = gs * (e[j] * inv - epsi);
}

float ops_exp_sum(float *e, const float *z, int n, float m, double *sum_z) {
  if (!e) return ops_sum_exp_(z, m, n, sum_z);
  if (e == z) return ops_exp_store_sum_inplace_(e, n, m, sum_z);
  return ops_exp_store_sum_(e, z, n, m, sum_z);
}

int64_t ops_xent(float *dlogits, const float *logits, const int32_t *targets, int n, int V, int pad,
                 float eps, float grad_scale, double *loss_sum, double *nll_sum) {
  CHECK(V >= 2, "ops_xent: V = %d", V);
  const float epsi = eps / (float)(V - 1);
  int64_t count = 0;
  double loss_acc = 0.0, nll_acc = 0.0;
  for (int i = 0; i < n; i++) {
    const float *restrict z = logits + (int64_t)i * V;
    int t = targets[i];
    if (t == pad) {
      if (dlogits) memset(dlogits + (int64_t)i * V, 0, (size_t)V * sizeof(float));
      continue;
    }
    CHECK(t >= 0 && t < V, "ops_xent: target %d outside [0, %d)", t, V);
    float m = ops_rowmax_(z, V);
    double sz;
    float zt = z[t], se;
    float *o = dlogits ? dlogits + (int64_t)i * V : NULL;
    if (o == z) /* exp once: stored in o, then turned into the gradient */
      se = ops_exp_store_sum_inplace_(o, V, m, &sz);
    else if (o)
      se = ops_exp_store_sum_(o, z, V, m, &sz);
    else
      se = ops_sum_exp_(z, m, V, &sz);
    double lse = (double)m + log((double)se);
    double nll = lse - (double)zt;
    double smooth = (double)V * lse - sz; /* -sum_j lp_j */
    loss_acc += (1.0 - (double)eps - (double)epsi) * nll + (double)epsi * smooth;
    nll_acc += nll;
    count++;
    if (o) {
      float inv = 1.0f / se, et = o[t];
      ops_xent_grad_row_(o, V, inv, grad_scale, epsi);
      /* target weight is 1 - eps, not eps_i */
      o[t] = grad_scale * (et * inv - (1.0f - eps));
    }
  }
  if (loss_sum) *loss_sum += loss_acc;
  if (nll_sum) *nll_sum += nll_acc;
  return count;
}

/* ---- Vector helpers --------------------------------------------------------------- */

void ops_add(float *y, const float *a, const float *b, int64_t n) {
  if (y == a && y == b) {
    ops_scale(y, 2.0f, n);
  } else if (y == a) {
    ops_acc(y, b, n);
  } else if (y == b) {
    ops_acc(y, a, n);
  } else {
    float *restrict yy = y;
    const float *restrict aa = a, *restrict bb = b;
    for (int64_t i = 0; i < n; i++)
      yy[i] = aa[i] + bb[i];
  }
}

void ops_acc(float *y, const float *x, int64_t n) {
  float *restrict yy = y;
  const float *restrict xx = x;
  for (int64_t i = 0; i < n; i++)
    yy[i] += xx[i];
}

void ops_scale(float *y, float s, int64_t n) {
  float *restrict yy = y;
  for (int64_t i = 0; i < n; i++)
    yy[i] *= s;
}
