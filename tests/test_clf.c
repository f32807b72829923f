// NP: 1
/* test_clf.c: the encoder-only models: finite-difference check of the classifier and
 * masked-LM losses against backward (both norms, dropout on with fixed keys, padded
 * rows), the same directional-derivative method as test_model.c (step 3e-4: the d=8 net
 * is curved enough that 1e-3 misses by up to 30%, converging as the step shrinks); that no decoder
 * tensor is created and the head has fairseq's names and shapes; and the MLM masking rule
 * (deterministic in the key, only word tokens selected, about mlm_prob of them, the
 * 80/10/10 split) and the pair truncation rule of task.c.
 */
#include <math.h>
#include <string.h>

#include "harness.h"
#include "model.h"
#include "ops.h"
#include "task.h"

enum { B = 3, S = 9, V = 17, C = 3 };

static int32_t tok[B * S], lab[B], tgt[B * S];

typedef struct fd_case {
  int arch;
} fd_case;

static double mean_loss(model *m, int arch, int backward, int64_t *count) {
  double loss = 0;
  int64_t n, correct = 0;
  if (arch == MODEL_ARCH_CLASSIFIER)
    n = model_classify(m, tok, lab, B, S, 1.0f, backward, &loss, &correct, NULL);
  else
    n = model_mlm(m, tok, tgt, B, S, 1.0f, backward, &loss, &correct);
  if (count) *count = n;
  return loss / (double)n;
}

static void check_fd(const grid *g, int arch, int pre_ln, float dropout) {
  model_dims d = {0};
  d.arch = arch, d.n_classes = C;
  d.n_enc = 2, d.n_dec = 2 /* ignored */, d.d = 8, d.ffn = 12, d.heads = 2, d.vocab = V;
  d.pre_ln = pre_ln, d.pad = 0, d.bos = 2, d.eos = 3;
  d.dropout = dropout, d.attn_dropout = dropout, d.act_dropout = dropout;
  model *m = model_create(&d, g, 11);
  /* rows `bos a eos b eos` with right padding; MLM targets at a few word positions */
  int len[B] = {9, 6, 7};
  for (int b = 0; b < B; b++) {
    lab[b] = b % C;
    for (int s = 0; s < S; s++) {
      int v = s == 0                      ? 2
              : s == len[b] - 1 || s == 3 ? 3
              : s < len[b]                ? 4 + (b * 5 + s * 3) % (V - 4)
                                          : 0;
      tok[b * S + s] = v;
      tgt[b * S + s] = (v >= 4 && (s + b) % 3 == 0) ? 4 + (v * 7) % (V - 4) : -1;
      if (tgt[b * S + s] >= 0 && s % 2) tok[b * S + s] = 1; /* some are masked */
    }
  }
  int n_dec_tensors = 0;
  for (int i = 0; i < m->n_params; i++)
    n_dec_tensors += !strncmp(m->params[i].name, "decoder.", 8);
  TEST_EXPECT(n_dec_tensors == 0 && m->dims.n_dec == 0, "encoder-only model has %d decoder tensors",
              n_dec_tensors);
  if (arch == MODEL_ARCH_CLASSIFIER) {
    model_param *w =
        model_find(m, "classification_heads.sentence_classification_head.dense.weight");
    model_param *o =
        model_find(m, "classification_heads.sentence_classification_head.out_proj.weight");
    model_param *ob =
        model_find(m, "classification_heads.sentence_classification_head.out_proj.bias");
    TEST_EXPECT(w && w->w.rows == 8 && w->w.cols == 8, "dense.weight missing or not (d,d)");
    TEST_EXPECT(o && o->w.rows == C && o->w.cols == 8, "out_proj.weight missing or not (C,d)");
    TEST_EXPECT(ob && ob->is_vector && ob->w.cols == C, "out_proj.bias missing or not (C)");
    TEST_EXPECT(m->n_params == 1 + 2 * 16 + (pre_ln ? 2 : 0) + 4, "%d tensors", m->n_params);
  } else {
    TEST_EXPECT(m->n_params == 1 + 2 * 16 + (pre_ln ? 2 : 0), "%d tensors", m->n_params);
  }
  model_set_mode(m, dropout > 0, 4242);
  model_zero_grad(m);
  int64_t count = 0;
  double l0 = mean_loss(m, arch, 1, &count);
  TEST_EXPECT(isfinite(l0) && l0 > 0, "loss %g", l0);
  if (arch == MODEL_ARCH_MLM) {
    int64_t want = 0;
    for (int i = 0; i < B * S; i++)
      want += tgt[i] >= 0;
    TEST_EXPECT(count == want && want > 0, "masked positions %lld, expected %lld", (long long)count,
                (long long)want);
  } else {
    TEST_EXPECT(count == B, "sentences %lld", (long long)count);
  }
  float *grad = malloc((size_t)m->n_floats * sizeof(float));
  memcpy(grad, m->grad_mem, (size_t)m->n_floats * sizeof(float));
  int failures_before = test_failed_, retries = 0;
  double max_rel = 0;
  for (int i = 0; i < m->n_params; i++) {
    model_param *p = &m->params[i];
    int64_t n = dmat_local_size(&p->w);
    float *w = p->w.data;
    float *saved = malloc((size_t)n * sizeof(float)), *u = malloc((size_t)n * sizeof(float));
    memcpy(saved, w, (size_t)n * sizeof(float));
    double gu = 0, fd = 0;
    int agree = 0, tries = 0;
    for (; tries < 3 && !agree; tries++) { /* a step across a ReLU kink: another direction */
      gu = 0;
      for (int64_t k = 0; k < n; k++) {
        u[k] = ops_hash_normal(77 + (uint64_t)i * 7 + (uint64_t)tries, (uint64_t)k);
        gu += (double)grad[p->offset + k] / (double)count * u[k];
      }
      const float h = 3e-4f; /* 1e-3 shows curvature in this tiny net; 1e-4 float noise */
      for (int64_t k = 0; k < n; k++)
        w[k] = saved[k] + h * u[k];
      double lp = mean_loss(m, arch, 0, NULL);
      for (int64_t k = 0; k < n; k++)
        w[k] = saved[k] - h * u[k];
      double lm = mean_loss(m, arch, 0, NULL);
      memcpy(w, saved, (size_t)n * sizeof(float));
      fd = (lp - lm) / (2.0 * h);
      agree = fabs(fd - gu) <= 3e-2 * fabs(fd) + 2e-4;
    }
    retries += tries - 1;
    if (fabs(fd) > 1e-3) max_rel = fmax(max_rel, fabs(fd - gu) / fabs(fd));
    TEST_EXPECT(agree, "%s %s-LN dropout=%.1f: %s: backward %.6g vs finite difference %.6g",
                arch == MODEL_ARCH_CLASSIFIER ? "classifier" : "mlm", pre_ln ? "Pre" : "Post",
                dropout, p->name, gu, fd);
    free(saved);
    free(u);
  }
  printf("%s %s-LN dropout=%.1f: %d tensors checked (%d needed another direction), loss %.4f, "
         "max relative error %.2g, %s\n",
         arch == MODEL_ARCH_CLASSIFIER ? "classifier" : "mlm", pre_ln ? "Pre" : "Post", dropout,
         m->n_params, retries, l0, max_rel, test_failed_ == failures_before ? "ok" : "MISMATCH");
  free(grad);
  model_free(m);
}

/* task.c's row building on a hand-made loaded batch. */
static void check_inputs(void) {
  task t;
  memset(&t, 0, sizeof t);
  t.pad = 0, t.bos = 2, t.eos = 3, t.vocab = 50, t.mlm_prob = 0.15f;
  data_batch *r = &t.raw;
  enum { N = 2, SL = 8, TL = 6 };
  int32_t src[N * SL] = {10, 11, 12, 13, 14, 15, 16, 3, 20, 21, 3, 0, 0, 0, 0, 0};
  int32_t tout[N * TL] = {30, 31, 32, 3, 0, 0, 40, 41, 42, 43, 44, 3};
  r->n_seq = N, r->src_len = SL, r->tgt_len = TL, r->src = src, r->tgt_out = tout;
  /* classifier, longest first: a = 7, b = 3 -> cap 10: a loses 3 (7+3+3=13 -> 4+3+3) */
  t.kind = MODEL_ARCH_CLASSIFIER, t.max_len = 10;
  int W = 0, rows = task_make_inputs(&t, 0, &W);
  const int32_t want0[10] = {2, 10, 11, 12, 13, 3, 30, 31, 32, 3};
  const int32_t want1[10] = {2, 20, 21, 3, 40, 41, 42, 43, 44, 3};
  TEST_EXPECT(rows == 2 && W == 10, "rows %d width %d", rows, W);
  TEST_EXPECT(!memcmp(t.tok, want0, sizeof want0), "pair row 0 truncated wrongly");
  TEST_EXPECT(!memcmp(t.tok + 10, want1, sizeof want1), "pair row 1 truncated wrongly");
  /* masked-LM over many keys: selection rate, split, determinism, specials untouched */
  t.kind = MODEL_ARCH_MLM, t.max_len = 64;
  int64_t words = 0, sel = 0, masked = 0, kept = 0, random = 0, special_bad = 0, det_bad = 0;
  for (uint64_t key = 1; key <= 4000; key++) {
    rows = task_make_inputs(&t, key, &W);
    int32_t first[4 * 9];
    memcpy(first, t.tok, (size_t)rows * W * sizeof(int32_t));
    for (int q = 0; q < rows; q++)
      for (int c = 0; c < W; c++) {
        int32_t v = t.tok[q * W + c], y = t.tgt[q * W + c];
        int word = c > 0 && v != 3 && v != 0 && (y >= 0 || v >= 4);
        if (!word) {
          special_bad += y >= 0;
          continue;
        }
        words++;
        if (y < 0) continue;
        sel++;
        if (v == TASK_MLM_MASK_ID)
          masked++;
        else if (v == y)
          kept++;
        else
          random++;
        special_bad += v == 0 || v == 2 || v == 3;
      }
    task_make_inputs(&t, key, &W);
    det_bad += memcmp(first, t.tok, (size_t)rows * W * sizeof(int32_t)) != 0;
  }
  double rate = (double)sel / (double)words;
  TEST_EXPECT(rows == 4 && W == 9, "mlm rows %d width %d", rows, W);
  TEST_EXPECT(fabs(rate - 0.15) < 0.01, "selected %.4f of word tokens, want 0.15", rate);
  TEST_EXPECT(fabs((double)masked / sel - 0.8) < 0.02 && fabs((double)random / sel - 0.1) < 0.02,
              "mask %.3f random %.3f kept %.3f", (double)masked / sel, (double)random / sel,
              (double)kept / sel);
  TEST_EXPECT(special_bad == 0, "%lld special positions selected or produced",
              (long long)special_bad);
  TEST_EXPECT(det_bad == 0, "%lld keys gave different masks twice", (long long)det_bad);
  printf("mlm masking: %.4f of %lld word tokens selected; mask %.3f, random %.3f, kept %.3f\n",
         rate, (long long)words, (double)masked / sel, (double)random / sel, (double)kept / sel);
  r->src = r->tgt_out = NULL;
  free(t.tok);
  free(t.tgt);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  grid g;
  char err[256];
  CHECK(grid_create(&g, 1, 1, 1, 1, err, sizeof err) == C_OK, "%s", err);
  for (int pre = 0; pre <= 1; pre++) {
    check_fd(&g, MODEL_ARCH_CLASSIFIER, pre, 0.0f);
    check_fd(&g, MODEL_ARCH_CLASSIFIER, pre, 0.1f);
    check_fd(&g, MODEL_ARCH_MLM, pre, 0.0f);
    check_fd(&g, MODEL_ARCH_MLM, pre, 0.1f);
  }
  check_inputs();
  grid_destroy(&g);
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
