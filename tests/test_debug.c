// NP: 2
/* test_debug.c: DEBUG_AGREE, the collective-argument check of DEBUG=1 builds (debug.h).
 *
 * With no argument (every build, run by run_tests.sh): DEBUG_AGREE evaluates its values in
 * a DEBUG=1 build and compiles to nothing otherwise; debug_agree returns when the ranks
 * agree; a dmat_gemm on a 1x2 TP grid and a tpops_layernorm_forward whose arguments agree
 * pass their checks and compute the right numbers.
 * With an argument (DEBUG=1 build only, run by test_debug_build.sh, which expects a
 * non-zero exit and the message): rank 1 passes a different size to a collective function.
 *   gemm       dmat_gemm with k = 4 on rank 0 and 5 on rank 1
 *   layernorm  tpops_layernorm_forward with n = 2 on rank 0 and 3 on rank 1
 *   direct     debug_agree itself with (7, 8) against (7, 9)
 */
#include "debug.h"
#include "dmat.h"
#include "harness.h"
#include "tpops.h"

#include <string.h>

static int evaluations = 0;
static int64_t counted(int64_t v) {
  evaluations++;
  return v;
}

/* C (2x3) = A (2xk) B (kx3) on a 1x2 grid (pc = 2), A(i,j) = i + j, B(i,j) = i - j. */
static void gemm(int k, float *out) {
  grid g;
  char err[256];
  CHECK(grid_create(&g, 2, 1, 2, 1, err, sizeof err) == C_OK, "grid: %s", err);
  dmat a, b, c;
  dmat_init(&a, &g, 2, k, NULL);
  dmat_init(&b, &g, k, 3, NULL);
  dmat_init(&c, &g, 2, 3, NULL);
  float fa[2 * 8], fb[8 * 3];
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < k; j++)
      fa[i * k + j] = (float)(i + j);
  for (int i = 0; i < k; i++)
    for (int j = 0; j < 3; j++)
      fb[i * 3 + j] = (float)(i - j);
  a.data = common_calloc((size_t)dmat_local_size(&a) + 1, sizeof(float));
  b.data = common_calloc((size_t)dmat_local_size(&b) + 1, sizeof(float));
  c.data = common_calloc((size_t)dmat_local_size(&c) + 1, sizeof(float));
  dmat_scatter(&a, fa);
  dmat_scatter(&b, fb);
  dmat_gemm('N', 'N', 1.0f, &a, &b, 0.0f, &c);
  dmat_gather(&c, out);
  free(a.data), free(b.data), free(c.data);
  grid_destroy(&g);
}

/* LayerNorm of n rows of 4 features, 2 columns on each rank. */
static void layernorm(int n, int rank, float *y) {
  float x[3 * 2], g[2] = {1.0f, 1.0f}, b[2] = {0.0f, 0.0f}, mean[3], rstd[3];
  for (int i = 0; i < n; i++)
    for (int j = 0; j < 2; j++)
      x[i * 2 + j] = (float)(i + 2 * rank + j); /* row i: i..i+3 */
  tpops_layernorm_forward(y, mean, rstd, x, g, b, n, 2, 4, 1e-5f, MPI_COMM_WORLD);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  CHECK(size == 2, "test_debug runs on 2 ranks, not %d", size);
  const char *mode = argc > 1 ? argv[1] : "";
  if (!strcmp(mode, "gemm")) {
    float out[6];
    gemm(rank == 0 ? 4 : 5, out);
    fprintf(stderr, "[rank %d] dmat_gemm with different k returned\n", rank);
    MPI_Finalize();
    return 0;
  }
  if (!strcmp(mode, "layernorm")) {
    float y[6];
    layernorm(rank == 0 ? 2 : 3, rank, y);
    fprintf(stderr, "[rank %d] tpops_layernorm_forward with different n returned\n", rank);
    MPI_Finalize();
    return 0;
  }
  if (!strcmp(mode, "direct")) {
    debug_agree(MPI_COMM_WORLD, "test_debug", __FILE__, __LINE__, "seven, size",
                (const int64_t[]){7, rank == 0 ? 8 : 9}, 2);
    fprintf(stderr, "[rank %d] debug_agree with different values returned\n", rank);
    MPI_Finalize();
    return 0;
  }

#ifdef MPIFORMER_DEBUG
  TEST_EXPECT(debug_enabled() == 1, "a DEBUG=1 build says debug_enabled() == 1");
#else
  TEST_EXPECT(debug_enabled() == 0, "a release build says debug_enabled() == 0");
#endif
  (void)counted; /* referenced only by DEBUG_AGREE, which a release build drops */
  DEBUG_AGREE(MPI_COMM_WORLD, counted(3), counted(4));
  TEST_EXPECT(evaluations == 2 * debug_enabled(),
              "DEBUG_AGREE evaluated its values %d times (want %d)", evaluations,
              2 * debug_enabled());
  DEBUG_AGREE(MPI_COMM_NULL, counted(rank)); /* not part of a communicator: no check */
  debug_agree(MPI_COMM_WORLD, "test_debug", __FILE__, __LINE__, "a, b, c",
              (const int64_t[]){-1, INT64_MIN, INT64_MAX}, 3);
  TEST_EXPECT(1, "debug_agree returned for equal values, INT64_MIN and INT64_MAX included");

  float out[6];
  gemm(4, out);
  int gemm_ok = 1;
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++) {
      float want = 0.0f;
      for (int l = 0; l < 4; l++)
        want += (float)((i + l) * (l - j));
      gemm_ok &= out[i * 3 + j] == want;
    }
  TEST_EXPECT(gemm_ok, "dmat_gemm on a 1x2 grid with agreeing shapes");

  float y[6];
  layernorm(2, rank, y);
  /* row i is i, i+1, i+2, i+3: mean i + 1.5, variance 1.25 */
  int ln_ok = 1;
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++) {
      double want = (2 * rank + j - 1.5) / sqrt(1.25 + 1e-5);
      ln_ok &= test_close(y[i * 2 + j], want, 1e-5, 1e-6);
    }
  TEST_EXPECT(ln_ok, "tpops_layernorm_forward over 2 ranks with agreeing n");
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
