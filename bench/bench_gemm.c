/* bench_gemm.c: where does dmat_gemm on a 2-rank TP grid (ScaLAPACK psgemm) start to beat
 * one cblas_sgemm on one rank? Run with mpirun -np 2 and OPENBLAS_NUM_THREADS=1.
 *
 * For square n x n x n products (op NN) and Transformer-shaped ones (op NT, the model's
 * Y = X W^T: tokens x d times (d_out x d)^T for d, d_out in {512, 2048}) it times
 *   - one cblas_sgemm of the whole product on rank 0 (rank 1 waits at a barrier),
 *   - dmat_gemm on the 2-rank grid as 1x2 and as 2x1 (all of A, B, C distributed, no
 *     gathering: the time of the collective call, the slower rank's),
 * taking turns within each round (so that load from elsewhere on a shared machine hits
 * all three alike), the best of a few rounds after a warm-up round, and prints a table
 * with the speedups (sgemm time / psgemm time) and a closing line with the smallest
 * square size from which psgemm wins at it and every larger size in the table.
 *
 *   bench_gemm [MAX_N [ROUNDS]]     largest size (default 2048), rounds (default 10)
 */
#include "dmat.h"

#include <cblas.h>
#include <string.h>

typedef struct {
  int m, k, n;
  char ta, tb;
  const char *what;
} bench_shape;

/* One product in the three ways. A, B, C of the sgemm exist on rank 0 only; the dmats live
 * on the 1x2 and the 2x1 grid. */
typedef struct {
  const bench_shape *s;
  float *a, *b, *c;         /* rank 0: the whole matrices */
  dmat da[2], db[2], dc[2]; /* [0]: 1x2 grid, [1]: 2x1 grid */
} bench_case;

static float *filled(int64_t count, uint64_t seed) {
  float *x = common_malloc((size_t)(count > 0 ? count : 1) * sizeof(float));
  for (int64_t i = 0; i < count; i++)
    x[i] = (float)((int64_t)((seed + (uint64_t)i) * 2654435761u % 2001) - 1000) / 1000.0f;
  return x;
}

static void case_make(bench_case *bc, const bench_shape *s, const grid *grids[2], int rank) {
  memset(bc, 0, sizeof *bc);
  bc->s = s;
  int ar = s->ta == 'N' ? s->m : s->k, ac = s->ta == 'N' ? s->k : s->m;
  int br = s->tb == 'N' ? s->k : s->n, bcols = s->tb == 'N' ? s->n : s->k;
  if (rank == 0) {
    bc->a = filled((int64_t)ar * ac, 1);
    bc->b = filled((int64_t)br * bcols, 2);
    bc->c = filled((int64_t)s->m * s->n, 3);
  }
  for (int i = 0; i < 2; i++) {
    const grid *g = grids[i];
    dmat_init(&bc->da[i], g, ar, ac, NULL);
    dmat_init(&bc->db[i], g, br, bcols, NULL);
    dmat_init(&bc->dc[i], g, s->m, s->n, NULL);
    bc->da[i].data = filled(dmat_local_size(&bc->da[i]), 1 + (uint64_t)g->tp_rank * 7);
    bc->db[i].data = filled(dmat_local_size(&bc->db[i]), 2 + (uint64_t)g->tp_rank * 7);
    bc->dc[i].data = filled(dmat_local_size(&bc->dc[i]), 3 + (uint64_t)g->tp_rank * 7);
  }
}

static void case_free(bench_case *bc) {
  free(bc->a), free(bc->b), free(bc->c);
  for (int i = 0; i < 2; i++)
    free(bc->da[i].data), free(bc->db[i].data), free(bc->dc[i].data);
}

/* Seconds of one run: way 0 = sgemm on rank 0 (the other rank waits at the barrier),
 * 1 = dmat_gemm on the 1x2 grid, 2 = on the 2x1 grid; the slower rank's time. */
static double case_run(bench_case *bc, int way, int rank) {
  const bench_shape *s = bc->s;
  MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  double t0 = common_now();
  if (way == 0) {
    if (rank == 0)
      cblas_sgemm(CblasRowMajor, s->ta == 'N' ? CblasNoTrans : CblasTrans,
                  s->tb == 'N' ? CblasNoTrans : CblasTrans, s->m, s->n, s->k, 0.7f, bc->a,
                  s->ta == 'N' ? s->k : s->m, bc->b, s->tb == 'N' ? s->n : s->k, 0.3f, bc->c, s->n);
  } else {
    dmat_gemm(s->ta, s->tb, 0.7f, &bc->da[way - 1], &bc->db[way - 1], 0.3f, &bc->dc[way - 1]);
  }
  double t = common_now() - t0, tmax = 0.0;
  MPI_CHECK(MPI_Allreduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return tmax;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, world;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  CHECK(world == 2, "bench_gemm compares 1 rank with 2: run it with mpirun -np 2 (got %d)", world);
  int max_n = argc > 1 ? atoi(argv[1]) : 2048;
  int reps = argc > 2 ? atoi(argv[2]) : 10;

  bench_shape shapes[32];
  int ns = 0;
  for (int n = 64; n <= max_n; n *= 2)
    shapes[ns++] = (bench_shape){n, n, n, 'N', 'N', "square"};
  int n_square = ns;
  static const int tokens[] = {64, 256, 1024, 2048};
  static const int dims[][2] = {{512, 512}, {512, 2048}, {2048, 512}}; /* d_in, d_out */
  for (size_t t = 0; t < sizeof tokens / sizeof tokens[0]; t++)
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
      if (tokens[t] <= max_n)
        shapes[ns++] = (bench_shape){tokens[t], dims[d][0], dims[d][1], 'N', 'T', "X W^T"};

  grid g12, g21;
  char err[256];
  CHECK(grid_create(&g12, 2, 1, 2, 1, err, sizeof err) == C_OK, "%s", err);
  CHECK(grid_create(&g21, 2, 2, 1, 1, err, sizeof err) == C_OK, "%s", err);
  const grid *grids[2] = {&g12, &g21};
  if (rank == 0) {
    printf("C = 0.7 op(A) op(B) + 0.3 C; OPENBLAS_NUM_THREADS=%s; per shape the three ways run "
           "in turn, best of %d rounds after a warm-up round\n",
           getenv("OPENBLAS_NUM_THREADS") ? getenv("OPENBLAS_NUM_THREADS") : "(unset)", reps);
    printf("%-7s %-20s %2s %10s %10s %10s %7s %7s %9s\n", "kind", "m x k x n", "op", "sgemm ms",
           "1x2 ms", "2x1 ms", "1x2 x", "2x1 x", "sgemm GF");
  }
  double speedup[32];
  for (int i = 0; i < ns; i++) {
    const bench_shape *s = &shapes[i];
    bench_case bc;
    case_make(&bc, s, grids, rank);
    /* the three ways take turns, so that a burst of load elsewhere hits all of them */
    double best[3] = {1e30, 1e30, 1e30};
    for (int r = -1; r < reps; r++)
      for (int way = 0; way < 3; way++) {
        double t = case_run(&bc, way, rank);
        if (r >= 0 && t < best[way]) best[way] = t;
      }
    case_free(&bc);
    speedup[i] = best[0] / (best[1] < best[2] ? best[1] : best[2]);
    if (rank == 0) {
      char dims_s[48];
      snprintf(dims_s, sizeof dims_s, "%d x %d x %d", s->m, s->k, s->n);
      printf("%-7s %-20s %c%c %10.3f %10.3f %10.3f %7.2f %7.2f %9.1f\n", s->what, dims_s, s->ta,
             s->tb, 1e3 * best[0], 1e3 * best[1], 1e3 * best[2], best[0] / best[1],
             best[0] / best[2], 2.0 * s->m * s->k * s->n / best[0] * 1e-9);
      fflush(stdout);
    }
  }
  if (rank == 0) {
    /* the smallest square size from which the better grid wins at it and every larger size */
    int from = -1;
    for (int i = n_square - 1; i >= 0 && speedup[i] > 1.0; i--)
      from = shapes[i].m;
    if (from > 0)
      printf("p?gemm on 2 ranks beats one sgemm from about %d x %d\n", from, from);
    else
      printf("p?gemm on 2 ranks beats one sgemm: never in this table\n");
  }
  grid_destroy(&g21);
  grid_destroy(&g12);
  MPI_Finalize();
  return 0;
}
