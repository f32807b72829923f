/* task.h: what differs between the training tasks, behind one interface, so that the
 * training loop (train.c) and evaluation (evaluate.c) stay one loop for all of them:
 * how an epoch's batches are planned, and how one batch is loaded, turned into model
 * inputs and run forward (and backward).
 *
 *   translation         (arch=transformer)         data_batch -> model_forward_backward
 *   pair classification (arch=encoder_classifier)  rows `bos a eos b eos` -> model_classify
 *   masked-LM           (arch=encoder_mlm)         rows `bos a eos`, `bos b eos`, BERT
 *                                                  masking -> model_mlm
 *
 * Every task reports the same four sums, added over micro-batches and ranks, indexed by
 * model.h's MODEL_SUM_LOSS, MODEL_SUM_NLL, MODEL_SUM_COUNT and MODEL_SUM_CORRECT (the
 * model produces them). task_step_run runs a pass of batches on any layout (one rank, a
 * TP grid, pipeline stages, dp replicas) and reduces the sums, for train.c, evaluate.c
 * and `mpiformer dump` alike.
 */
#ifndef MPIFORMER_TASK_H
#define MPIFORMER_TASK_H

#include "ckpt.h"
#include "config.h"
#include "data.h"
#include "model.h"
#include "pipe.h"

/* Masked-LM: the mask symbol (the vocabulary has none; the corpus has no <unk>) and the
 * BERT split of the selected positions (80% mask, 10% random word, 10% unchanged). */
#define TASK_MLM_MASK_ID 1

typedef struct task {
  int kind;    /* MODEL_ARCH_* */
  int max_len; /* longest model input row (truncation), from max_src_len/max_positions */
  int64_t max_tokens;
  int max_src_len, max_tgt_len; /* translation: training pairs longer are dropped */
  float mlm_prob;
  int pad, bos, eos, vocab;
  data_batch raw;     /* the batch as data.c loads it */
  int32_t *tok, *tgt; /* model inputs (rows, width), grown only */
  size_t cap;
} task;

/* The task of a validated config on dataset f, for arch (MODEL_ARCH_*, model_dims's: the
 * config's arch is parsed once, by model_dims_from_config). Made once per run, by
 * session_open. Returns C_OK, or C_ERR with err set when the dataset does not fit the arch
 * (a classifier needs a pair_classification file). Not collective (every rank reaches the
 * same verdict). */
int task_init(task *t, const config *c, int arch, const data_file *f, char *err, size_t err_len);
/* Free t's buffers. Not collective. */
void task_free(task *t);

/* 1 when the task reports accuracy (classifier, masked-LM). Not collective. */
int task_has_accuracy(const task *t);

/* Plan the batches of an epoch of split s (train != 0: shuffled by (seed, epoch) and long
 * translation pairs dropped, their number in *n_dropped if not NULL; else in order).
 * Not collective. Fills *p (data_plan_free first). */
void task_plan(task *t, data_plan *p, const data_split *s, int train, uint64_t seed, int64_t epoch,
               int64_t *n_dropped);

/* Load batch b of plan p, set the model's mode (dropout on or off) with key (a function
 * of seed, step, epoch and b; it also keys the MLM masks, so a restart sees the same
 * masks), run it and ADD its sums into sums[MODEL_NSUMS]. With backward the gradients of
 * the summed loss are accumulated into m->grad_mem. Collective on m's TP grid (the
 * forward all-gathers over it; nothing with tp = 1). */
void task_run_batch(task *t, model *m, data_split *s, const data_plan *p, int64_t b, int dropout,
                    int backward, uint64_t key, double *sums);

/* A pass of batches through the model (task_step_run): this replica's batches first,
 * first + stride, ..., n of them; those past the plan's end are skipped (with pp > 1 and
 * backward they still take their place in the schedule, empty, on every stage).
 * Training: dropout and backward, the n micro-batches of one update (stride 1). Evaluation:
 * neither. `mpiformer dump`: backward only. The keys of batch b: with dropout,
 * ops_hash_key(seed, step, epoch, b) (step: the update's number, 1-based); without,
 * ops_hash_key(seed, "VALI", b, 0), so the masked-LM masks of batch b are the same at
 * every evaluation. */
typedef struct task_pass {
  data_split *split;
  const data_plan *plan;
  int64_t first, stride;
  int n;
  int dropout, backward;
  uint64_t seed;
  int64_t step, epoch;
  int poison; /* tests/test_nan.sh: this rank's loss sum becomes NaN before the reduction */
} task_pass;

/* Run pass p and set sums[MODEL_NSUMS] to its totals over the whole world: with pp = 1
 * task_run_batch per batch, with pp > 1 the pipeline (pipe_run for a backward pass, then
 * pipe_reduce_tied; pipe_forward per batch otherwise) on ps (unused with pp = 1); the sums
 * are then all-reduced over pp_comm (the last stage has the loss) and dp_comm, so every
 * rank gets the same totals. Gradients (backward) are accumulated, not zeroed, and not
 * reduced over dp (optim_sync_grads does that). C_OK; C_ERR on every rank, with the first
 * failing rank's message in err (the same on all), when a batch read failed on any rank
 * (data_split_error): the sums and gradients are then not to be used. Collective on g's
 * world (pp_comm, dp_comm and the TP grid). */
int task_step_run(task *t, model *m, pipe_sched *ps, const grid *g, const task_pass *p,
                  double sums[MODEL_NSUMS], char *err, size_t err_len);

/* pp > 1: load batch b of plan p and describe its model inputs for pipe_run/pipe_forward
 * (translation: the batch itself; the encoder-only tasks: the rows and labels/targets of
 * task_make_inputs with key, which also keys the dropout). The buffers are t's, valid
 * until the next call. Not collective. */
void task_pipe_batch(task *t, data_split *s, const data_plan *p, int64_t b, uint64_t key,
                     pipe_batch *out);

/* Build the model input rows of the loaded batch t->raw (exposed for tests): classifier
 * rows `bos a eos b eos` truncated to max_len (longest side first), or MLM rows with
 * their targets (key: the mask key). Returns the rows; *width gets the row width. Not
 * collective. */
int task_make_inputs(task *t, uint64_t key, int *width);

/* init_from: read the encoder.* tensors of checkpoint spec (a file, or a run's ckpt/
 * folder: its newest good checkpoint) that the file holds into tensors' param blocks
 * (other tensors and the optimizer state are untouched); *n_loaded = how many. C_ERR on
 * every rank with err set when the file is unusable, holds no encoder tensor, or one has
 * another shape (e.g. a different d_model). Collective on comm. */
int task_init_from(const char *spec, const ckpt_tensor *tensors, int n, int *n_loaded,
                   MPI_Comm comm, char *err, size_t err_len);

#endif
