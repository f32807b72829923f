/* bench_engines.c: GFLOP/s of the local matmul seam (gemm.h) per engine and precision, one
 * thread, on the products of a `base` model's linear layers (d 512, ffn 2048, 2048 tokens a
 * batch): the forward Y = X W^T ('N','T'), the input gradient dX = dY W ('N','N') and the
 * weight gradient dW += dY^T X ('T','N'). Engines run in turns within each round (so that load
 * from elsewhere on a shared machine hits them alike); the best round of each is printed.
 * Figures, not pass/fail. Run on one rank with OPENBLAS_NUM_THREADS=1.
 *
 *   bench_engines [ROUNDS]     rounds (default 5)
 */
#include "common.h"
#include "gemm.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  char ta, tb;
  int m, n, k;
  const char *what;
} bshape;

static const bshape shapes[] = {
    {'N', 'T', 2048, 2048, 512, "fc1 fwd  Y=X W^T"},
    {'N', 'N', 2048, 512, 2048, "fc2 dX   dY W"},
    {'T', 'N', 2048, 512, 2048, "fc2 dW   dY^T X"},
    {'N', 'T', 2048, 512, 512, "q/k/v/o  Y=X W^T"},
};
enum { N_SHAPES = sizeof shapes / sizeof shapes[0] };
static const char *combos[][2] = {
    {"openblas", "fp32"}, {"onednn", "fp32"}, {"openblas", "bf16"}, {"onednn", "bf16"}};
enum { N_COMBOS = 4 };

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rounds = argc > 1 ? atoi(argv[1]) : 5;
  size_t big = (size_t)2048 * 2048;
  float *a = common_malloc(big * sizeof(float)), *b = common_malloc(big * sizeof(float)),
        *c = common_malloc(big * sizeof(float));
  for (size_t i = 0; i < big; i++)
    a[i] = (float)((int)(i * 2654435761u % 2001) - 1000) / 1000.0f, b[i] = a[(i * 7) % big],
    c[i] = 0.0f;
  char err[300], line[400], warn[300];
  int ok[N_COMBOS];
  for (int e = 0; e < N_COMBOS; e++)
    ok[e] = gemm_setup(combos[e][0], combos[e][1], 1, err, sizeof err) == C_OK;
  printf("oneDNN ISA %s, bf16 matmul kernels: %s\n", gemm_onednn_isa(),
         gemm_bf16_native() ? "yes" : "no (bf16 = bf16-rounded operands on the fp32 engine)");
  double best[N_SHAPES][N_COMBOS];
  for (int s = 0; s < N_SHAPES; s++)
    for (int e = 0; e < N_COMBOS; e++)
      best[s][e] = 1e30;
  for (int r = 0; r <= rounds; r++) /* round 0 warms up (primitive creation, page faults) */
    for (int s = 0; s < N_SHAPES; s++)
      for (int e = 0; e < N_COMBOS; e++) {
        if (!ok[e]) continue;
        const bshape *x = &shapes[s];
        gemm_setup(combos[e][0], combos[e][1], 1, err, sizeof err);
        if (r == 0 && s == 0) {
          gemm_describe(line, sizeof line, warn, sizeof warn);
          printf("  %s/%s: %s\n", combos[e][0], combos[e][1], line);
        }
        int lda = x->ta == 'N' ? x->k : x->m, ldb = x->tb == 'N' ? x->n : x->k;
        gemm_sgemm(x->ta, x->tb, x->m, x->n, x->k, 1.0f, a, lda, b, ldb, 0.0f, c, x->n);
        double t0 = common_now();
        gemm_sgemm(x->ta, x->tb, x->m, x->n, x->k, 1.0f, a, lda, b, ldb, 0.0f, c, x->n);
        double t = common_now() - t0;
        if (r > 0 && t < best[s][e]) best[s][e] = t;
      }
  printf("%-18s %6s %6s %6s", "product", "m", "n", "k");
  for (int e = 0; e < N_COMBOS; e++)
    printf(" %9s/%-4s", combos[e][0], combos[e][1]);
  printf("   (GFLOP/s, one thread, best of %d)\n", rounds);
  for (int s = 0; s < N_SHAPES; s++) {
    const bshape *x = &shapes[s];
    printf("%-18s %6d %6d %6d", x->what, x->m, x->n, x->k);
    for (int e = 0; e < N_COMBOS; e++)
      if (ok[e])
        printf(" %14.1f", 2.0 * x->m * x->n * x->k / best[s][e] / 1e9);
      else
        printf(" %14s", "-");
    printf("\n");
  }
  free(a), free(b), free(c);
  MPI_Finalize();
  return 0;
}
