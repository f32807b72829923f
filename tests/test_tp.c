/* test_tp.c: tensor parallelism computes what one rank computes.
 *
 * For every TP grid pr x pc with pr * pc = the world size (1x2 and 2x1 on 2 ranks, 1x3
 * and 3x1 on 3, 1x4, 2x2 and 4x1 on 4), and for the translation model (Pre-LN with
 * separate embeddings, Post-LN with all embeddings shared), the sentence-pair classifier
 * (Pre-LN and Post-LN) and the masked-LM (Pre-LN), with all three dropouts on (their masks
 * are functions of global indices), a TP model and a one-rank model (tp = 1, same seed)
 * run 3 steps on the same batches (forward, backward, SGD update of the same size on
 * both). Each step must give:
 *   - the same loss (and token count, correct count) within rel 2e-5;
 *   - for every parameter, this rank's gradient block equal to the same block of the
 *     one-rank gradient: max |g_tp - g_ref| <= 2e-4 * max |g_ref| + 1e-6 over the block
 *     (float sums in another order; LayerNorm statistics and the softmax are all-reduced;
 *     the absolute 1e-6 is for the key biases, whose exact gradient is 0 and whose float
 *     one is noise of ~1e-7; the tolerance is documented in docs/ARCHITECTURE.md). This
 *     includes the replicated
 *     vectors on every process row and the embedding gradients (reduce-scattered).
 * Sizes do not divide evenly: 5 sentences over 2, 3 or 4 process rows (all-pad padding
 * sequences, on 4x1 a whole process row of them), ffn 37, vocabulary 29, 3 classes over
 * 2 or 4 process columns (on 1x4 one column holds no class).
 * Finally model_replicate gathers the TP parameters into a one-rank model equal to the
 * reference's, bit for bit.
 */
// NP: 2 3 4
#include "harness.h"
#include "model.h"

#include <stdlib.h>
#include <string.h>

enum { B = 5, S = 7, T = 6, V = 29, NSTEPS = 3 };

static int32_t src[B * S], tin[B * T], tout[B * T], labels[B], mlm_tok[B * S], mlm_tgt[B * S];

static void make_batch(int step) {
  int src_len[B] = {7, 3, 5, 6, 2}, tgt_len[B] = {6, 2, 4, 5, 3};
  for (int b = 0; b < B; b++) {
    for (int s = 0; s < S; s++) {
      int tok = 4 + (b * 7 + s * 3 + step * 5) % (V - 4);
      src[b * S + s] = s < src_len[b] - 1 ? tok : s == src_len[b] - 1 ? 3 : 0;
      /* masked-LM: every third real position is a target; its input becomes token 1 */
      int sel = s < src_len[b] - 1 && (b + s + step) % 3 == 0;
      mlm_tgt[b * S + s] = sel ? tok : -1;
      mlm_tok[b * S + s] = sel ? 1 : src[b * S + s];
    }
    for (int t = 0; t < T; t++) {
      int y = 4 + (b * 5 + t * 2 + 1 + step) % (V - 4);
      tin[b * T + t] = t == 0           ? 2
                       : t < tgt_len[b] ? 4 + (b * 5 + (t - 1) * 2 + 1 + step) % (V - 4)
                                        : 0;
      tout[b * T + t] = t < tgt_len[b] - 1 ? y : t == tgt_len[b] - 1 ? 3 : 0;
    }
    labels[b] = (b + step) % 3;
  }
}

/* loss, count, correct of one forward/backward of the current batch */
static void run(model *m, double out[3]) {
  double loss = 0, nll = 0;
  int64_t n = 0, correct = 0;
  if (m->dims.arch == MODEL_ARCH_TRANSLATION)
    n = model_forward_backward(m, src, tin, tout, B, S, T, 1.0f, 1, &loss, &nll);
  else if (m->dims.arch == MODEL_ARCH_CLASSIFIER)
    n = model_classify(m, src, labels, B, S, 1.0f, 1, &loss, &correct, NULL);
  else
    n = model_mlm(m, mlm_tok, mlm_tgt, B, S, 1.0f, 1, &loss, &correct);
  out[0] = loss, out[1] = (double)n, out[2] = (double)correct;
}

/* this rank's block of p (TP model) against the same global block of r (reference) */
static double block_err(const dmat *p, const dmat *r, double *ref_max) {
  double err = 0, mx = 0;
  for (int i = 0; i < p->rows_local; i++)
    for (int j = 0; j < p->cols_local; j++) {
      float a = p->data[(size_t)i * p->ld + j];
      float b = r->data[(size_t)(p->row0 + i) * r->ld + p->col0 + j];
      err = fmax(err, fabs((double)a - b));
    }
  for (int64_t i = 0; i < r->rows; i++)
    for (int64_t j = 0; j < r->cols; j++)
      mx = fmax(mx, fabs((double)r->data[i * r->ld + j]));
  *ref_max = mx;
  return err;
}

static void sgd(model *m) {
  for (int64_t i = 0; i < m->n_floats; i++)
    m->param_mem[i] -= 0.01f * m->grad_mem[i];
}

static void check(const grid *g1, const grid *gt, int arch, int pre_ln, int share) {
  model_dims d = {0};
  d.arch = arch;
  d.n_enc = 2, d.n_dec = arch == MODEL_ARCH_TRANSLATION ? 2 : 0;
  d.d = 24, d.ffn = 37, d.heads = 12, d.vocab = V,
  d.n_classes = arch == MODEL_ARCH_CLASSIFIER ? 3 : 0;
  d.pre_ln = pre_ln, d.pad = 0, d.bos = 2, d.eos = 3;
  d.dropout = 0.1f, d.attn_dropout = 0.1f, d.act_dropout = 0.1f;
  d.label_smoothing = arch == MODEL_ARCH_TRANSLATION ? 0.1f : 0.0f;
  d.share = share;
  const char *an = arch == MODEL_ARCH_TRANSLATION  ? "translation"
                   : arch == MODEL_ARCH_CLASSIFIER ? "classifier"
                                                   : "mlm";
  model *ref = model_create(&d, g1, 11), *tp = model_create(&d, gt, 11);
  int bad_before = test_failed_;
  for (int step = 0; step < NSTEPS; step++) {
    make_batch(step);
    uint64_t key = 1000 + (uint64_t)step;
    model_set_mode(ref, 1, key);
    model_set_mode(tp, 1, key);
    model_zero_grad(ref);
    model_zero_grad(tp);
    double a[3], b[3];
    run(ref, a);
    run(tp, b);
    TEST_EXPECT(test_close(b[0], a[0], 2e-5, 1e-6) && b[1] == a[1] && b[2] == a[2],
                "%dx%d %s %s step %d: loss %.8g count %g correct %g, one rank %.8g %g %g", gt->pr,
                gt->pc, an, pre_ln ? "pre" : "post", step, b[0], b[1], b[2], a[0], a[1], a[2]);
    for (int i = 0; i < tp->n_params; i++) {
      double mx, err = block_err(&tp->params[i].g, &ref->params[i].g, &mx);
      TEST_EXPECT(err <= 2e-4 * mx + 1e-6,
                  "%dx%d %s %s step %d: grad %s differs by %.3g (max %.3g)", gt->pr, gt->pc, an,
                  pre_ln ? "pre" : "post", step, tp->params[i].name, err, mx);
    }
    sgd(ref);
    sgd(tp);
  }
  /* the gathered replica equals the one-rank model's parameters after the same steps
   * (up to the float differences of the updates) */
  model *full = model_replicate(tp);
  double worst = 0;
  for (int i = 0; i < full->n_params; i++) {
    dmat *p = &full->params[i].w, *r = &ref->params[i].w;
    for (int64_t k = 0; k < p->rows * p->cols; k++)
      worst = fmax(worst, fabs((double)p->data[k] - r->data[k]));
  }
  TEST_EXPECT(full != tp && worst < 1e-5, "%dx%d %s: replica differs from one rank by %g", gt->pr,
              gt->pc, an, worst);
  if (full != tp) model_free(full);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int bad = test_failed_ - bad_before, any = 0;
  MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    printf("%s  grid %dx%d  %-11s %s-LN share=%d: %d steps of loss and every gradient block\n",
           any ? "FAIL" : "ok  ", gt->pr, gt->pc, an, pre_ln ? "Pre" : "Post", share, NSTEPS);
  model_free(ref);
  model_free(tp);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int size;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char err[256];
  grid g1;
  CHECK(grid_create(&g1, 1, 1, 1, 1, err, sizeof err) == C_OK, "%s", err);
  for (int pc = 1; pc <= size; pc++) {
    if (size % pc) continue;
    grid gt;
    CHECK(grid_create(&gt, size, size / pc, pc, 1, err, sizeof err) == C_OK, "%s", err);
    check(&g1, &gt, MODEL_ARCH_TRANSLATION, 1, 0);
    check(&g1, &gt, MODEL_ARCH_TRANSLATION, 0, 2);
    check(&g1, &gt, MODEL_ARCH_CLASSIFIER, 1, 0);
    check(&g1, &gt, MODEL_ARCH_CLASSIFIER, 0, 0);
    check(&g1, &gt, MODEL_ARCH_MLM, 1, 0);
    grid_destroy(&gt);
  }
  grid_destroy(&g1);
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
