/* model_heads.c: the encoder-only models (docs/MODEL.md, "Encoder-only models"): the
 * sentence-pair classifier with fairseq's RoBERTa classification head (dense, tanh,
 * out_proj on the pooled first position) and the masked-LM head (logits of the selected
 * positions against the tied encoder embedding), each as a forward that leaves its state
 * in the arena and a backward, and the stage forward and whole-model calls of both
 * (model_classify, model_mlm).
 *
 * Not here: the encoder (model_blocks.c), the stage backward (model_stage.c), masking
 * and pair batches (task.c, data.c).
 */
#include "model_internal.h"

#include <math.h>
#include <string.h>

/* ---- encoder-only heads ------------------------------------------------------------ */

/* *buf with room for at least n items of elem bytes (grown by a quarter more, never shrunk). */
static void *grow(void *buf_ptr, size_t *cap, size_t n, size_t elem) {
  void **buf = buf_ptr;
  if (n > *cap) {
    free(*buf);
    *cap = n + n / 4;
    *buf = common_malloc(*cap * elem);
  }
  return *buf;
}

/* At least n floats of head scratch, n int32 of head index scratch. */
static float *head_prepare(model *m, size_t n) {
  return grow(&m->acts->head, &m->acts->head_cap, n, sizeof(float));
}
static int32_t *head_idx_prepare(model *m, size_t n) {
  return grow(&m->acts->head_idx, &m->acts->head_idx_cap, n, sizeof(int32_t));
}

/* Classifier head forward on a->enc_out (this process row's B rows, labels local, -1 on
 * padding rows): totals[0] += loss, totals[1] += correct (batch totals). With backward the
 * logits' gradient stays in the head scratch for model_cls_head_bwd. */
static void cls_head_fwd(model *m, const int32_t *labels, int B_global, int S, float grad_scale,
                         int backward, double *totals, int32_t *pred) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int d = m->dl, C = D->n_classes, B = a->B;
  /* scratch: x (B,dl) pooled rows, h (B,dl) = tanh(dense(x)), logits (B,cl), g (B,dl) */
  size_t Bd = (size_t)B * d;
  float *x = head_prepare(m, 3 * Bd + (size_t)B * (m->cl + 1) + 64);
  float *h = x + Bd, *logits = h + Bd;
  int32_t *arg = head_idx_prepare(m, 2 * (size_t)B * grid_pr(m));
  for (int b = 0; b < B; b++)
    memcpy(x + (size_t)b * d, a->enc_out + (size_t)b * S * d, d * sizeof(float));
  model_linear_fwd(m, h, x, m->cls_dense_w, m->cls_dense_b, B);
  for (size_t i = 0; i < Bd; i++)
    h[i] = tanhf(h[i]);
  model_linear_fwd(m, logits, h, m->cls_out_w, m->cls_out_b, B); /* (B,C) */
  double t[2] = {0, 0};
  model_xent(m, logits, labels, B, m->cl, m->c0, C, -1, 0.0f, grad_scale, backward, &t[0], NULL,
             arg);
  for (int b = 0; b < B; b++)
    t[1] += labels[b] >= 0 && arg[b] == labels[b];
  model_tp_totals(m, t, 2);
  totals[0] += t[0], totals[1] += t[1];
  if (pred) { /* every process row's predictions, in batch order */
    int32_t *all = arg;
    if (grid_pr(m) > 1) {
      all = arg + B;
      MPI_CHECK(MPI_Allgather(arg, B, MPI_INT32_T, all, B, MPI_INT32_T, m->g->tp_col));
    }
    memcpy(pred, all, (size_t)B_global * sizeof(int32_t));
  }
}

/* Classifier head backward: a->g_enc = the gradient of enc_out (nonzero on row 0 of each
 * sequence only). */
void model_cls_head_bwd(model *m) {
  model_acts *a = m->acts;
  int d = m->dl, B = a->B, S = a->S;
  size_t Bd = (size_t)B * d;
  float *x = a->head, *h = x + Bd, *logits = h + Bd, *g = logits + (size_t)B * (m->cl + 1);
  memset(g, 0, Bd * sizeof(float));
  model_linear_bwd(m, g, logits, h, m->cls_out_w, m->cls_out_b, B); /* g = dL/dh */
  for (size_t i = 0; i < Bd; i++)
    g[i] *= 1.0f - h[i] * h[i]; /* through tanh */
  memset(a->g_enc, 0, (size_t)B * S * d * sizeof(float));
  memset(h, 0, Bd * sizeof(float)); /* dL/dx lands on row (b, 0) of enc_out */
  model_linear_bwd(m, h, g, x, m->cls_dense_w, m->cls_dense_b, B);
  for (int b = 0; b < B; b++)
    memcpy(a->g_enc + (size_t)b * S * d, h + (size_t)b * d, d * sizeof(float));
}

/* Masked-LM head forward on a->enc_out (targets local, -1 where not selected): totals[0] +=
 * loss, totals[1] += correct; returns the selected positions of the batch. The selection
 * (rows, their number) stays in the arena for model_mlm_head_bwd. */
static int64_t mlm_head_fwd(model *m, const int32_t *targets, float grad_scale, int backward,
                            double *totals) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int d = m->dl, V = D->vocab, B = a->B, S = a->S;
  size_t nS = (size_t)B * S;
  /* the selected positions of this process row; every process row runs the head on
   * n = the most any of them has (the rest are -1 rows), so the rows stay aligned */
  int32_t *idx = head_idx_prepare(m, 3 * nS + 1);
  int32_t *rows = idx, *tgt = idx + nS, *arg = idx + 2 * nS;
  int n_mine = 0;
  for (size_t i = 0; i < nS; i++)
    if (targets[i] >= 0) {
      rows[n_mine] = (int32_t)i;
      tgt[n_mine++] = targets[i];
    }
  int n = n_mine;
  if (grid_pr(m) > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &n, 1, MPI_INT, MPI_MAX, m->g->tp_col));
  for (int i = n_mine; i < n; i++)
    tgt[i] = -1;
  a->mlm_n = n, a->mlm_n_mine = n_mine;
  if (n == 0) return 0;
  /* scratch: x (n,dl) selected rows of enc_out, logits (n,vl), g (n,dl) */
  size_t nd = (size_t)n * d;
  float *x = head_prepare(m, 2 * nd + (size_t)n * (m->vl + 1) + 64);
  float *logits = x + nd;
  for (int i = 0; i < n_mine; i++)
    memcpy(x + (size_t)i * d, a->enc_out + (size_t)rows[i] * d, d * sizeof(float));
  memset(x + (size_t)n_mine * d, 0, (size_t)(n - n_mine) * d * sizeof(float));
  model_linear_fwd(m, logits, x, m->out_proj, NULL, n); /* (n,V) = x W_emb^T */
  double t[3] = {0, 0, 0};
  t[2] = (double)model_xent(m, logits, tgt, n, m->vl, m->v0, V, -1, 0.0f, grad_scale, backward,
                            &t[0], NULL, arg);
  for (int i = 0; i < n_mine; i++)
    t[1] += arg[i] == tgt[i];
  model_tp_totals(m, t, 3);
  totals[0] += t[0], totals[1] += t[1];
  return (int64_t)t[2];
}

/* Masked-LM head backward: a->g_enc = the gradient of enc_out (zero when nothing was
 * selected); also dW_emb += dlogits^T x into the output projection (the tied table). */
void model_mlm_head_bwd(model *m) {
  model_acts *a = m->acts;
  int d = m->dl, n = a->mlm_n, n_mine = a->mlm_n_mine;
  size_t nS = (size_t)a->B * a->S, nd = (size_t)n * d;
  memset(a->g_enc, 0, nS * d * sizeof(float));
  if (n == 0) return;
  float *x = a->head, *logits = x + nd, *g = logits + (size_t)n * (m->vl + 1);
  const int32_t *rows = a->head_idx;
  memset(g, 0, nd * sizeof(float));
  model_linear_bwd(m, g, logits, x, m->out_proj, NULL, n);
  for (int i = 0; i < n_mine; i++)
    memcpy(a->g_enc + (size_t)rows[i] * d, g + (size_t)i * d, d * sizeof(float));
}

/* The encoder-only archs' stage forward (see model_stage_forward): tokens (B,S) and
 * aux = labels (B) or MLM targets (B,S). */
int64_t model_enc_only_stage_fwd(model *m, const int32_t *tokens_g, const int32_t *aux_g,
                                 int B_global, int S, float grad_scale, int backward,
                                 const float *in_msg, float *out_msg, double *sums, int32_t *pred) {
  const model_dims *D = &m->dims;
  int cls = D->arch == MODEL_ARCH_CLASSIFIER;
  if (cls)
    for (int b = 0; b < B_global; b++)
      CHECK(aux_g[b] >= 0 && aux_g[b] < D->n_classes, "model_classify: label %d outside [0, %d)",
            aux_g[b], D->n_classes);
  else
    for (size_t i = 0; i < (size_t)B_global * S; i++)
      CHECK(aux_g[i] < D->vocab, "model_mlm: target %d outside the vocabulary", aux_g[i]);
  model_acts_prepare(m, B_global, S, 0);
  model_acts *a = m->acts;
  int B = a->B, last = m->stage == m->n_stages - 1;
  size_t ne = (size_t)B * S * m->dl;
  const int32_t *tokens = model_local_rows(m, 0, tokens_g, B_global, S, D->pad);
  const int32_t *aux =
      model_local_rows(m, 1, aux_g, B_global, cls ? 1 : S, -1); /* -1: padding rows */
  a->src = tokens, a->key = m->dropout_key, a->train = m->train;
  for (size_t i = 0; i < (size_t)B * S; i++)
    a->src_pad[i] = tokens[i] == D->pad;
  if (m->enc_l0 == 0)
    model_embed_fwd(m, a->enc_s[0], m->enc_embed, tokens, B, S, SITE_ENC_EMBED);
  else
    memcpy(a->enc_s[2 * m->enc_l0], in_msg, ne * sizeof(float));
  model_enc_layers_fwd(m, m->enc_l0, m->enc_l1, B, S);
  if (!last) {
    memcpy(out_msg, a->enc_s[2 * m->enc_l1], ne * sizeof(float));
    return 0;
  }
  double t[2] = {0, 0};
  int64_t count = B_global;
  if (cls)
    cls_head_fwd(m, aux, B_global, S, grad_scale, backward, t, pred);
  else
    count = mlm_head_fwd(m, aux, grad_scale, backward, t);
  sums[MODEL_SUM_LOSS] += t[0], sums[MODEL_SUM_NLL] += t[0]; /* no label smoothing: nll = loss */
  sums[MODEL_SUM_CORRECT] += t[1];
  return count;
}

int64_t model_classify(model *m, const int32_t *tokens_g, const int32_t *labels_g, int B_global,
                       int S, float grad_scale, int backward, double *loss_sum, int64_t *n_correct,
                       int32_t *pred) {
  CHECK(m->dims.arch == MODEL_ARCH_CLASSIFIER, "model_classify: not a classifier");
  CHECK(m->n_stages == 1, "model_classify: pp > 1 runs the stages (pipe.c)");
  double sums[MODEL_NSUMS] = {0};
  int64_t count = model_enc_only_stage_fwd(m, tokens_g, labels_g, B_global, S, grad_scale, backward,
                                           NULL, NULL, sums, pred);
  if (loss_sum) *loss_sum += sums[MODEL_SUM_LOSS];
  if (n_correct) *n_correct += (int64_t)sums[MODEL_SUM_CORRECT];
  if (backward) model_stage_backward(m, NULL, NULL);
  return count;
}

int64_t model_mlm(model *m, const int32_t *tokens_g, const int32_t *targets_g, int B_global, int S,
                  float grad_scale, int backward, double *loss_sum, int64_t *n_correct) {
  CHECK(m->dims.arch == MODEL_ARCH_MLM, "model_mlm: not a masked-LM");
  CHECK(m->n_stages == 1, "model_mlm: pp > 1 runs the stages (pipe.c)");
  double sums[MODEL_NSUMS] = {0};
  int64_t count = model_enc_only_stage_fwd(m, tokens_g, targets_g, B_global, S, grad_scale,
                                           backward, NULL, NULL, sums, NULL);
  if (loss_sum) *loss_sum += sums[MODEL_SUM_LOSS];
  if (n_correct) *n_correct += (int64_t)sums[MODEL_SUM_CORRECT];
  /* nothing selected: the gradient is zero (no backward, as before the pipeline) */
  if (backward && count > 0) model_stage_backward(m, NULL, NULL);
  return count;
}
