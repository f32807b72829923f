// NP: 1
/* test_model.c: finite-difference check of the whole encoder-decoder, both norms.
 *
 * For every parameter tensor, the directional derivative of the mean loss along a
 * random direction u (restricted to that tensor) is computed twice: from backward
 * (g . u) and by central differences (L(p + h u) - L(p - h u)) / 2h in double. They must
 * agree within 3% (+ 2e-4 absolute): float forward noise is ~1e-6 on the loss. Runs with
 * dropout on (fixed keys, so the masks are the same in every evaluation), padding in
 * source and target, Post-LN and Pre-LN, shared and separate embeddings.
 */
#include <math.h>
#include <string.h>

#include "harness.h"
#include "model.h"
#include "ops.h"

enum { B = 3, S = 5, T = 6, V = 13 };

static double mean_loss(model *m, const int32_t *src, const int32_t *tin, const int32_t *tout,
                        int backward) {
  double loss = 0, nll = 0;
  int64_t n = model_forward_backward(m, src, tin, tout, B, S, T, 1.0f, backward, &loss, &nll);
  return loss / (double)n;
}

static void check_model(const grid *g, int pre_ln, int share, float dropout) {
  model_dims d = {0};
  d.n_enc = 2, d.n_dec = 2, d.d = 8, d.ffn = 12, d.heads = 2, d.vocab = V;
  d.pre_ln = pre_ln, d.pad = 0, d.bos = 2, d.eos = 3;
  d.dropout = dropout, d.attn_dropout = dropout, d.act_dropout = dropout;
  d.label_smoothing = 0.1f, d.share = share;
  model *m = model_create(&d, g, 7);
  /* tokens 4..V-1, with right padding */
  int32_t src[B * S], tin[B * T], tout[B * T];
  int src_len[B] = {5, 3, 4}, tgt_len[B] = {6, 2, 4};
  for (int b = 0; b < B; b++) {
    for (int s = 0; s < S; s++)
      src[b * S + s] = s < src_len[b] - 1    ? 4 + (b * 7 + s * 3) % (V - 4)
                       : s == src_len[b] - 1 ? 3
                                             : 0;
    for (int t = 0; t < T; t++) {
      int y = 4 + (b * 5 + t * 2 + 1) % (V - 4);
      tin[b * T + t] = t == 0 ? 2 : t < tgt_len[b] ? 4 + (b * 5 + (t - 1) * 2 + 1) % (V - 4) : 0;
      tout[b * T + t] = t < tgt_len[b] - 1 ? y : t == tgt_len[b] - 1 ? 3 : 0;
    }
  }
  model_set_mode(m, dropout > 0, 12345);
  model_zero_grad(m);
  double l0 = mean_loss(m, src, tin, tout, 1);
  /* backward accumulated gradients of the loss SUM: rescale to the mean */
  double loss_sum = 0, nll_sum = 0;
  int64_t ntok = model_forward_backward(m, src, tin, tout, B, S, T, 1.0f, 0, &loss_sum, &nll_sum);
  TEST_EXPECT(ntok == 6 + 2 + 4, "ntokens %lld", (long long)ntok);
  TEST_EXPECT(isfinite(l0) && l0 > 0, "loss %g", l0);
  float *grad = malloc((size_t)m->n_floats * sizeof(float));
  memcpy(grad, m->grad_mem, (size_t)m->n_floats * sizeof(float));
  int failures_before = test_failed_, retries = 0;
  for (int i = 0; i < m->n_params; i++) {
    model_param *p = &m->params[i];
    int64_t n = dmat_local_size(&p->w);
    float *w = p->w.data;
    float *saved = malloc((size_t)n * sizeof(float)), *u = malloc((size_t)n * sizeof(float));
    memcpy(saved, w, (size_t)n * sizeof(float));
    /* A direction whose step crosses a ReLU kink gives a wrong finite difference;
     * a wrong gradient is wrong along every direction. So try up to 3 directions. */
    double gu = 0, fd = 0;
    int agree = 0, tries = 0;
    for (; tries < 3 && !agree; tries++) {
      gu = 0;
      for (int64_t k = 0; k < n; k++) {
        u[k] = ops_hash_normal(99 + (uint64_t)i * 7 + (uint64_t)tries, (uint64_t)k);
        gu += (double)grad[p->offset + k] / (double)ntok * u[k];
      }
      const float h = 1e-3f;
      for (int64_t k = 0; k < n; k++)
        w[k] = saved[k] + h * u[k];
      double lp = mean_loss(m, src, tin, tout, 0);
      for (int64_t k = 0; k < n; k++)
        w[k] = saved[k] - h * u[k];
      double lm = mean_loss(m, src, tin, tout, 0);
      memcpy(w, saved, (size_t)n * sizeof(float));
      fd = (lp - lm) / (2.0 * h);
      agree = fabs(fd - gu) <= 3e-2 * fabs(fd) + 2e-4;
    }
    retries += tries - 1;
    TEST_EXPECT(agree, "%s-LN share=%d dropout=%.1f: %s: backward %.6g vs finite difference %.6g",
                pre_ln ? "Pre" : "Post", share, dropout, p->name, gu, fd);
    free(saved);
    free(u);
  }
  printf("%s-LN share=%d dropout=%.1f: %d tensors checked (%d needed another direction), loss "
         "%.4f, %s\n",
         pre_ln ? "Pre" : "Post", share, dropout, m->n_params, retries, l0,
         test_failed_ == failures_before ? "ok" : "MISMATCH");
  free(grad);
  model_free(m);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  grid g;
  char err[256];
  CHECK(grid_create(&g, 1, 1, 1, 1, err, sizeof err) == C_OK, "%s", err);
  for (int pre = 0; pre <= 1; pre++) {
    check_model(&g, pre, 0, 0.0f);
    check_model(&g, pre, 2, 0.0f);
    check_model(&g, pre, 1, 0.1f);
  }
  grid_destroy(&g);
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
