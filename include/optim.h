/* optim.h: Adam/AdamW on the flat parameter buffer, learning-rate schedules, gradient
 * synchronization over data-parallel ranks (all-reduce, or ZeRO-1 reduce-scatter +
 * all-gather), global-norm clipping.
 *
 * With zero = 1 each of the dp ranks keeps the Adam moments of one contiguous slice
 * [lo, hi) of the flat buffer (1/dp of it): the gradients are reduce-scattered, each rank
 * updates its slice, and the parameters are all-gathered (DeepSpeed ZeRO stage 1,
 * Megatron's distributed optimizer). With zero = 0 every rank holds all moments.
 */
#ifndef MPIFORMER_OPTIM_H
#define MPIFORMER_OPTIM_H

#include "config.h"
#include "common.h"

typedef struct optim {
  int adamw;
  double beta1, beta2, eps, weight_decay;
  int64_t n;         /* floats in the flat buffers (local to the TP block) */
  int64_t lo, hi;    /* this rank's slice: moments cover [lo, hi) */
  float *exp_avg;    /* (hi - lo) */
  float *exp_avg_sq; /* (hi - lo) */
  int zero, dp, dp_rank;
  MPI_Comm dp_comm;
  MPI_Comm tp_comm; /* the grad norm also sums over it (MPI_COMM_NULL: not) */
  MPI_Comm pp_comm; /* ... and over the pipeline stages (MPI_COMM_NULL: not) */
  int64_t norm_lo;  /* the grad norm counts flat indices in [norm_lo, norm_hi) */
  int64_t norm_hi;
  int *counts, *displs;  /* zero=1: the dp slices, for reduce-scatter/all-gather */
  int64_t step;          /* updates done (bias correction) */
  struct gradsync *sync; /* set: the sum over dp_comm is gradsync_finish's (optim_set_sync) */
} optim;

/* Moments for n local floats, sliced over dp_comm when c->zero (reads its size and rank).
 * Not collective. */
void optim_init(optim *o, const config *c, int64_t n, MPI_Comm dp_comm);
/* Tensor parallelism: the model is split over tp_comm, so the global grad norm sums over
 * it too, and this rank counts only flat indices below norm_hi (the rest are copies of
 * another rank's, e.g. the replicated vectors on process rows > 0). Not collective. */
void optim_set_tp(optim *o, MPI_Comm tp_comm, int64_t norm_hi);
/* Pipeline parallelism: the stages hold different layers, so the grad norm also sums
 * over pp_comm, and this rank skips flat indices below norm_lo (tied embedding copies
 * whose first holder is an earlier stage: model.norm_lo). Not collective. */
void optim_set_pp(optim *o, MPI_Comm pp_comm, int64_t norm_lo);
/* Bucketed, overlapped data parallelism: optim_sync_grads leaves the sum over dp_comm to
 * gradsync_finish(s) (gradsync.h), whose buckets the backward has launched; NULL: one
 * blocking collective of the whole buffer. Not collective. */
void optim_set_sync(optim *o, struct gradsync *s);
/* Free the moments and the slice tables. Not collective. */
void optim_free(optim *o);

/* The Adam moments of the flat local range [off, off + n) (one tensor's block) that this
 * rank names in a checkpoint (ckpt_tensor's opt_lo/opt_hi/exp_avg/exp_avg_sq): the part of
 * the range inside its slice [lo, hi) with zero = 1; with zero = 0 all of it on dp rank 0,
 * none on the other replicas (they hold the same moments). *lo, *hi are relative to off;
 * *exp_avg, *exp_avg_sq point at the moment of off + *lo. An empty part gives *lo = *hi = 0
 * and the start of the moments (non-NULL: "this run has optimizer state"). Not collective. */
void optim_moments_of(const optim *o, int64_t off, int64_t n, int64_t *lo, int64_t *hi,
                      float **exp_avg, float **exp_avg_sq);

/* Bytes of Adam state this rank holds. Not collective. */
int64_t optim_state_bytes(const optim *o);

/* Sum grads over dp_comm and multiply by scale (1 / global target tokens); with zero=1
 * only the slice [lo, hi) is reduced (reduce-scatter). With optim_set_sync the sum is the
 * buckets' (gradsync_finish waits for those in flight and launches the rest). Returns the global L2
 * norm of the scaled gradient (over the slice owners: every rank gets the same value). Collective
 * on dp_comm, and on tp_comm and pp_comm where optim_set_tp / optim_set_pp set them (the norm's
 * sum). DEBUG=1 builds check n, zero, the step and scale. */
double optim_sync_grads(optim *o, float *grads, float scale);

/* One Adam(W) update of [lo, hi) with learning rate lr; grads multiplied by clip_coef
 * first; with zero=1 the parameters are all-gathered afterwards. Collective on dp_comm
 * (every replica calls it for every update, zero or not: DEBUG=1 builds check n, zero, the
 * step, lr and clip_coef). */
void optim_update(optim *o, float *params, const float *grads, double lr, float clip_coef);

/* The learning rate of update `step` (1-based) in `epoch` (1-based) under c's schedule.
 * Not collective. */
double optim_lr(const config *c, int64_t step, int64_t epoch);

#endif
