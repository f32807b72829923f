/* model_blocks.c: the building blocks of the model's forward and backward, on local
 * blocks (docs/MODEL.md). A layer is a list of sublayers (attention or FFN), each
 * wrapped the same way: Pre-LN `s' = s + D(F(LN(s)))`, Post-LN `s' = LN(s + D(F(s)))`.
 * The residual stream s_k is saved between sublayers; a sublayer saves what its
 * backward needs (LN statistics, q/k/v, attention probabilities, FFN hidden). Linear
 * layers go through dmat_gemm (one gemm_sgemm on the 1x1 grid). Dropout masks come from
 * counter-based keys; the residual dropout of each sublayer keeps its mask as bits (1/32
 * of an activation) for the backward, the FFN's activation dropout reads it off the saved
 * h and hd, and the others (embeddings, attention probabilities) are regenerated in
 * backward from their keys.
 *
 * Tensor parallelism (pr x pc grid). Every activation is a dmat whose process row holds
 * whole sequences (the batch is padded with all-pad sequences to a multiple of pr, so
 * the row blocks fall on sequence boundaries) and whose process column holds a block of
 * the features, which is whole heads. Hence: linear layers are p?gemm (dmat_gemm);
 * attention, ReLU, dropout and the residual adds are local; LayerNorm and the
 * cross-entropy all-reduce row statistics over the process row (tpops); the embedding
 * lookup gathers the table's rows over the process column and its gradient is
 * reduce-scattered back; vectors (biases, LN gains) sit on every process row and their
 * gradients are summed over the process column once per backward. Masks and initial
 * values are functions of global indices, so any grid computes what one rank computes.
 *
 * Not here: the order in which a stage runs these blocks (model_stage.c, model_heads.c),
 * the optimizer (optim.c), batching (data.c), beam search (decode_search.c).
 */
#include "model_internal.h"

#include <math.h>
#include <string.h>

#include "ops.h"
#include "tpops.h"

/* ---- building blocks ------------------------------------------------------------- */

/* y(n,out) = x(n,in) W^T + b through dmat_gemm (gemm_sgemm on the 1x1 grid). n is this
 * process row's row count: the global activation has n * pr rows. */
void model_linear_fwd(model *m, float *y, const float *x, const model_param *w,
                      const model_param *b, int n) {
  int64_t out = w->w.rows, in = w->w.cols, rows = (int64_t)n * grid_pr(m);
  dmat X, Y;
  dmat_init(&X, m->g, rows, in, (float *)x);
  dmat_init(&Y, m->g, rows, out, y);
  if (b) {
    for (int i = 0; i < n; i++)
      memcpy(y + (size_t)i * Y.ld, b->w.data, (size_t)Y.cols_local * sizeof(float));
  }
  dmat_gemm('N', 'T', 1.0f, &X, &w->w, b ? 1.0f : 0.0f, &Y);
}

/* dx(n,in) = dy W + dx_beta dx (if dx; dx_beta 0 or 1); dW += dy^T x; db += column sums of
 * dy (this process row's rows: model_vec_grads_end sums them over the process column).
 * dx_beta = 0 lets the local engine write dx instead of the caller zeroing it (the same
 * bits: OpenBLAS zeroes C and runs the same kernel; oneDNN stores without a sum post-op,
 * 0 + x = x); ScaLAPACK (tp > 1) still gets a zeroed dx and beta = 1, as before. */
static void linear_bwd(model *m, float *dx, float dx_beta, const float *dy, const float *x,
                       const model_param *w, const model_param *b, int n) {
  int64_t out = w->w.rows, in = w->w.cols, rows = (int64_t)n * grid_pr(m);
  dmat DY, X;
  dmat_init(&DY, m->g, rows, out, (float *)dy);
  dmat_init(&X, m->g, rows, in, (float *)x);
  if (dx) {
    dmat DX;
    dmat_init(&DX, m->g, rows, in, dx);
    if (dx_beta == 0.0f && m->g && m->g->tp > 1) {
      memset(dx, 0, (size_t)DX.rows_local * DX.ld * sizeof(float));
      dx_beta = 1.0f;
    }
    dmat_gemm('N', 'N', 1.0f, &DY, &w->w, dx_beta, &DX);
  }
  dmat_gemm('T', 'N', 1.0f, &DY, &X, 1.0f, (dmat *)&w->g);
  if (b) {
    float *db = b->g.data;
    int ol = DY.cols_local;
    for (int i = 0; i < n; i++) {
      const float *row = dy + (size_t)i * DY.ld;
      for (int j = 0; j < ol; j++)
        db[j] += row[j];
    }
  }
}

void model_linear_bwd(model *m, float *dx, const float *dy, const float *x, const model_param *w,
                      const model_param *b, int n) {
  linear_bwd(m, dx, 1.0f, dy, x, w, b, n);
}

/* LayerNorm of n local rows (this rank's dl columns): the local kernel on one process
 * column, else with row statistics all-reduced over the process row. */
void model_ln_fwd(model *m, float *y, float *mean, float *rstd, const float *x, const model_ln *ln,
                  int n) {
  if (grid_pc(m) == 1)
    ops_layernorm_forward(y, mean, rstd, x, ln->w->w.data, ln->b->w.data, n, m->dl, LN_EPS);
  else
    tpops_layernorm_forward(y, mean, rstd, x, ln->w->w.data, ln->b->w.data, n, m->dl, m->dims.d,
                            LN_EPS, m->g->tp_row);
}

void model_ln_bwd(model *m, float *dx, const float *dy, const float *x, const float *mean,
                  const float *rstd, const model_ln *ln, int n) {
  if (grid_pc(m) == 1)
    ops_layernorm_backward(dx, ln->w->g.data, ln->b->g.data, dy, x, mean, rstd, ln->w->w.data, n,
                           m->dl);
  else
    tpops_layernorm_backward(dx, ln->w->g.data, ln->b->g.data, dy, x, mean, rstd, ln->w->w.data, n,
                             m->dl, m->dims.d, m->g->tp_row, m->acts->ln_scratch);
}

/* Index of the largest of row[0..n) (the first on ties). */
static int argmax_row(const float *row, int n) {
  int best = 0;
  for (int j = 1; j < n; j++)
    if (row[j] > row[best]) best = j;
  return best;
}

/* Cross-entropy of n local logit rows (cols columns of V starting at c0): ops_xent on one
 * process column, else vocabulary-parallel. argmax (n) may be NULL. The sums and the
 * count are this process row's. */
int64_t model_xent(model *m, float *logits, const int32_t *targets, int n, int cols, int c0, int V,
                   int pad, float eps, float grad_scale, int backward, double *loss_sum,
                   double *nll_sum, int32_t *argmax) {
  if (grid_pc(m) > 1) {
    const model_acts *a = m->acts;
    CHECK(n <= a->B * (a->S > a->T ? a->S : a->T), "model_xent: %d rows exceed the scratch", n);
    return tpops_xent(backward ? logits : NULL, logits, targets, n, cols, c0, V, pad, eps,
                      grad_scale, loss_sum, nll_sum, argmax, m->g->tp_row, m->acts->xent_scratch);
  }
  if (argmax)
    for (int i = 0; i < n; i++)
      argmax[i] = argmax_row(logits + (size_t)i * V, V);
  return ops_xent(backward ? logits : NULL, logits, targets, n, V, pad, eps, grad_scale, loss_sum,
                  nll_sum);
}

/* Replicated vectors: their gradients from this backward are partial sums over this
 * process row's tokens. model_vec_grads_begin sets the earlier (complete) ones aside and
 * zeroes them; model_vec_grads_end sums the new ones over the process column and adds the
 * earlier back. Nothing on one process row. */
void model_vec_grads_begin(model *m) {
  if (grid_pr(m) == 1) return;
  size_t n = (size_t)(m->n_floats - m->vec_lo);
  memcpy(m->acts->vec_saved, m->grad_mem + m->vec_lo, n * sizeof(float));
  memset(m->grad_mem + m->vec_lo, 0, n * sizeof(float));
}

void model_vec_grads_end(model *m) {
  if (grid_pr(m) == 1) return;
  int64_t n = m->n_floats - m->vec_lo;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, m->grad_mem + m->vec_lo, common_int(n), MPI_FLOAT, MPI_SUM,
                          m->g->tp_col));
  ops_acc(m->grad_mem + m->vec_lo, m->acts->vec_saved, n);
}

/* The batch totals on every rank: sums over the process rows of one process column. */
void model_tp_totals(model *m, double *sums, int n) {
  if (!m->g || m->g->tp == 1) return;
  if (m->g->pcol != 0)
    for (int i = 0; i < n; i++)
      sums[i] = 0.0;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, n, MPI_DOUBLE, MPI_SUM, m->g->tp_comm));
}

/* Dropout site keys: one per (layer stream, slot), mixed with the step key. */
static uint64_t site_key(const model *m, int site) {
  return ops_hash_key(m->dropout_key, 0x44524f50u /* "DROP" */, (uint64_t)site, 0);
}
static float p_if_train(const model *m, float p) {
  return m->train ? p : 0.0f;
}

/* Which core function a sublayer runs. */
enum { CORE_SELF, CORE_SELF_CAUSAL, CORE_CROSS, CORE_FFN };

typedef struct sublayer {
  int kind;
  const model_attn *attn;
  const model_layer *L;
  const model_ln *ln;
  int site; /* dropout site base */
} sublayer;

/* F(x): x (n,d) -> s->core (n,d). kv = encoder output for cross-attention. */
static void core_fwd(model *m, const sublayer *sl, sub_acts *s, const float *x, const float *kv,
                     int B, int Tq, int Tk, const uint8_t *key_pad) {
  const model_dims *D = &m->dims;
  int n = B * Tq, d = m->dl;
  int64_t row0 = m->acts->b0 * Tq;
  if (sl->kind == CORE_FFN) {
    model_linear_fwd(m, s->h, x, sl->L->fc1_w, sl->L->fc1_b, n);
    ops_relu_forward(s->h, s->h, (int64_t)n * m->fl);
    float p = p_if_train(m, D->act_dropout);
    if (s->hd != s->h)
      ops_dropout(s->hd, s->h, n, m->fl, row0, m->f0, D->ffn, p, site_key(m, sl->site + 1));
    model_linear_fwd(m, s->core, s->hd, sl->L->fc2_w, sl->L->fc2_b, n);
    return;
  }
  const model_attn *A = sl->attn;
  const float *src_kv = sl->kind == CORE_CROSS ? kv : x;
  int nk = B * Tk;
  model_linear_fwd(m, s->q, x, A->q_w, A->q_b, n);
  model_linear_fwd(m, s->k, src_kv, A->k_w, A->k_b, nk);
  model_linear_fwd(m, s->v, src_kv, A->v_w, A->v_b, nk);
  ops_attention_forward(s->o, d, s->probs, s->q, d, s->k, s->v, d,
                        sl->kind == CORE_SELF_CAUSAL ? NULL : key_pad, sl->kind == CORE_SELF_CAUSAL,
                        B, Tq, Tk, m->hl, D->d / D->heads, p_if_train(m, D->attn_dropout),
                        site_key(m, sl->site + 1), m->acts->b0, m->h0, D->heads, m->acts->scratch);
  model_linear_fwd(m, s->core, s->o, A->o_w, A->o_b, n);
}

/* A bias's gradient (NULL without a bias). */
static float *bias_grad(const model_param *b) {
  return b ? b->g.data : NULL;
}

/* Backward of F: dcore (n,d) -> dx (n,d) = dx_beta dx + (0 or 1: the first product writes
 * dx with 0); dkv (nk,d) += for cross-attention. */
static void core_bwd(model *m, const sublayer *sl, sub_acts *s, const float *x, const float *kv,
                     float *dcore, float *dx, float dx_beta, float *dkv, int B, int Tq, int Tk) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int n = B * Tq, d = m->dl;
  if (sl->kind == CORE_FFN) {
    linear_bwd(m, a->g_h, 0.0f, dcore, s->hd, sl->L->fc2_w, NULL, n); /* fc2_b: core_out_db */
    model_poll(m);
    /* act dropout (its mask read off hd), relu and fc1's bias gradient: one pass */
    ops_relu_backward_inplace(a->g_h, s->h, s->hd != s->h ? s->hd : NULL,
                              p_if_train(m, D->act_dropout), n, m->fl, bias_grad(sl->L->fc1_b));
    linear_bwd(m, dx, dx_beta, a->g_h, x, sl->L->fc1_w, NULL, n);
    return;
  }
  const model_attn *A = sl->attn;
  int cross = sl->kind == CORE_CROSS;
  const float *src_kv = cross ? kv : x;
  float *dsrc = cross ? dkv : dx;
  int nk = B * Tk;
  linear_bwd(m, a->g_o, 0.0f, dcore, s->o, A->o_w, NULL, n); /* o_b: core_out_db */
  model_poll(m);
  /* g_q, g_k, g_v written, and the q, k, v bias gradients summed per head block */
  ops_attention_backward_set(a->g_q, a->g_k, a->g_v, bias_grad(A->q_b), bias_grad(A->k_b),
                             bias_grad(A->v_b), a->g_o, d, s->probs, s->q, d, s->k, s->v, d, B, Tq,
                             Tk, m->hl, D->d / D->heads, p_if_train(m, D->attn_dropout),
                             site_key(m, sl->site + 1), a->b0, m->h0, D->heads, a->scratch);
  model_poll(m);
  linear_bwd(m, dx, dx_beta, a->g_q, x, A->q_w, NULL, n);
  model_poll(m);
  model_linear_bwd(m, dsrc, a->g_k, src_kv, A->k_w, NULL, nk);
  model_poll(m);
  model_linear_bwd(m, dsrc, a->g_v, src_kv, A->v_w, NULL, nk);
}

/* One sublayer forward: s_in -> s_out (n,d). */
static void sublayer_fwd(model *m, const sublayer *sl, sub_acts *s, const float *s_in, float *s_out,
                         const float *kv, int B, int Tq, int Tk, const uint8_t *key_pad) {
  const model_dims *D = &m->dims;
  int n = B * Tq, d = m->dl;
  int64_t row0 = m->acts->b0 * Tq;
  float p = p_if_train(m, D->dropout);
  if (D->pre_ln) {
    model_ln_fwd(m, s->ln_out, s->mean, s->rstd, s_in, sl->ln, n);
    core_fwd(m, sl, s, s->ln_out, kv, B, Tq, Tk, key_pad);
    ops_dropout_add(s_out, s_in, s->core, n, d, row0, m->d0, D->d, p, site_key(m, sl->site),
                    s->drop);
  } else {
    core_fwd(m, sl, s, s_in, kv, B, Tq, Tk, key_pad);
    ops_dropout_add(s->resid, s_in, s->core, n, d, row0, m->d0, D->d, p, site_key(m, sl->site),
                    s->drop);
    model_ln_fwd(m, s_out, s->mean, s->rstd, s->resid, sl->ln, n);
  }
}

/* The bias gradient of F's output layer (fc2, or attention's output projection): summed by
 * sublayer_bwd in its dropout pass over F's output gradient, so core_bwd leaves it. */
static float *core_out_db(const sublayer *sl) {
  return bias_grad(sl->kind == CORE_FFN ? sl->L->fc2_b : sl->attn->o_b);
}

/* One sublayer backward: ds_out (n,d) -> ds_in (n,d) (written, not accumulated), dkv +=.
 * Pre-LN: ds_in may be ds_out (the residual's gradient passes through, and ds_out is not
 * read after the dropout pass), which saves copying it. */
static void sublayer_bwd(model *m, const sublayer *sl, sub_acts *s, const float *s_in,
                         const float *ds_out, float *ds_in, const float *kv, float *dkv, int B,
                         int Tq, int Tk) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int n = B * Tq, d = m->dl;
  size_t nd = (size_t)n * d;
  int64_t row0 = a->b0 * Tq;
  float p = p_if_train(m, D->dropout);
  if (D->pre_ln) {
    /* one pass: g_core = dropout(ds_out), F's output bias, ds_in = ds_out if not the same */
    ops_dropout_backward(a->g_core, ds_in == ds_out ? NULL : ds_in, core_out_db(sl), ds_out, n, d,
                         row0, m->d0, D->d, p, site_key(m, sl->site), s->drop);
    core_bwd(m, sl, s, s->ln_out, kv, a->g_core, a->g_ln, 0.0f, dkv, B, Tq, Tk);
    model_ln_bwd(m, ds_in, a->g_ln, s_in, s->mean, s->rstd, sl->ln, n);
  } else {
    memset(ds_in, 0, nd * sizeof(float));
    model_ln_bwd(m, ds_in, ds_out, s->resid, s->mean, s->rstd, sl->ln, n);
    ops_dropout_backward(a->g_core, NULL, core_out_db(sl), ds_in, n, d, row0, m->d0, D->d, p,
                         site_key(m, sl->site), s->drop);
    core_bwd(m, sl, s, s_in, kv, a->g_core, ds_in, 1.0f, dkv, B, Tq, Tk);
  }
}

static sublayer enc_sublayer(const model *m, int l, int j) {
  const model_layer *L = &m->enc[l];
  sublayer sl = {j == 0 ? CORE_SELF : CORE_FFN, &L->self, L, j == 0 ? &L->ln_self : &L->ln_ffn,
                 (l * 3 + j) * 4};
  return sl;
}

static sublayer dec_sublayer(const model *m, int l, int j) {
  const model_layer *L = &m->dec[l];
  static const int kinds[3] = {CORE_SELF_CAUSAL, CORE_CROSS, CORE_FFN};
  sublayer sl = {kinds[j], j == 0 ? &L->self : &L->cross, L,
                 j == 0   ? &L->ln_self
                 : j == 1 ? &L->ln_cross
                          : &L->ln_ffn,
                 (1 << 20) + (l * 3 + j) * 4};
  return sl;
}

/* An embedding table's rows with this rank's columns: (V, dl). Its own block when the
 * table is not split by rows (pr = 1), else the blocks of the process column gathered
 * into a->table. Collective on the process column. */
static const float *embed_table(model *m, const model_param *E) {
  if (grid_pr(m) == 1) return E->w.data;
  const grid *g = m->g;
  int *counts = common_calloc((size_t)g->pr, sizeof(int)),
      *displs = common_calloc((size_t)g->pr, sizeof(int));
  for (int p = 0; p < g->pr; p++) {
    counts[p] = common_int(dmat_block_count(E->w.rows, p, g->pr) * m->dl);
    displs[p] = common_int(dmat_block_start(E->w.rows, p, g->pr) * m->dl);
  }
  MPI_CHECK(MPI_Allgatherv(E->w.data, counts[g->prow], MPI_FLOAT, m->acts->table, counts, displs,
                           MPI_FLOAT, g->tp_col));
  free(counts);
  free(displs);
  return m->acts->table;
}

/* Embedding + positions + dropout: s0 (B*T, dl), B and tok this process row's. */
void model_embed_fwd(model *m, float *s0, const model_param *E, const int32_t *tok, int B, int T,
                     int site) {
  const model_dims *D = &m->dims;
  int n = B * T;
  ops_embedding_forward(s0, tok, embed_table(m, E), n, m->dl, sqrtf((float)D->d));
  ops_positions_add_cols(s0, m->dl, B, T, D->d, m->d0, m->dl, 0);
  ops_dropout(s0, s0, n, m->dl, m->acts->b0 * T, m->d0, D->d, p_if_train(m, D->dropout),
              site_key(m, site));
}

/* dE += the lookup's gradient: into E's block directly on one process row, else over the
 * whole (V, dl) table in a->table, reduce-scattered over the process column. */
void model_embed_bwd(model *m, float *ds0, const model_param *E, const int32_t *tok, int B, int T,
                     int site) {
  const model_dims *D = &m->dims;
  int n = B * T;
  ops_dropout(ds0, ds0, n, m->dl, m->acts->b0 * T, m->d0, D->d, p_if_train(m, D->dropout),
              site_key(m, site));
  float scale = sqrtf((float)D->d);
  if (grid_pr(m) == 1) {
    ops_embedding_backward(E->g.data, ds0, tok, n, m->dl, scale, D->pad);
    return;
  }
  const grid *g = m->g;
  float *full = m->acts->table;
  memset(full, 0, (size_t)E->w.rows * m->dl * sizeof(float));
  ops_embedding_backward(full, ds0, tok, n, m->dl, scale, D->pad);
  int *counts = common_calloc((size_t)g->pr, sizeof(int));
  for (int p = 0; p < g->pr; p++)
    counts[p] = common_int(dmat_block_count(E->w.rows, p, g->pr) * m->dl);
  MPI_CHECK(MPI_Reduce_scatter(MPI_IN_PLACE, full, counts, MPI_FLOAT, MPI_SUM, g->tp_col));
  ops_acc(E->g.data, full, counts[g->prow]);
  free(counts);
}

#define SITE_ENC_EMBED (1 << 24)
#define SITE_DEC_EMBED ((1 << 24) + 1)

/* Encoder layers [l0, l1) forward over the arena's streams (local B, S); with
 * l1 = n_enc also the final LayerNorm (Pre-LN) into a->enc_out. */
void model_enc_layers_fwd(model *m, int l0, int l1, int B, int S) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  for (int l = l0; l < l1; l++)
    for (int j = 0; j < 2; j++) {
      sublayer sl = enc_sublayer(m, l, j);
      sublayer_fwd(m, &sl, &a->enc_sub[2 * l + j], a->enc_s[2 * l + j], a->enc_s[2 * l + j + 1],
                   NULL, B, S, S, a->src_pad);
      model_poll(m);
    }
  if (l1 == D->n_enc && D->pre_ln)
    model_ln_fwd(m, a->enc_out, a->enc_mean, a->enc_rstd, a->enc_s[2 * D->n_enc], &m->enc_final,
                 B * S);
}

/* Encoder forward over the arena's current local (B, S); output in a->enc_out. */
void model_encoder_fwd(model *m, const int32_t *src, int B, int S) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  CHECK(m->n_stages == 1, "model_encoder_fwd: the whole encoder is not on this pipeline stage");
  for (size_t i = 0; i < (size_t)B * S; i++)
    a->src_pad[i] = src[i] == D->pad;
  model_embed_fwd(m, a->enc_s[0], m->enc_embed, src, B, S, SITE_ENC_EMBED);
  model_enc_layers_fwd(m, 0, D->n_enc, B, S);
}

/* Backward of encoder layers [l0, l1): the gradient of their output is a->g_enc (that of
 * enc_out) when l1 = n_enc, else already in a->gs_a (that of stream 2 l1). Accumulates
 * the layers' parameter gradients; returns the buffer (gs_a or gs_b) holding the
 * gradient of stream 2 l0. */
float *model_enc_layers_bwd(model *m, int l0, int l1, int B, int S) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int nS = B * S, d = m->dl;
  /* Pre-LN: sublayer_bwd updates the stream's gradient in place (gs_in = gs_out) */
  float *gs_out = a->gs_a, *gs_in = D->pre_ln ? a->gs_a : a->gs_b;
  if (l1 == D->n_enc) {
    if (D->pre_ln) {
      memset(gs_out, 0, (size_t)nS * d * sizeof(float));
      model_ln_bwd(m, gs_out, a->g_enc, a->enc_s[2 * D->n_enc], a->enc_mean, a->enc_rstd,
                   &m->enc_final, nS);
    } else {
      memcpy(gs_out, a->g_enc, (size_t)nS * d * sizeof(float));
    }
  }
  for (int l = l1 - 1; l >= l0; l--)
    for (int j = 1; j >= 0; j--) {
      sublayer sl = enc_sublayer(m, l, j);
      sublayer_bwd(m, &sl, &a->enc_sub[2 * l + j], a->enc_s[2 * l + j], gs_out, gs_in, NULL, NULL,
                   B, S, S);
      float *t = gs_out;
      gs_out = gs_in;
      gs_in = t;
      model_bwd_step_done(m);
    }
  return gs_out;
}

/* Decoder layers [l0, l1) forward (local B, T; cross-attention over a->enc_out). */
void model_dec_layers_fwd(model *m, int l0, int l1, int B, int S, int T) {
  model_acts *a = m->acts;
  for (int l = l0; l < l1; l++)
    for (int j = 0; j < 3; j++) {
      sublayer sl = dec_sublayer(m, l, j);
      sublayer_fwd(m, &sl, &a->dec_sub[3 * l + j], a->dec_s[3 * l + j], a->dec_s[3 * l + j + 1],
                   a->enc_out, B, T, j == 1 ? S : T, a->src_pad);
      model_poll(m);
    }
}

/* Backward of decoder layers [l0, l1): gs (gs_a or gs_b) holds the gradient of stream
 * 3 l1; the encoder output's gradient is ACCUMULATED into a->g_enc. Returns the buffer
 * holding the gradient of stream 3 l0. */
float *model_dec_layers_bwd(model *m, int l0, int l1, float *gs, int B, int S, int T) {
  model_acts *a = m->acts;
  /* Pre-LN: sublayer_bwd updates the stream's gradient in place (gs_in = gs_out) */
  float *gs_out = gs, *gs_in = m->dims.pre_ln ? gs : gs == a->gs_a ? a->gs_b : a->gs_a;
  for (int l = l1 - 1; l >= l0; l--)
    for (int j = 2; j >= 0; j--) {
      sublayer sl = dec_sublayer(m, l, j);
      sublayer_bwd(m, &sl, &a->dec_sub[3 * l + j], a->dec_s[3 * l + j], gs_out, gs_in, a->enc_out,
                   a->g_enc, B, T, j == 1 ? S : T);
      float *t = gs_out;
      gs_out = gs_in;
      gs_in = t;
      model_bwd_step_done(m);
    }
  return gs_out;
}
