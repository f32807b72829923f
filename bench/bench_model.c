/* bench_model.c: training throughput of the model on a fixed batch, and the single-core
 * sgemm rate measured in the same run.
 *
 * Usage: mpirun -np N bench_model SHAPE [B T STEPS [ZERO [TP_GRID]]]
 *   SHAPE: small (d 256, ffn 1024, 4 heads, 3+3 layers, vocab 8000) or
 *          base  (d 512, ffn 1024, 4 heads, 6+6 layers, vocab 8000: the paper's IWSLT shape)
 *   B x T: sentences x tokens per rank (default 64 x 32, source and target alike)
 *   B x T: per data-parallel replica when TP_GRID (e.g. 1x2, 2x1) splits the model
 * ZERO=1 shards the Adam moments over the ranks (the state bytes per rank are printed).
 * Each step is what `mpiformer train` does: forward, backward, gradient all-reduce over
 * the data-parallel ranks, Adam. Prints one JSON line: target tokens/s over all ranks,
 * matmul GFLOP/s achieved per rank, the sgemm rate of one core (2048x2048x512), the
 * parameter MiB per rank, and comm_fraction: the share of the step rank 0 spends inside
 * MPI calls (the calls of mpiformer and of ScaLAPACK/BLACS, timed through the PMPI
 * profiling interface below; waiting for a slower partner counts as communication), and
 * outside_matmul_ms / outside_matmul_fraction: rank 0's step time outside the matmuls (time
 * inside cblas_sgemm and ScaLAPACK's psgemm_, both interposed below; psgemm_'s own
 * communication counts as matmul there; with gemm=onednn, time inside oneDNN's
 * dnnl_primitive_execute and dnnl_stream_wait, interposed too; in bf16 the rounding of the
 * operands to bf16 in gemm_sgemm is not inside these calls and counts as outside).
 * The local matmul seam's engine and precision come from the environment, like the config
 * keys gemm and precision: MPIFORMER_GEMM=auto|openblas|onednn (default auto) and
 * MPIFORMER_PRECISION=fp32|bf16 (default fp32); the JSON line names the engine and precision
 * that ran, the ISA oneDNN picked, and engine_peak_gflops: gemm_sgemm 2048x2048x512 on one
 * core in that engine and precision (sgemm_1core_gflops is OpenBLAS's cblas_sgemm).
 * The data-parallel gradient sum is overlapped with the backward in buckets as the config
 * keys grad_overlap and grad_bucket_mb say, from MPIFORMER_GRAD_OVERLAP=0|1 (default 1) and
 * MPIFORMER_GRAD_BUCKET_MB; then comm_fraction counts the time inside the MPI_Test polls
 * and the final wait, which is the communication the backward did not hide.
 * MPIFORMER_TRACE=PREFIX writes each rank's timeline (trace.h).
 * Figures, not pass/fail.
 */
#include <cblas.h>
#include <dlfcn.h>
#include <string.h>

#include "config.h"
#include "gemm.h"
#include "gradsync.h"
#include "trace.h"
#include "model.h"
#include "ops.h"
#include "optim.h"

/* ---- PMPI wrappers: time spent inside the MPI calls the step makes ------------------ */
static double mpi_seconds = 0;
#define TIMED(call)                                                                                \
  do {                                                                                             \
    double t0_ = MPI_Wtime();                                                                      \
    int rc_ = call;                                                                                \
    mpi_seconds += MPI_Wtime() - t0_;                                                              \
    return rc_;                                                                                    \
  } while (0)
int MPI_Allreduce(const void *s, void *r, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c) {
  TIMED(PMPI_Allreduce(s, r, n, t, op, c));
}
int MPI_Allgatherv(const void *s, int n, MPI_Datatype t, void *r, const int *rc, const int *d,
                   MPI_Datatype rt, MPI_Comm c) {
  TIMED(PMPI_Allgatherv(s, n, t, r, rc, d, rt, c));
}
int MPI_Allgather(const void *s, int n, MPI_Datatype t, void *r, int rn, MPI_Datatype rt,
                  MPI_Comm c) {
  TIMED(PMPI_Allgather(s, n, t, r, rn, rt, c));
}
int MPI_Reduce_scatter(const void *s, void *r, const int *rc, MPI_Datatype t, MPI_Op op,
                       MPI_Comm c) {
  TIMED(PMPI_Reduce_scatter(s, r, rc, t, op, c));
}
int MPI_Send(const void *b, int n, MPI_Datatype t, int dst, int tag, MPI_Comm c) {
  TIMED(PMPI_Send(b, n, t, dst, tag, c));
}
int MPI_Recv(void *b, int n, MPI_Datatype t, int src, int tag, MPI_Comm c, MPI_Status *st) {
  TIMED(PMPI_Recv(b, n, t, src, tag, c, st));
}
int MPI_Test(MPI_Request *r, int *flag, MPI_Status *st) {
  TIMED(PMPI_Test(r, flag, st));
}
int MPI_Iallreduce(const void *s, void *r, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c,
                   MPI_Request *q) {
  TIMED(PMPI_Iallreduce(s, r, n, t, op, c, q));
}
int MPI_Ireduce_scatter(const void *s, void *r, const int *rc, MPI_Datatype t, MPI_Op op,
                        MPI_Comm c, MPI_Request *q) {
  TIMED(PMPI_Ireduce_scatter(s, r, rc, t, op, c, q));
}
int MPI_Wait(MPI_Request *r, MPI_Status *st) {
  TIMED(PMPI_Wait(r, st));
}
int MPI_Waitall(int n, MPI_Request *r, MPI_Status *st) {
  TIMED(PMPI_Waitall(n, r, st));
}
int MPI_Bcast(void *b, int n, MPI_Datatype t, int root, MPI_Comm c) {
  TIMED(PMPI_Bcast(b, n, t, root, c));
}
int MPI_Sendrecv(const void *sb, int sn, MPI_Datatype st, int dst, int stag, void *rb, int rn,
                 MPI_Datatype rt, int src, int rtag, MPI_Comm c, MPI_Status *s) {
  TIMED(PMPI_Sendrecv(sb, sn, st, dst, stag, rb, rn, rt, src, rtag, c, s));
}

/* ---- matmul time: cblas_sgemm and psgemm_ interposed, the real ones found by dlsym ------- */
static double matmul_seconds = 0;
typedef void (*sgemm_fn)(const enum CBLAS_ORDER, const enum CBLAS_TRANSPOSE,
                         const enum CBLAS_TRANSPOSE, const blasint, const blasint, const blasint,
                         const float, const float *, const blasint, const float *, const blasint,
                         const float, float *, const blasint);
void cblas_sgemm(const enum CBLAS_ORDER o, const enum CBLAS_TRANSPOSE ta,
                 const enum CBLAS_TRANSPOSE tb, const blasint m, const blasint n, const blasint k,
                 const float alpha, const float *a, const blasint lda, const float *b,
                 const blasint ldb, const float beta, float *c, const blasint ldc) {
  static sgemm_fn real;
  if (!real) CHECK((real = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm")), "no cblas_sgemm");
  double t0 = common_now();
  real(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  matmul_seconds += common_now() - t0;
}
typedef void (*psgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                          const float *, const float *, const int *, const int *, const int *,
                          const float *, const int *, const int *, const int *, const float *,
                          float *, const int *, const int *, const int *);
void psgemm_(const char *ta, const char *tb, const int *m, const int *n, const int *k,
             const float *alpha, const float *a, const int *ia, const int *ja, const int *da,
             const float *b, const int *ib, const int *jb, const int *db, const float *beta,
             float *c, const int *ic, const int *jc, const int *dc);
void psgemm_(const char *ta, const char *tb, const int *m, const int *n, const int *k,
             const float *alpha, const float *a, const int *ia, const int *ja, const int *da,
             const float *b, const int *ib, const int *jb, const int *db, const float *beta,
             float *c, const int *ic, const int *jc, const int *dc) {
  static psgemm_fn real;
  if (!real) CHECK((real = (psgemm_fn)dlsym(RTLD_NEXT, "psgemm_")), "no psgemm_");
  double t0 = common_now();
  real(ta, tb, m, n, k, alpha, a, ia, ja, da, b, ib, jb, db, beta, c, ic, jc, dc);
  matmul_seconds += common_now() - t0;
}

#ifdef MPIFORMER_ONEDNN
#include <dnnl.h>
/* gemm=onednn: the seam's products run in dnnl_primitive_execute + dnnl_stream_wait */
typedef dnnl_status_t (*dnnl_exec_fn)(const_dnnl_primitive_t, dnnl_stream_t, int,
                                      const dnnl_exec_arg_t *);
typedef dnnl_status_t (*dnnl_wait_fn)(dnnl_stream_t);
dnnl_status_t DNNL_API dnnl_primitive_execute(const_dnnl_primitive_t p, dnnl_stream_t s, int n,
                                              const dnnl_exec_arg_t *args) {
  static dnnl_exec_fn real;
  if (!real)
    CHECK((real = (dnnl_exec_fn)dlsym(RTLD_NEXT, "dnnl_primitive_execute")),
          "no dnnl_primitive_execute");
  double t0 = common_now();
  dnnl_status_t st = real(p, s, n, args);
  matmul_seconds += common_now() - t0;
  return st;
}
dnnl_status_t DNNL_API dnnl_stream_wait(dnnl_stream_t s) {
  static dnnl_wait_fn real;
  if (!real)
    CHECK((real = (dnnl_wait_fn)dlsym(RTLD_NEXT, "dnnl_stream_wait")), "no dnnl_stream_wait");
  double t0 = common_now();
  dnnl_status_t st = real(s);
  matmul_seconds += common_now() - t0;
  return st;
}
#endif

/* One core's rate of a 2048x2048x512 product: cblas_sgemm (OpenBLAS) when seam is 0, else
 * gemm_sgemm in the engine and precision set up. */
static double sgemm_rate(int seam) {
  int m = 2048, n = 2048, k = 512;
  float *a = common_calloc((size_t)m * k, 4), *b = common_calloc((size_t)k * n, 4),
        *c = common_calloc((size_t)m * n, 4);
  for (int i = 0; i < m * k; i++)
    a[i] = (float)(i % 7) * 0.1f;
  for (int i = 0; i < k * n; i++)
    b[i] = (float)(i % 5) * 0.1f;
  int reps = -1; /* one untimed warm-up (BLAS buffers, oneDNN's primitive) */
  double t0 = 0;
  while (reps < 0 || common_now() - t0 < 1.0 || reps < 3) {
    if (seam)
      gemm_sgemm('N', 'N', m, n, k, 1, a, k, b, n, 0, c, n);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1, a, k, b, n, 0, c, n);
    if (++reps == 0) t0 = common_now();
  }
  double t = common_now() - t0;
  free(a), free(b), free(c);
  return 2.0 * m * n * k * reps / t / 1e9;
}

/* Matmul FLOPs of one training step (forward + backward = 3x forward) for B x T. */
static double step_flops(const model_dims *D, int B, int T) {
  double n = (double)B * T, d = D->d, F = D->ffn, H = D->heads, V = D->vocab;
  double lin = 2 * n * d * d;                            /* one d x d projection */
  double attn = 2 * 2 * B * H * (double)T * T * (d / H); /* QK^T and PV */
  double ffn = 2 * 2 * n * d * F;
  double enc = D->n_enc * (4 * lin + attn + ffn);
  double dec = D->n_dec * (8 * lin + 2 * attn + ffn);
  double out = 2 * n * d * V;
  return 3 * (enc + dec + out);
}

int main(int argc, char **argv) {
  gradsync_mpi_defaults(); /* as bin/mpiformer */
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char *shape = argc > 1 ? argv[1] : "small";
  int B = argc > 2 ? atoi(argv[2]) : 64, T = argc > 3 ? atoi(argv[3]) : 32;
  int steps = argc > 4 ? atoi(argv[4]) : 5;
  int zero = argc > 5 ? atoi(argv[5]) : 0;
  int pr = 1, pc = 1;
  if (argc > 6) CHECK(sscanf(argv[6], "%dx%d", &pr, &pc) == 2, "TP_GRID: %s is not PRxPC", argv[6]);
  config c;
  config_defaults(&c);
  int small = strcmp(shape, "small") == 0;
  c.d_model = small ? 256 : 512, c.ffn_dim = 1024, c.heads = 4;
  c.enc_layers = c.dec_layers = small ? 3 : 6;
  c.dropout = 0.1;
  c.zero = zero;
  const char *eng_env = getenv("MPIFORMER_GEMM"), *prec_env = getenv("MPIFORMER_PRECISION");
  if (eng_env && *eng_env) snprintf(c.gemm, sizeof c.gemm, "%s", eng_env);
  if (prec_env && *prec_env) snprintf(c.precision, sizeof c.precision, "%s", prec_env);
  const char *ov_env = getenv("MPIFORMER_GRAD_OVERLAP"),
             *mb_env = getenv("MPIFORMER_GRAD_BUCKET_MB");
  if (ov_env && *ov_env) c.grad_overlap = atoi(ov_env);
  if (mb_env && *mb_env) c.grad_bucket_mb = atof(mb_env);
  grid g;
  char err[256];
  /* as session.c: the seam before the model (model_create registers the bf16 shadow) */
  CHECK(gemm_setup(c.gemm, c.precision, 1, err, sizeof err) == C_OK, "%s", err);
  CHECK(grid_create(&g, pr * pc, pr, pc, 1, err, sizeof err) == C_OK, "%s", err);
  model_dims dims;
  model_dims_from_config(&dims, &c, 8000, 0, 2, 3);
  model *m = model_create(&dims, &g, 1);
  optim o;
  optim_init(&o, &c, m->n_floats, g.dp_comm);
  if (g.tp > 1) optim_set_tp(&o, g.tp_comm, g.prow == 0 ? m->n_floats : m->vec_lo);
  gradsync sync = {0}; /* as train.c: buckets summed during the backward */
  if (c.grad_overlap) gradsync_init(&sync, &o, m, (int64_t)(c.grad_bucket_mb * 1048576.0));
  if (gradsync_buckets(&sync) > 0) optim_set_sync(&o, &sync);
  trace_open(MPI_COMM_WORLD);
  int32_t *src = common_malloc((size_t)B * T * 4), *tin = common_malloc((size_t)B * T * 4),
          *tout = common_malloc((size_t)B * T * 4);
  for (int i = 0; i < B * T; i++) {
    src[i] = 4 + (int)(ops_hash_uniform((uint64_t)g.dp_rank + 11, (uint64_t)i) * 7990);
    tout[i] = 4 + (int)(ops_hash_uniform((uint64_t)g.dp_rank + 23, (uint64_t)i) * 7990);
    tin[i] = i % T == 0 ? 2 : tout[i - 1];
  }
  double sgemm = 0, peak = 0;
  if (rank == 0) sgemm = sgemm_rate(0), peak = sgemm_rate(1); /* alone, before the ranks compete */
  MPI_Barrier(MPI_COMM_WORLD);
  double t_step = 0, t_comm = 0, mpi0 = 0, mm0 = 0;
  for (int s = -1; s < steps; s++) { /* step -1 warms up (arena, BLAS buffers) */
    MPI_Barrier(MPI_COMM_WORLD);
    if (s == 0) mpi0 = mpi_seconds, mm0 = matmul_seconds;
    double t0 = common_now(), loss = 0, nll = 0;
    model_zero_grad(m);
    model_set_mode(m, 1, (uint64_t)s + 100);
    gradsync_arm(&sync, 1);
    int64_t ntok = model_forward_backward(m, src, tin, tout, B, T, T, 1.0f, 1, &loss, &nll);
    double total = (double)ntok; /* the replica's total on every rank */
    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_DOUBLE, MPI_SUM, g.dp_comm);
    optim_sync_grads(&o, m->grad_mem, (float)(1.0 / total));
    optim_update(&o, m->param_mem, m->grad_mem, 1e-4, 1.0f);
    double dt = common_now() - t0;
    if (s >= 0) t_step += dt;
  }
  t_comm = mpi_seconds - mpi0;
  double t_out = t_step - (matmul_seconds - mm0); /* rank 0's step outside matmuls */
  MPI_Allreduce(MPI_IN_PLACE, &t_step, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) {
    double tok_s = (double)B * T * g.dp * steps / t_step;
    double gflops = step_flops(&dims, B, T) * g.dp * steps / t_step / 1e9 / size;
    printf("{\"shape\":\"%s\",\"ranks\":%d,\"tp_grid\":\"%dx%d\",\"batch\":\"%dx%d\",\"tokens_per_"
           "s\":%.1f,"
           "\"matmul_gflops_per_rank\":%.2f,\"sgemm_1core_gflops\":%.2f,\"fraction_of_sgemm\":%.3f,"
           "\"comm_fraction\":%.3f,\"step_s\":%.3f,\"zero\":%d,\"adam_state_mib_per_rank\":%.1f,"
           "\"params_mib_per_rank\":%.1f,\"outside_matmul_ms\":%.1f,\"outside_matmul_fraction\":%."
           "3f,\"gemm\":\"%s\",\"precision\":\"%s\",\"onednn_isa\":\"%s\",\"bf16_native\":%d,"
           "\"engine_peak_gflops\":%.2f,\"fraction_of_engine_peak\":%.3f,\"grad_overlap\":%d,"
           "\"grad_buckets\":%d,\"grad_bucket_mb\":%g}\n",
           shape, size, pr, pc, B, T, tok_s, gflops, sgemm, gflops / sgemm, t_comm / t_step,
           t_step / steps, zero, optim_state_bytes(&o) / 1048576.0, m->n_floats * 4.0 / 1048576.0,
           1e3 * t_out / steps, t_out / t_step,
           gemm_engine() == GEMM_ONEDNN ? "onednn" : "openblas",
           gemm_precision() == GEMM_BF16 ? "bf16" : "fp32", gemm_onednn_isa(), gemm_bf16_native(),
           peak, gflops / peak, gradsync_buckets(&sync) > 0, gradsync_buckets(&sync),
           c.grad_bucket_mb);
  }
  trace_close();
  gradsync_free(&sync);
  optim_free(&o);
  model_free(m);
  grid_destroy(&g);
  MPI_Finalize();
  return 0;
}
