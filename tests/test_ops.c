/* test_ops.c: checks every kernel of ops.c.
 *
 * - forward: each float kernel against a small double-precision reference written here
 *   from the formula in ops.h (tolerance |a - b| <= 1e-4 * |b| + 2e-5, float rounding);
 * - backward: central finite differences of the FLOAT forward kernel, objective
 *   L = sum(y * r) for a fixed random r (loss_sum for the cross-entropy), evaluated in double,
 *   step h = 1e-2 (the ops are smooth; ReLU inputs stay 0.1 away from the kink), against the
 *   analytic gradient with |a - b| <= 2e-2 * max(|a|, |b|) + 2e-3. Gradient buffers are
 *   pre-filled with random values that are subtracted afterwards, so a backward that
 *   overwrites instead of accumulating fails;
 * - properties: probability rows sum to 1, masked and future keys get exactly 0, a fully
 *   masked row gives zeros, dropout keeps ~1-p and scales by 1/(1-p), a sub-block gets
 *   exactly the mask of the whole matrix, positions spot values, eps = 0 is plain NLL.
 */
// NP: 1
#include "config.h"
#include "harness.h"
#include "ops.h"
#include "optim.h"
#include "tpops.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- utilities ---------------------------------------------------------------------- */

static uint64_t rng_state = 0x1234567ULL;
static double rnd(void) { /* uniform in [-1, 1) */
  rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return (double)(rng_state >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}
static float *frand(int64_t n, double scale) {
  float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  for (int64_t i = 0; i < n; i++)
    x[i] = (float)(scale * rnd());
  return x;
}
static float *fzero(int64_t n) {
  return calloc((size_t)(n > 0 ? n : 1), sizeof(float));
}

/* Compare got[i] with ref[i]: |a - b| <= rtol * |b| + atol; one TEST_EXPECT per call. */
static void expect_close(const char *what, const float *got, const double *ref, int64_t n,
                         double rtol, double atol) {
  int64_t bad = 0, worst = -1;
  for (int64_t i = 0; i < n; i++) {
    double err = fabs((double)got[i] - ref[i]);
    if (!(isfinite((double)got[i]) && err <= rtol * fabs(ref[i]) + atol)) {
      if (bad == 0) worst = i;
      bad++;
    }
  }
  TEST_EXPECT(bad == 0, "%s: %lld of %lld differ, e.g. [%lld] got %.7g want %.7g", what,
              (long long)bad, (long long)n, (long long)worst, worst >= 0 ? got[worst] : 0.0,
              worst >= 0 ? ref[worst] : 0.0);
}

/* Finite-difference check: `f(ctx)` evaluates the objective in double from the current float
 * parameters; grad[i] is the analytic dL/dparam[i]. Perturbs param in place, restores it. */
typedef double (*objective_fn)(void *ctx);
#define FD_H 1e-2
#define FD_RTOL 2e-2
#define FD_ATOL 2e-3
static void fd_check(const char *what, float *param, int64_t n, const float *grad, objective_fn f,
                     void *ctx) {
  int64_t bad = 0, worst = -1;
  double worst_fd = 0.0;
  for (int64_t i = 0; i < n; i++) {
    float x0 = param[i];
    float xp = (float)(x0 + FD_H), xm = (float)(x0 - FD_H);
    param[i] = xp;
    double lp = f(ctx);
    param[i] = xm;
    double lm = f(ctx);
    param[i] = x0;
    double fd = (lp - lm) / ((double)xp - (double)xm);
    double a = grad[i];
    if (!(fabs(a - fd) <= FD_RTOL * fmax(fabs(a), fabs(fd)) + FD_ATOL)) {
      if (bad == 0) worst = i, worst_fd = fd;
      bad++;
    }
  }
  TEST_EXPECT(bad == 0,
              "%s: %lld of %lld gradients differ from finite differences, e.g. [%lld] "
              "analytic %.6g fd %.6g",
              what, (long long)bad, (long long)n, (long long)worst, worst >= 0 ? grad[worst] : 0.0,
              worst_fd);
}

static double dot_fd(const float *y, const float *r, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; i++)
    s += (double)y[i] * (double)r[i];
  return s;
}

/* g = accumulated - prefill (the part the backward added). */
static float *added(const float *acc, const float *pre, int64_t n) {
  float *g = malloc((size_t)n * sizeof(float));
  for (int64_t i = 0; i < n; i++)
    g[i] = acc[i] - pre[i];
  return g;
}
static float *copyf(const float *x, int64_t n) {
  float *y = malloc((size_t)n * sizeof(float));
  memcpy(y, x, (size_t)n * sizeof(float));
  return y;
}

/* ---- hashing ------------------------------------------------------------------------- */

static void test_hash(void) {
  const int N = 200000;
  uint64_t key = ops_hash_key(1, 2, 3, 4);
  double s = 0.0, s2 = 0.0, n1 = 0.0, n2 = 0.0, below = 0.0, inner = 0.0;
  float umin = 1.0f, umax = 0.0f;
  for (int i = 0; i < N; i++) {
    float u = ops_hash_uniform(key, (uint64_t)i);
    umin = u < umin ? u : umin;
    umax = u > umax ? u : umax;
    s += u, s2 += (double)u * u;
    double z = ops_hash_normal(key, (uint64_t)i);
    n1 += z, n2 += z * z;
    below += z < -1.0, inner += fabs(z) < 0.5;
  }
  double mean = s / N, var = s2 / N - mean * mean;
  TEST_EXPECT(umin >= 0.0f && umax < 1.0f, "uniform range [%g, %g]", umin, umax);
  TEST_EXPECT(fabs(mean - 0.5) < 0.005 && fabs(var - 1.0 / 12) < 0.003, "uniform mean %g var %g",
              mean, var);
  TEST_EXPECT(fabs(n1 / N) < 0.01 && fabs(n2 / N - 1.0) < 0.02, "normal mean %g var %g", n1 / N,
              n2 / N);
  /* normal quantiles: P(z < -1) = 0.15866, P(|z| < 0.5) = 0.38292 */
  TEST_EXPECT(fabs(below / N - 0.15866) < 0.004 && fabs(inner / N - 0.38292) < 0.005,
              "normal P(z<-1) %g P(|z|<0.5) %g", below / N, inner / N);
  TEST_EXPECT(ops_hash_uniform(key, 77) == ops_hash_uniform(key, 77), "uniform deterministic");
  /* the uniform is k * 2^-24 for an integer k */
  float u = ops_hash_uniform(key, 5);
  TEST_EXPECT((double)u * 16777216.0 == floor((double)u * 16777216.0), "uniform is k * 2^-24");
  /* neighbouring counters and keys are not correlated: lag-1 correlation */
  double c = 0.0;
  for (int i = 0; i < N - 1; i++)
    c +=
        (ops_hash_uniform(key, (uint64_t)i) - 0.5) * (ops_hash_uniform(key, (uint64_t)i + 1) - 0.5);
  TEST_EXPECT(fabs(c / (N - 1)) * 12.0 < 0.01, "lag-1 correlation %g", c / (N - 1) * 12.0);
  uint64_t k2 = ops_hash_key(1, 2, 4, 3), k3 = ops_hash_key(1, 2, 3, 5);
  TEST_EXPECT(k2 != key && k3 != key && k2 != k3, "hash_key depends on order and every input");
  int same = 0;
  for (int i = 0; i < 1000; i++)
    same += ops_hash_uniform(key, (uint64_t)i) == ops_hash_uniform(key + 1, (uint64_t)i);
  TEST_EXPECT(same < 5, "keys key and key+1 give the same uniform %d times of 1000", same);
}

/* ---- dropout ------------------------------------------------------------------------- */

typedef struct {
  float *x, *y, *r;
  int rows, cols;
  int64_t row0, col0, cols_global;
  float p;
  uint64_t key;
} dropout_ctx;
static double dropout_obj(void *v) {
  dropout_ctx *c = v;
  ops_dropout(c->y, c->x, c->rows, c->cols, c->row0, c->col0, c->cols_global, c->p, c->key);
  return dot_fd(c->y, c->r, (int64_t)c->rows * c->cols);
}

static void test_dropout(void) {
  const int R = 300, C = 333;
  const int64_t n = (int64_t)R * C;
  const float p = 0.3f;
  const uint64_t key = ops_hash_key(7, 0, 1, 2);
  float *x = frand(n, 1.0), *y = fzero(n);
  for (int64_t i = 0; i < n; i++)
    if (x[i] == 0.0f) x[i] = 0.5f;
  ops_dropout(y, x, R, C, 0, 0, C, p, key);
  int64_t kept = 0, bad_scale = 0, bad_rule = 0;
  for (int64_t i = 0; i < n; i++) {
    int drop = ops_hash_uniform(key, (uint64_t)i) < p;
    if (y[i] != 0.0f) kept++;
    if (drop && y[i] != 0.0f) bad_rule++;
    if (!drop && y[i] != x[i] * (1.0f / (1.0f - p))) bad_scale++;
  }
  double frac = (double)kept / (double)n, sd = sqrt(p * (1 - p) / (double)n);
  TEST_EXPECT(fabs(frac - (1 - p)) < 5 * sd, "dropout kept %g, want %g", frac, 1 - p);
  TEST_EXPECT(bad_rule == 0, "dropout: %lld elements with uniform < p not dropped",
              (long long)bad_rule);
  TEST_EXPECT(bad_scale == 0, "dropout: %lld kept elements not scaled by 1/(1-p)",
              (long long)bad_scale);

  /* layout independence: block (rows 37..136, cols 50..260) of the whole matrix */
  const int r0 = 37, c0 = 50, br = 100, bc = 211;
  float *xb = fzero((int64_t)br * bc), *yb = fzero((int64_t)br * bc);
  for (int i = 0; i < br; i++)
    for (int j = 0; j < bc; j++)
      xb[i * bc + j] = x[(int64_t)(r0 + i) * C + c0 + j];
  ops_dropout(yb, xb, br, bc, r0, c0, C, p, key);
  int64_t diff = 0;
  for (int i = 0; i < br; i++)
    for (int j = 0; j < bc; j++)
      diff += yb[i * bc + j] != y[(int64_t)(r0 + i) * C + c0 + j];
  TEST_EXPECT(diff == 0, "dropout sub-block differs from the whole matrix in %lld elements",
              (long long)diff);
  /* in place gives the same */
  ops_dropout(xb, xb, br, bc, r0, c0, C, p, key);
  TEST_EXPECT(memcmp(xb, yb, sizeof(float) * (size_t)br * bc) == 0, "dropout in place differs");
  /* another key gives another mask */
  ops_dropout(yb, x, br, bc, 0, 0, bc, p, key + 1);
  int64_t same = 0;
  for (int64_t i = 0; i < (int64_t)br * bc; i++)
    same += yb[i] == y[i];
  TEST_EXPECT(same < (int64_t)br * bc * 9 / 10, "dropout with another key is the same mask");
  /* p = 0: copy */
  ops_dropout(yb, x, br, bc, 0, 0, bc, 0.0f, key);
  TEST_EXPECT(memcmp(yb, x, sizeof(float) * (size_t)br * bc) == 0, "dropout p=0 is not a copy");

  /* backward = same function on dy; FD on a small block of a larger matrix */
  dropout_ctx c = {frand(6 * 9, 1.0), fzero(6 * 9), frand(6 * 9, 1.0), 6, 9, 4, 3, 20, 0.4f, key};
  float *g = fzero(6 * 9);
  ops_dropout(g, c.r, 6, 9, 4, 3, 20, 0.4f, key);
  fd_check("dropout dx", c.x, 6 * 9, g, dropout_obj, &c);
  free(c.x), free(c.y), free(c.r), free(g);
  free(x), free(y), free(xb), free(yb);
}

/* Dropout bit for bit against the rule of ops.h, element by element, at every row width
 * 1..41 (vector body of 8 and every tail), column offsets 0..9 into a wider matrix, a
 * first row far out (counters near 2^45: the 64-bit state wraps), in place and not. */
static void test_dropout_exact(void) {
  const float p = 0.25f, scale = 1.0f / (1.0f - p);
  const uint64_t key = ops_hash_key(9, 8, 7, 6);
  const int rows = 3;
  int64_t bad = 0, checked = 0, bad_inplace = 0;
  for (int cols = 1; cols <= 41; cols++)
    for (int col0 = 0; col0 < 10; col0++) {
      const int64_t cg = col0 + cols + 3, row0 = (int64_t)1 << 40;
      float *x = frand((int64_t)rows * cols, 1.0), *y = fzero((int64_t)rows * cols);
      ops_dropout(y, x, rows, cols, row0, col0, cg, p, key);
      for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
          uint64_t at = (uint64_t)((row0 + i) * cg + col0 + j);
          float want = x[i * cols + j] * (ops_hash_uniform(key, at) < p ? 0.0f : scale);
          bad += memcmp(&want, &y[i * cols + j], sizeof want) != 0;
          checked++;
        }
      ops_dropout(x, x, rows, cols, row0, col0, cg, p, key);
      bad_inplace += memcmp(x, y, sizeof(float) * (size_t)rows * cols) != 0;
      free(x), free(y);
    }
  TEST_EXPECT(bad == 0, "dropout: %lld of %lld elements differ from the scalar rule",
              (long long)bad, (long long)checked);
  TEST_EXPECT(bad_inplace == 0, "dropout in place differs at %lld widths/offsets",
              (long long)bad_inplace);
}

/* The fused dropouts bit for bit against ops_dropout followed by the separate passes they
 * replace (ops_add; a copy and the column sums in row order), at widths 1..41, offsets and
 * p = 0, 0.25 and 1, in place (ops_dropout_add's y = x) and not; the mask kept by the
 * forward against the rule, and the backward from it equal to the one from the key. */
static void test_dropout_fused(void) {
  const uint64_t key = ops_hash_key(5, 4, 3, 2);
  const float ps[3] = {0.0f, 0.25f, 1.0f};
  const int rows = 3;
  int64_t bad_add = 0, bad_g = 0, bad_copy = 0, bad_col = 0, bad_bits = 0, cases = 0;
  for (int ip = 0; ip < 3; ip++)
    for (int cols = 1; cols <= 41; cols++)
      for (int col0 = 0; col0 < 10; col0 += 3) {
        const float p = ps[ip];
        const int64_t cg = col0 + cols + 2, row0 = 1000003, n = (int64_t)rows * cols;
        size_t bytes = sizeof(float) * (size_t)n;
        float *x = frand(n, 1.0), *r = frand(n, 1.0), *want = fzero(n), *got = fzero(n);
        /* forward: y = r + dropout(x), into another buffer and in place over x */
        ops_dropout(want, x, rows, cols, row0, col0, cg, p, key);
        ops_add(want, r, want, n);
        /* the kept mask: garbage first, so every byte the forward owns must be written */
        int64_t nb = rows * ops_dropout_row_bytes(cols);
        uint8_t *bits = malloc((size_t)nb);
        memset(bits, 0xa5, (size_t)nb);
        ops_dropout_add(got, r, x, rows, cols, row0, col0, cg, p, key, bits);
        bad_add += memcmp(got, want, bytes) != 0;
        float *xi = copyf(x, n);
        ops_dropout_add(xi, r, xi, rows, cols, row0, col0, cg, p, key, NULL);
        bad_add += memcmp(xi, want, bytes) != 0;
        for (int i = 0; i < rows && p > 0.0f && p < 1.0f; i++) /* the bits against the rule */
          for (int j = 0; j < cols; j++) {
            int drop = ops_hash_uniform(key, (uint64_t)((row0 + i) * cg + col0 + j)) < p;
            bad_bits += ((bits[i * ops_dropout_row_bytes(cols) + j / 8] >> (j % 8)) & 1) != drop;
          }
        /* backward: g = dropout(dy), dy copied, column sums of g added to gcol */
        float *gw = fzero(n), *g = fzero(n), *cp = fzero(n), *col0v = frand(cols, 1.0);
        float *colw = copyf(col0v, cols), *col = copyf(col0v, cols), *g2 = fzero(n);
        ops_dropout(gw, x, rows, cols, row0, col0, cg, p, key);
        for (int i = 0; i < rows; i++)
          for (int j = 0; j < cols; j++)
            colw[j] += gw[(int64_t)i * cols + j];
        ops_dropout_backward(g, cp, col, x, rows, cols, row0, col0, cg, p, key, NULL);
        ops_dropout_backward(g2, NULL, NULL, x, rows, cols, row0, col0, cg, p, key, bits);
        bad_g += (memcmp(g, gw, bytes) != 0) + (memcmp(g2, gw, bytes) != 0);
        bad_copy += memcmp(cp, x, bytes) != 0;
        bad_col += memcmp(col, colw, sizeof(float) * (size_t)cols) != 0;
        cases++;
        free(x), free(r), free(want), free(got), free(xi), free(gw), free(g), free(cp);
        free(col0v), free(colw), free(col), free(g2), free(bits);
      }
  TEST_EXPECT(bad_add == 0, "ops_dropout_add differs from ops_dropout + ops_add in %lld of %lld",
              (long long)bad_add, (long long)(2 * cases));
  TEST_EXPECT(bad_g == 0, "ops_dropout_backward: g differs from ops_dropout in %lld of %lld",
              (long long)bad_g, (long long)(2 * cases));
  TEST_EXPECT(bad_bits == 0, "ops_dropout_add: %lld kept mask bits differ from the rule",
              (long long)bad_bits);
  TEST_EXPECT(bad_copy == 0, "ops_dropout_backward: dy_copy differs in %lld cases",
              (long long)bad_copy);
  TEST_EXPECT(bad_col == 0, "ops_dropout_backward: column sums differ in %lld cases",
              (long long)bad_col);
}

/* ---- layernorm ------------------------------------------------------------------------ */

typedef struct {
  float *x, *g, *b, *y, *mean, *rstd, *r;
  int n, d;
  float eps;
} ln_ctx;
static double ln_obj(void *v) {
  ln_ctx *c = v;
  ops_layernorm_forward(c->y, c->mean, c->rstd, c->x, c->g, c->b, c->n, c->d, c->eps);
  return dot_fd(c->y, c->r, (int64_t)c->n * c->d);
}

static void test_layernorm(void) {
  const int n = 5, d = 24;
  ln_ctx c = {frand(n * d, 2.0),
              frand(d, 0.5),
              frand(d, 0.5),
              fzero(n * d),
              fzero(n),
              fzero(n),
              frand(n * d, 1.0),
              n,
              d,
              1e-5f};
  for (int j = 0; j < d; j++)
    c.g[j] += 1.0f;
  for (int j = 0; j < d; j++)
    c.x[d + j] += 3.0f; /* a row with a large mean */
  ln_obj(&c);
  double *ref = malloc(sizeof(double) * n * d), mref[5], rref[5];
  for (int i = 0; i < n; i++) {
    double mu = 0, var = 0;
    for (int j = 0; j < d; j++)
      mu += c.x[i * d + j];
    mu /= d;
    for (int j = 0; j < d; j++)
      var += (c.x[i * d + j] - mu) * (c.x[i * d + j] - mu);
    var /= d;
    mref[i] = mu, rref[i] = 1.0 / sqrt(var + 1e-5);
    for (int j = 0; j < d; j++)
      ref[i * d + j] = (c.x[i * d + j] - mu) * rref[i] * c.g[j] + c.b[j];
  }
  expect_close("layernorm y", c.y, ref, n * d, 1e-4, 2e-5);
  expect_close("layernorm mean", c.mean, mref, n, 1e-5, 1e-6);
  expect_close("layernorm rstd", c.rstd, rref, n, 1e-4, 1e-6);

  float *dx0 = frand(n * d, 1.0), *dg0 = frand(d, 1.0), *db0 = frand(d, 1.0);
  float *dx = copyf(dx0, n * d), *dg = copyf(dg0, d), *db = copyf(db0, d);
  ops_layernorm_backward(dx, dg, db, c.r, c.x, c.mean, c.rstd, c.g, n, d);
  float *gx = added(dx, dx0, n * d), *gg = added(dg, dg0, d), *gb = added(db, db0, d);
  fd_check("layernorm dx", c.x, n * d, gx, ln_obj, &c);
  fd_check("layernorm dg", c.g, d, gg, ln_obj, &c);
  fd_check("layernorm db", c.b, d, gb, ln_obj, &c);
  /* NULL parameter gradients are allowed and dx is unchanged by them */
  ln_obj(&c);
  float *dx2 = copyf(dx0, n * d);
  ops_layernorm_backward(dx2, NULL, NULL, c.r, c.x, c.mean, c.rstd, c.g, n, d);
  TEST_EXPECT(memcmp(dx2, dx, sizeof(float) * n * d) == 0, "layernorm dx with NULL dg/db");
  free(ref), free(dx0), free(dg0), free(db0), free(dx), free(dg), free(db), free(gx), free(gg),
      free(gb), free(dx2);
  free(c.x), free(c.g), free(c.b), free(c.y), free(c.mean), free(c.rstd), free(c.r);
}

/* LayerNorm backward against its formula in double at widths around the 16-lane blocks
 * (the fused dx+dg+db path and the separate ones must agree bit for bit). */
static void test_layernorm_backward_widths(void) {
  const int widths[] = {1, 7, 16, 33, 515};
  for (int w = 0; w < 5; w++) {
    const int n = 3, d = widths[w];
    float *x = frand(n * d, 2.0), *g = frand(d, 1.0), *b = frand(d, 1.0), *y = fzero(n * d);
    float *dy = frand(n * d, 1.0), mean[3], rstd[3];
    float *dx = frand(n * d, 1.0), *dg = frand(d, 1.0), *db = frand(d, 1.0);
    float *dx0 = copyf(dx, n * d), *dg0 = copyf(dg, d), *db0 = copyf(db, d);
    ops_layernorm_forward(y, mean, rstd, x, g, b, n, d, 1e-5f);
    ops_layernorm_backward(dx, dg, db, dy, x, mean, rstd, g, n, d);
    double *rdx = malloc(sizeof(double) * n * d), *rdg = calloc((size_t)d, sizeof(double));
    double *rdb = calloc((size_t)d, sizeof(double));
    for (int i = 0; i < n; i++) {
      double mu = mean[i], rs = rstd[i], m1 = 0.0, m2 = 0.0;
      for (int j = 0; j < d; j++) {
        double xh = (x[i * d + j] - mu) * rs, gh = (double)dy[i * d + j] * g[j];
        m1 += gh / d, m2 += gh * xh / d;
        rdg[j] += (double)dy[i * d + j] * xh, rdb[j] += dy[i * d + j];
      }
      for (int j = 0; j < d; j++) {
        double xh = (x[i * d + j] - mu) * rs;
        rdx[i * d + j] = dx0[i * d + j] + rs * ((double)dy[i * d + j] * g[j] - m1 - xh * m2);
      }
    }
    for (int j = 0; j < d; j++)
      rdg[j] += dg0[j], rdb[j] += db0[j];
    char what[64];
    snprintf(what, sizeof what, "layernorm backward d=%d dx", d);
    expect_close(what, dx, rdx, n * d, 1e-4, 1e-5);
    snprintf(what, sizeof what, "layernorm backward d=%d dg", d);
    expect_close(what, dg, rdg, d, 1e-4, 1e-5);
    snprintf(what, sizeof what, "layernorm backward d=%d db", d);
    expect_close(what, db, rdb, d, 1e-4, 1e-5);
    float *dx2 = copyf(dx0, n * d), *dg2 = copyf(dg0, d), *db2 = copyf(db0, d);
    ops_layernorm_backward(dx2, NULL, NULL, dy, x, mean, rstd, g, n, d);
    ops_layernorm_backward(NULL, dg2, db2, dy, x, mean, rstd, g, n, d);
    TEST_EXPECT(memcmp(dx2, dx, sizeof(float) * n * d) == 0 &&
                    memcmp(dg2, dg, sizeof(float) * d) == 0 &&
                    memcmp(db2, db, sizeof(float) * d) == 0,
                "layernorm backward d=%d: the fused path differs from the separate ones", d);
    free(x), free(g), free(b), free(y), free(dy), free(dx), free(dg), free(db), free(dx0);
    free(dg0), free(db0), free(rdx), free(rdg), free(rdb), free(dx2), free(dg2), free(db2);
  }
}

/* ---- relu ---------------------------------------------------------------------------- */

typedef struct {
  float *x, *y, *r;
  int64_t n;
} relu_ctx;
static double relu_obj(void *v) {
  relu_ctx *c = v;
  ops_relu_forward(c->y, c->x, c->n);
  return dot_fd(c->y, c->r, c->n);
}

static void test_relu(void) {
  const int64_t n = 50;
  relu_ctx c = {frand(n, 1.0), fzero(n), frand(n, 1.0), n};
  for (int64_t i = 0; i < n; i++)
    c.x[i] += c.x[i] >= 0 ? 0.1f : -0.1f; /* away from 0 */
  relu_obj(&c);
  double ref[50];
  for (int64_t i = 0; i < n; i++)
    ref[i] = c.x[i] > 0 ? c.x[i] : 0.0;
  expect_close("relu y", c.y, ref, n, 0, 0);
  float *dx0 = frand(n, 1.0), *dx = copyf(dx0, n);
  ops_relu_backward(dx, c.r, c.y, n);
  float *g = added(dx, dx0, n);
  fd_check("relu dx", c.x, n, g, relu_obj, &c);
  relu_obj(&c); /* c.y again from the unperturbed x */
  float *z = copyf(c.x, n);
  ops_relu_forward(z, z, n);
  TEST_EXPECT(memcmp(z, c.y, sizeof(float) * n) == 0, "relu in place differs");
  free(c.x), free(c.y), free(c.r), free(dx0), free(dx), free(g), free(z);
}

/* ops_relu_backward_inplace bit for bit against the separate passes it replaces (with an
 * activation dropout: ops_dropout of dy with the forward's key; then dy = 0 where
 * !(y > 0); then the column sums in row order), at widths 1..37 (vector bodies and every
 * tail), with and without the column sums and the dropout (p = 0.3 and 1), y with zeros,
 * -0, NaN and +inf (the dropout's y * 0 is NaN there). */
static void test_relu_backward_inplace(void) {
  const int rows = 5;
  const uint64_t key = ops_hash_key(3, 1, 4, 1);
  const float ps[3] = {0.0f, 0.3f, 1.0f};
  int64_t bad = 0, bad_col = 0;
  for (int ip = 0; ip < 3; ip++)
    for (int cols = 1; cols <= 37; cols++) {
      const float p = ps[ip];
      const int64_t n = (int64_t)rows * cols, row0 = 77, cg = cols + 5;
      float *y = frand(n, 1.0), *dy = frand(n, 1.0), *dc0 = frand(cols, 1.0);
      for (int64_t i = 0; i < n; i++) /* a ReLU output: >= 0, and the odd values */
        y[i] = i % 3 ? fabsf(y[i]) : i % 2 ? -0.0f : (i % 5 ? 0.0f : (i % 4 ? NAN : INFINITY));
      float *yd = fzero(n), *want = copyf(dy, n), *dcw = copyf(dc0, cols);
      ops_dropout(yd, y, rows, cols, row0, 2, cg, p, key);
      if (p > 0.0f) ops_dropout(want, want, rows, cols, row0, 2, cg, p, key);
      for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
          float *w = &want[(int64_t)i * cols + j];
          if (!(y[(int64_t)i * cols + j] > 0.0f)) *w = 0.0f;
          dcw[j] += *w;
        }
      float *got = copyf(dy, n), *dc = copyf(dc0, cols), *got2 = copyf(dy, n);
      const float *ydp = p > 0.0f ? yd : NULL;
      ops_relu_backward_inplace(got, y, ydp, p, rows, cols, dc);
      ops_relu_backward_inplace(got2, y, ydp, p, rows, cols, NULL);
      bad += memcmp(got, want, sizeof(float) * (size_t)n) != 0;
      bad += memcmp(got2, want, sizeof(float) * (size_t)n) != 0;
      bad_col += memcmp(dc, dcw, sizeof(float) * (size_t)cols) != 0;
      free(y), free(dy), free(dc0), free(yd), free(want), free(dcw), free(got), free(dc);
      free(got2);
    }
  TEST_EXPECT(bad == 0, "relu backward in place: %lld cases differ from the separate passes",
              (long long)bad);
  TEST_EXPECT(bad_col == 0, "relu backward in place: column sums differ in %lld cases",
              (long long)bad_col);
}

/* ---- attention ----------------------------------------------------------------------- */

typedef struct {
  int B, Tq, Tk, H, dh, causal;
  int ldq, ldk, ldo;
  float p;
  uint64_t key;
  int64_t b0;
  const uint8_t *pad;
  float *q, *k, *v, *out, *probs, *r, *scratch;
} attn_ctx;
static double attn_obj(void *vc) {
  attn_ctx *c = vc;
  ops_attention_forward(c->out, c->ldo, c->probs, c->q, c->ldq, c->k, c->v, c->ldk, c->pad,
                        c->causal, c->B, c->Tq, c->Tk, c->H, c->dh, c->p, c->key, c->b0, 0, c->H,
                        c->scratch);
  double s = 0.0;
  for (int i = 0; i < c->B * c->Tq; i++)
    for (int j = 0; j < c->H * c->dh; j++)
      s += (double)c->out[(int64_t)i * c->ldo + j] * c->r[(int64_t)i * c->ldo + j];
  return s;
}

/* The documented attention in double: probs_ref(B,H,Tq,Tk), out_ref(B*Tq, ldo). */
static void attn_ref(const attn_ctx *c, double *probs_ref, double *out_ref) {
  int B = c->B, Tq = c->Tq, Tk = c->Tk, H = c->H, dh = c->dh;
  double *srow = malloc(sizeof(double) * Tk);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < Tq; i++) {
        double m = -INFINITY;
        for (int j = 0; j < Tk; j++) {
          int masked = (c->pad && c->pad[b * Tk + j]) || (c->causal && j > i + (Tk - Tq));
          double s = 0.0;
          for (int e = 0; e < dh; e++)
            s += (double)c->q[(int64_t)(b * Tq + i) * c->ldq + h * dh + e] *
                 c->k[(int64_t)(b * Tk + j) * c->ldk + h * dh + e];
          srow[j] = masked ? -INFINITY : s / sqrt((double)dh);
          m = fmax(m, srow[j]);
        }
        double sum = 0.0;
        for (int j = 0; j < Tk; j++)
          sum += srow[j] == -INFINITY ? 0.0 : exp(srow[j] - m);
        double *pr = probs_ref + (((int64_t)b * H + h) * Tq + i) * Tk;
        for (int j = 0; j < Tk; j++)
          pr[j] = (srow[j] == -INFINITY || sum == 0.0) ? 0.0 : exp(srow[j] - m) / sum;
        for (int e = 0; e < dh; e++) {
          double o = 0.0;
          for (int j = 0; j < Tk; j++) {
            uint64_t gidx = (uint64_t)((((c->b0 + b) * H + h) * Tq + i) * Tk + j);
            double a = pr[j];
            if (c->p > 0.0f)
              a = ops_hash_uniform(c->key, gidx) < c->p ? 0.0 : a / (1.0 - (double)c->p);
            o += a * c->v[(int64_t)(b * Tk + j) * c->ldk + h * dh + e];
          }
          out_ref[(int64_t)(b * Tq + i) * c->ldo + h * dh + e] = o;
        }
      }
  free(srow);
}

/* One attention case: q from a (B*Tq, ldq) array, k and v as column slices of one
 * (B*Tk, ldk) array (ldk = 2*H*dh + 3), out in a wider (B*Tq, ldo) array. */
static void attn_case(const char *name, int B, int Tq, int Tk, int H, int dh, int causal,
                      const uint8_t *pad, float p, int64_t b0) {
  char what[160];
  attn_ctx c = {B,
                Tq,
                Tk,
                H,
                dh,
                causal,
                H * dh + 2,
                2 * H * dh + 3,
                H * dh + 5,
                p,
                ops_hash_key(11, 22, 33, 44),
                b0,
                pad,
                NULL,
                NULL,
                NULL,
                NULL,
                NULL,
                NULL,
                NULL};
  int64_t nq = (int64_t)B * Tq * c.ldq, nk = (int64_t)B * Tk * c.ldk, no = (int64_t)B * Tq * c.ldo;
  int64_t np = (int64_t)B * H * Tq * Tk;
  float *kv = frand(nk, 1.5);
  c.q = frand(nq, 1.5), c.k = kv, c.v = kv + H * dh;
  c.out = frand(no, 1.0), c.probs = fzero(np), c.r = frand(no, 1.0);
  c.scratch = fzero(2 * (int64_t)Tq * Tk);
  float *out_before = copyf(c.out, no);
  attn_obj(&c);

  /* forward against the double reference; columns beyond H*dh are untouched */
  double *pref = calloc((size_t)np, sizeof(double)), *oref = calloc((size_t)no, sizeof(double));
  attn_ref(&c, pref, oref);
  float *heads = fzero(B * Tq * H * dh);
  double *heads_ref = calloc((size_t)B * Tq * H * dh, sizeof(double));
  int untouched = 1;
  for (int i = 0; i < B * Tq; i++) {
    for (int j = 0; j < H * dh; j++) {
      heads[i * H * dh + j] = c.out[(int64_t)i * c.ldo + j];
      heads_ref[i * H * dh + j] = oref[(int64_t)i * c.ldo + j];
    }
    for (int j = H * dh; j < c.ldo; j++)
      untouched &= c.out[(int64_t)i * c.ldo + j] == out_before[(int64_t)i * c.ldo + j];
  }
  snprintf(what, sizeof what, "attention %s probs", name);
  expect_close(what, c.probs, pref, np, 1e-4, 2e-6);
  snprintf(what, sizeof what, "attention %s out", name);
  expect_close(what, heads, heads_ref, B * Tq * H * dh, 1e-4, 2e-5);
  TEST_EXPECT(untouched, "attention %s wrote outside the head columns of out", name);

  /* probability rows sum to 1; masked and future keys are exactly 0 */
  int64_t bad_sum = 0, bad_mask = 0;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < Tq; i++) {
        const float *pr = c.probs + (((int64_t)b * H + h) * Tq + i) * Tk;
        double s = 0.0;
        int any = 0;
        for (int j = 0; j < Tk; j++) {
          int masked = (pad && pad[b * Tk + j]) || (causal && j > i + (Tk - Tq));
          any |= !masked;
          s += pr[j];
          if (masked && pr[j] != 0.0f) bad_mask++;
        }
        if (any ? fabs(s - 1.0) > 1e-5 : s != 0.0) bad_sum++;
      }
  TEST_EXPECT(bad_sum == 0, "attention %s: %lld probability rows do not sum to 1", name,
              (long long)bad_sum);
  TEST_EXPECT(bad_mask == 0, "attention %s: %lld masked keys with non-zero probability", name,
              (long long)bad_mask);

  /* gradients: dout = r; buffers pre-filled (accumulation) and sharing kv like the inputs */
  float *dq0 = frand(nq, 1.0), *dkv0 = frand(nk, 1.0);
  float *dq = copyf(dq0, nq), *dkv = copyf(dkv0, nk);
  ops_attention_backward(dq, dkv, dkv + H * dh, c.r, c.ldo, c.probs, c.q, c.ldq, c.k, c.v, c.ldk, B,
                         Tq, Tk, H, dh, p, c.key, b0, 0, H, c.scratch);
  float *gq = added(dq, dq0, nq), *gkv = added(dkv, dkv0, nk);
  snprintf(what, sizeof what, "attention %s dq", name);
  fd_check(what, c.q, nq, gq, attn_obj, &c);
  snprintf(what, sizeof what, "attention %s dk,dv", name);
  fd_check(what, kv, nk, gkv, attn_obj, &c);

  /* the writing variant: garbage in dq/dk/dv is overwritten, giving exactly the zeroed and
   * accumulated result inside the head columns (the rest untouched), and the bias sums
   * are the column sums over all rows in order */
  float *zq = fzero(nq), *zkv = fzero(nk), *wq = frand(nq, 9.0), *wkv = frand(nk, 9.0);
  float *wq0 = copyf(wq, nq), *wkv0 = copyf(wkv, nk), *db0 = frand(3 * H * dh, 1.0);
  float *db = copyf(db0, 3 * H * dh), *dbw = copyf(db0, 3 * H * dh);
  ops_attention_backward(zq, zkv, zkv + H * dh, c.r, c.ldo, c.probs, c.q, c.ldq, c.k, c.v, c.ldk, B,
                         Tq, Tk, H, dh, p, c.key, b0, 0, H, c.scratch);
  ops_attention_backward_set(wq, wkv, wkv + H * dh, db, db + H * dh, db + 2 * H * dh, c.r, c.ldo,
                             c.probs, c.q, c.ldq, c.k, c.v, c.ldk, B, Tq, Tk, H, dh, p, c.key, b0,
                             0, H, c.scratch);
  int64_t bad_w = 0;
  for (int i = 0; i < B * Tq; i++)
    for (int j = 0; j < c.ldq; j++) {
      float want = j < H * dh ? zq[(int64_t)i * c.ldq + j] : wq0[(int64_t)i * c.ldq + j];
      bad_w += memcmp(&want, &wq[(int64_t)i * c.ldq + j], sizeof want) != 0;
      if (j < H * dh) dbw[j] += zq[(int64_t)i * c.ldq + j];
    }
  for (int i = 0; i < B * Tk; i++)
    for (int j = 0; j < c.ldk; j++) {
      float want = j < 2 * H * dh ? zkv[(int64_t)i * c.ldk + j] : wkv0[(int64_t)i * c.ldk + j];
      bad_w += memcmp(&want, &wkv[(int64_t)i * c.ldk + j], sizeof want) != 0;
      if (j < 2 * H * dh) dbw[H * dh + j] += zkv[(int64_t)i * c.ldk + j];
    }
  TEST_EXPECT(bad_w == 0, "attention %s: the writing backward differs in %lld elements", name,
              (long long)bad_w);
  TEST_EXPECT(memcmp(db, dbw, sizeof(float) * 3 * H * dh) == 0,
              "attention %s: the q/k/v bias sums differ from the column sums", name);
  free(zq), free(zkv), free(wq), free(wkv), free(wq0), free(wkv0), free(db0), free(db), free(dbw);

  free(kv), free(c.q), free(c.out), free(c.probs), free(c.r), free(c.scratch), free(out_before);
  free(pref), free(oref), free(heads), free(heads_ref), free(dq0), free(dkv0), free(dq), free(dkv);
  free(gq), free(gkv);
}

static void test_attention(void) {
  const int B = 2, H = 2, dh = 4;
  /* padding: sequence 0 has its last 2 of 7 keys padded, sequence 1 its first */
  uint8_t pad7[14] = {0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0};
  uint8_t pad6[12] = {0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1};
  attn_case("padded cross (Tq 5, Tk 7)", B, 5, 7, H, dh, 0, pad7, 0.0f, 0);
  attn_case("causal self (T 6) + pad", B, 6, 6, H, dh, 1, pad6, 0.0f, 0);
  attn_case("causal incremental (Tq 3, Tk 7)", B, 3, 7, H, dh, 1, NULL, 0.0f, 0);
  attn_case("dropout 0.3 + pad, b0 = 3", B, 5, 7, H, dh, 0, pad7, 0.3f, 3);
  attn_case("causal + dropout 0.2 (Tq 4, Tk 6)", B, 4, 6, H, dh, 1, NULL, 0.2f, 1);
  attn_case("Tk 40 (vector path), pad", 1, 3, 40, 1, 8, 0, (const uint8_t[40]){[5] = 1, [39] = 1},
            0.0f, 0);

  /* a fully masked sequence gives zero probabilities and output, not NaN */
  uint8_t allpad[8] = {0, 0, 1, 0, 1, 1, 1, 1};
  int Tq = 2, Tk = 4, ld = H * dh;
  float *q = frand(B * Tq * ld, 1.0), *kv = frand(B * Tk * ld, 1.0), *out = frand(B * Tq * ld, 1.0);
  float *probs = fzero(B * H * Tq * Tk), *scr = fzero(2 * Tq * Tk);
  ops_attention_forward(out, ld, probs, q, ld, kv, kv, ld, allpad, 0, B, Tq, Tk, H, dh, 0.0f, 0, 0,
                        0, H, scr);
  int zero = 1;
  for (int i = H * Tq * Tk; i < B * H * Tq * Tk; i++)
    zero &= probs[i] == 0.0f;
  for (int i = Tq * ld; i < B * Tq * ld; i++)
    zero &= out[i] == 0.0f;
  TEST_EXPECT(zero, "attention: a fully masked row is not all zeros");
  free(q), free(kv), free(out), free(probs), free(scr);
}

/* ---- embedding and positions --------------------------------------------------------- */

typedef struct {
  float *table, *y, *r;
  const int32_t *tok;
  int n, d;
  float scale;
} emb_ctx;
static double emb_obj(void *v) {
  emb_ctx *c = v;
  ops_embedding_forward(c->y, c->tok, c->table, c->n, c->d, c->scale);
  return dot_fd(c->y, c->r, (int64_t)c->n * c->d);
}

static void test_embedding(void) {
  const int V = 6, d = 5, n = 7, pad = 1;
  const int32_t tok[7] = {3, 1, 0, 3, 5, 1, 2};
  emb_ctx c = {frand(V * d, 1.0), fzero(n * d), frand(n * d, 1.0), tok, n, d, 2.5f};
  emb_obj(&c);
  double ref[35];
  for (int i = 0; i < n; i++)
    for (int j = 0; j < d; j++)
      ref[i * d + j] = 2.5f * c.table[tok[i] * d + j];
  expect_close("embedding y", c.y, ref, n * d, 0, 0);
  float *dt0 = frand(V * d, 1.0), *dt = copyf(dt0, V * d);
  ops_embedding_backward(dt, c.r, tok, n, d, 2.5f, pad);
  float *g = added(dt, dt0, V * d);
  int padzero = 1;
  for (int j = 0; j < d; j++)
    padzero &= g[pad * d + j] == 0.0f;
  TEST_EXPECT(padzero, "embedding: the pad row got a gradient");
  /* the FD gradient of the pad row is not zero (pad tokens are looked up): compare the
   * others, and the pad row against 0 */
  for (int j = 0; j < d; j++)
    g[pad * d + j] = (float)(2.5 * (c.r[1 * d + j] + c.r[5 * d + j]));
  fd_check("embedding dtable", c.table, V * d, g, emb_obj, &c);
  free(c.table), free(c.y), free(c.r), free(dt0), free(dt), free(g);
}

static void test_positions(void) {
  const int B = 2, T = 5, d = 16, pos0 = 2, half = d / 2;
  float *y = frand(B * T * d, 1.0), *y0 = copyf(y, B * T * d);
  ops_positions_add(y, B, T, d, pos0);
  double *ref = malloc(sizeof(double) * B * T * d);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int i = 0; i < half; i++) {
        double a = (pos0 + t) * exp(-i * log(10000.0) / (half - 1));
        ref[(b * T + t) * d + i] = y0[(b * T + t) * d + i] + sin(a);
        ref[(b * T + t) * d + half + i] = y0[(b * T + t) * d + half + i] + cos(a);
      }
  expect_close("positions", y, ref, B * T * d, 0, 3e-6);
  /* spot values on zeros: PE(0) = [0..0, 1..1]; PE(1)[0] = sin 1; PE(1)[half-1] = sin 1e-4 */
  float z[3 * 8] = {0};
  ops_positions_add(z, 1, 3, 8, 0);
  TEST_EXPECT(z[0] == 0.0f && z[3] == 0.0f && z[4] == 1.0f && z[7] == 1.0f, "PE(0) wrong");
  TEST_EXPECT(fabs(z[8] - sin(1.0)) < 1e-6 && fabs(z[8 + 4] - cos(1.0)) < 1e-6, "PE(1)[0] wrong");
  TEST_EXPECT(fabs(z[8 + 3] - sin(1e-4)) < 1e-7 && fabs(z[8 + 7] - cos(1e-4)) < 1e-6,
              "PE(1)[half-1] wrong");
  TEST_EXPECT(fabs(z[16 + 1] - sin(2.0 * pow(10000.0, -1.0 / 3))) < 1e-6, "PE(2)[1] wrong");
  /* a column block (a process column's share, across the sin/cos halves) gets exactly
   * those columns of the whole */
  float full[2 * 5 * 16] = {0}, blk[2 * 5 * 6] = {0};
  ops_positions_add(full, B, T, d, pos0);
  ops_positions_add_cols(blk, 6, B, T, d, 5, 6, pos0);
  int same = 1;
  for (int r = 0; r < B * T; r++)
    for (int j = 0; j < 6; j++)
      same &= blk[r * 6 + j] == full[r * d + 5 + j];
  TEST_EXPECT(same, "positions of columns 5..10 differ from those of the whole");
  free(y), free(y0), free(ref);

  /* wide rows (the kernel works in chunks of 256 columns: 3 chunks, a tail of 18) on a
   * column block with row stride ld > cols: every value against the formula, and the
   * columns past cols untouched */
  const int B2 = 3, T2 = 7, d2 = 1100, c0 = 37, nc = 530, ld = 541, h2 = d2 / 2;
  float *w = frand((int64_t)B2 * T2 * ld, 1.0), *w0 = copyf(w, (int64_t)B2 * T2 * ld);
  ops_positions_add_cols(w, ld, B2, T2, d2, c0, nc, 3);
  double *wr = malloc(sizeof(double) * B2 * T2 * ld);
  for (int r = 0; r < B2 * T2; r++)
    for (int j = 0; j < ld; j++) {
      int gj = c0 + j, i = gj < h2 ? gj : gj - h2;
      double a = (3 + r % T2) * exp(-i * log(10000.0) / (h2 - 1));
      wr[r * ld + j] = w0[r * ld + j] + (j >= nc ? 0.0 : gj < h2 ? sin(a) : cos(a));
    }
  /* float pos * freq loses ~1e-7 relative of an argument up to 9: a few 1e-6 absolute */
  expect_close("positions, wide column block", w, wr, (int64_t)B2 * T2 * ld, 0, 5e-6);
  int untouched = 1;
  for (int r = 0; r < B2 * T2; r++)
    for (int j = nc; j < ld; j++)
      untouched &= w[r * ld + j] == w0[r * ld + j];
  TEST_EXPECT(untouched, "positions wrote past cols");
  free(w), free(w0), free(wr);
}

/* ---- cross-entropy ------------------------------------------------------------------- */

typedef struct {
  float *logits;
  const int32_t *tgt;
  int n, V, pad;
  float eps, gs;
} xent_ctx;
static double xent_obj(void *v) {
  xent_ctx *c = v;
  double loss = 0.0, nll = 0.0;
  ops_xent(NULL, c->logits, c->tgt, c->n, c->V, c->pad, c->eps, c->gs, &loss, &nll);
  return c->gs * loss;
}

/* Direct double formula: sums of loss and nll over non-pad rows. */
static int64_t xent_ref(const float *z, const int32_t *tgt, int n, int V, int pad, double eps,
                        double *loss, double *nll) {
  int64_t cnt = 0;
  *loss = *nll = 0.0;
  for (int i = 0; i < n; i++) {
    if (tgt[i] == pad) continue;
    double m = -INFINITY, s = 0.0, slp = 0.0;
    for (int j = 0; j < V; j++)
      m = fmax(m, z[i * V + j]);
    for (int j = 0; j < V; j++)
      s += exp(z[i * V + j] - m);
    double lse = m + log(s);
    for (int j = 0; j < V; j++)
      slp += z[i * V + j] - lse;
    double nl = lse - z[i * V + tgt[i]], epsi = eps / (V - 1);
    *loss += (1 - eps - epsi) * nl + epsi * (-slp);
    *nll += nl;
    cnt++;
  }
  return cnt;
}

static void test_xent(void) {
  const int n = 6, V = 11, pad = 1;
  const int32_t tgt[6] = {4, 1, 0, 10, 1, 7};
  xent_ctx c = {frand(n * V, 3.0), tgt, n, V, pad, 0.1f, 0.5f};
  c.logits[3 * V + 10] += 4.0f;
  float *dl = frand(n * V, 1.0);
  double loss = 1.0, nll = 2.0, rl, rn; /* sums are added into */
  int64_t cnt = ops_xent(dl, c.logits, tgt, n, V, pad, c.eps, c.gs, &loss, &nll);
  int64_t rc = xent_ref(c.logits, tgt, n, V, pad, c.eps, &rl, &rn);
  TEST_EXPECT(cnt == 4 && rc == 4, "xent counted %lld rows, want 4", (long long)cnt);
  TEST_EXPECT(test_close(loss - 1.0, rl, 1e-6, 1e-6), "xent loss %.9g, want %.9g", loss - 1.0, rl);
  TEST_EXPECT(test_close(nll - 2.0, rn, 1e-6, 1e-6), "xent nll %.9g, want %.9g", nll - 2.0, rn);
  int padzero = 1;
  for (int j = 0; j < V; j++)
    padzero &= dl[1 * V + j] == 0.0f && dl[4 * V + j] == 0.0f;
  TEST_EXPECT(padzero, "xent: pad rows have a non-zero gradient");
  fd_check("xent dlogits", c.logits, n * V, dl, xent_obj, &c);
  /* dlogits aliasing logits gives the same */
  float *al = copyf(c.logits, n * V);
  double l2 = 0.0, n2 = 0.0;
  ops_xent(al, al, tgt, n, V, pad, c.eps, c.gs, &l2, &n2);
  TEST_EXPECT(memcmp(al, dl, sizeof(float) * n * V) == 0 && l2 == loss - 1.0,
              "xent in place differs");
  /* eps = 0 is plain NLL; the loss equals the nll */
  double l0 = 0.0, n0 = 0.0;
  ops_xent(NULL, c.logits, tgt, n, V, pad, 0.0f, 1.0f, &l0, &n0);
  TEST_EXPECT(test_close(l0, rn, 1e-6, 1e-6) && l0 == n0,
              "xent eps=0: loss %.9g nll %.9g want %.9g", l0, n0, rn);
  /* a large vocabulary row (vector paths) against the formula */
  const int V2 = 1000;
  float *big = frand(3 * V2, 8.0);
  const int32_t t2[3] = {17, 999, 500};
  double lb = 0.0, nb = 0.0;
  float *dbig = fzero(3 * V2);
  ops_xent(dbig, big, t2, 3, V2, -1, 0.1f, 1.0f, &lb, &nb);
  xent_ref(big, t2, 3, V2, -1, 0.1f, &rl, &rn);
  TEST_EXPECT(test_close(lb, rl, 1e-6, 1e-5) && test_close(nb, rn, 1e-6, 1e-5),
              "xent V=1000: loss %.9g want %.9g", lb, rl);
  double gsum = 0.0;
  for (int j = 0; j < 3 * V2; j++)
    gsum += dbig[j];
  TEST_EXPECT(fabs(gsum) < 1e-4, "xent V=1000: gradient rows do not sum to 0 (%g)", gsum);
  free(c.logits), free(dl), free(al), free(big), free(dbig);

  /* every gradient element against the formula in double at widths around the 16-lane
   * blocks (tails 0..15), targets at the first, last and a tail column, in place and not */
  const int widths[] = {2, 15, 16, 17, 31, 47, 1003};
  for (int w = 0; w < 7; w++) {
    const int V3 = widths[w], n3 = 3;
    const int32_t t3[3] = {0, V3 - 1, V3 / 2};
    float *z = frand(n3 * V3, 6.0), *g3 = fzero(n3 * V3);
    double l3 = 0.0, nl3 = 0.0;
    ops_xent(g3, z, t3, n3, V3, -1, 0.1f, 0.5f, &l3, &nl3);
    double *gref = malloc(sizeof(double) * n3 * V3);
    for (int i = 0; i < n3; i++) {
      double m = -INFINITY, se = 0.0, epsi = 0.1 / (V3 - 1);
      for (int j = 0; j < V3; j++)
        m = fmax(m, z[i * V3 + j]);
      for (int j = 0; j < V3; j++)
        se += exp(z[i * V3 + j] - m);
      for (int j = 0; j < V3; j++)
        gref[i * V3 + j] = 0.5 * (exp(z[i * V3 + j] - m) / se - (j == t3[i] ? 0.9 : epsi));
    }
    char what[64];
    snprintf(what, sizeof what, "xent dlogits V=%d", V3);
    expect_close(what, g3, gref, n3 * V3, 1e-5, 1e-7);
    ops_xent(z, z, t3, n3, V3, -1, 0.1f, 0.5f, &l3, &nl3);
    TEST_EXPECT(memcmp(z, g3, sizeof(float) * n3 * V3) == 0, "xent V=%d in place differs", V3);
    free(z), free(g3), free(gref);
  }
}

/* ---- vector helpers ------------------------------------------------------------------ */

static void test_helpers(void) {
  float a[37], b[37], y[37];
  for (int i = 0; i < 37; i++)
    a[i] = (float)i, b[i] = (float)(2 * i + 1);
  ops_add(y, a, b, 37);
  int ok = 1;
  for (int i = 0; i < 37; i++)
    ok &= y[i] == 3 * i + 1;
  ops_acc(y, a, 37);
  for (int i = 0; i < 37; i++)
    ok &= y[i] == 4 * i + 1;
  ops_scale(y, 0.5f, 37);
  for (int i = 0; i < 37; i++)
    ok &= y[i] == 2 * i + 0.5f;
  ops_add(a, a, a, 37);
  for (int i = 0; i < 37; i++)
    ok &= a[i] == 2 * i;
  TEST_EXPECT(ok, "ops_add / ops_acc / ops_scale");
}

/* tpops_xent on one rank (MPI_COMM_SELF, the whole vocabulary): the loss and gradient of
 * ops_xent within float rounding (libm expf there, a polynomial here), a pad row zeroed,
 * argmax right, and in place bit-identical to out of place, at odd widths. */
static void test_tpops_xent_one_rank(void) {
  const int widths[] = {2, 17, 1003};
  for (int w = 0; w < 3; w++) {
    const int V = widths[w], n = 4, pad = 1;
    const int32_t t[4] = {0, V - 1, pad, V / 2};
    float *z = frand(n * V, 5.0), *g1 = fzero(n * V), *g2 = fzero(n * V);
    z[3 * V + 1] = 9.0f; /* row 3's argmax */
    double l1 = 0.0, nl1 = 0.0, l2 = 0.0, nl2 = 0.0, scratch[16];
    int32_t am[4];
    int64_t c1 = ops_xent(g1, z, t, n, V, pad, 0.1f, 0.5f, &l1, &nl1);
    int64_t c2 =
        tpops_xent(g2, z, t, n, V, 0, V, pad, 0.1f, 0.5f, &l2, &nl2, am, MPI_COMM_SELF, scratch);
    int64_t want = 0;
    for (int i = 0; i < n; i++)
      want += t[i] != pad;
    TEST_EXPECT(c1 == want && c2 == want && test_close(l2, l1, 1e-6, 1e-6) &&
                    test_close(nl2, nl1, 1e-6, 1e-6),
                "tpops_xent V=%d: count %lld loss %.9g nll %.9g, ops_xent %lld %.9g %.9g", V,
                (long long)c2, l2, nl2, (long long)c1, l1, nl1);
    double *ref = malloc(sizeof(double) * n * V);
    for (int64_t i = 0; i < (int64_t)n * V; i++)
      ref[i] = g1[i];
    char what[64];
    snprintf(what, sizeof what, "tpops_xent V=%d dlogits vs ops_xent", V);
    expect_close(what, g2, ref, n * V, 1e-5, 1e-8);
    TEST_EXPECT(am[3] == 1, "tpops_xent V=%d: argmax of row 3 is %d, want 1", V, am[3]);
    float *za = copyf(z, n * V);
    tpops_xent(za, za, t, n, V, 0, V, pad, 0.1f, 0.5f, NULL, NULL, NULL, MPI_COMM_SELF, scratch);
    TEST_EXPECT(memcmp(za, g2, sizeof(float) * n * V) == 0, "tpops_xent V=%d in place differs", V);
    free(z), free(g1), free(g2), free(ref), free(za);
  }
}

/* tpops LayerNorm on one rank (MPI_COMM_SELF, dl = d) against ops LayerNorm within float
 * rounding at widths around the 16 lanes; its backward without dg/db gives the same dx. */
static void test_tpops_layernorm_one_rank(void) {
  const int widths[] = {1, 15, 16, 37, 515};
  for (int w = 0; w < 5; w++) {
    const int n = 3, d = widths[w];
    float *x = frand(n * d, 2.0), *g = frand(d, 1.0), *b = frand(d, 1.0), *dy = frand(n * d, 1.0);
    float *y1 = fzero(n * d), *y2 = fzero(n * d), m1[3], r1[3], m2[3], r2[3], scr[6];
    float *dx1 = fzero(n * d), *dx2 = fzero(n * d), *dx3 = fzero(n * d);
    float *dg1 = fzero(d), *db1 = fzero(d), *dg2 = fzero(d), *db2 = fzero(d);
    ops_layernorm_forward(y1, m1, r1, x, g, b, n, d, 1e-5f);
    tpops_layernorm_forward(y2, m2, r2, x, g, b, n, d, d, 1e-5f, MPI_COMM_SELF);
    ops_layernorm_backward(dx1, dg1, db1, dy, x, m1, r1, g, n, d);
    tpops_layernorm_backward(dx2, dg2, db2, dy, x, m2, r2, g, n, d, d, MPI_COMM_SELF, scr);
    tpops_layernorm_backward(dx3, NULL, NULL, dy, x, m2, r2, g, n, d, d, MPI_COMM_SELF, scr);
    double *r = malloc(sizeof(double) * n * d);
    char what[64];
#define TPLN_CMP(name, got, want, len)                                                             \
  do {                                                                                             \
    for (int i_ = 0; i_ < (len); i_++)                                                             \
      r[i_] = (want)[i_];                                                                          \
    snprintf(what, sizeof what, "tpops layernorm d=%d %s", d, name);                               \
    expect_close(what, got, r, len, 1e-4, 1e-5);                                                   \
  } while (0)
    TPLN_CMP("y", y2, y1, n * d);
    TPLN_CMP("rstd", r2, r1, n);
    TPLN_CMP("dx", dx2, dx1, n * d);
    TPLN_CMP("dg", dg2, dg1, d);
    TPLN_CMP("db", db2, db1, d);
#undef TPLN_CMP
    TEST_EXPECT(memcmp(dx2, dx3, sizeof(float) * n * d) == 0,
                "tpops layernorm d=%d: dx without dg/db differs", d);
    free(x), free(g), free(b), free(dy), free(y1), free(y2), free(dx1), free(dx2), free(dx3);
    free(dg1), free(db1), free(dg2), free(db2), free(r);
  }
}

/* optim_sync_grads on one rank (MPI_COMM_SELF for dp, tp and pp): grads scaled exactly
 * (g * scale in float), and the norm over [norm_lo, norm_hi) against an in-order double
 * sum, at sizes around the 16 lanes and a norm range that starts and ends mid-block. */
static void test_sync_grads(void) {
  config c;
  config_defaults(&c);
  const int64_t sizes[] = {1, 15, 16, 33, 100003};
  for (int k = 0; k < 5; k++) {
    const int64_t n = sizes[k], lo = n > 40 ? 7 : 0, hi = n > 40 ? n - 9 : n;
    float *g = frand(n, 3.0), *g0 = copyf(g, n);
    optim o;
    optim_init(&o, &c, n, MPI_COMM_SELF);
    optim_set_tp(&o, MPI_COMM_SELF, hi);
    optim_set_pp(&o, MPI_COMM_SELF, lo);
    double norm = optim_sync_grads(&o, g, 0.37f), ref = 0.0;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
      float want = g0[i] * 0.37f;
      bad += memcmp(&want, &g[i], sizeof want) != 0;
      if (i >= lo && i < hi) ref += (double)want * want;
    }
    TEST_EXPECT(bad == 0, "sync_grads n=%lld: %lld gradients not scaled exactly", (long long)n,
                (long long)bad);
    TEST_EXPECT(fabs(norm - sqrt(ref)) <= 1e-12 * sqrt(ref),
                "sync_grads n=%lld: norm %.17g want %.17g", (long long)n, norm, sqrt(ref));
    optim_free(&o);
    free(g), free(g0);
  }
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  test_hash();
  test_dropout();
  test_dropout_exact();
  test_dropout_fused();
  test_layernorm();
  test_layernorm_backward_widths();
  test_relu();
  test_relu_backward_inplace();
  test_attention();
  test_embedding();
  test_positions();
  test_xent();
  test_helpers();
  test_sync_grads();
  test_tpops_xent_one_rank();
  test_tpops_layernorm_one_rank();
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
