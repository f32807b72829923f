/* model_stage.c: the translation model's forward and backward of one pipeline stage
 * (the whole model with pp = 1): the embeddings or the previous stage's message, this
 * stage's encoder and decoder layers, the message for the next stage, and on the last
 * stage the output projection and the label-smoothed loss; model_forward_backward, the
 * whole-model call. The encoder-only archs branch off to model_heads.c.
 *
 * Not here: the layers themselves (model_blocks.c), the pipeline schedule and its
 * messages (pipe.c).
 */
#include "model_internal.h"
#include "trace.h"

#include <string.h>

void model_stage_msg(const model *m, int side, int B_global, int S, int T, int64_t *n_enc,
                     int64_t *n_dec) {
  int pr = grid_pr(m), B = (B_global + pr - 1) / pr, nE = m->dims.n_enc;
  *n_enc = *n_dec = 0;
  if ((side == 0 && m->stage == 0) || (side == 1 && m->stage == m->n_stages - 1)) return;
  /* the global layer index at the boundary: encoder stream inside the encoder, the
   * encoder output at the junction, the encoder output and the decoder stream after it */
  int l = side == 0 ? (m->enc_l1 > m->enc_l0 ? m->enc_l0 : nE + m->dec_l0)
                    : (m->enc_l1 < nE ? m->enc_l1 : nE + m->dec_l1);
  *n_enc = (int64_t)B * S * m->dl;
  *n_dec = l > nE ? (int64_t)B * T * m->dl : 0;
}

int64_t model_stage_forward(model *m, const int32_t *src_g, const int32_t *tgt_in_g,
                            const int32_t *tgt_out_g, int B_global, int S, int T, float grad_scale,
                            int backward, const float *in_msg, float *out_msg, double *sums) {
  const model_dims *D = &m->dims;
  if (D->arch != MODEL_ARCH_TRANSLATION)
    return model_enc_only_stage_fwd(m, src_g, tgt_out_g, B_global, S, grad_scale, backward, in_msg,
                                    out_msg, sums, NULL);
  model_acts_prepare(m, B_global, S, T);
  model_acts *a = m->acts;
  int B = a->B, nS = B * S, nT = B * T, d = m->dl;
  size_t ne = (size_t)nS * d, nd = (size_t)nT * d;
  const int32_t *src = model_local_rows(m, 0, src_g, B_global, S, D->pad);
  const int32_t *tgt_in = model_local_rows(m, 1, tgt_in_g, B_global, T, D->pad);
  const int32_t *tgt_out = model_local_rows(m, 2, tgt_out_g, B_global, T, D->pad);
  a->src = src, a->tgt_in = tgt_in, a->key = m->dropout_key, a->train = m->train;
  int has_enc = m->enc_l1 > m->enc_l0, has_dec = m->dec_l1 > m->dec_l0,
      last = m->stage == m->n_stages - 1;
  for (size_t i = 0; i < (size_t)nS; i++)
    a->src_pad[i] = src[i] == D->pad;
  if (has_enc) {
    if (m->enc_l0 == 0)
      model_embed_fwd(m, a->enc_s[0], m->enc_embed, src, B, S, SITE_ENC_EMBED);
    else
      memcpy(a->enc_s[2 * m->enc_l0], in_msg, ne * sizeof(float));
    model_enc_layers_fwd(m, m->enc_l0, m->enc_l1, B, S);
  } else {
    memcpy(a->enc_out, in_msg, ne * sizeof(float));
  }
  if (has_dec) {
    if (m->dec_l0 == 0)
      model_embed_fwd(m, a->dec_s[0], m->dec_embed, tgt_in, B, T, SITE_DEC_EMBED);
    else
      memcpy(a->dec_s[3 * m->dec_l0], in_msg + ne, nd * sizeof(float));
    model_dec_layers_fwd(m, m->dec_l0, m->dec_l1, B, S, T);
  }
  if (!last) { /* the message for the next stage (model_stage_msg's layout) */
    if (m->enc_l1 < D->n_enc) {
      memcpy(out_msg, a->enc_s[2 * m->enc_l1], ne * sizeof(float));
    } else {
      memcpy(out_msg, a->enc_out, ne * sizeof(float));
      if (m->dec_l1 > 0) memcpy(out_msg + ne, a->dec_s[3 * m->dec_l1], nd * sizeof(float));
    }
    return 0;
  }
  if (D->pre_ln)
    model_ln_fwd(m, a->dec_out, a->dec_mean, a->dec_rstd, a->dec_s[3 * D->n_dec], &m->dec_final,
                 nT);
  /* logits (nT, V) = dec_out W_out^T */
  model_linear_fwd(m, a->logits, a->dec_out, m->out_proj, NULL, nT);
  double t[3] = {0, 0, 0};
  t[2] = (double)model_xent(m, a->logits, tgt_out, nT, m->vl, m->v0, D->vocab, D->pad,
                            D->label_smoothing, grad_scale, backward, &t[0], &t[1], NULL);
  model_tp_totals(m, t, 3);
  sums[MODEL_SUM_LOSS] += t[0], sums[MODEL_SUM_NLL] += t[1];
  return (int64_t)t[2];
}

/* The stage's encoder layers backward from a->gs_a, then the source embedding's gradient
 * (first stage) or the gradient to send to the previous stage (g_out). */
static void enc_bwd(model *m, float *g_out, int B, int S) {
  float *gs = model_enc_layers_bwd(m, m->enc_l0, m->enc_l1, B, S);
  if (m->enc_l0 == 0) {
    model_embed_bwd(m, gs, m->enc_embed, m->acts->src, B, S, SITE_ENC_EMBED);
    model_bwd_step_done(m);
  } else {
    memcpy(g_out, gs, (size_t)B * S * m->dl * sizeof(float));
  }
}

/* The end of a stage backward: the replicated vectors summed, every gradient complete. */
static void bwd_end(model *m) {
  model_vec_grads_end(m);
  m->bwd_step = MODEL_BWD_END;
  model_poll(m);
  trace_end("backward");
}

void model_stage_backward(model *m, const float *g_in, float *g_out) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  m->dropout_key = a->key, m->train = a->train; /* the masks of this arena's forward */
  int B = a->B, S = a->S, T = a->T, nT = B * T, d = m->dl;
  size_t ne = (size_t)B * S * d, nd = (size_t)nT * d;
  int has_enc = m->enc_l1 > m->enc_l0, has_dec = m->dec_l1 > m->dec_l0,
      last = m->stage == m->n_stages - 1;
  trace_begin("backward");
  m->n_bwd++, m->bwd_step = 0;
  model_vec_grads_begin(m);
  if (D->arch != MODEL_ARCH_TRANSLATION) { /* encoder layers, the head on the last stage */
    if (!last) {
      memcpy(a->gs_a, g_in, ne * sizeof(float));
    } else {
      if (D->arch == MODEL_ARCH_CLASSIFIER)
        model_cls_head_bwd(m);
      else
        model_mlm_head_bwd(m);
      model_bwd_step_done(m);
    }
    enc_bwd(m, g_out, B, S);
    bwd_end(m);
    return;
  }
  if (has_dec) {
    float *gs = a->gs_a;
    if (last) {
      memset(gs, 0, nd * sizeof(float));
      model_linear_bwd(m, gs, a->logits, a->dec_out, m->out_proj, NULL, nT);
      if (D->pre_ln) {
        memset(a->gs_b, 0, nd * sizeof(float));
        model_ln_bwd(m, a->gs_b, gs, a->dec_s[3 * D->n_dec], a->dec_mean, a->dec_rstd,
                     &m->dec_final, nT);
        gs = a->gs_b;
      }
      memset(a->g_enc, 0, ne * sizeof(float));
      model_bwd_step_done(m);
    } else {
      memcpy(gs, g_in + ne, nd * sizeof(float));
      memcpy(a->g_enc, g_in, ne * sizeof(float));
    }
    gs = model_dec_layers_bwd(m, m->dec_l0, m->dec_l1, gs, B, S, T);
    if (m->dec_l0 == 0) {
      model_embed_bwd(m, gs, m->dec_embed, a->tgt_in, B, T, SITE_DEC_EMBED);
      model_bwd_step_done(m);
    } else {
      memcpy(g_out + ne, gs, nd * sizeof(float));
    }
    if (!has_enc) memcpy(g_out, a->g_enc, ne * sizeof(float));
  }
  if (has_enc) {
    if (m->enc_l1 < D->n_enc)
      memcpy(a->gs_a, g_in, ne * sizeof(float));
    else if (!has_dec)
      memcpy(a->g_enc, g_in, ne * sizeof(float));
    enc_bwd(m, g_out, B, S);
  }
  bwd_end(m);
}

int64_t model_forward_backward(model *m, const int32_t *src_g, const int32_t *tgt_in_g,
                               const int32_t *tgt_out_g, int B_global, int S, int T,
                               float grad_scale, int backward, double *loss_sum, double *nll_sum) {
  CHECK(m->dims.arch == MODEL_ARCH_TRANSLATION, "model_forward_backward: not a translation model");
  CHECK(m->n_stages == 1, "model_forward_backward: pp > 1 runs the stages (pipe.c)");
  double sums[MODEL_NSUMS] = {0};
  int64_t ntok = model_stage_forward(m, src_g, tgt_in_g, tgt_out_g, B_global, S, T, grad_scale,
                                     backward, NULL, NULL, sums);
  if (loss_sum) *loss_sum += sums[MODEL_SUM_LOSS];
  if (nll_sum) *nll_sum += sums[MODEL_SUM_NLL];
  if (backward) model_stage_backward(m, NULL, NULL);
  return ntok;
}

/* ---- which backward step completes each gradient (gradsync.c) ----------------------- */

static void mark(const model *m, int *ready, const model_param *p, int step) {
  if (p) ready[p - m->params] = step; /* the last touch wins: steps only grow */
}
static void mark_attn(const model *m, int *ready, const model_attn *A, int step) {
  const model_param *ps[8] = {A->q_w, A->q_b, A->k_w, A->k_b, A->v_w, A->v_b, A->o_w, A->o_b};
  for (int i = 0; i < 8; i++)
    mark(m, ready, ps[i], step);
}
static void mark_ln(const model *m, int *ready, const model_ln *ln, int step) {
  mark(m, ready, ln->w, step);
  mark(m, ready, ln->b, step);
}
/* Sublayer j of layer L (encoder: self, ffn; decoder: self, cross, ffn). */
static void mark_sublayer(const model *m, int *ready, const model_layer *L, int dec, int j,
                          int step) {
  int kind = dec ? j : (j == 0 ? 0 : 2); /* 0 self, 1 cross, 2 ffn */
  if (kind == 0) mark_attn(m, ready, &L->self, step), mark_ln(m, ready, &L->ln_self, step);
  if (kind == 1) mark_attn(m, ready, &L->cross, step), mark_ln(m, ready, &L->ln_cross, step);
  if (kind == 2) {
    mark(m, ready, L->fc1_w, step), mark(m, ready, L->fc1_b, step);
    mark(m, ready, L->fc2_w, step), mark(m, ready, L->fc2_b, step);
    mark_ln(m, ready, &L->ln_ffn, step);
  }
}

/* enc_bwd's steps, after *step: the final LayerNorm (Pre-LN, last encoder layer here)
 * with the first sublayer, the sublayers from the last, the embedding on stage 0. */
static void enc_ready(const model *m, int *ready, int *step) {
  if (m->enc_l1 == m->dims.n_enc && m->dims.pre_ln) mark_ln(m, ready, &m->enc_final, *step + 1);
  for (int l = m->enc_l1 - 1; l >= m->enc_l0; l--)
    for (int j = 1; j >= 0; j--)
      mark_sublayer(m, ready, &m->enc[l], 0, j, ++*step);
  if (m->enc_l0 == 0) mark(m, ready, m->enc_embed, ++*step);
}

/* The walk of model_stage_backward (and of model_enc/dec_layers_bwd, whose loops count
 * a step per sublayer), counting its model_bwd_step_done calls. */
void model_grad_ready(const model *m, int *ready) {
  const model_dims *D = &m->dims;
  int step = 0, last = m->stage == m->n_stages - 1;
  for (int i = 0; i < m->n_params; i++)
    ready[i] = 0;
  if (D->arch != MODEL_ARCH_TRANSLATION) {
    if (last) {
      step++;
      if (D->arch == MODEL_ARCH_CLASSIFIER) {
        mark(m, ready, m->cls_dense_w, step), mark(m, ready, m->cls_dense_b, step);
        mark(m, ready, m->cls_out_w, step), mark(m, ready, m->cls_out_b, step);
      } else {
        mark(m, ready, m->out_proj, step);
      }
    }
    enc_ready(m, ready, &step);
  } else {
    if (m->dec_l1 > m->dec_l0) {
      if (last) {
        step++;
        mark(m, ready, m->out_proj, step);
        if (D->pre_ln) mark_ln(m, ready, &m->dec_final, step);
      }
      for (int l = m->dec_l1 - 1; l >= m->dec_l0; l--)
        for (int j = 2; j >= 0; j--)
          mark_sublayer(m, ready, &m->dec[l], 1, j, ++step);
      if (m->dec_l0 == 0) mark(m, ready, m->dec_embed, ++step);
    }
    if (m->enc_l1 > m->enc_l0) enc_ready(m, ready, &step);
  }
  for (int i = 0; i < m->n_params; i++) {
    const model_param *p = &m->params[i];
    if (p->is_vector && grid_pr(m) > 1) ready[i] = MODEL_BWD_END;
    if (p->pp_owners > 1) ready[i] = MODEL_BWD_NEVER;
  }
}
