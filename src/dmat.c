/* dmat.c: block bookkeeping, gemm, gather and scatter of the distributed matrix (see dmat.h).
 *
 * dmat_gemm on a 1x1 grid is one gemm_sgemm (gemm.h: OpenBLAS or oneDNN, fp32 or bf16). On a
 * pr x pc grid it is ScaLAPACK psgemm (always fp32) on the transposed problem: the row-major
 * local block of X (rows_local x cols_local, ld) is,
 * read column-major, the local block of X' = X^T (cols x rows), and a plain block
 * distribution with blocks ceil(n/p) is the block-cyclic one with that block size (there
 * are at most p blocks, so none wraps around). Hence
 *
 *   C = op(A) op(B)   <=>   C' = op(B)' op(A)'   (' = transpose)
 *
 * and psgemm(trans_b, trans_a, C.cols, C.rows, k, B', A', C') on the transposed BLACS grid
 * (pc x pr, BLACS (row, col) = (pcol, prow); grid.c builds it) computes it with no data
 * moved before or after. The op letters keep their meaning: row-major 'N' on B means B'
 * itself is the column-major operand op(B)' = B', and 'T' means op(B)' = B = (B')^T,
 * i.e. 'T' on B'. Nothing here redistributes: every operand must be on the same grid.
 *
 * PBLAS 2 (ScaLAPACK 2.2) psgemm accepts operands with different block sizes and grid
 * placements (it moves panels itself), so these descriptors need no alignment. It walks
 * the product in panels of the "logical block size" that PILAENV returns, 32 in the
 * reference library: with our one-block-per-rank layout, many thin rank-32 local updates.
 * Measured at 2048^3 on 2 ranks (one BLAS thread each, a noisy 2-core VM): 150-215 ms with
 * 32 and 87-140 ms with 256-512, against 148 ms for one sgemm on one rank. ScaLAPACK
 * documents PILAENV as the routine users replace to tune it, so this file defines
 * pilaenv_ (below), which overrides the library's copy in every program that links dmat.o
 * (the executable's definition wins over libscalapack's at dynamic link time).
 */
#include "dmat.h"

#include "debug.h"
#include "gemm.h"

#include <string.h>

/* ScaLAPACK has no C header; the prototypes of the routines it exports (PBLAS psgemm_ is
 * C code taking char pointers, descinit_ is Fortran with no character argument). */
void psgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
             const float *alpha, const float *a, const int *ia, const int *ja, const int *desca,
             const float *b, const int *ib, const int *jb, const int *descb, const float *beta,
             float *c, const int *ic, const int *jc, const int *descc);
void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb,
               const int *irsrc, const int *icsrc, const int *ictxt, const int *lld, int *info);
int pilaenv_(const int *ictxt, const char *prec);

/* The PBLAS logical block size: the width of the panels psgemm broadcasts and multiplies
 * (any value >= 1 is correct; see the header comment for why 256). */
#define DMAT_PBLAS_NB 256

/* Replaces ScaLAPACK's PILAENV (PBLAS/SRC/pilaenv.f, which returns 32 for every context
 * and precision). Called by the PBLAS with a context and a precision letter. */
int pilaenv_(const int *ictxt, const char *prec) {
  (void)ictxt;
  (void)prec;
  return DMAT_PBLAS_NB;
}

int64_t dmat_block_count(int64_t n, int p, int np) {
  int64_t nb = (n + np - 1) / np;
  int64_t start = nb * p;
  if (start >= n) return 0;
  return (start + nb <= n) ? nb : n - start;
}

int64_t dmat_block_start(int64_t n, int p, int np) {
  int64_t nb = (n + np - 1) / np;
  int64_t start = nb * p;
  return start < n ? start : n;
}

void dmat_init(dmat *m, const grid *g, int64_t rows, int64_t cols, float *data) {
  int pr = g ? g->pr : 1, pc = g ? g->pc : 1, prow = g ? g->prow : 0, pcol = g ? g->pcol : 0;
  m->rows = rows;
  m->cols = cols;
  m->row0 = dmat_block_start(rows, prow, pr);
  m->col0 = dmat_block_start(cols, pcol, pc);
  m->rows_local = common_int(dmat_block_count(rows, prow, pr));
  m->cols_local = common_int(dmat_block_count(cols, pcol, pc));
  m->ld = m->cols_local > 0 ? m->cols_local : 1;
  m->data = data;
  m->g = g;
}

static int dmat_tp(const dmat *m) {
  return m->g ? m->g->tp : 1;
}

/* The ScaLAPACK descriptor of M' = M^T (cols x rows, column-major) on the transposed grid:
 * M' rows are our columns, split over the pc BLACS process rows in blocks ceil(cols/pc);
 * M' columns are our rows, over the pr BLACS process columns in blocks ceil(rows/pr). */
static void dmat_desc_transposed(const dmat *m, int desc[9]) {
  const grid *g = m->g;
  int mt = common_int(m->cols), nt = common_int(m->rows);
  int mb = common_int((m->cols + g->pc - 1) / g->pc),
      nb = common_int((m->rows + g->pr - 1) / g->pr);
  int zero = 0, lld = m->ld > 1 ? m->ld : 1, info = 0;
  if (mb < 1) mb = 1; /* an empty dimension: any block size describes it */
  if (nb < 1) nb = 1;
  CHECK(m->cols_local == 0 || m->ld >= m->cols_local, "dmat: ld=%d < cols_local=%d", m->ld,
        m->cols_local);
  descinit_(desc, &mt, &nt, &mb, &nb, &zero, &zero, &g->blacs_ctx, &lld, &info);
  CHECK(info == 0, "descinit of a %dx%d transposed dmat (blocks %dx%d, lld %d) failed: info=%d", mt,
        nt, mb, nb, lld, info);
}

void dmat_gemm(char trans_a, char trans_b, float alpha, const dmat *a, const dmat *b, float beta,
               dmat *c) {
  CHECK((trans_a == 'N' || trans_a == 'T') && (trans_b == 'N' || trans_b == 'T'),
        "dmat_gemm: trans_a='%c' trans_b='%c', each must be 'N' or 'T'", trans_a, trans_b);
  int64_t m = trans_a == 'N' ? a->rows : a->cols;
  int64_t k = trans_a == 'N' ? a->cols : a->rows;
  int64_t kb = trans_b == 'N' ? b->rows : b->cols;
  int64_t n = trans_b == 'N' ? b->cols : b->rows;
  CHECK(k == kb && c->rows == m && c->cols == n,
        "dmat_gemm: shapes do not match: op(A) %lldx%lld, op(B) %lldx%lld, C %lldx%lld",
        (long long)m, (long long)k, (long long)kb, (long long)n, (long long)c->rows,
        (long long)c->cols);
  int tp = dmat_tp(c);
  CHECK((a->g == c->g && b->g == c->g) || (tp == 1 && dmat_tp(a) == 1 && dmat_tp(b) == 1),
        "dmat_gemm: A, B and C must be distributed over the same grid");
  if (tp > 1)
    DEBUG_AGREE(c->g->tp_comm, trans_a, trans_b, m, n, k, debug_bits(alpha), debug_bits(beta));
  if (m == 0 || n == 0) return;
  if (k == 0) { /* op(A) op(B) is an m x n matrix of zeros: C = beta C, locally */
    for (int i = 0; i < c->rows_local; i++) {
      float *row = c->data + (int64_t)i * c->ld;
      for (int j = 0; j < c->cols_local; j++)
        row[j] = beta == 0.0f ? 0.0f : beta * row[j];
    }
    return;
  }
  if (tp == 1) {
    gemm_sgemm(trans_a, trans_b, common_int(m), common_int(n), common_int(k), alpha, a->data, a->ld,
               b->data, b->ld, beta, c->data, c->ld);
    return;
  }
  /* C' (n x m) = op(B)' (n x k) * op(A)' (k x m), column-major, same op letters. */
  int desc_a[9], desc_b[9], desc_c[9];
  dmat_desc_transposed(a, desc_a);
  dmat_desc_transposed(b, desc_b);
  dmat_desc_transposed(c, desc_c);
  int mt = common_int(n), nt = common_int(m), kt = common_int(k), one = 1;
  psgemm_(&trans_b, &trans_a, &mt, &nt, &kt, &alpha, b->data, &one, &one, desc_b, a->data, &one,
          &one, desc_a, &beta, c->data, &one, &one, desc_c);
}

void dmat_scatter(dmat *m, const float *full) {
  if (m->cols_local == 0) return; /* data may be NULL */
  for (int i = 0; i < m->rows_local; i++)
    memcpy(m->data + (int64_t)i * m->ld, full + (m->row0 + i) * m->cols + m->col0,
           (size_t)m->cols_local * sizeof(float));
}

void dmat_gather(const dmat *m, float *full) {
  if (dmat_tp(m) == 1) {
    for (int i = 0; i < m->rows_local && m->cols_local > 0; i++)
      memcpy(full + (m->row0 + i) * m->cols + m->col0, m->data + (int64_t)i * m->ld,
             (size_t)m->cols_local * sizeof(float));
    return;
  }
  const grid *g = m->g;
  DEBUG_AGREE(g->tp_comm, m->rows, m->cols);
  int tp = g->tp;
  int64_t n_global = m->rows * m->cols;
  int64_t n_local = dmat_local_size(m);
  /* Every rank's block, packed, in tp_rank order: process row p's blocks then fill global
   * rows [row0_p, row0_p + rows_local_p) completely, so block r starts at
   * row0_p * cols + rows_local_p * col0_q. */
  float *packed = common_malloc((size_t)n_global * sizeof(float));
  int *counts = common_malloc(2 * (size_t)tp * sizeof(int)), *displs = counts + tp;
  for (int r = 0; r < tp; r++) {
    int p = r / g->pc, q = r % g->pc;
    int64_t nr = dmat_block_count(m->rows, p, g->pr), nc = dmat_block_count(m->cols, q, g->pc);
    counts[r] = common_int(nr * nc);
    displs[r] = common_int(dmat_block_start(m->rows, p, g->pr) * m->cols +
                           nr * dmat_block_start(m->cols, q, g->pc));
  }
  CHECK(counts[g->tp_rank] == n_local, "dmat_gather: block size %d != %lld", counts[g->tp_rank],
        (long long)n_local);
  float *mine = packed + displs[g->tp_rank];
  for (int i = 0; i < m->rows_local && m->cols_local > 0; i++) /* pack (ld may pad) */
    memcpy(mine + (int64_t)i * m->cols_local, m->data + (int64_t)i * m->ld,
           (size_t)m->cols_local * sizeof(float));
  MPI_CHECK(
      MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, packed, counts, displs, MPI_FLOAT, g->tp_comm));
  /* rearrange: row i of block (p, q) -> full[(row0_p + i) * cols + col0_q ..] */
  for (int r = 0; r < tp; r++) {
    int p = r / g->pc, q = r % g->pc;
    int64_t r0 = dmat_block_start(m->rows, p, g->pr), c0 = dmat_block_start(m->cols, q, g->pc);
    int64_t nr = dmat_block_count(m->rows, p, g->pr), nc = dmat_block_count(m->cols, q, g->pc);
    for (int64_t i = 0; i < nr && nc > 0; i++)
      memcpy(full + (r0 + i) * m->cols + c0, packed + displs[r] + i * nc,
             (size_t)nc * sizeof(float));
  }
  free(counts);
  free(packed);
}
