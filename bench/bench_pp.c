/* bench_pp.c: the pipeline bubble, and training tokens/s of one layout.
 *
 * Usage:
 *   mpirun -np S bench_pp bubble SHAPE B T STEPS
 *     pp = S (the world), for M = 1, 4, 8 micro-batches of B x T: each stage's idle
 *     fraction of pipe_run's wall time (1 - compute / wall, averaged over the stages),
 *     against the theoretical 1F1B bubble (S-1)/(M+S-1) of equal stages; also the stages'
 *     compute seconds (their imbalance adds to the measured bubble).
 *   mpirun -np N bench_pp tput SHAPE DP PP TP B T M STEPS
 *     tokens/s of full training steps (pipe_run of M micro-batches of B x T per replica,
 *     tied-gradient sum, DP gradient sum, Adam) on the layout DP x PP x TP (= N; TP as
 *     1 x TP, Megatron's split).
 *   SHAPE: small (d 256, ffn 1024, 4 heads, 3+3 layers, vocab 8000) or base (d 512, ffn
 *   1024, 4 heads, 6+6 layers, vocab 8000), as bench_model.c.
 * One JSON line per measurement. Figures, not pass/fail.
 */
#include <string.h>

#include "config.h"
#include "model.h"
#include "ops.h"
#include "optim.h"
#include "pipe.h"

typedef struct bench_data {
  int32_t *src, *tin, *tout;
  int B, T;
} bench_data;

static void load(void *ctx, int j, pipe_batch *b) {
  bench_data *x = ctx;
  b->src = x->src, b->tgt_in = x->tin, b->tgt_out = x->tout;
  b->B = x->B, b->S = x->T, b->T = x->T;
  b->key = 100 + (uint64_t)j;
  b->valid = 1;
}

static model *make_model(const char *shape, const grid *g, config *c) {
  config_defaults(c);
  int small = strcmp(shape, "small") == 0;
  c->d_model = small ? 256 : 512, c->ffn_dim = 1024, c->heads = 4;
  c->enc_layers = c->dec_layers = small ? 3 : 6;
  c->dropout = 0.1;
  model_dims dims;
  model_dims_from_config(&dims, c, 8000, 0, 2, 3);
  return model_create(&dims, g, 1);
}

static void make_data(bench_data *x, int B, int T, int seed) {
  x->B = B, x->T = T;
  x->src = common_malloc((size_t)B * T * 4), x->tin = common_malloc((size_t)B * T * 4);
  x->tout = common_malloc((size_t)B * T * 4);
  for (int i = 0; i < B * T; i++) {
    x->src[i] = 4 + (int)(ops_hash_uniform((uint64_t)seed + 11, (uint64_t)i) * 7990);
    x->tout[i] = 4 + (int)(ops_hash_uniform((uint64_t)seed + 23, (uint64_t)i) * 7990);
    x->tin[i] = i % T == 0 ? 2 : x->tout[i - 1];
  }
}

static void free_data(bench_data *x) {
  free(x->src), free(x->tin), free(x->tout);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char *mode = argc > 1 ? argv[1] : "bubble", *shape = argc > 2 ? argv[2] : "small";
  char err[256];
  config c;
  grid g;
  if (!strcmp(mode, "bubble")) {
    int B = argc > 3 ? atoi(argv[3]) : 8, T = argc > 4 ? atoi(argv[4]) : 32;
    int steps = argc > 5 ? atoi(argv[5]) : 2;
    CHECK(grid_create(&g, 1, 1, 1, size, err, sizeof err) == C_OK, "%s", err);
    model *m = make_model(shape, &g, &c);
    bench_data x;
    make_data(&x, B, T, 0);
    pipe_sched ps;
    pipe_init(&ps, &g, m, 600);
    static const int Ms[3] = {1, 4, 8};
    for (int i = 0; i < 3; i++) {
      int M = Ms[i];
      /* per update: wall = the slowest stage's pipe_run, compute = every stage's model
       * calls; bubble = 1 - sum(compute) / (S * wall). The fastest update is reported
       * (the others include the machine's noise). */
      double best_wall = -1, best_bubble = 0,
             *busy_all = common_calloc((size_t)size, sizeof(double));
      for (int s = -1; s < steps; s++) { /* s = -1 warms up the arenas */
        model_zero_grad(m);
        double sums[4] = {0, 0, 0, 0};
        MPI_Barrier(MPI_COMM_WORLD);
        double b0 = ps.busy, t0 = common_now();
        pipe_run(&ps, M, load, &x, sums);
        double wall = common_now() - t0, busy = ps.busy - b0, busy_sum = 0;
        MPI_Allreduce(MPI_IN_PLACE, &wall, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(&busy, &busy_sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (s >= 0 && (best_wall < 0 || wall < best_wall)) {
          best_wall = wall;
          best_bubble = 1.0 - busy_sum / (size * wall);
          MPI_Gather(&busy, 1, MPI_DOUBLE, busy_all, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        }
      }
      if (rank == 0) {
        printf("{\"mode\":\"bubble\",\"shape\":\"%s\",\"pp\":%d,\"M\":%d,\"microbatch\":\"%dx%d\","
               "\"bubble_measured\":%.3f,\"bubble_theory\":%.3f,\"update_s\":%.3f,\"stage_compute_"
               "s\":[",
               shape, size, M, B, T, best_bubble, (double)(size - 1) / (M + size - 1), best_wall);
        for (int k = 0; k < size; k++)
          printf("%s%.3f", k ? "," : "", busy_all[k]);
        printf("]}\n");
        fflush(stdout);
      }
      free(busy_all);
    }
    pipe_free(&ps);
    free_data(&x);
    model_free(m);
    grid_destroy(&g);
    MPI_Finalize();
    return 0;
  }
  /* tput */
  int dp = atoi(argv[3]), pp = atoi(argv[4]), tp = atoi(argv[5]);
  int B = atoi(argv[6]), T = atoi(argv[7]), M = atoi(argv[8]), steps = atoi(argv[9]);
  CHECK(dp * pp * tp == size, "tput: dp x pp x tp = %d, not the %d ranks", dp * pp * tp, size);
  CHECK(grid_create(&g, tp, 1, tp, pp, err, sizeof err) == C_OK, "%s", err);
  model *m = make_model(shape, &g, &c);
  optim o;
  optim_init(&o, &c, m->n_floats, g.dp_comm);
  if (tp > 1) optim_set_tp(&o, g.tp_comm, m->n_floats);
  if (pp > 1) optim_set_pp(&o, g.pp_comm, m->norm_lo);
  bench_data x;
  make_data(&x, B, T, g.dp_rank);
  pipe_sched ps;
  pipe_init(&ps, &g, m, 600);
  double t_step = 0;
  for (int s = -1; s < steps; s++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = common_now(), sums[4] = {0, 0, 0, 0};
    model_zero_grad(m);
    pipe_run(&ps, M, load, &x, sums);
    pipe_reduce_tied(&ps);
    MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, g.pp_comm);
    MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, g.dp_comm);
    optim_sync_grads(&o, m->grad_mem, (float)(1.0 / sums[2]));
    optim_update(&o, m->param_mem, m->grad_mem, 1e-4, 1.0f);
    double dt = common_now() - t0;
    if (s >= 0) t_step += dt;
  }
  MPI_Allreduce(MPI_IN_PLACE, &t_step, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0)
    printf(
        "{\"mode\":\"tput\",\"shape\":\"%s\",\"dp\":%d,\"pp\":%d,\"tp\":%d,\"M\":%d,"
        "\"microbatch\":\"%dx%d\",\"tokens_per_update\":%d,\"tokens_per_s\":%.1f,\"step_s\":%.3f,"
        "\"params_mib_per_rank\":%.1f}\n",
        shape, dp, pp, tp, M, B, T, dp * M * B * T, (double)dp * M * B * T * steps / t_step,
        t_step / steps, m->n_floats * 4.0 / 1048576.0);
  pipe_free(&ps);
  free_data(&x);
  optim_free(&o);
  model_free(m);
  grid_destroy(&g);
  MPI_Finalize();
  return 0;
}
