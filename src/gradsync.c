/* gradsync.c: bucketed data-parallel gradient sums overlapped with the backward
 * (gradsync.h). Not here: scaling, the norm and clipping (optim.c), what a bucket holds
 * when (model_grad_ready in model_stage.c). */
#include "gradsync.h"

#include "trace.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifdef MPIFORMER_DEBUG
#define GRADSYNC_CHECK_READY 1 /* reduce copies, and check the gradients did not move */
#else
#define GRADSYNC_CHECK_READY 0
#endif

/* Floats of parameter p in the flat buffers (its block, padded to 16 as model_create lays
 * them out). */
static int64_t flat_size(const model_param *p) {
  return (dmat_local_size(&p->w) + 15) & ~(int64_t)15;
}

static void add_bucket(gradsync *s, int64_t lo, int64_t hi, int ready) {
  int b = s->n_buckets++;
  s->lo[b] = lo, s->hi[b] = hi, s->ready[b] = ready;
}

/* The buckets in flat order: whole tensors up to cap floats, a tensor above cap cut into
 * pieces of cap; a tensor ready only at the end never shares a bucket with one ready
 * before. Then sorted by readiness (stable): the launch order. */
static void make_buckets(gradsync *s, int64_t cap) {
  model *m = s->m;
  int np = m->n_params;
  int *ready = common_calloc((size_t)np, sizeof(int)),
      *order = common_calloc((size_t)np, sizeof(int));
  model_grad_ready(m, ready);
  int n_order = 0;
  for (int i = 0; i < np; i++)
    if (flat_size(&m->params[i]) > 0) order[n_order++] = i;
  for (int i = 1; i < n_order; i++) /* by offset (insertion sort: a few hundred tensors) */
    for (int j = i; j > 0 && m->params[order[j]].offset < m->params[order[j - 1]].offset; j--) {
      int t = order[j];
      order[j] = order[j - 1], order[j - 1] = t;
    }
  int max_b = (int)(m->n_floats / cap) + n_order + 1;
  s->lo = common_calloc((size_t)max_b, sizeof(int64_t));
  s->hi = common_calloc((size_t)max_b, sizeof(int64_t));
  s->ready = common_calloc((size_t)max_b, sizeof(int));
  int64_t cur_lo = 0, cur_hi = 0;
  int cur_ready = 0;
  for (int k = 0; k < n_order; k++) {
    const model_param *p = &m->params[order[k]];
    int64_t off = p->offset, n = flat_size(p);
    int r = ready[order[k]];
    CHECK(off == cur_hi, "gradsync: %s at flat %lld, not %lld", p->name, (long long)off,
          (long long)cur_hi);
    int at_end = r == MODEL_BWD_NEVER, cur_at_end = cur_ready == MODEL_BWD_NEVER;
    if (cur_hi > cur_lo && (cur_hi - cur_lo + n > cap || at_end != cur_at_end)) {
      add_bucket(s, cur_lo, cur_hi, cur_ready);
      cur_lo = cur_hi, cur_ready = 0;
    }
    if (n > cap) { /* pieces of its own */
      for (int64_t a = off; a < off + n; a += cap)
        add_bucket(s, a, a + cap < off + n ? a + cap : off + n, r);
      cur_lo = cur_hi = off + n, cur_ready = 0;
      continue;
    }
    cur_hi = off + n;
    cur_ready = r > cur_ready ? r : cur_ready;
  }
  if (cur_hi > cur_lo) add_bucket(s, cur_lo, cur_hi, cur_ready);
  CHECK(cur_hi == m->n_floats, "gradsync: the buckets cover %lld of %lld floats", (long long)cur_hi,
        (long long)m->n_floats);
  for (int i = 1; i < s->n_buckets; i++) /* stable sort by readiness */
    for (int j = i; j > 0 && s->ready[j] < s->ready[j - 1]; j--) {
      int64_t tl = s->lo[j], th = s->hi[j];
      int tr = s->ready[j];
      s->lo[j] = s->lo[j - 1], s->hi[j] = s->hi[j - 1], s->ready[j] = s->ready[j - 1];
      s->lo[j - 1] = tl, s->hi[j - 1] = th, s->ready[j - 1] = tr;
    }
  free(ready);
  free(order);
}

/* zero = 1: the part of bucket b in each rank's slice [displs[r], displs[r] + counts[r]). */
static void make_counts(gradsync *s) {
  const optim *o = s->o;
  if (!o->zero) return;
  s->counts = common_calloc((size_t)s->n_buckets * (size_t)o->dp, sizeof(int));
  for (int b = 0; b < s->n_buckets; b++)
    for (int r = 0; r < o->dp; r++) {
      int64_t a = s->lo[b] > o->displs[r] ? s->lo[b] : o->displs[r];
      int64_t e = o->displs[r] + o->counts[r];
      e = s->hi[b] < e ? s->hi[b] : e;
      s->counts[(size_t)b * o->dp + r] = e > a ? common_int(e - a) : 0;
    }
}

static void launch(gradsync *s, int b) {
  const optim *o = s->o;
  float *g = s->grads + s->lo[b];
  int n = common_int(s->hi[b] - s->lo[b]);
  const void *in = MPI_IN_PLACE;
  float *out = g;
  if (GRADSYNC_CHECK_READY) { /* send a copy, receive into the shadow's second half */
    memcpy(s->shadow + s->lo[b], g, (size_t)n * sizeof(float));
    in = s->shadow + s->lo[b];
    out = s->shadow + s->m->n_floats + s->lo[b];
  }
  trace_async_begin("grad bucket", b, (int64_t)n * 4);
  if (o->zero)
    MPI_CHECK(MPI_Ireduce_scatter(in, out, s->counts + (size_t)b * o->dp, MPI_FLOAT, MPI_SUM,
                                  o->dp_comm, &s->reqs[b]));
  else
    MPI_CHECK(MPI_Iallreduce(in, out, n, MPI_FLOAT, MPI_SUM, o->dp_comm, &s->reqs[b]));
}

/* m->progress: launch the buckets the backward has completed, move the ones in flight,
 * then the hook this one chained to. */
static void gradsync_progress(void *ctx) {
  gradsync *s = ctx;
  const model *m = s->m;
  if (s->target >= 0 && m->n_bwd == s->target)
    while (s->next < s->n_buckets && s->ready[s->next] <= m->bwd_step)
      launch(s, s->next++);
  for (int b = 0; b < s->next; b++) { /* the first test moves them all */
    if (s->done[b]) continue;
    int flag = 0;
    MPI_CHECK(MPI_Test(&s->reqs[b], &flag, MPI_STATUS_IGNORE));
    if (!flag) break; /* they complete about in launch order: the rest at the next poll */
    s->done[b] = 1;
    trace_async_end("grad bucket", b);
  }
  if (s->prev_progress) s->prev_progress(s->prev_ctx);
}

void gradsync_init(gradsync *s, const optim *o, model *m, int64_t bucket_bytes) {
  memset(s, 0, sizeof *s);
  s->o = o, s->m = m, s->grads = m->grad_mem, s->target = -1;
  if (o->dp == 1) return;
  int64_t cap = bucket_bytes / (int64_t)sizeof(float);
  cap = (cap + 15) & ~(int64_t)15;
  if (cap < 16) cap = 16;
  make_buckets(s, cap);
  make_counts(s);
  if (GRADSYNC_CHECK_READY && getenv("MPIFORMER_TEST_EARLY_BUCKETS")) /* test the check */
    for (int b = 0; b < s->n_buckets; b++)
      s->ready[b] = 0;
  s->reqs = common_calloc((size_t)s->n_buckets, sizeof(MPI_Request));
  s->done = common_calloc((size_t)s->n_buckets, sizeof(int));
  for (int b = 0; b < s->n_buckets; b++)
    s->reqs[b] = MPI_REQUEST_NULL;
  if (GRADSYNC_CHECK_READY) s->shadow = common_calloc(2 * (size_t)m->n_floats, sizeof(float));
  s->prev_progress = m->progress, s->prev_ctx = m->progress_ctx;
  m->progress = gradsync_progress, m->progress_ctx = s;
}

/* DEBUG=1: the backward must not have written into a bucket after its launch; then the
 * sums go where the in-place collectives would have left them. */
static void check_and_place(gradsync *s) {
  const optim *o = s->o;
  const model *m = s->m;
  for (int b = 0; b < s->n_buckets; b++) {
    int64_t lo = s->lo[b], n = s->hi[b] - lo;
    for (int64_t i = lo; i < lo + n; i++)
      CHECK(!memcmp(&s->grads[i], &s->shadow[i], sizeof(float)),
            "gradsync: bucket %d (flat [%lld, %lld), ready after backward step %d) changed after "
            "its launch at flat %lld: model_grad_ready is wrong for this layout",
            b, (long long)lo, (long long)(lo + n), s->ready[b], (long long)i);
    int mine = o->zero ? s->counts[(size_t)b * o->dp + o->dp_rank] : (int)n;
    memcpy(s->grads + lo, s->shadow + m->n_floats + lo, (size_t)mine * sizeof(float));
  }
}

void gradsync_finish(gradsync *s) {
  if (s->n_buckets == 0) return;
  const optim *o = s->o;
  trace_begin("grad wait");
  while (s->next < s->n_buckets)
    launch(s, s->next++);
  MPI_CHECK(MPI_Waitall(s->n_buckets, s->reqs, MPI_STATUSES_IGNORE));
  for (int b = 0; b < s->n_buckets; b++)
    if (!s->done[b]) trace_async_end("grad bucket", b);
  trace_end("grad wait");
  if (GRADSYNC_CHECK_READY) check_and_place(s);
  if (o->zero) /* each bucket's part of this rank's slice came back at the bucket's start */
    for (int b = 0; b < s->n_buckets; b++) {
      int mine = s->counts[(size_t)b * o->dp + o->dp_rank];
      int64_t to = s->lo[b] > o->lo ? s->lo[b] : o->lo;
      if (mine > 0 && to != s->lo[b])
        memmove(s->grads + to, s->grads + s->lo[b], (size_t)mine * sizeof(float));
    }
  memset(s->done, 0, (size_t)s->n_buckets * sizeof(int));
  s->next = 0;
  s->target = -1;
}

void gradsync_arm(gradsync *s, int n_backward) {
  if (s->n_buckets == 0) return;
  s->target = n_backward > 0 ? s->m->n_bwd + n_backward : -1;
}

void gradsync_mpi_defaults(void) {
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0); /* 0: keep the user's */
}

void gradsync_free(gradsync *s) {
  if (s->n_buckets > 0) {
    MPI_CHECK(MPI_Waitall(s->n_buckets, s->reqs, MPI_STATUSES_IGNORE));
    s->m->progress = s->prev_progress, s->m->progress_ctx = s->prev_ctx;
  }
  free(s->lo);
  free(s->hi);
  free(s->ready);
  free(s->counts);
  free(s->reqs);
  free(s->done);
  free(s->shadow);
  memset(s, 0, sizeof *s);
}
