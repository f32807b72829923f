/* dmat.c: block bookkeeping and the gemm wrapper of the distributed matrix (see dmat.h).
 *
 * Only the 1x1 fast path runs today; the ScaLAPACK path (psgemm on the transposed,
 * column-major view) belongs to the tensor-parallel work and is rejected by grid.
 */
#include "dmat.h"

#include <cblas.h>

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

void dmat_gemm(char trans_a, char trans_b, float alpha, const dmat *a, const dmat *b, float beta,
               dmat *c) {
  int64_t m = trans_a == 'N' ? a->rows : a->cols;
  int64_t k = trans_a == 'N' ? a->cols : a->rows;
  int64_t kb = trans_b == 'N' ? b->rows : b->cols;
  int64_t n = trans_b == 'N' ? b->cols : b->rows;
  CHECK(k == kb && c->rows == m && c->cols == n,
        "dmat_gemm: shapes do not match: op(A) %lldx%lld, op(B) %lldx%lld, C %lldx%lld",
        (long long)m, (long long)k, (long long)kb, (long long)n, (long long)c->rows,
        (long long)c->cols);
  CHECK(!c->g || c->g->tp == 1, "dmat_gemm: tp=%d is not yet supported", c->g->tp);
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a == 'N' ? CblasNoTrans : CblasTrans,
              trans_b == 'N' ? CblasNoTrans : CblasTrans, (int)m, (int)n, (int)k, alpha, a->data,
              a->ld, b->data, b->ld, beta, c->data, c->ld);
}
