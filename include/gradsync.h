/* gradsync.h: the data-parallel gradient sum in buckets, overlapped with the backward pass
 * (PyTorch DDP's and Megatron-LM's overlap_grad_reduce, on MPI non-blocking collectives).
 *
 * The flat gradient buffer is cut into buckets: contiguous ranges of about bucket_bytes,
 * each made of whole tensors (a tensor larger than a bucket gets buckets of its own). A
 * bucket is ready when the backward has written the last gradient in it, which the model
 * says in advance (model_grad_ready: the value of m->bwd_step after which each tensor's
 * gradient is final). During the last backward of an update (gradsync_arm says which one
 * it is) the model's progress hook, called between its matmuls, launches every ready
 * bucket in index order with MPI_Iallreduce (zero = 1: MPI_Ireduce_scatter of the
 * bucket's part of each rank's slice) and tests the ones in flight, so that their bytes
 * move while the rank computes: Open MPI moves a non-blocking collective only while its
 * owner is inside an MPI call. gradsync_finish launches what is left (the tensors tied
 * across pipeline stages, and with pr > 1 the replicated vectors, are ready only at the
 * end) and waits. The update then waits only for what is still in flight.
 *
 * Determinism: which buckets exist and the order they are launched in depend only on the
 * model and the layout (every rank of dp_comm launches the same buckets in the same
 * order; when is a matter of timing, what is not), so a run gives the same bits every
 * time and on resume. Against one blocking MPI_Allreduce of the whole buffer (grad_overlap
 * = 0) the sums are bitwise equal on 2 ranks (a + b either way); on more ranks Open MPI may
 * add the terms of an element in another order for another message size (float32
 * rounding of the sum).
 *
 * DEBUG=1 builds check the model's ready map: each bucket is also copied at its launch,
 * and gradsync_finish aborts if a gradient in it changed after that (the backward wrote
 * into a bucket already on the wire). There, MPIFORMER_TEST_EARLY_BUCKETS=1 declares every
 * bucket ready at the first step, to show that the check fires.
 */
#ifndef MPIFORMER_GRADSYNC_H
#define MPIFORMER_GRADSYNC_H

#include "model.h"
#include "optim.h"

typedef struct gradsync {
  const optim *o;
  model *m;
  float *grads;      /* m->grad_mem */
  int n_buckets;     /* 0: the whole sum happens in optim_sync_grads (dp = 1, overlap off) */
  int64_t *lo, *hi;  /* bucket b is flat [lo[b], hi[b]) */
  int *ready;        /* the m->bwd_step after which bucket b is complete (MODEL_BWD_NEVER: at
                      * gradsync_finish) */
  int *counts;       /* zero = 1: n_buckets x dp, the bucket's part of each rank's slice */
  MPI_Request *reqs; /* per bucket; MPI_REQUEST_NULL when not in flight */
  int *done;         /* per bucket: completed */
  int next;          /* buckets launched so far (in index order) */
  int64_t target;    /* m->n_bwd of the update's last backward; -1: not armed */
  float *shadow;     /* DEBUG=1: each bucket's gradients as launched */
  void (*prev_progress)(void *); /* the hook this one chains to (pipe.c's) */
  void *prev_ctx;
} gradsync;

/* Cut m's flat gradients into buckets of about bucket_bytes for the data-parallel sum of
 * optimizer o (its dp_comm, zero slices), and hook m->progress (chained to the hook set
 * before, which must stay in place until gradsync_free). With dp = 1 it sets up nothing.
 * Not collective (every rank of dp_comm builds the same buckets). */
void gradsync_init(gradsync *s, const optim *o, model *m, int64_t bucket_bytes);
/* Unhook and free. Requests still in flight are waited for. Not collective. */
void gradsync_free(gradsync *s);

/* The update about to run makes n_backward stage backwards on this rank (its micro-batches
 * with data): during the last of them, buckets launch as they become ready. Not
 * collective. */
void gradsync_arm(gradsync *s, int n_backward);

/* Launch every bucket not yet launched and wait for all of them: the gradients are then
 * summed over dp_comm (zero = 1: this rank's slice [o->lo, o->hi), in place). Collective
 * on dp_comm. */
void gradsync_finish(gradsync *s);

/* Call before MPI_Init: asks Open MPI's non-blocking collectives (libnbc) for the ring
 * all-reduce (OMPI_MCA_coll_libnbc_iallreduce_algorithm=1) unless the environment already
 * chooses one. libnbc's own choice for an in-place all-reduce is binomial (a reduce to one
 * rank, then a broadcast): on the 2-node in-box cluster at 1 Gbit/s a 16 MB bucket took
 * 0.24 s with it, 0.13 s with the ring (and 0.21 s blocking). Other MPIs ignore the
 * variable. The ring adds the terms of an element in another order than Open MPI's blocking
 * all-reduce on more than 2 ranks (float32 rounding; on 2 ranks a + b either way). Not
 * collective. */
void gradsync_mpi_defaults(void);

/* Number of buckets (0 when gradsync does nothing). Not collective. */
static inline int gradsync_buckets(const gradsync *s) {
  return s->n_buckets;
}

#endif
