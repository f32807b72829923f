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
 *
 * Sources: model_init.c (registry, stage plan, create/free, replicate), model_arena.c
 * (activations), model_blocks.c (layers, forward and backward), model_stage.c (a stage's
 * forward/backward, model_forward_backward), model_heads.c (encoder-only heads),
 * model_decode.c (incremental decoding); src/model_internal.h is what they share.
 */
#ifndef MPIFORMER_MODEL_H
#define MPIFORMER_MODEL_H

#include "config.h"
#include "dmat.h"

#include <limits.h>

typedef struct model_param {
  char name[112]; /* fairseq name */
  dmat w, g;      /* value and gradient (local blocks in the flat buffers) */
  int is_vector;  /* PyTorch shape is (cols) */
  int64_t offset; /* into the flat local buffers */
  int pp_owners;  /* pipeline stages that hold it (2-3 for a tied embedding; 1 otherwise) */
  int pp_copy;    /* 1: held here, but an earlier stage holds the copy that is written and
                   * counted in the grad norm (a tied embedding's second or third owner) */
  int pp_owned;   /* 1: this stage holds it; 0: an empty local block (0 x 0) */
  int init;       /* MODEL_INIT_* */
  float init_std;
} model_param;

enum { MODEL_INIT_ZERO, MODEL_INIT_ONE, MODEL_INIT_NORMAL, MODEL_INIT_EMBED };

typedef struct model_attn {
  model_param *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
} model_attn;
typedef struct model_ln {
  model_param *w, *b;
} model_ln;
typedef struct model_layer {
  model_attn self, cross;             /* cross: decoder only */
  model_ln ln_self, ln_cross, ln_ffn; /* self_attn_, encoder_attn_, final_layer_norm */
  model_param *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} model_layer;

/* The architecture (config key arch), parsed once by model_dims_from_config: transformer,
 * encoder_classifier, encoder_mlm. The task (task.h) and every caller use this enum. */
enum { MODEL_ARCH_TRANSLATION, MODEL_ARCH_CLASSIFIER, MODEL_ARCH_MLM };

/* The sums a forward adds into its `sums` array (model_stage_forward; pipe_run and
 * task_step_run pass them on, summed over micro-batches and ranks): the summed loss, the
 * summed nll (equal to the loss without label smoothing), what the loss is averaged over
 * (target tokens, sentences or masked positions) and the argmax hits (accuracy; 0 for
 * translation). */
enum { MODEL_SUM_LOSS, MODEL_SUM_NLL, MODEL_SUM_COUNT, MODEL_SUM_CORRECT, MODEL_NSUMS };

typedef struct model_dims {
  int arch;      /* MODEL_ARCH_*; the encoder-only ones force n_dec = 0 */
  int n_classes; /* MODEL_ARCH_CLASSIFIER: output classes */
  int n_enc, n_dec, d, ffn, heads, vocab;
  int pre_ln; /* 1: Pre-LN, 0: Post-LN */
  int pad, bos, eos;
  float dropout, attn_dropout, act_dropout, label_smoothing;
  int share; /* 0 none, 1 decoder_io, 2 all */
} model_dims;

typedef struct model {
  model_dims dims;
  const grid *g;
  int n_params;
  model_param *params; /* registry, in checkpoint order */
  int64_t n_floats;    /* local floats in each flat buffer */
  float *param_mem, *grad_mem;
  model_layer *enc, *dec;
  model_param *enc_embed, *dec_embed, *out_proj; /* may point to the same param */
  model_ln enc_final, dec_final;                 /* Pre-LN only */
  /* classification head (MODEL_ARCH_CLASSIFIER): dense (d,d)+(d), out_proj (C,d)+(C) */
  model_param *cls_dense_w, *cls_dense_b, *cls_out_w, *cls_out_b;
  /* This rank's share under tensor parallelism (g's pr x pc grid; everything with
   * tp = 1). Activations are dmats: process row p holds sequences [p*Bl, (p+1)*Bl) of a
   * batch padded to pr*Bl sequences, process column q the column blocks below. */
  int dl, d0;     /* feature columns [d0, d0 + dl) */
  int hl, h0;     /* attention heads (pc divides heads) */
  int fl, f0;     /* feed-forward hidden columns */
  int vl, v0;     /* vocabulary columns of the logits */
  int cl, c0;     /* class columns of the classifier's logits */
  int64_t vec_lo; /* vectors (biases, LN gains) occupy flat [vec_lo, n_floats): every
                   * process row holds all of them (their gradients are summed over
                   * the process rows); matrices are split and come first */
  /* Pipeline stage (g->stage of g->pp; the whole model with pp = 1): encoder layers
   * [enc_l0, enc_l1) and decoder layers [dec_l0, dec_l1) (model_stage_plan); the encoder
   * embedding goes with encoder layer 0, the final LayerNorms with the last layers, the decoder
   * embedding with decoder layer 0, the output projection and the loss with the last
   * stage. Parameters of other stages have empty local blocks (registry and checkpoint
   * list are the same on every stage). Flat layout: [0, norm_lo) the tied copies
   * (pp_copy), then the split matrices, then the vectors. */
  int stage, n_stages, enc_l0, enc_l1, dec_l0, dec_l1;
  int64_t norm_lo;
  /* Called after every sublayer of a forward or backward when set (pipe.c: lets MPI move
   * the pipeline's pending messages while this rank computes). */
  void (*progress)(void *ctx);
  void *progress_ctx;
  /* Backward bookkeeping (gradsync.c reads it from its progress hook): n_bwd counts the
   * stage backwards begun; bwd_step the steps of the current one finished (a head, a
   * sublayer, an embedding: model_grad_ready numbers them), MODEL_BWD_END once its gradients
   * are complete. */
  int64_t n_bwd;
  int bwd_step;
  struct model_acts *acts;   /* activation arena (model_arena.c) in use */
  struct model_acts **slots; /* one arena per micro-batch in flight (model_use_slot) */
  int n_slots;
  uint64_t dropout_key; /* set by model_set_dropout_key before a forward */
  int train;            /* 1: dropout on */
} model;

/* Fill dims from a validated config and the dataset's vocabulary (arch from c->arch;
 * n_classes is left 0: the caller sets it from the dataset). Not collective. */
void model_dims_from_config(model_dims *d, const config *c, int vocab, int pad, int bos, int eos);

/* Build the registry, allocate parameters and gradients, initialize from seed (layout
 * independent). Not collective (every rank of a replica builds the same). */
model *model_create(const model_dims *dims, const grid *g, uint64_t seed);
/* Free m, its arenas and its buffers (NULL is fine). Not collective. */
void model_free(model *m);

/* Look a parameter up by fairseq name (NULL if absent). Not collective. */
model_param *model_find(model *m, const char *name);

/* Dropout masks of the next forward derive from key (a function of seed, step and
 * micro-batch); train = 0 turns dropout off. Not collective. */
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
 * gradients of grad_scale * loss_sum are ACCUMULATED into m->grad_mem. Collective on the
 * TP grid (nothing with tp = 1): the logits' statistics and the predictions are gathered
 * over it. */
int64_t model_classify(model *m, const int32_t *tokens, const int32_t *labels, int B, int S,
                       float grad_scale, int backward, double *loss_sum, int64_t *n_correct,
                       int32_t *pred);

/* Masked-LM forward of tokens (B,S) (already masked) with targets (B,S): the original id
 * at each selected position, -1 elsewhere. logits = enc_out W_emb^T on the selected rows
 * only; adds the summed cross-entropy into *loss_sum and the number of selected rows
 * whose argmax is the target into *n_correct. Returns the number of selected positions.
 * Backward as model_classify. Collective on the TP grid (nothing with tp = 1), as
 * model_classify. */
int64_t model_mlm(model *m, const int32_t *tokens, const int32_t *targets, int B, int S,
                  float grad_scale, int backward, double *loss_sum, int64_t *n_correct);

/* Backward steps: model_stage_backward sets m->bwd_step to MODEL_BWD_END when its
 * gradients are complete; MODEL_BWD_NEVER marks a gradient that is complete only after the
 * backward's caller is done with it (a tensor tied across pipeline stages: pipe_reduce_tied). */
#define MODEL_BWD_END (INT_MAX - 1)
#define MODEL_BWD_NEVER INT_MAX

/* ready[i] (n_params): the value of m->bwd_step after which the gradient of params[i] is
 * final in a backward of this stage (model_stage_backward's order: the head, the decoder
 * sublayers from the last, the decoder embedding, the encoder sublayers from the last, the
 * encoder embedding); MODEL_BWD_END for the replicated vectors when pr > 1 (summed over the
 * process column at the end), MODEL_BWD_NEVER for tensors tied across stages. Not
 * collective. */
void model_grad_ready(const model *m, int *ready);

/* ---- pipeline stages -------------------------------------------------------------- */

/* Cut the layers of D (encoder 0..n_enc-1, then decoder) into pp contiguous stages with at
 * least one layer each, minimizing the largest stage cost (matmul multiply-adds per
 * token: encoder layer 4d^2 + 2dF, decoder layer 8d^2 + 2dF, the output projection Vd on
 * the last decoder layer, an embedding d on its first layer). first[0..pp]: stage s holds
 * global layers [first[s], first[s+1]). Returns C_ERR if pp exceeds the layers. Not
 * collective (every rank computes the same). */
int model_stage_plan(const model_dims *D, int pp, int *first);

/* Make arena `slot` (0-based; created on first use, grown only) the one forwards and
 * backwards use: one per micro-batch in flight on this stage. Not collective. */
void model_use_slot(model *m, int slot);

/* Floats of this rank's boundary message for a batch of B_global sequences (S, T): what
 * this stage receives from the previous one (side 0) or sends to the next (side 1), as
 * *n_enc floats of the encoder stream or output (B_local * S, dl) followed by *n_dec of the
 * decoder stream (B_local * T, dl). Zero on the first stage's side 0 and the last stage's
 * side 1. The gradients going back have the same sizes. Not collective. */
void model_stage_msg(const model *m, int side, int B_global, int S, int T, int64_t *n_enc,
                     int64_t *n_dec);

/* Forward of this stage's layers on the arena in use. Translation: tokens as
 * model_forward_backward; encoder-only archs: src = the model input rows (B,S), tgt_out =
 * the labels (B) (classifier) or the MLM targets (B,S), tgt_in unused, T = 0. Every stage
 * gets the whole batch. in_msg: the previous stage's message (NULL on the first stage);
 * out_msg receives the message for the next stage (unused on the last). The last stage
 * runs the loss (and with backward != 0 leaves the logits' gradient for the backward),
 * adds sums[MODEL_SUM_LOSS] += loss, sums[MODEL_SUM_NLL] += nll, sums[MODEL_SUM_CORRECT] +=
 * correct (encoder-only heads) and returns what the loss is averaged over (the caller adds
 * it into sums[MODEL_SUM_COUNT]); other stages return 0 and add nothing. The tokens, the dropout
 * key and mode are kept in the arena for the backward. Collective on the TP grid. */
int64_t model_stage_forward(model *m, const int32_t *src, const int32_t *tgt_in,
                            const int32_t *tgt_out, int B, int S, int T, float grad_scale,
                            int backward, const float *in_msg, float *out_msg, double *sums);

/* Backward of the arena in use after its model_stage_forward: g_in the gradient of the
 * message sent forward (NULL on the last stage), g_out receives the gradient of the
 * message received (unused on the first stage). Gradients are ACCUMULATED into
 * m->grad_mem. Collective on the TP grid. */
void model_stage_backward(model *m, const float *g_in, float *g_out);

/* Zero all gradients. Not collective. */
void model_zero_grad(model *m);

/* A model on a one-rank grid holding the full parameters of m (gathered from its TP
 * grid, and from the other pipeline stages over pp_comm), for what runs on one process:
 * incremental decoding. Collective on m's TP grid and pp_comm; returns m itself when
 * tp = pp = 1. Free with model_free unless it is m. */
model *model_replicate(model *m);

/* ---- incremental decoding (one-rank grids: use model_replicate with tp > 1) -------- */
typedef struct model_decoder model_decoder;

/* Encode src (n_seq, S) and prepare n_seq * beam hypotheses (hyp i belongs to sentence
 * i / beam) for up to max_steps decoder steps. Dropout is off. Not collective (m on a
 * one-rank grid, checked). */
model_decoder *model_decoder_start(model *m, const int32_t *src, int n_seq, int S, int beam,
                                   int max_steps);
/* Feed tokens (n_hyp) as the decoder inputs of the next position (the first call gives
 * bos); writes log-probabilities (n_hyp, vocab). Not collective. */
void model_decoder_step(model *m, model_decoder *st, const int32_t *tokens, float *logprobs);
/* Hypothesis i now continues the history of old hypothesis from[i] (n_hyp entries). Not
 * collective. */
void model_decoder_reorder(model_decoder *st, const int *from);
/* Free st (NULL is fine). Not collective. */
void model_decoder_free(model_decoder *st);

#endif
