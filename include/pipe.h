/* pipe.h: pipeline parallelism: the 1F1B schedule of one update over the pp stages of a
 * replica, the point-to-point messages between stages, the watchdog, and the sum of the
 * tied embeddings' gradients over the stages that hold a copy.
 *
 * A replica's stages are the ranks of pp_comm (same dp rank, same TP coordinates,
 * ordered by stage), so a message always goes between ranks with the same TP
 * coordinates and carries this rank's local block (model_stage_msg). Every stage loads
 * every micro-batch's tokens itself (the batch shape and the padding mask come with
 * them); only activations and their gradients travel.
 *
 * Schedule (1F1B, PipeDream-Flush / Megatron-LM): stage s of S runs min(S-1-s, M)
 * forwards, then alternates one forward and one backward, then the remaining
 * backwards. Sends are MPI_Isend from a buffer per micro-batch and direction that stays
 * untouched until pipe_run returns; receives are MPI_Irecv right before the compute that
 * needs them, tag 2k (forward activations of micro-batch k) or 2k+1 (their gradients).
 * Each stage's order is fixed and matches its neighbours', and no send waits for its
 * receiver, so the schedule cannot deadlock. A receive that waits longer than timeout
 * seconds prints "[rank R] stage s: waited N s for <forward activations|gradients> of
 * micro-batch k from stage s±1 (world rank X)" and calls MPI_Abort with PIPE_EXIT_HANG
 * (4; not 3, which slurm/train.sbatch reads as "checkpointed, requeue me").
 *
 * Progress: with shared memory and no single-copy mechanism, a large message moves in
 * fragments that the sender must push, so a send posted before a long compute would sit
 * until the sender next enters MPI, and the receiver would wait a whole compute. pipe_init
 * hooks m->progress, which model_blocks.c calls after every sublayer, to an MPI_Testall of the
 * pending sends, so messages move while the sender computes.
 *
 * Test hook: the environment variable MPIFORMER_PP_SKIP_SEND="S:K" makes stage S skip
 * the forward send of micro-batch K (tests/test_pp.sh checks the watchdog with it).
 */
#ifndef MPIFORMER_PIPE_H
#define MPIFORMER_PIPE_H

#include "grid.h"
#include "model.h"

/* The exit code of a run the watchdog stops. */
#define PIPE_EXIT_HANG 4

/* One micro-batch's inputs (the whole batch: every stage gets the same), as
 * model_stage_forward takes them (encoder-only archs: src = input rows, tgt_out = labels
 * or MLM targets, T = 0). valid = 0: an empty micro-batch past the end of the epoch,
 * skipped by every stage alike. */
typedef struct pipe_batch {
  const int32_t *src, *tgt_in, *tgt_out; /* (B,S), (B,T), (B,T) */
  int B, S, T;
  uint64_t key; /* dropout key */
  int valid;
} pipe_batch;

/* Fill *b with micro-batch j of the update (0 <= j < M). The buffers stay valid until
 * the next call. Not collective (every stage calls it for every j, in order). */
typedef void (*pipe_load_fn)(void *ctx, int j, pipe_batch *b);

typedef struct pipe_sched {
  const grid *g;
  model *m;
  double timeout;            /* seconds a receive may wait */
  int skip_stage, skip_mb;   /* MPIFORMER_PP_SKIP_SEND, -1 when unset */
  int n_bufs;                /* per-micro-batch buffers allocated (grown only) */
  int64_t *msg_in, *msg_out; /* floats received / sent forward per micro-batch (this update) */
  int *valid;
  float **send_fwd, **send_bwd;
  size_t *cap_fwd, *cap_bwd;
  float *recv; /* one receive buffer (a receive completes before the compute) */
  size_t recv_cap;
  MPI_Request *reqs; /* pending sends of this update */
  int n_reqs, cap_reqs;
  float *tied_zero; /* zeros for the tied tensors this stage does not hold */
  size_t tied_cap;
  double busy, wait;             /* seconds computing / waiting in receives, summed (bench) */
  void (*prev_progress)(void *); /* m's hook before pipe_init (pipe_free restores it) */
  void *prev_ctx;
} pipe_sched;

/* Set up for model m on grid g (m's stage is g->stage); hooks m->progress (pipe_free
 * restores the previous hook: nest pipe_init/pipe_free pairs). Not collective. */
void pipe_init(pipe_sched *p, const grid *g, model *m, double timeout);
/* Free the buffers and restore m's progress hook. Not collective. */
void pipe_free(pipe_sched *p);

/* One update's forwards and backwards of M micro-batches in the 1F1B order; gradients
 * are accumulated into m->grad_mem (not zeroed here); the last stage adds into
 * sums[MODEL_NSUMS] (model.h's MODEL_SUM_*: loss, nll, count, correct; other stages add
 * nothing). Returns when all this stage's sends have completed. Collective on pp_comm
 * (and the TP grid). */
void pipe_run(pipe_sched *p, int M, pipe_load_fn load, void *ctx, double *sums);

/* Forward only (evaluation) of one batch through the stages: sums as pipe_run. Collective
 * on pp_comm (and the TP grid). */
void pipe_forward(pipe_sched *p, const pipe_batch *b, double *sums);

/* Sum the gradients of the tensors held by several stages (tied embeddings) over pp_comm
 * (stages that do not hold one contribute zeros), so every copy gets the full gradient
 * and the copies stay equal. Collective on pp_comm. */
void pipe_reduce_tied(pipe_sched *p);

#endif
