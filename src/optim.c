/* optim.c: Adam/AdamW, lr schedules, data-parallel gradient sync and ZeRO-1 (optim.h).
 *
 * Adam follows PyTorch's torch.optim.Adam/AdamW exactly (bias corrections, eps added
 * to sqrt(v_hat)); "adam" adds weight_decay * p to the gradient (L2), "adamw" decays
 * the weights directly.
 * The gradient norm is summed in double over 16 fixed lanes (vectorized, reproducible);
 * its last bits differ from an in-order sum.
 */
#include "optim.h"

#include "debug.h"
#include "gemm.h"
#include "gradsync.h"
#include "trace.h"

#include <math.h>
#include <string.h>

void optim_init(optim *o, const config *c, int64_t n, MPI_Comm dp_comm) {
  memset(o, 0, sizeof *o);
  o->adamw = strcmp(c->optimizer, "adamw") == 0;
  o->beta1 = c->beta1, o->beta2 = c->beta2, o->eps = c->adam_eps;
  o->weight_decay = c->weight_decay;
  o->n = n;
  o->zero = (int)c->zero;
  o->dp_comm = dp_comm;
  MPI_CHECK(MPI_Comm_size(dp_comm, &o->dp));
  MPI_CHECK(MPI_Comm_rank(dp_comm, &o->dp_rank));
  o->lo = 0, o->hi = n;
  o->tp_comm = o->pp_comm = MPI_COMM_NULL;
  o->norm_lo = 0;
  o->norm_hi = n;
  if (o->zero && o->dp > 1) {
    o->counts = common_calloc((size_t)o->dp, sizeof(int));
    o->displs = common_calloc((size_t)o->dp, sizeof(int));
    int64_t per = (n + o->dp - 1) / o->dp;
    for (int r = 0; r < o->dp; r++) {
      int64_t a = per * r < n ? per * r : n, b = per * (r + 1) < n ? per * (r + 1) : n;
      o->displs[r] = common_int(a);
      o->counts[r] = common_int(b - a);
    }
    o->lo = o->displs[o->dp_rank];
    o->hi = o->lo + o->counts[o->dp_rank];
  } else {
    o->zero = 0;
  }
  o->exp_avg = common_calloc((size_t)(o->hi - o->lo), sizeof(float));
  o->exp_avg_sq = common_calloc((size_t)(o->hi - o->lo), sizeof(float));
}

void optim_set_tp(optim *o, MPI_Comm tp_comm, int64_t norm_hi) {
  o->tp_comm = tp_comm;
  o->norm_hi = norm_hi;
}

void optim_set_pp(optim *o, MPI_Comm pp_comm, int64_t norm_lo) {
  o->pp_comm = pp_comm;
  o->norm_lo = norm_lo;
}

void optim_set_sync(optim *o, struct gradsync *s) {
  o->sync = s;
}

void optim_free(optim *o) {
  free(o->exp_avg);
  free(o->exp_avg_sq);
  free(o->counts);
  free(o->displs);
  memset(o, 0, sizeof *o);
}

int64_t optim_state_bytes(const optim *o) {
  return 2 * (o->hi - o->lo) * (int64_t)sizeof(float);
}

/* g(n) *= scale. */
static void optim_scale_(float *restrict g, float scale, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    g[i] *= scale;
}

/* g(n) *= scale; returns sum_i g[i]^2 (after scaling) in double, in 16 fixed lanes so that
 * gcc vectorizes it (an in-order double sum is bound by the add latency: ~45 ms a `base`
 * step) and the result is still the same run to run. */
#define OPTIM_LANES 16
static double optim_scale_sumsq_(float *restrict g, float scale, int64_t n) {
  double acc[OPTIM_LANES] = {0};
  int64_t i = 0;
  for (; i + OPTIM_LANES <= n; i += OPTIM_LANES)
    for (int l = 0; l < OPTIM_LANES; l++) {
      float v = g[i + l] * scale;
      g[i + l] = v;
      acc[l] += (double)v * v;
    }
  for (; i < n; i++) {
    float v = g[i] * scale;
    g[i] = v;
    acc[0] += (double)v * v;
  }
  double s = 0.0;
  for (int l = 0; l < OPTIM_LANES; l++)
    s += acc[l];
  return s;
}

double optim_sync_grads(optim *o, float *grads, float scale) {
  DEBUG_AGREE(o->dp_comm, o->n, o->zero, o->step, debug_bits(scale), o->tp_comm != MPI_COMM_NULL,
              o->pp_comm != MPI_COMM_NULL);
  DEBUG_AGREE(o->tp_comm, o->step, debug_bits(scale), o->pp_comm != MPI_COMM_NULL);
  DEBUG_AGREE(o->pp_comm, o->step, debug_bits(scale), o->tp_comm != MPI_COMM_NULL);
  if (o->sync && o->dp > 1) {
    gradsync_finish(o->sync);
  } else if (o->dp > 1) {
    if (o->zero) {
      /* each rank receives the sum of its own slice, in place at grads + lo */
      MPI_CHECK(MPI_Reduce_scatter(MPI_IN_PLACE, grads, o->counts, MPI_FLOAT, MPI_SUM, o->dp_comm));
      /* MPI_Reduce_scatter in place leaves the result at the start of the buffer */
      if (o->lo > 0) memmove(grads + o->lo, grads, (size_t)(o->hi - o->lo) * sizeof(float));
    } else {
      MPI_CHECK(
          MPI_Allreduce(MPI_IN_PLACE, grads, common_int(o->n), MPI_FLOAT, MPI_SUM, o->dp_comm));
    }
  }
  /* scale this rank's slice [lo, hi); the squared norm over its part in [norm_lo, norm_hi) */
  int64_t a = o->lo > o->norm_lo ? o->lo : o->norm_lo, b = o->hi < o->norm_hi ? o->hi : o->norm_hi;
  double sq = 0.0;
  if (a < b) {
    optim_scale_(grads + o->lo, scale, a - o->lo);
    sq = optim_scale_sumsq_(grads + a, scale, b - a);
    optim_scale_(grads + b, scale, o->hi - b);
  } else {
    optim_scale_(grads + o->lo, scale, o->hi - o->lo);
  }
  if (o->zero) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &sq, 1, MPI_DOUBLE, MPI_SUM, o->dp_comm));
  if (o->tp_comm != MPI_COMM_NULL)
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &sq, 1, MPI_DOUBLE, MPI_SUM, o->tp_comm));
  if (o->pp_comm != MPI_COMM_NULL)
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &sq, 1, MPI_DOUBLE, MPI_SUM, o->pp_comm));
  return sqrt(sq);
}

void optim_update(optim *o, float *params, const float *grads, double lr, float clip_coef) {
  DEBUG_AGREE(o->dp_comm, o->n, o->zero, o->step, debug_bits(lr), debug_bits(clip_coef));
  trace_begin("adam");
  o->step++;
  const double b1 = o->beta1, b2 = o->beta2;
  const double bc1 = 1.0 - pow(b1, (double)o->step), bc2 = 1.0 - pow(b2, (double)o->step);
  const float step_size = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
  const float wd = (float)o->weight_decay, eps = (float)o->eps;
  const float fb1 = (float)b1, fb2 = (float)b2;
  const float decay = o->adamw ? (float)(1.0 - lr * o->weight_decay) : 1.0f;
  float *restrict p = params + o->lo;
  const float *restrict gr = grads + o->lo;
  float *restrict m = o->exp_avg, *restrict v = o->exp_avg_sq;
  int64_t n = o->hi - o->lo;
  for (int64_t i = 0; i < n; i++) {
    float g = gr[i] * clip_coef;
    if (!o->adamw)
      g += wd * p[i];
    else
      p[i] *= decay;
    m[i] = fb1 * m[i] + (1.0f - fb1) * g;
    v[i] = fb2 * v[i] + (1.0f - fb2) * g * g;
    p[i] -= step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + eps);
  }
  if (o->zero)
    MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, params, o->counts, o->displs, MPI_FLOAT,
                             o->dp_comm));
  gemm_shadow_refresh(params); /* precision=bf16: the weights' bf16 copy, once per update */
  trace_end("adam");
}

double optim_lr(const config *c, int64_t step, int64_t epoch) {
  double lr = c->lr, t = (double)step, W = (double)c->warmup_steps;
  double warm = (W > 0 && t < W) ? t / W : 1.0;
  if (!strcmp(c->lr_scheduler, "inverse_sqrt")) {
    double pivot = W > (double)c->decay_start ? W : (double)c->decay_start;
    if (pivot < 1) pivot = 1;
    return lr * warm * sqrt(pivot / (t > pivot ? t : pivot));
  }
  if (!strcmp(c->lr_scheduler, "linear")) {
    double T = (double)c->max_steps;
    if (W > 0 && t < W) return lr * warm;
    double frac = T > W ? (t - W) / (T - W) : 1.0;
    if (frac > 1) frac = 1;
    return lr + (c->end_lr - lr) * frac;
  }
  if (!strcmp(c->lr_scheduler, "step")) {
    double f = 1.0;
    const char *p = c->lr_decay_epochs;
    while (*p) {
      long e = strtol(p, (char **)&p, 10);
      if (epoch >= e && e > 0) f *= c->lr_decay_factor;
      if (*p == ',')
        p++;
      else if (*p)
        break;
    }
    return lr * warm * f;
  }
  return lr * warm; /* constant */
}

void optim_moments_of(const optim *o, int64_t off, int64_t n, int64_t *lo, int64_t *hi,
                      float **exp_avg, float **exp_avg_sq) {
  /* intersect [off, off + n) with this rank's slice [o->lo, o->hi) */
  int64_t a = off > o->lo ? off : o->lo, b = off + n < o->hi ? off + n : o->hi;
  int names = o->zero ? 1 : o->dp_rank == 0; /* zero = 0: one replica names the moments */
  if (b > a && names) {
    *lo = a - off, *hi = b - off;
    *exp_avg = o->exp_avg + (a - o->lo);
    *exp_avg_sq = o->exp_avg_sq + (a - o->lo);
  } else { /* an empty range still says "this run has optimizer state" */
    *lo = *hi = 0;
    *exp_avg = o->exp_avg;
    *exp_avg_sq = o->exp_avg_sq;
  }
}
