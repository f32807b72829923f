/* model.h: the encoder-decoder Transformer (Post-LN and Pre-LN), forward and backward
 * by hand, its parameter registry with fairseq names, and incremental decoding; and the
 * encoder-only variants (docs/MODEL.md, "Encoder-only models"): a sentence-pair
 * classifier with fairseq's RoBERTa classification head, and a masked-LM whose output
 * projection is the encoder embedding.
 *
 * The exact math is docs/MODEL.md. Parameters and gradients each live in one flat
 * allocation (llm.c style), carved into one dmat per named tensor; activations live in
 * an arena sized for the largest batch shape seen (it only grows, so after the first
 * few steps no step allocates).
 */
#ifndef MPIFORMER_MODEL_H
#define MPIFORMER_MODEL_H

#include "config.h"
#include "dmat.h"

typedef struct model_param {
  char name[112];   /* fairseq name */
  dmat w, g;        /* value and gradient (local blocks in the flat buffers) */
  int is_vector;    /* PyTorch shape is (cols) */
  int64_t offset;   /* into the flat local buffers */
  int init;         /* MODEL_INIT_* */
  float init_std;
} model_param;

enum { MODEL_INIT_ZERO, MODEL_INIT_ONE, MODEL_INIT_NORMAL, MODEL_INIT_EMBED };

typedef struct model_attn { model_param *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b; } model_attn;
typedef struct model_ln { model_param *w, *b; } model_ln;
typedef struct model_layer {
  model_attn self, cross;             /* cross: decoder only */
  model_ln ln_self, ln_cross, ln_ffn; /* self_attn_, encoder_attn_, final_layer_norm */
  model_param *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} model_layer;

enum { MODEL_ARCH_TRANSLATION, MODEL_ARCH_CLASSIFIER, MODEL_ARCH_MLM };

typedef struct model_dims {
  int arch;          /* MODEL_ARCH_*; the encoder-only ones force n_dec = 0 */
  int n_classes;     /* MODEL_ARCH_CLASSIFIER: output classes */
  int n_enc, n_dec, d, ffn, heads, vocab;
  int pre_ln;        /* 1: Pre-LN, 0: Post-LN */
  int pad, bos, eos;
  float dropout, attn_dropout, act_dropout, label_smoothing;
  int share;         /* 0 none, 1 decoder_io, 2 all */
} model_dims;

typedef struct model {
  model_dims dims;
  const grid *g;
  int n_params;
  model_param *params;      /* registry, in checkpoint order */
  int64_t n_floats;         /* local floats in each flat buffer */
  float *param_mem, *grad_mem;
  model_layer *enc, *dec;
  model_param *enc_embed, *dec_embed, *out_proj; /* may point to the same param */
  model_ln enc_final, dec_final;                 /* Pre-LN only */
  /* classification head (MODEL_ARCH_CLASSIFIER): dense (d,d)+(d), out_proj (C,d)+(C) */
  model_param *cls_dense_w, *cls_dense_b, *cls_out_w, *cls_out_b;
  /* This rank's share under tensor parallelism (g's pr x pc grid; everything with
   * tp = 1). Activations are dmats: process row p holds sequences [p*Bl, (p+1)*Bl) of a
   * batch padded to pr*Bl sequences, process column q the column blocks below. */
  int dl, d0;               /* feature columns [d0, d0 + dl) */
  int hl, h0;               /* attention heads (pc divides heads) */
  int fl, f0;               /* feed-forward hidden columns */
  int vl, v0;               /* vocabulary columns of the logits */
  int cl, c0;               /* class columns of the classifier's logits */
  int64_t vec_lo;           /* vectors (biases, LN gains) occupy flat [vec_lo, n_floats): every
                             * process row holds all of them (their gradients are summed over
                             * the process rows); matrices are split and come first */
  struct model_acts *acts;  /* activation arena (model.c) */
  uint64_t dropout_key;     /* set by model_set_dropout_key before a forward */
  int train;                /* 1: dropout on */
} model;

/* Fill dims from a validated config and the dataset's vocabulary (arch from c->arch;
 * n_classes is left 0: the caller sets it from the dataset). Not collective. */
void model_dims_from_config(model_dims *d, const config *c, int vocab, int pad, int bos, int eos);

/* Build the registry, allocate parameters and gradients, initialize from seed (layout
 * independent). Collective on nothing (every rank of a replica builds the same). */
model *model_create(const model_dims *dims, const grid *g, uint64_t seed);
void model_free(model *m);

/* Look a parameter up by fairseq name (NULL if absent). */
model_param *model_find(model *m, const char *name);

/* Dropout masks of the next forward derive from key (a function of seed, step and
 * micro-batch); train = 0 turns dropout off. */
void model_set_mode(model *m, int train, uint64_t key);

/* Forward of a batch: src (B,S), tgt_in (B,T), tgt_out (B,T) (the whole batch, on every
 * rank of the TP grid). Returns the number of non-pad target tokens; adds the
 * label-smoothed loss and nll sums into *loss_sum, *nll_sum (the batch's totals on every
 * rank). If backward != 0 the gradients of grad_scale * loss_sum are ACCUMULATED into
 * m->grad_mem (this rank's blocks; replicated vectors complete on every process row).
 * Collective on the TP grid (nothing with tp = 1); so are model_classify and model_mlm. */
int64_t model_forward_backward(model *m, const int32_t *src, const int32_t *tgt_in,
                               const int32_t *tgt_out, int B, int S, int T, float grad_scale,
                               int backward, double *loss_sum, double *nll_sum);

/* Classifier forward of tokens (B,S) (rows `bos a eos b eos`, right-padded with pad;
 * column 0 is the pooled position) and labels (B) in [0, n_classes): adds the summed
 * cross-entropy into *loss_sum and the number of rows whose argmax is the label into
 * *n_correct; writes the argmax into pred (B) if not NULL. Returns B. If backward != 0 the
 * gradients of grad_scale * loss_sum are ACCUMULATED into m->grad_mem. Not collective. */
int64_t model_classify(model *m, const int32_t *tokens, const int32_t *labels, int B, int S,
                       float grad_scale, int backward, double *loss_sum, int64_t *n_correct,
                       int32_t *pred);

/* Masked-LM forward of tokens (B,S) (already masked) with targets (B,S): the original id
 * at each selected position, -1 elsewhere. logits = enc_out W_emb^T on the selected rows
 * only; adds the summed cross-entropy into *loss_sum and the number of selected rows
 * whose argmax is the target into *n_correct. Returns the number of selected positions.
 * Backward as model_classify. Not collective. */
int64_t model_mlm(model *m, const int32_t *tokens, const int32_t *targets, int B, int S,
                  float grad_scale, int backward, double *loss_sum, int64_t *n_correct);

/* Zero all gradients. */
void model_zero_grad(model *m);

/* A model on a one-rank grid holding the full parameters of m (gathered from its TP
 * grid), for what runs on one process: incremental decoding. Collective on m's TP grid;
 * returns m itself when tp = 1. Free with model_free unless it is m. */
model *model_replicate(model *m);

/* ---- incremental decoding (one-rank grids: use model_replicate with tp > 1) -------- */
typedef struct model_decoder model_decoder;

/* Encode src (n_seq, S) and prepare n_seq * beam hypotheses (hyp i belongs to sentence
 * i / beam) for up to max_steps decoder steps. Dropout is off. */
model_decoder *model_decoder_start(model *m, const int32_t *src, int n_seq, int S, int beam,
                                   int max_steps);
/* Feed tokens (n_hyp) as the decoder inputs of the next position (the first call gives
 * bos); writes log-probabilities (n_hyp, vocab). */
void model_decoder_step(model *m, model_decoder *st, const int32_t *tokens, float *logprobs);
/* Hypothesis i now continues the history of old hypothesis from[i] (n_hyp entries). */
void model_decoder_reorder(model_decoder *st, const int *from);
void model_decoder_free(model_decoder *st);

#endif
