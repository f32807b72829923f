/* bench_ops.c: milliseconds per call of the ops kernels at Transformer-base-like sizes
 * (one process, OPENBLAS_NUM_THREADS as set by the caller). Prints one JSON object per
 * kernel. bench/bench_ops_torch.py times the same operations in PyTorch for comparison.
 *
 *   bench_ops [B T d H V]     defaults: 64 32 512 8 8000
 */
#include "common.h"
#include "config.h"
#include "ops.h"
#include "optim.h"
#include "tpops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *buf(int64_t n) {
  float *x = common_malloc((size_t)n * sizeof(float));
  uint64_t key = ops_hash_key(1, 2, 3, (uint64_t)n);
  for (int64_t i = 0; i < n; i++)
    x[i] = ops_hash_uniform(key, (uint64_t)i) * 2.0f - 1.0f;
  return x;
}

/* Run `body` until about 0.3 s have passed (at least 3 times); print ms per call. */
#define BENCH(name, body)                                                                          \
  do {                                                                                             \
    body;                                                                                          \
    int reps_ = 0;                                                                                 \
    double t0_ = common_now(), t_;                                                                 \
    do {                                                                                           \
      body;                                                                                        \
      reps_++;                                                                                     \
      t_ = common_now() - t0_;                                                                     \
    } while (t_ < 0.3 || reps_ < 3);                                                               \
    printf("{\"op\": \"%s\", \"ms\": %.4f}\n", name, 1e3 * t_ / reps_);                            \
    fflush(stdout);                                                                                \
  } while (0)

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int B = argc > 1 ? atoi(argv[1]) : 64, T = argc > 2 ? atoi(argv[2]) : 32;
  int d = argc > 3 ? atoi(argv[3]) : 512, H = argc > 4 ? atoi(argv[4]) : 8;
  int V = argc > 5 ? atoi(argv[5]) : 8000;
  int n = B * T, dh = d / H;
  printf("{\"B\": %d, \"T\": %d, \"d\": %d, \"H\": %d, \"V\": %d}\n", B, T, d, H, V);
  float *x = buf((int64_t)n * d), *y = buf((int64_t)n * d), *dy = buf((int64_t)n * d);
  float *dx = buf((int64_t)n * d), *g = buf(d), *b = buf(d), *dg = buf(d), *db = buf(d);
  float *mean = buf(n), *rstd = buf(n);
  BENCH("layernorm_forward", ops_layernorm_forward(y, mean, rstd, x, g, b, n, d, 1e-5f));
  BENCH("layernorm_backward", ops_layernorm_backward(dx, dg, db, dy, x, mean, rstd, g, n, d));
  /* the column-split LayerNorm on one rank (what tp > 1 runs on each column block) */
  float *lscr = buf(2 * (int64_t)n);
  BENCH("tpops_layernorm_forward_1rank",
        tpops_layernorm_forward(y, mean, rstd, x, g, b, n, d, d, 1e-5f, MPI_COMM_SELF));
  BENCH("tpops_layernorm_backward_1rank",
        tpops_layernorm_backward(dx, dg, db, dy, x, mean, rstd, g, n, d, d, MPI_COMM_SELF, lscr));
  free(lscr);
  BENCH("relu_forward", ops_relu_forward(y, x, (int64_t)n * d));
  BENCH("relu_backward", ops_relu_backward(dx, dy, y, (int64_t)n * d));
  BENCH("dropout_0.1", ops_dropout(y, x, n, d, 0, 0, d, 0.1f, 42));
  BENCH("add", ops_add(y, x, dy, (int64_t)n * d));
  BENCH("positions_add", ops_positions_add(y, B, T, d, 2));

  /* self-attention on a fused (n, 3d) q|k|v array, causal, no dropout and dropout 0.1 */
  float *qkv = buf((int64_t)n * 3 * d), *dqkv = buf((int64_t)n * 3 * d);
  float *probs = buf((int64_t)B * H * T * T), *scr = buf(2 * (int64_t)T * T);
  uint8_t *pad = calloc((size_t)n, 1);
  for (int i = 0; i < B; i++)
    pad[i * T + T - 1] = (uint8_t)(i % 2);
  BENCH("attention_forward",
        ops_attention_forward(y, d, probs, qkv, 3 * d, qkv + d, qkv + 2 * d, 3 * d, pad, 1, B, T, T,
                              H, dh, 0.0f, 7, 0, 0, H, scr));
  BENCH("attention_backward",
        ops_attention_backward(dqkv, dqkv + d, dqkv + 2 * d, dy, d, probs, qkv, 3 * d, qkv + d,
                               qkv + 2 * d, 3 * d, B, T, T, H, dh, 0.0f, 7, 0, 0, H, scr));
  BENCH("attention_forward_drop0.1",
        ops_attention_forward(y, d, probs, qkv, 3 * d, qkv + d, qkv + 2 * d, 3 * d, pad, 1, B, T, T,
                              H, dh, 0.1f, 7, 0, 0, H, scr));
  BENCH("attention_backward_drop0.1",
        ops_attention_backward(dqkv, dqkv + d, dqkv + 2 * d, dy, d, probs, qkv, 3 * d, qkv + d,
                               qkv + 2 * d, 3 * d, B, T, T, H, dh, 0.1f, 7, 0, 0, H, scr));

  float *logits = buf((int64_t)n * V), *dlogits = buf((int64_t)n * V);
  int32_t *tgt = common_malloc((size_t)n * sizeof(int32_t));
  for (int i = 0; i < n; i++)
    tgt[i] = (int32_t)((i * 7919) % V);
  double loss = 0.0, nll = 0.0;
  BENCH("xent_loss_and_grad", ops_xent(dlogits, logits, tgt, n, V, 1, 0.1f, 1.0f, &loss, &nll));
  /* the vocabulary-parallel version on one rank (what tp > 1 runs on each column block) */
  double *xscr = common_malloc((size_t)4 * n * sizeof(double));
  BENCH("tpops_xent_1rank", tpops_xent(dlogits, logits, tgt, n, V, 0, V, 1, 0.1f, 1.0f, &loss, &nll,
                                       NULL, MPI_COMM_SELF, xscr));
  free(xscr);

  /* the optimizer over 16M parameters (a `base` model has 35.6M): gradient scaling and
   * norm, then Adam */
  const int64_t np = 16 << 20;
  float *params = buf(np), *grads = buf(np);
  config c;
  config_defaults(&c);
  optim o;
  optim_init(&o, &c, np, MPI_COMM_SELF);
  BENCH("sync_grads_16M", optim_sync_grads(&o, grads, 1.0f));
  BENCH("adam_update_16M", optim_update(&o, params, grads, 1e-4, 1.0f));
  optim_free(&o);
  free(params), free(grads);
  free(x), free(y), free(dy), free(dx), free(g), free(b), free(dg), free(db), free(mean);
  free(rstd), free(qkv), free(dqkv), free(probs), free(scr), free(pad), free(logits), free(dlogits);
  free(tgt);
  MPI_Finalize();
  return 0;
}
