/* model_internal.h: what the model_*.c files share and nothing outside them may use: the
 * activation arena's layout (model_acts), the building blocks of a forward and backward
 * (linear, LayerNorm, cross-entropy, embedding, encoder and decoder layer ranges) and the
 * encoder-only heads' entry points. Public API: include/model.h.
 *
 * Every function here works on local blocks of the arena in use (m->acts) and is
 * collective on m's TP grid exactly when its comment says so (nothing with tp = 1).
 */
#ifndef MPIFORMER_MODEL_INTERNAL_H
#define MPIFORMER_MODEL_INTERNAL_H

#include "model.h"

#define LN_EPS 1e-5f

/* Dropout sites of the two embeddings (the layers use site bases below 1 << 24). */
#define SITE_ENC_EMBED (1 << 24)
#define SITE_DEC_EMBED ((1 << 24) + 1)

/* Let pending communication move (m->progress: the pipeline's sends, the gradient
 * buckets); the backward calls it between its matmuls. */
static inline void model_poll(model *m) {
  if (m->progress) m->progress(m->progress_ctx);
}
/* A backward step (a head, a sublayer, an embedding) finished: count it, as
 * model_grad_ready numbers them, then poll. */
static inline void model_bwd_step_done(model *m) {
  m->bwd_step++;
  model_poll(m);
}

/* ---- activation arena (model_arena.c) -------------------------------------------- */

typedef struct sub_acts {
  float *ln_out;      /* pre: LN(s_in) (n,d) */
  float *resid;       /* post: s_in + D(F(s_in)) (n,d) */
  float *mean, *rstd; /* LN statistics (n) */
  float *q, *k, *v;   /* attention: (n,d), (nk,d), (nk,d) */
  float *probs;       /* attention: (B,H,Tq,Tk) */
  float *o;           /* attention: heads concatenated (n,d) */
  float *h, *hd;      /* ffn: relu(fc1) (n,F), after act dropout (n,F) (== h if p = 0) */
  float *core;        /* F's output (n,d) before dropout: one scratch for all */
  uint8_t *drop;      /* the residual dropout's mask (n rows of ops_dropout_row_bytes(d)) */
} sub_acts;

typedef struct model_acts {
  size_t cap; /* floats allocated */
  float *mem;
  int B, S, T;            /* local batch: B sequences of this process row */
  int64_t b0;             /* global index of its first sequence */
  float **enc_s, **dec_s; /* residual streams: 2*n_enc+1, 3*n_dec+1 entries */
  sub_acts *enc_sub, *dec_sub;
  float *enc_out, *enc_mean, *enc_rstd; /* Pre-LN final LN (else enc_out = last stream) */
  float *dec_out, *dec_mean, *dec_rstd;
  float *logits; /* (B*T, V), overwritten by dlogits */
  /* backward scratch */
  float *gs_a, *gs_b;                           /* stream gradients (max(nS,nT), d) */
  float *g_core, *g_ln, *g_o, *g_q, *g_k, *g_v; /* (n, d) each (g_k, g_v: nk) */
  float *g_h;                                   /* (n, F) */
  float *g_enc;                                 /* (B*S, d) */
  float *scratch;                               /* attention scratch: 2 * Tmax * Tmax */
  float *ln_scratch;                            /* tpops_layernorm_backward: 2 * max(nS, nT) */
  double *xent_scratch;                         /* tpops_xent: 4 * nT */
  float *table;     /* pr > 1: an embedding table's rows gathered (V, dl), or its gradient */
  float *vec_saved; /* pr > 1: vector gradients from before this backward */
  int32_t *tok;     /* pr > 1: this process row's token rows, 4 slots of (B, max(S,T)) */
  size_t tok_cap;
  uint8_t *src_pad; /* (B, S) */
  size_t src_pad_cap;
  float *head; /* encoder-only heads' scratch (head_prepare), grown only */
  size_t head_cap;
  int32_t *head_idx; /* (rows) selected positions / targets of the MLM head */
  size_t head_idx_cap;
  /* what the backward of a staged forward needs again (model_stage_forward) */
  const int32_t *src, *tgt_in; /* this process row's token rows */
  uint64_t key;                /* dropout key of the forward */
  int train;
  int mlm_n, mlm_n_mine; /* masked-LM head: rows it ran on, of which this process row's */
} model_acts;

/* Process rows and columns of m's TP grid (1 and 1 without a grid). */
static inline int grid_pr(const model *m) {
  return m->g ? m->g->pr : 1;
}
static inline int grid_pc(const model *m) {
  return m->g ? m->g->pc : 1;
}

/* Make the arena in use fit this process row's share of a batch of B_global sequences
 * (S, T); sets a->B, a->b0. Grows only. Not collective. */
void model_acts_prepare(model *m, int B_global, int S, int T);
/* This process row's rows of x (B_global, L), copied into token slot `slot` (0..3) when
 * needed, pad rows past the batch filled with `fill`. Not collective. */
const int32_t *model_local_rows(model *m, int slot, const int32_t *x, int B_global, int L,
                                int32_t fill);
/* Free every arena of m (model_free). Not collective. */
void model_acts_free(model *m);

/* ---- building blocks (model_blocks.c) -------------------------------------------- */

/* y (n,out) = x (n,in) W^T + b for n local rows. Collective on the TP grid. */
void model_linear_fwd(model *m, float *y, const float *x, const model_param *w,
                      const model_param *b, int n);
/* dx += dy W (if dx), dW += dy^T x, db += column sums of dy. Collective on the TP grid. */
void model_linear_bwd(model *m, float *dx, const float *dy, const float *x, const model_param *w,
                      const model_param *b, int n);
/* LayerNorm of n local rows. Collective on the process row (tp_row) when pc > 1. */
void model_ln_fwd(model *m, float *y, float *mean, float *rstd, const float *x, const model_ln *ln,
                  int n);
/* LayerNorm backward: dx +=, gain and bias gradients +=. Collective on tp_row when pc > 1. */
void model_ln_bwd(model *m, float *dx, const float *dy, const float *x, const float *mean,
                  const float *rstd, const model_ln *ln, int n);
/* Cross-entropy of n local logit rows (this process row's sums and count; argmax may be
 * NULL); the logits' gradient in place with backward. Collective on tp_row when pc > 1. */
int64_t model_xent(model *m, float *logits, const int32_t *targets, int n, int cols, int c0, int V,
                   int pad, float eps, float grad_scale, int backward, double *loss_sum,
                   double *nll_sum, int32_t *argmax);
/* Set the complete replicated-vector gradients aside before a backward. Not collective. */
void model_vec_grads_begin(model *m);
/* Sum this backward's vector gradients over tp_col and add the earlier ones back.
 * Collective on tp_col when pr > 1. */
void model_vec_grads_end(model *m);
/* sums (n) -> the batch totals on every rank. Collective on the TP grid (tp_comm). */
void model_tp_totals(model *m, double *sums, int n);
/* Embedding lookup + positions + dropout into s0 (B*T, dl). Collective on tp_col when
 * pr > 1. */
void model_embed_fwd(model *m, float *s0, const model_param *E, const int32_t *tok, int B, int T,
                     int site);
/* The lookup's backward: dE +=. Collective on tp_col when pr > 1. */
void model_embed_bwd(model *m, float *ds0, const model_param *E, const int32_t *tok, int B, int T,
                     int site);
/* Encoder layers [l0, l1) forward (and the final Pre-LN LayerNorm with l1 = n_enc).
 * Collective on the TP grid. */
void model_enc_layers_fwd(model *m, int l0, int l1, int B, int S);
/* The whole encoder forward of src (local B, S) into a->enc_out (pp = 1 only). Collective
 * on the TP grid. */
void model_encoder_fwd(model *m, const int32_t *src, int B, int S);
/* Encoder layers [l0, l1) backward; returns the buffer with stream 2 l0's gradient.
 * Collective on the TP grid. */
float *model_enc_layers_bwd(model *m, int l0, int l1, int B, int S);
/* Decoder layers [l0, l1) forward (cross-attention over a->enc_out). Collective on the TP
 * grid. */
void model_dec_layers_fwd(model *m, int l0, int l1, int B, int S, int T);
/* Decoder layers [l0, l1) backward from gs; a->g_enc +=; returns the buffer with stream
 * 3 l0's gradient. Collective on the TP grid. */
float *model_dec_layers_bwd(model *m, int l0, int l1, float *gs, int B, int S, int T);

/* ---- encoder-only heads (model_heads.c) ------------------------------------------ */

/* The encoder-only archs' model_stage_forward: tokens (B,S), aux = labels (B) or MLM
 * targets (B,S); pred (B) may be NULL. Collective on the TP grid. */
int64_t model_enc_only_stage_fwd(model *m, const int32_t *tokens_g, const int32_t *aux_g,
                                 int B_global, int S, float grad_scale, int backward,
                                 const float *in_msg, float *out_msg, double *sums, int32_t *pred);
/* Classifier head backward into a->g_enc. Collective on the TP grid. */
void model_cls_head_bwd(model *m);
/* Masked-LM head backward into a->g_enc and the tied table. Collective on the TP grid. */
void model_mlm_head_bwd(model *m);

#endif
