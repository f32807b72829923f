// NP: 1 2 3 4
/* test_dmat.c: dmat_gemm, dmat_gather and dmat_scatter on every TP grid the world allows.
 *
 * For each tp dividing the world size and each shape pr x pc = tp (dp = size / tp
 * replicas run side by side, so the BLACS context also lives on a sub-communicator), every
 * trans combination of C = 0.7 op(A) op(B) + 0.3 C over shapes that do not divide evenly,
 * leave some ranks an empty block (C 1x1 on 4 ranks, 2x2 and 5x3 over 3 or 4 process
 * rows/columns), have k = 1 and k = 0, or are wider than one PBLAS panel in every
 * dimension (so psgemm loops over panels whichever algorithm it picks). A, B and C are
 * functions of their global indices, so every rank knows them whole: each rank scatters
 * its blocks, runs dmat_gemm, gathers C and compares it with a double-precision reference
 * by the scaled residual
 *
 *   ||C - C_ref||_max / ((|alpha| ||A||_max ||B||_max k + |beta| ||C0||_max) eps_float) <= 10
 *
 * (a dot product of length k in float errs by at most about k eps max|a| max|b|; correct
 * results give below 0.6 here). A wrong op letter on a square operand, a dropped beta C
 * term or a block in the wrong place errs by O(1) relative, a residual of 1e5-1e6; a wrong
 * letter on a non-square operand is refused by psgemm's own shape check, which aborts the
 * test (non-zero exit).
 * Also: scatter then gather gives back every element exactly (with ld padded too), and
 * pp = 2 gets the coordinates of grid.h (stage = (r / tp) % pp, pp_comm ordered by stage). Grids
 * are created and destroyed many times in one process. One line per check on rank 0 (checks are
 * reduced over all ranks: worst residual, any mismatch), then "N passed, N failed".
 */
#include "dmat.h"
#include "harness.h"

#include <float.h>
#include <string.h>

static int rank, size;

/* The value of element (i, j) of matrix `tag`: a hash (splitmix64) of the three, so that
 * rows and columns are uncorrelated; a multiple of 2^-20 in [-1, 1), exact in float. */
static float val(int tag, int64_t i, int64_t j) {
  uint64_t x = (uint64_t)tag * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 0xBF58476D1CE4E5B9ULL +
               (uint64_t)j * 0x94D049BB133111EBULL;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return (float)((int64_t)(x >> 43) - (1 << 20)) / (float)(1 << 20);
}

static float *full_matrix(int tag, int64_t rows, int64_t cols) {
  float *x = common_malloc((size_t)(rows * cols) * sizeof(float));
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < cols; j++)
      x[i * cols + j] = val(tag, i, j);
  return x;
}

static double max_abs(const float *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    m = fmax(m, fabs((double)x[i]));
  return m;
}

/* Record one check for the whole world: it passes when `ok` holds on every rank.
 * Printed and counted on rank 0 only, so the closing counts are counts of checks. */
static void check(int ok, const char *line) {
  int all = 0, mine = ok ? 1 : 0;
  MPI_CHECK(MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (rank != 0) return;
  printf("%s  %s\n", all ? "ok  " : "FAIL", line);
  fflush(stdout);
  TEST_EXPECT(all, "%s", line);
}

static double world_max(double x) {
  double y = 0.0;
  if (!(x == x)) x = INFINITY; /* NaN: make it lose */
  MPI_CHECK(MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return y;
}

/* A local block for m of its grid, filled from the full matrix; ld padded by `pad`. */
static void make_local(dmat *m, const grid *g, int64_t rows, int64_t cols, const float *full,
                       int pad) {
  dmat_init(m, g, rows, cols, NULL);
  m->ld = m->cols_local + pad > 0 ? m->cols_local + pad : 1;
  m->data = common_calloc((size_t)m->rows_local * (size_t)m->ld + 1, sizeof(float));
  dmat_scatter(m, full);
}

/* Does any rank of the world own an empty block of m? */
static int any_empty(const dmat *m) {
  return common_any(MPI_COMM_WORLD, m->rows_local == 0 || m->cols_local == 0);
}

typedef struct {
  int64_t m, k, n;
} gemm_shape;

static const gemm_shape SHAPES[] = {
    {7, 5, 9}, {1, 13, 1}, {13, 1, 13},  {1, 13, 13}, {13, 13, 1},     {30, 17, 11},
    {2, 2, 2}, {5, 3, 5},  {64, 48, 40}, {4, 0, 6},   {260, 300, 270}, /* every dimension wider than
                                                                          one PBLAS panel
                                                                          (DMAT_PBLAS_NB = 256) */
};

static int saw_empty = 0;

static void check_gemm(const grid *g, const char *layout, char ta, char tb, gemm_shape s) {
  const float alpha = 0.7f, beta = 0.3f;
  int64_t ar = ta == 'N' ? s.m : s.k, ac = ta == 'N' ? s.k : s.m;
  int64_t br = tb == 'N' ? s.k : s.n, bc = tb == 'N' ? s.n : s.k;
  float *fa = full_matrix(1, ar, ac), *fb = full_matrix(2, br, bc);
  float *fc = full_matrix(3, s.m, s.n);
  float *got = common_malloc((size_t)(s.m * s.n) * sizeof(float));
  dmat a, b, c;
  make_local(&a, g, ar, ac, fa, 0);
  make_local(&b, g, br, bc, fb, 0);
  make_local(&c, g, s.m, s.n, fc, 0);
  int empty = any_empty(&a) || any_empty(&b) || any_empty(&c);
  saw_empty |= empty;

  dmat_gemm(ta, tb, alpha, &a, &b, beta, &c);
  for (int64_t i = 0; i < s.m * s.n; i++)
    got[i] = NAN; /* a hole that dmat_gather leaves shows */
  dmat_gather(&c, got);

  double err = 0.0;
  for (int64_t i = 0; i < s.m; i++)
    for (int64_t j = 0; j < s.n; j++) {
      double acc = 0.0;
      for (int64_t l = 0; l < s.k; l++) {
        double x = ta == 'N' ? fa[i * s.k + l] : fa[l * s.m + i];
        double y = tb == 'N' ? fb[l * s.n + j] : fb[j * s.k + l];
        acc += x * y;
      }
      double ref = (double)alpha * acc + (double)beta * fc[i * s.n + j];
      double e = fabs((double)got[i * s.n + j] - ref);
      err = (e == e && err == err) ? fmax(err, e) : NAN;
    }
  double scale = (fabs(alpha) * max_abs(fa, ar * ac) * max_abs(fb, br * bc) * (double)s.k +
                  fabs(beta) * max_abs(fc, s.m * s.n)) *
                 FLT_EPSILON;
  double resid = world_max(err / scale);
  char line[256];
  snprintf(line, sizeof line, "gemm %-9s %c%c  op(A) %2lldx%-2lld op(B) %2lldx%-2lld  resid %.3f%s",
           layout, ta, tb, (long long)s.m, (long long)s.k, (long long)s.k, (long long)s.n, resid,
           empty ? "  (empty blocks)" : "");
  check(resid <= 10.0, line);
  free(a.data), free(b.data), free(c.data);
  free(fa), free(fb), free(fc), free(got);
}

/* scatter(gather(x)) == x and gather(scatter(full)) == full, element for element. */
static void check_roundtrip(const grid *g, const char *layout, int64_t rows, int64_t cols,
                            int pad) {
  float *full = full_matrix(4, rows, cols);
  float *back = common_malloc((size_t)(rows * cols) * sizeof(float) + 1);
  dmat x, y;
  make_local(&x, g, rows, cols, full, pad);
  for (int64_t i = 0; i < rows * cols; i++)
    back[i] = NAN;
  dmat_gather(&x, back);
  int ok = memcmp(back, full, (size_t)(rows * cols) * sizeof(float)) == 0;
  make_local(&y, g, rows, cols, back, pad + 1); /* scatter the gathered matrix again */
  for (int i = 0; i < x.rows_local; i++)
    ok &= memcmp(x.data + (int64_t)i * x.ld, y.data + (int64_t)i * y.ld,
                 (size_t)x.cols_local * sizeof(float)) == 0;
  int empty = any_empty(&x);
  char line[256];
  snprintf(line, sizeof line, "gather/scatter %-9s %lldx%lld ld+%d exact%s", layout,
           (long long)rows, (long long)cols, pad, empty ? "  (empty blocks)" : "");
  check(ok, line);
  free(x.data), free(y.data), free(full), free(back);
}

static void run_layout(int tp, int pr, int pc) {
  grid g;
  char err[256], layout[32];
  int rc = grid_create(&g, tp, pr, pc, 1, err, sizeof err);
  snprintf(layout, sizeof layout, "%dx%d dp=%d", pr, pc, size / tp);
  char line[320];
  snprintf(line, sizeof line, "grid_create tp=%d %dx%d%s%s", tp, pr, pc, rc ? ": " : "",
           rc ? err : "");
  check(rc == C_OK && (tp == 1 ? g.blacs_ctx == -1 : g.blacs_ctx >= 0), line);
  if (rc != C_OK) return;
  static const char TR[4][2] = {{'N', 'N'}, {'N', 'T'}, {'T', 'N'}, {'T', 'T'}};
  for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++)
    for (int t = 0; t < 4; t++)
      check_gemm(&g, layout, TR[t][0], TR[t][1], SHAPES[i]);
  check_roundtrip(&g, layout, 7, 5, 0);
  check_roundtrip(&g, layout, 30, 17, 3);
  check_roundtrip(&g, layout, 1, 13, 0);
  check_roundtrip(&g, layout, 13, 1, 2);
  check_roundtrip(&g, layout, 2, 3, 1);
  grid_destroy(&g);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  for (int tp = 1; tp <= size; tp++) {
    if (size % tp) continue;
    for (int pr = 1; pr <= tp; pr++)
      if (tp % pr == 0) run_layout(tp, pr, tp / pr);
  }
  if (size > 1) check(saw_empty, "some check had a rank with an empty block");

  /* Create and destroy the largest grids again and again: BLACS contexts and system
   * handles must not leak or go stale. */
  int cycles_ok = 1;
  for (int cycle = 0; cycle < 40; cycle++) {
    grid g;
    char err[256];
    int pr = (cycle % 2) ? size : 1;
    if (grid_create(&g, size, pr, size / pr, 1, err, sizeof err) != C_OK) {
      cycles_ok = 0;
      break;
    }
    float fa[6] = {1, 2, 3, 4, 5, 6}, fb[6] = {1, 0, 0, 1, 1, 1}, fc[4] = {0}, out[4];
    dmat a, b, c; /* [1 2 3; 4 5 6] * [1 0; 0 1; 1 1] = [4 5; 10 11] */
    make_local(&a, &g, 2, 3, fa, 0);
    make_local(&b, &g, 3, 2, fb, 0);
    make_local(&c, &g, 2, 2, fc, 0);
    dmat_gemm('N', 'N', 1.0f, &a, &b, 0.0f, &c);
    dmat_gather(&c, out);
    cycles_ok &= out[0] == 4 && out[1] == 5 && out[2] == 10 && out[3] == 11;
    free(a.data), free(b.data), free(c.data);
    grid_destroy(&g);
  }
  check(cycles_ok, "40 grid_create/dmat_gemm/grid_destroy cycles");

  if (size % 2 == 0) {
    grid g;
    char err[256] = "";
    int rc = grid_create(&g, 1, 1, 1, 2, err, sizeof err), pp_rank = -1, pp_size = -1;
    if (rc == C_OK) {
      MPI_Comm_rank(g.pp_comm, &pp_rank);
      MPI_Comm_size(g.pp_comm, &pp_size);
    }
    int good = rc == C_OK && g.stage == g.world_rank % 2 && g.dp_rank == g.world_rank / 2 &&
               pp_rank == g.stage && pp_size == 2,
        all = 0;
    MPI_Allreduce(&good, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    char line[320];
    snprintf(line, sizeof line,
             "pp=2: stage = r %% 2, dp_rank = r / 2, pp_comm ordered by stage %s", err);
    check(all, line);
    if (rc == C_OK) grid_destroy(&g);
  }
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
