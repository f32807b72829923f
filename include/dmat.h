/* dmat.h: the distributed matrix, the one type of every parameter, gradient, Adam
 * moment and activation.
 *
 * A dmat is a global rows x cols matrix with a 2D *block* distribution over the TP
 * grid (pr x pc): process row p owns global rows [row0, row0 + rows_local), process
 * column q owns columns [col0, col0 + cols_local), blocks of ceil(rows/pr) and
 * ceil(cols/pc). Every rank therefore owns exactly one rectangle, which is what a
 * checkpoint writes as one HDF5 hyperslab; a rank may own an empty block (e.g. 5 columns
 * over pc = 4 gives blocks 2, 2, 1, 0). The local block is row-major with leading
 * dimension ld (= cols_local, 1 when empty), i.e. in ScaLAPACK's column-major terms it is
 * the local block of the transpose; dmat_gemm hides that.
 *
 * On a 1x1 grid (tp = 1, or g == NULL) a dmat is a plain row-major matrix and dmat_gemm is
 * one gemm_sgemm call (gemm.h: the engine and precision of config keys gemm and precision). On a
 * larger grid dmat_gemm is ScaLAPACK psgemm on the transposed problem C^T = op(B)^T op(A)^T over
 * the transposed BLACS grid (see grid.h, dmat.c).
 */
#ifndef MPIFORMER_DMAT_H
#define MPIFORMER_DMAT_H

#include "grid.h"

typedef struct dmat {
  int64_t rows, cols;         /* global shape */
  int64_t row0, col0;         /* global index of the first local row / column */
  int rows_local, cols_local; /* local block shape */
  int ld;                     /* leading dimension of the local row-major block */
  float *data;                /* local block (not owned unless dmat_alloc made it) */
  const grid *g;
} dmat;

/* Number of items of a dimension of n that block-distribution coordinate p of np owns,
 * and the global index of its first one. Not collective. */
int64_t dmat_block_count(int64_t n, int p, int np);
int64_t dmat_block_start(int64_t n, int p, int np);

/* Describe a rows x cols global matrix on g's TP grid, local data at `data` (may be NULL
 * to fill in later). Not collective. */
void dmat_init(dmat *m, const grid *g, int64_t rows, int64_t cols, float *data);

/* Local element count (rows_local * cols_local). Not collective. */
static inline int64_t dmat_local_size(const dmat *m) {
  return (int64_t)m->rows_local * m->cols_local;
}

/* C = alpha * op(A) * op(B) + beta * C with row-major semantics on global shapes
 * (op(A) m x k, op(B) k x n, C m x n); trans_a/trans_b are 'N' or 'T'. A, B and C must be
 * on the same grid, each with its own block distribution; nothing is redistributed.
 * tp > 1: ScaLAPACK psgemm, collective on tp_comm (every rank of the TP grid calls it with
 * the same arguments). tp == 1: one gemm_sgemm, not collective. Shapes are checked; k == 0
 * gives C = beta C (0 when beta is 0), m == 0 or n == 0 does nothing. DEBUG=1 builds check
 * that the TP grid's ranks agree on trans_a, trans_b, m, n, k, alpha and beta. */
void dmat_gemm(char trans_a, char trans_b, float alpha, const dmat *a, const dmat *b, float beta,
               dmat *c);

/* Every rank of the TP grid receives the whole global matrix: full (rows x cols, row-major,
 * ld = cols, caller-owned, must not alias m->data) gets all blocks. Collective on tp_comm
 * (MPI_Allgatherv of the packed blocks into a rows x cols scratch allocated per call, then
 * a local rearrangement); on a 1x1 grid a local copy, not collective. Empty blocks are fine.
 * DEBUG=1 builds check that the TP grid's ranks agree on rows and cols. */
void dmat_gather(const dmat *m, float *full);

/* Copy this rank's block out of the whole global matrix `full` (rows x cols, row-major,
 * every rank passes the same values) into m->data (ld honoured). Not collective. */
void dmat_scatter(dmat *m, const float *full);

#endif
