/* tpops.c: LayerNorm and cross-entropy over column-split rows (see tpops.h).
 *
 * Each function computes per-row partial sums of its own columns, all-reduces them over
 * the process row in one call (n or 2n or 3n values), and finishes locally. The local sums
 * run in 16 fixed lanes so that gcc vectorizes them (in-order float sums are bound by the
 * add latency); the cross-entropy's exp and sums are ops_exp_sum's (ops_xent's polynomial
 * exp), and its partials are all-reduced as doubles: the loss is reported in double, as
 * ops_xent does.
 */
#include "tpops.h"

#include "debug.h"
#include "ops.h"

#include <float.h>
#include <math.h>
#include <string.h>

#ifdef MPIFORMER_DEBUG
/* A checksum of the targets for DEBUG_AGREE: every column block of a row sees the same. */
static int64_t tpops_targets_sum_(const int32_t *targets, int n) {
  uint64_t h = 0;
  for (int i = 0; i < n; i++)
    h = h * 1000003u + (uint32_t)targets[i];
  return (int64_t)h;
}
#endif

/* One row of LayerNorm backward's local sums: dg(dl) += dy * xhat, db(dl) += dy,
 * s[0] = sum dy * g, s[1] = sum dy * g * xhat, xhat = (x - mu) * rs. */
static void tpops_ln_bwd_row_(float *restrict dg, float *restrict db, float *s,
                              const float *restrict dyr, const float *restrict xr,
                              const float *restrict g, float mu, float rs, int dl) {
  float a1[OPS_LANES] = {0}, a2[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= dl; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++) {
      float xhat = (xr[j + l] - mu) * rs, dyv = dyr[j + l];
      dg[j + l] += dyv * xhat;
      db[j + l] += dyv;
      a1[l] += dyv * g[j + l];
      a2[l] += dyv * g[j + l] * xhat;
    }
  for (; j < dl; j++) {
    float xhat = (xr[j] - mu) * rs, dyv = dyr[j];
    dg[j] += dyv * xhat;
    db[j] += dyv;
    a1[0] += dyv * g[j];
    a2[0] += dyv * g[j] * xhat;
  }
  s[0] = ops_lanes_total(a1);
  s[1] = ops_lanes_total(a2);
}

/* The sums of tpops_ln_bwd_row_ alone (the same lanes and expressions: the same bits). */
static void tpops_ln_bwd_sums_(float *s, const float *restrict dyr, const float *restrict xr,
                               const float *restrict g, float mu, float rs, int dl) {
  float a1[OPS_LANES] = {0}, a2[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= dl; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++) {
      float xhat = (xr[j + l] - mu) * rs, dyv = dyr[j + l];
      a1[l] += dyv * g[j + l];
      a2[l] += dyv * g[j + l] * xhat;
    }
  for (; j < dl; j++) {
    float xhat = (xr[j] - mu) * rs, dyv = dyr[j];
    a1[0] += dyv * g[j];
    a2[0] += dyv * g[j] * xhat;
  }
  s[0] = ops_lanes_total(a1);
  s[1] = ops_lanes_total(a2);
}

void tpops_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                             const float *b, int n, int dl, int d, float eps, MPI_Comm row_comm) {
  CHECK(y != x, "tpops_layernorm_forward: y may not alias x");
  DEBUG_AGREE(row_comm, n, d, debug_bits(eps));
  for (int i = 0; i < n; i++) /* (n) row sums of this rank's columns */
    mean[i] = ops_row_sum(x + (int64_t)i * dl, dl);
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, mean, n, MPI_FLOAT, MPI_SUM, row_comm));
  for (int i = 0; i < n; i++) {
    float mu = mean[i] / (float)d;
    mean[i] = mu;
    rstd[i] = ops_row_sumsq_centered(x + (int64_t)i * dl, mu, dl);
  }
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, rstd, n, MPI_FLOAT, MPI_SUM, row_comm));
  for (int i = 0; i < n; i++) {
    const float *xr = x + (int64_t)i * dl;
    float *yr = y + (int64_t)i * dl;
    float mu = mean[i], rs = 1.0f / sqrtf(rstd[i] / (float)d + eps);
    rstd[i] = rs;
    for (int j = 0; j < dl; j++)
      yr[j] = (xr[j] - mu) * rs * g[j] + b[j];
  }
}

void tpops_layernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                              const float *mean, const float *rstd, const float *g, int n, int dl,
                              int d, MPI_Comm row_comm, float *scratch) {
  DEBUG_AGREE(row_comm, n, d, dx != NULL); /* no dx: no all-reduce */
  for (int i = 0; i < n && dg && db; i++)  /* the training case, vectorized */
    tpops_ln_bwd_row_(dg, db, scratch + 2 * i, dy + (int64_t)i * dl, x + (int64_t)i * dl, g,
                      mean[i], rstd[i], dl);
  for (int i = 0; i < n && !(dg && db); i++) { /* the same sums; dg or db not wanted */
    const float *xr = x + (int64_t)i * dl, *dyr = dy + (int64_t)i * dl;
    float mu = mean[i], rs = rstd[i];
    tpops_ln_bwd_sums_(scratch + 2 * i, dyr, xr, g, mu, rs, dl);
    for (int j = 0; j < dl && dg; j++)
      dg[j] += dyr[j] * ((xr[j] - mu) * rs);
    for (int j = 0; j < dl && db; j++)
      db[j] += dyr[j];
  }
  if (!dx) return;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, scratch, 2 * n, MPI_FLOAT, MPI_SUM, row_comm));
  for (int i = 0; i < n; i++) {
    const float *xr = x + (int64_t)i * dl, *dyr = dy + (int64_t)i * dl;
    float *dxr = dx + (int64_t)i * dl;
    float mu = mean[i], rs = rstd[i];
    float m1 = scratch[2 * i] / (float)d, m2 = scratch[2 * i + 1] / (float)d;
    for (int j = 0; j < dl; j++)
      dxr[j] += rs * (dyr[j] * g[j] - m1 - (xr[j] - mu) * rs * m2);
  }
}

int64_t tpops_xent(float *dlogits, const float *logits, const int32_t *targets, int n, int Vl,
                   int64_t v0, int64_t V, int pad, float eps, float grad_scale, double *loss_sum,
                   double *nll_sum, int32_t *argmax, MPI_Comm row_comm, double *scratch) {
  CHECK(V >= 2, "tpops_xent: V = %lld", (long long)V);
  DEBUG_AGREE(row_comm, n, V, pad, debug_bits(eps), debug_bits(grad_scale),
              tpops_targets_sum_(targets, n));
  const double epsi = (double)eps / (double)(V - 1);
  /* pass 1: row maxima (with their global index for argmax) */
  struct {
    float v;
    int i;
  } *mx = (void *)scratch; /* n pairs fit in 4n doubles */
  for (int i = 0; i < n; i++) {
    const float *z = logits + (int64_t)i * Vl;
    float m = -FLT_MAX;
    int at = INT32_MAX;
    for (int j = 0; j < Vl; j++)
      if (z[j] > m || at == INT32_MAX) m = z[j], at = (int)(v0 + j);
    mx[i].v = m;
    mx[i].i = at;
  }
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, mx, n, MPI_FLOAT_INT, MPI_MAXLOC, row_comm));
  /* pass 2: sum of exp(z - m), sum of z, the target's logit (0 where not owned); with
   * dlogits, exp(z - m) is kept there for pass 3 (computed once; dlogits may be logits:
   * each z[j] is read before its slot is written) */
  double *part = scratch + n;
  for (int i = 0; i < n; i++) {
    const float *z = logits + (int64_t)i * Vl;
    float *e = dlogits ? dlogits + (int64_t)i * Vl : NULL;
    float m = mx[i].v;
    double se = 0.0, sz = 0.0, zt = 0.0;
    int t = targets[i];
    if (t != pad) {
      CHECK(t >= 0 && t < V, "tpops_xent: target %d outside [0, %lld)", t, (long long)V);
      if (t >= v0 && t < v0 + Vl) zt = (double)z[t - v0];
      se = (double)ops_exp_sum(e, z, Vl, m, &sz); /* vectorized: float lanes, double sum_z */
    }
    part[3 * i] = se, part[3 * i + 1] = sz, part[3 * i + 2] = zt;
  }
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, part, 3 * n, MPI_DOUBLE, MPI_SUM, row_comm));
  int64_t count = 0;
  double loss_acc = 0.0, nll_acc = 0.0;
  for (int i = 0; i < n; i++) {
    float m = mx[i].v;
    if (argmax) argmax[i] = mx[i].i;
    int t = targets[i];
    float *o = dlogits ? dlogits + (int64_t)i * Vl : NULL;
    if (t == pad) {
      if (o) memset(o, 0, (size_t)Vl * sizeof(float));
      continue;
    }
    double se = part[3 * i], sz = part[3 * i + 1], zt = part[3 * i + 2];
    double lse = (double)m + log(se);
    double nll = lse - zt;
    loss_acc += (1.0 - (double)eps - epsi) * nll + epsi * ((double)V * lse - sz);
    nll_acc += nll;
    count++;
    if (o) { /* o holds exp(z - m) from pass 2 */
      float inv = (float)(1.0 / se), fe = (float)epsi;
      int own = t >= v0 && t < v0 + Vl;
      float et = own ? o[t - v0] : 0.0f;
      for (int j = 0; j < Vl; j++)
        o[j] = grad_scale * (o[j] * inv - fe);
      if (own) /* the target's weight is 1 - eps */
        o[t - v0] = grad_scale * (et * inv - (1.0f - eps));
    }
  }
  if (loss_sum) *loss_sum += loss_acc;
  if (nll_sum) *nll_sum += nll_acc;
  return count;
}
