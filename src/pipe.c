/* pipe.c: the 1F1B pipeline schedule, its messages and watchdog (pipe.h).
 *
 * What a stage computes is model.c's (model_stage_forward/backward on one activation
 * arena per micro-batch in flight); this file only orders the calls and moves the
 * boundary messages over pp_comm. Not here: the data-parallel gradient sum and the
 * optimizer (optim.c), which micro-batches an update takes (train.c).
 *
 * Why it cannot deadlock: every stage walks the same fixed list (warm-up forwards, 1F1B
 * pairs, cool-down backwards) derived from (S, s, M) only; a receive from s-1 of forward
 * k is matched by s-1's send of forward k, which s-1 posts without waiting for anyone
 * downstream (MPI_Isend), and likewise for gradients from s+1. By induction on the
 * (stage, position in the list) order, each receive's matching send is eventually posted.
 */
#include "pipe.h"
#include "debug.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* m->progress: let MPI move the pending sends (model_blocks.c calls it between sublayers). */
static void pipe_progress(void *ctx) {
  pipe_sched *p = ctx;
  int done = 0;
  if (p->n_reqs > 0) MPI_CHECK(MPI_Testall(p->n_reqs, p->reqs, &done, MPI_STATUSES_IGNORE));
}

void pipe_init(pipe_sched *p, const grid *g, model *m, double timeout) {
  memset(p, 0, sizeof *p);
  p->g = g;
  p->m = m;
  p->timeout = timeout;
  p->skip_stage = p->skip_mb = -1;
  p->prev_progress = m->progress, p->prev_ctx = m->progress_ctx;
  if (g->pp > 1) m->progress = pipe_progress, m->progress_ctx = p;
  const char *skip = getenv("MPIFORMER_PP_SKIP_SEND");
  if (skip && sscanf(skip, "%d:%d", &p->skip_stage, &p->skip_mb) != 2)
    p->skip_stage = p->skip_mb = -1;
}

void pipe_free(pipe_sched *p) {
  if (p->m) p->m->progress = p->prev_progress, p->m->progress_ctx = p->prev_ctx;
  for (int i = 0; i < p->n_bufs; i++) {
    free(p->send_fwd[i]);
    free(p->send_bwd[i]);
  }
  free(p->send_fwd);
  free(p->send_bwd);
  free(p->cap_fwd);
  free(p->cap_bwd);
  free(p->recv);
  free(p->reqs);
  free(p->msg_in);
  free(p->msg_out);
  free(p->valid);
  free(p->tied_zero);
  memset(p, 0, sizeof *p);
}

/* Grow *buf (capacity *cap floats) to n floats; only called when no send uses it. */
static float *grow(float **buf, size_t *cap, int64_t n) {
  if ((size_t)n > *cap || !*buf) {
    free(*buf);
    *cap = (size_t)n + (size_t)n / 4 + 16;
    *buf = common_malloc(*cap * sizeof(float));
  }
  return *buf;
}

static void ensure_bufs(pipe_sched *p, int M) {
  if (M <= p->n_bufs) return;
  p->send_fwd = realloc(p->send_fwd, (size_t)M * sizeof(float *));
  p->send_bwd = realloc(p->send_bwd, (size_t)M * sizeof(float *));
  p->cap_fwd = realloc(p->cap_fwd, (size_t)M * sizeof(size_t));
  p->cap_bwd = realloc(p->cap_bwd, (size_t)M * sizeof(size_t));
  CHECK(p->send_fwd && p->send_bwd && p->cap_fwd && p->cap_bwd, "out of memory");
  for (int i = p->n_bufs; i < M; i++) {
    p->send_fwd[i] = p->send_bwd[i] = NULL;
    p->cap_fwd[i] = p->cap_bwd[i] = 0;
  }
  p->n_bufs = M;
  free(p->msg_in), free(p->msg_out), free(p->valid);
  p->msg_in = common_calloc((size_t)M, sizeof(int64_t));
  p->msg_out = common_calloc((size_t)M, sizeof(int64_t));
  p->valid = common_calloc((size_t)M, sizeof(int));
  if (p->cap_reqs < 2 * M) {
    p->cap_reqs = 2 * M;
    p->reqs = realloc(p->reqs, (size_t)p->cap_reqs * sizeof(MPI_Request));
    CHECK(p->reqs, "out of memory");
  }
}

static int world_rank_of(const grid *g, int stage) {
  return (g->dp_rank * g->pp + stage) * g->tp + g->tp_rank;
}

/* Let the other ranks of an oversubscribed node run while we poll. */
static void nap(int spins) {
  if (spins < 64) return;
  struct timespec ts = {0, spins < 1024 ? 20000 : 200000};
  nanosleep(&ts, NULL);
}

/* Receive n floats from stage `from` with tag; aborts the job past the deadline. */
static void recv_wait(pipe_sched *p, float *buf, int64_t n, int from, int tag, int k) {
  const grid *g = p->g;
  MPI_Request r;
  MPI_CHECK(MPI_Irecv(buf, common_int(n), MPI_FLOAT, from, tag, g->pp_comm, &r));
  double t0 = common_now();
  for (int spins = 0;; spins++) {
    int done = 0;
    MPI_CHECK(MPI_Test(&r, &done, MPI_STATUS_IGNORE));
    if (done) break;
    double waited = common_now() - t0;
    if (waited > p->timeout) {
      fprintf(stderr,
              "[rank %d] stage %d: waited %.0f s for %s of micro-batch %d from stage %d (world "
              "rank %d); pp_timeout=%g: aborting\n",
              g->world_rank, g->stage, waited, tag % 2 ? "gradients" : "forward activations", k,
              from, world_rank_of(g, from), p->timeout);
      fflush(stderr);
      MPI_Abort(g->world, PIPE_EXIT_HANG);
    }
    nap(spins);
  }
  p->wait += common_now() - t0;
}

static void send(pipe_sched *p, const float *buf, int64_t n, int to, int tag) {
  MPI_CHECK(
      MPI_Isend(buf, common_int(n), MPI_FLOAT, to, tag, p->g->pp_comm, &p->reqs[p->n_reqs++]));
}

/* Wait for this stage's sends, under the same deadline. */
static void sends_wait(pipe_sched *p) {
  double t0 = common_now();
  for (int spins = 0;; spins++) {
    int done = 0;
    MPI_CHECK(MPI_Testall(p->n_reqs, p->reqs, &done, MPI_STATUSES_IGNORE));
    if (done) break;
    double waited = common_now() - t0;
    if (waited > p->timeout) {
      fprintf(stderr,
              "[rank %d] stage %d: waited %.0f s for its sends to stages %d/%d to complete; "
              "pp_timeout=%g: aborting\n",
              p->g->world_rank, p->g->stage, waited, p->g->stage - 1, p->g->stage + 1, p->timeout);
      fflush(stderr);
      MPI_Abort(p->g->world, PIPE_EXIT_HANG);
    }
    nap(spins);
  }
  p->n_reqs = 0;
}

/* Forward of micro-batch k (arena `slot`): receive, compute, send. */
static void forward(pipe_sched *p, int k, int slot, const pipe_batch *b, int backward,
                    double *sums) {
  const grid *g = p->g;
  model *m = p->m;
  int last = g->stage == g->pp - 1;
  int64_t ie, id, oe, od;
  model_stage_msg(m, 0, b->B, b->S, b->T, &ie, &id);
  model_stage_msg(m, 1, b->B, b->S, b->T, &oe, &od);
  p->msg_in[k] = ie + id, p->msg_out[k] = oe + od;
  const float *in = NULL;
  if (g->stage > 0) {
    grow(&p->recv, &p->recv_cap, p->msg_in[k]);
    recv_wait(p, p->recv, p->msg_in[k], g->stage - 1, 2 * k, k);
    in = p->recv;
  }
  float *out = last ? NULL : grow(&p->send_fwd[k], &p->cap_fwd[k], p->msg_out[k]);
  double t0 = common_now();
  model_use_slot(m, slot);
  model_set_mode(m, backward, b->key);
  sums[MODEL_SUM_COUNT] += (double)model_stage_forward(m, b->src, b->tgt_in, b->tgt_out, b->B, b->S,
                                                       b->T, 1.0f, backward, in, out, sums);
  p->busy += common_now() - t0;
  if (!last && !(g->stage == p->skip_stage && k == p->skip_mb))
    send(p, out, p->msg_out[k], g->stage + 1, 2 * k);
}

/* Backward of micro-batch k: receive the gradient of what went forward, compute, send
 * the gradient of what came in. */
static void backward(pipe_sched *p, int k, int slot) {
  const grid *g = p->g;
  model *m = p->m;
  int last = g->stage == g->pp - 1;
  const float *g_in = NULL;
  if (!last) {
    grow(&p->recv, &p->recv_cap, p->msg_out[k]);
    recv_wait(p, p->recv, p->msg_out[k], g->stage + 1, 2 * k + 1, k);
    g_in = p->recv;
  }
  float *g_out = g->stage > 0 ? grow(&p->send_bwd[k], &p->cap_bwd[k], p->msg_in[k]) : NULL;
  double t0 = common_now();
  model_use_slot(m, slot);
  model_stage_backward(m, g_in, g_out);
  p->busy += common_now() - t0;
  if (g->stage > 0) send(p, g_out, p->msg_in[k], g->stage - 1, 2 * k + 1);
}

void pipe_run(pipe_sched *p, int M, pipe_load_fn load, void *ctx, double *sums) {
  const grid *g = p->g;
  DEBUG_AGREE(g->pp_comm, M);
  int S = g->pp, s = g->stage;
  ensure_bufs(p, M);
  int *valid = p->valid;
  int n_slots = S - s; /* 1F1B keeps at most S - s micro-batches in flight here */
  int warmup = S - 1 - s < M ? S - 1 - s : M;
  pipe_batch b;
  int next_f = 0, next_b = 0;
  /* the fixed order: warmup forwards; M - warmup (forward, backward) pairs; the rest */
  for (int step = 0; step < 2 * M; step++) {
    int do_fwd =
        step < warmup || (step >= warmup && step < 2 * M - warmup && (step - warmup) % 2 == 0);
    if (do_fwd) {
      int k = next_f++;
      load(ctx, k, &b);
      valid[k] = b.valid;
      if (b.valid) forward(p, k, k % n_slots, &b, 1, sums);
    } else {
      int k = next_b++;
      if (valid[k]) backward(p, k, k % n_slots);
    }
  }
  CHECK(next_f == M && next_b == M, "pipe_run: schedule ran %d forwards, %d backwards of %d",
        next_f, next_b, M);
  sends_wait(p);
  model_use_slot(p->m, 0);
}

void pipe_forward(pipe_sched *p, const pipe_batch *b, double *sums) {
  ensure_bufs(p, 1);
  if (b->valid) forward(p, 0, 0, b, 0, sums);
  sends_wait(p);
}

void pipe_reduce_tied(pipe_sched *p) {
  const grid *g = p->g;
  model *m = p->m;
  if (g->pp == 1) return;
  for (int i = 0; i < m->n_params; i++) {
    model_param *q = &m->params[i];
    if (q->pp_owners < 2) continue; /* the same on every stage */
    int64_t n =
        dmat_block_count(q->w.rows, g->prow, g->pr) * dmat_block_count(q->w.cols, g->pcol, g->pc);
    float *buf = q->g.data;
    if (!q->pp_owned) {
      buf = grow(&p->tied_zero, &p->tied_cap, n);
      memset(buf, 0, (size_t)n * sizeof(float));
    } else {
      CHECK(dmat_local_size(&q->g) == n && q->g.ld == q->g.cols_local, "pipe_reduce_tied: %s block",
            q->name);
    }
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, common_int(n), MPI_FLOAT, MPI_SUM, g->pp_comm));
  }
}
